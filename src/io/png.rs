//! Sample grids as PNG.
use super::atomic::atomic_write;
use anyhow::{bail, Result};
use std::path::Path;
use tch::Tensor;

/// Writes `[N, C, H, W]` uint8 images (C = 1 or 3) as a near-square grid, each image scaled up
/// (nearest) to at least 32 px, separated by 2 px of grey.
pub fn save_grid(images: &Tensor, path: &Path) -> Result<()> {
    let s = images.size();
    if s.len() != 4 || (s[1] != 1 && s[1] != 3) {
        bail!("save_grid: expected [N, 1|3, H, W] uint8, got {s:?}");
    }
    let (n, c, h, w) = (s[0] as usize, s[1] as usize, s[2] as usize, s[3] as usize);
    let cols = (n as f64).sqrt().ceil().max(1.0) as usize;
    let rows = n.div_ceil(cols).max(1);
    let scale = (32usize.div_ceil(h.max(1))).max(1);
    let (ch, cw, pad) = (h * scale, w * scale, 2usize);
    let (gw, gh) = (cols * (cw + pad) + pad, rows * (ch + pad) + pad);
    let data = images.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
    let mut bytes = vec![0u8; n * c * h * w];
    data.f_copy_data_u8(&mut bytes, n * c * h * w)?;
    let mut img = image::RgbImage::from_pixel(gw as u32, gh as u32, image::Rgb([96, 96, 96]));
    for k in 0..n {
        let (r, q) = (k / cols, k % cols);
        let (y0, x0) = (pad + r * (ch + pad), pad + q * (cw + pad));
        for y in 0..ch {
            for x in 0..cw {
                let (sy, sx) = (y / scale, x / scale);
                let px = |ci: usize| bytes[((k * c + ci) * h + sy) * w + sx];
                let rgb = if c == 1 { [px(0); 3] } else { [px(0), px(1), px(2)] };
                img.put_pixel((x0 + x) as u32, (y0 + y) as u32, image::Rgb(rgb));
            }
        }
    }
    atomic_write(path, |f| {
        img.write_to(f, image::ImageFormat::Png)?;
        Ok(())
    })
}
