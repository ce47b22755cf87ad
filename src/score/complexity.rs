//! Input complexity `L(x)` (Serrà et al. 2020, "Input complexity and out-of-distribution
//! detection with likelihood-based generative models"): the code length of an image under a
//! standard lossless compressor, in bits per dimension.
//!
//! The compressor is PNG at its maximum compression (zlib level 9, adaptive per-row filters)
//! through the `image` crate: PNG is the compressor the paper reports first, and it is already
//! how flowzoo reads and writes images, so no other codec is needed. The image compressed is
//! the one the model sees: resized to `data.image_size`, in `data.channels` channels, and
//! quantised to `data.n_bits` (the levels `k >> (8 − n_bits)` stored as 8-bit samples), so that
//! `L(x)` and the model's bits/dim describe the same discrete image. With 8 bits this is
//! exactly the paper's setting.
//!
//! `L(x)` counts the bytes of the PNG's compressed image data (its IDAT chunks' zlib stream),
//! not the signature and the fixed-size header and trailer chunks: those are the same for
//! every image of one size and say nothing about the image, so leaving them out only shifts
//! `L(x)` by a constant and changes no detection metric.
use anyhow::{bail, Context, Result};
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder};
use tch::{Kind, Tensor};

/// `L(x)` in bits/dim of each image of `[N, C, H, W]` uint8 pixels (`C` = 1 or 3) at `n_bits`.
pub fn png_complexity(pixels: &Tensor, n_bits: i64) -> Result<Vec<f64>> {
    let size = pixels.size();
    let &[n, c, h, w] = &size[..] else { bail!("input complexity needs images [N, C, H, W], got shape {size:?}") };
    if pixels.kind() != Kind::Uint8 {
        bail!("input complexity needs uint8 pixels, got {:?}", pixels.kind());
    }
    if c != 1 && c != 3 {
        bail!("input complexity needs 1 (grey) or 3 (RGB) channels, got {c}");
    }
    if !(1..=8).contains(&n_bits) {
        bail!("n_bits = {n_bits} must be between 1 and 8");
    }
    let bytes = Vec::<u8>::try_from(&pixels.f_contiguous()?.f_to_device(tch::Device::Cpu)?.f_reshape([-1])?)?;
    let per = (c * h * w) as usize;
    let threads = std::thread::available_parallelism().map(|t| t.get()).unwrap_or(1).min(8);
    let chunk = (n as usize).div_ceil(threads).max(1) * per;
    let parts: Vec<Result<Vec<f64>>> = std::thread::scope(|s| {
        let handles: Vec<_> = bytes
            .chunks(chunk.max(1))
            .map(|block| s.spawn(move || block.chunks(per).map(|img| image_bits_per_dim(img, c, h, w, n_bits)).collect()))
            .collect();
        handles.into_iter().map(|t| t.join().expect("png thread")).collect()
    });
    Ok(parts.into_iter().collect::<Result<Vec<_>>>()?.concat())
}

/// One CHW image's compressed bits per dimension.
fn image_bits_per_dim(chw: &[u8], c: i64, h: i64, w: i64, n_bits: i64) -> Result<f64> {
    let shift = 8 - n_bits as u32;
    let plane = (h * w) as usize;
    // PNG stores pixels interleaved (HWC).
    let hwc: Vec<u8> = if c == 1 {
        chw.iter().map(|v| v >> shift).collect()
    } else {
        (0..plane).flat_map(|i| (0..3).map(move |ch| chw[ch * plane + i] >> shift)).collect()
    };
    let color = if c == 1 { ExtendedColorType::L8 } else { ExtendedColorType::Rgb8 };
    let mut png = vec![];
    PngEncoder::new_with_quality(&mut png, CompressionType::Best, FilterType::Adaptive)
        .write_image(&hwc, w as u32, h as u32, color)
        .context("PNG-encoding an image for its input complexity")?;
    Ok(8.0 * idat_bytes(&png)? as f64 / (c * h * w) as f64)
}

/// The summed data length of a PNG's IDAT chunks.
fn idat_bytes(png: &[u8]) -> Result<usize> {
    let mut pos = 8; // the signature
    let mut total = 0;
    while pos + 8 <= png.len() {
        let len = u32::from_be_bytes(png[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        if &png[pos + 4..pos + 8] == b"IDAT" {
            total += len;
        }
        pos += 12 + len; // length, type, data, CRC
    }
    if total == 0 {
        bail!("internal error: the PNG encoder wrote no image data");
    }
    Ok(total)
}
