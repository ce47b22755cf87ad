//! Learning curves (train and test bits/dim against step) as a PNG.
use anyhow::Result;
use plotters::prelude::*;
use std::path::Path;

static FONT: &[u8] = include_bytes!("DejaVuSans.ttf");

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// `train`/`test`: `(step, value)` points.
/// `eval_label` names the held-out curve ("test" or "validation").
pub fn plot_curves(path: &Path, title: &str, eval_label: &str, train: &[(f64, f64)], test: &[(f64, f64)]) -> Result<()> {
    register_font();
    let tmp = path.with_extension("tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (800, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let all: Vec<&(f64, f64)> = train.iter().chain(test).filter(|p| p.1.is_finite()).collect();
        let x_max = all.iter().map(|p| p.0).fold(1.0, f64::max);
        let (mut y_min, mut y_max) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
        if all.is_empty() {
            (y_min, y_max) = (0.0, 1.0);
        }
        let margin = ((y_max - y_min) * 0.05).max(1e-3);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 24))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, (y_min - margin)..(y_max + margin))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart.configure_mesh().x_desc("step").y_desc(title).draw().map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .draw_series(LineSeries::new(train.iter().copied().filter(|p| p.1.is_finite()), &BLUE))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label("train")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        chart
            .draw_series(LineSeries::new(test.iter().copied().filter(|p| p.1.is_finite()), RED.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(eval_label)
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| anyhow::anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// A 2-D model: a scatter of `n` samples (left) beside a heat map of the learned density
/// (right), over the same square window.
pub fn plot_2d_model(sess: &crate::session::Session, path: &Path, n: i64, temperature: f64, seed: i64) -> Result<()> {
    use tch::{Kind, Tensor};
    let samples = sess.sample_rows(n, temperature, seed)?;
    let pts = Vec::<f64>::try_from(&samples.f_reshape([-1])?)?;
    // Window: the central 99% of the samples, squared up, with a margin.
    let mut xs: Vec<f64> = pts.iter().step_by(2).copied().filter(|v| v.is_finite()).collect();
    let mut ys: Vec<f64> = pts.iter().skip(1).step_by(2).copied().filter(|v| v.is_finite()).collect();
    if xs.is_empty() {
        anyhow::bail!("all samples are non-finite");
    }
    xs.sort_by(f64::total_cmp);
    ys.sort_by(f64::total_cmp);
    let q = |v: &[f64], f: f64| v[((v.len() - 1) as f64 * f) as usize];
    let (cx, cy) = ((q(&xs, 0.005) + q(&xs, 0.995)) / 2.0, (q(&ys, 0.005) + q(&ys, 0.995)) / 2.0);
    let half = ((q(&xs, 0.995) - q(&xs, 0.005)).max(q(&ys, 0.995) - q(&ys, 0.005)) / 2.0 * 1.15).max(1e-3);
    let (lo_x, lo_y, span) = (cx - half, cy - half, 2.0 * half);
    let size = 300u32;
    let mut img = image::RgbImage::from_pixel(2 * size + 10, size, image::Rgb([255, 255, 255]));
    for k in 0..pts.len() / 2 {
        let (x, y) = (pts[2 * k], pts[2 * k + 1]);
        let px = ((x - lo_x) / span * size as f64) as i64;
        let py = size as i64 - 1 - ((y - lo_y) / span * size as f64) as i64;
        if (0..size as i64).contains(&px) && (0..size as i64).contains(&py) {
            img.put_pixel(px as u32, py as u32, image::Rgb([20, 60, 160]));
        }
    }
    // Density on a grid of pixel centres.
    let g = size as i64;
    let lin = Tensor::f_arange(g, (Kind::Double, tch::Device::Cpu))?.f_add_scalar(0.5)?.f_mul_scalar(span / g as f64)?;
    let gx = lin.f_add_scalar(lo_x)?.f_repeat([g])?;
    let gy = lin.f_add_scalar(lo_y)?.f_flip([0])?.f_repeat_interleave_self_int(g, Some(0), None)?;
    let grid = Tensor::f_stack(&[gx, gy], 1)?;
    let _g = tch::no_grad_guard();
    let lp = sess.model.log_prob(&grid.f_to_kind(sess.kind())?.f_to_device(sess.device())?, &crate::flows::Ctx::eval())?;
    let dens = Vec::<f64>::try_from(&lp.f_exp()?.f_to_kind(Kind::Double)?.f_to_device(tch::Device::Cpu)?)?;
    let max = dens.iter().copied().filter(|v| v.is_finite()).fold(0.0, f64::max).max(1e-300);
    for (i, d) in dens.iter().enumerate() {
        let t = if d.is_finite() { (d / max).clamp(0.0, 1.0) } else { 0.0 };
        // black -> purple -> orange -> yellow
        let c = |a: f64, b: f64, c: f64| -> u8 { (255.0 * (a * t + b * t * t + c * t * t * t).clamp(0.0, 1.0)) as u8 };
        let rgb = [c(0.8, 0.6, -0.4), c(-0.2, 0.4, 0.75), c(1.6, -2.6, 1.3)];
        img.put_pixel(size + 10 + (i as u32 % size), i as u32 / size, image::Rgb(rgb));
    }
    crate::io::atomic::atomic_write(path, |f| {
        img.write_to(f, image::ImageFormat::Png)?;
        Ok(())
    })
}
