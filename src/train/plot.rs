//! Plots, drawn with `plotters` into a pixel buffer and written as PNG through the same atomic
//! writer as the checkpoints (a crash mid-write leaves the previous picture): the learning
//! curves (`curves.png`) and, for 2-D tabular models, samples beside the learned density.
use crate::session::Session;
use anyhow::{bail, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use tch::{Device, Kind, Tensor};

static FONT: &[u8] = include_bytes!("DejaVuSans.ttf");

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // A failure leaves plotters without a font: labels are then skipped, the plot is drawn.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

pub(crate) fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting: {e}")
}

/// Draws a `width × height` picture with `draw` and writes it to `path` as PNG, atomically.
pub(crate) fn write_png(path: &Path, (width, height): (u32, u32), draw: impl FnOnce(&DrawingArea<BitMapBackend, Shift>) -> Result<()>) -> Result<()> {
    register_font();
    let mut buf = vec![0u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        draw(&root)?;
        root.present().map_err(plot_err)?;
    }
    let img = image::RgbImage::from_raw(width, height, buf).ok_or_else(|| anyhow::anyhow!("internal error: plot buffer of the wrong size"))?;
    crate::io::atomic::atomic_write(path, |f| {
        img.write_to(f, image::ImageFormat::Png)?;
        Ok(())
    })
}

/// Learning curves: `train` and `test` are `(step, value)` points; `eval_label` names the
/// held-out curve ("test" or "validation").
pub fn plot_curves(path: &Path, title: &str, eval_label: &str, train: &[(f64, f64)], test: &[(f64, f64)]) -> Result<()> {
    write_png(path, (800, 500), |root| {
        let all: Vec<&(f64, f64)> = train.iter().chain(test).filter(|p| p.1.is_finite()).collect();
        let x_max = all.iter().map(|p| p.0).fold(1.0, f64::max);
        let (mut y_min, mut y_max) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
        if all.is_empty() {
            (y_min, y_max) = (0.0, 1.0);
        }
        let margin = ((y_max - y_min) * 0.05).max(1e-3);
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 24))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, (y_min - margin)..(y_max + margin))
            .map_err(plot_err)?;
        chart.configure_mesh().x_desc("step").y_desc(title).draw().map_err(plot_err)?;
        chart
            .draw_series(LineSeries::new(train.iter().copied().filter(|p| p.1.is_finite()), &BLUE))
            .map_err(plot_err)?
            .label("train")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        chart
            .draw_series(LineSeries::new(test.iter().copied().filter(|p| p.1.is_finite()), RED.stroke_width(2)))
            .map_err(plot_err)?
            .label(eval_label)
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(plot_err)?;
        Ok(())
    })
}

/// Cells per side of the density heat map.
const GRID: i64 = 100;

/// black -> purple -> orange -> yellow for `t` in [0, 1].
fn heat(t: f64) -> RGBColor {
    let c = |a: f64, b: f64, c: f64| -> u8 { (255.0 * (a * t + b * t * t + c * t * t * t).clamp(0.0, 1.0)) as u8 };
    RGBColor(c(0.8, 0.6, -0.4), c(-0.2, 0.4, 0.75), c(1.6, -2.6, 1.3))
}

pub(crate) type Chart2d<'a, 'b> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A chart over `x × y` with small tick labels, filling `area`.
pub(crate) fn square_chart<'a, 'b>(area: &'a DrawingArea<BitMapBackend<'b>, Shift>, caption: &str, x: std::ops::Range<f64>, y: std::ops::Range<f64>) -> Result<Chart2d<'a, 'b>> {
    ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 13))
        .margin(4)
        .x_label_area_size(18)
        .y_label_area_size(28)
        .build_cartesian_2d(x, y)
        .map_err(plot_err)
}

/// A square window around 2-D points: the central 99% of them, squared up, with a margin.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    pub cx: f64,
    pub cy: f64,
    pub half: f64,
}

impl Window {
    pub fn around(pts: &[(f64, f64)]) -> Window {
        let mut xs: Vec<f64> = pts.iter().map(|p| p.0).collect();
        let mut ys: Vec<f64> = pts.iter().map(|p| p.1).collect();
        xs.sort_by(f64::total_cmp);
        ys.sort_by(f64::total_cmp);
        let q = |v: &[f64], f: f64| v[((v.len() - 1) as f64 * f) as usize];
        let (cx, cy) = ((q(&xs, 0.005) + q(&xs, 0.995)) / 2.0, (q(&ys, 0.005) + q(&ys, 0.995)) / 2.0);
        let half = ((q(&xs, 0.995) - q(&xs, 0.005)).max(q(&ys, 0.995) - q(&ys, 0.005)) / 2.0 * 1.15).max(1e-3);
        Window { cx, cy, half }
    }
    pub fn x_range(&self) -> std::ops::Range<f64> {
        (self.cx - self.half)..(self.cx + self.half)
    }
    pub fn y_range(&self) -> std::ops::Range<f64> {
        (self.cy - self.half)..(self.cy + self.half)
    }
    /// The centres of a GRID × GRID grid of cells, row by row from the top, `[GRID², 2]` float64.
    pub fn grid(&self) -> Result<Tensor> {
        let cell = 2.0 * self.half / GRID as f64;
        let lin = Tensor::f_arange(GRID, (Kind::Double, Device::Cpu))?.f_add_scalar(0.5)?.f_mul_scalar(cell)?;
        let gx = lin.f_add_scalar(self.cx - self.half)?.f_repeat([GRID])?;
        let gy = lin.f_add_scalar(self.cy - self.half)?.f_flip([0])?.f_repeat_interleave_self_int(GRID, Some(0), None)?;
        Ok(Tensor::f_stack(&[gx, gy], 1)?)
    }
}

/// `[N, 2]` points as pairs, the non-finite ones left out.
pub(crate) fn finite_pairs(points: &Tensor) -> Result<Vec<(f64, f64)>> {
    Ok(Vec::<f64>::try_from(&points.f_reshape([-1])?.f_to_kind(Kind::Double)?)?
        .chunks(2)
        .map(|p| (p[0], p[1]))
        .filter(|p| p.0.is_finite() && p.1.is_finite())
        .collect())
}

/// A scatter of `pts` (those inside the window) in `area`.
pub(crate) fn draw_scatter(area: &DrawingArea<BitMapBackend, Shift>, caption: &str, w: Window, pts: &[(f64, f64)]) -> Result<()> {
    let mut chart = square_chart(area, caption, w.x_range(), w.y_range())?;
    chart.configure_mesh().x_labels(5).y_labels(5).label_style(("sans-serif", 10)).draw().map_err(plot_err)?;
    let (xr, yr) = (w.x_range(), w.y_range());
    let inside = |p: &&(f64, f64)| xr.contains(&p.0) && yr.contains(&p.1);
    chart.draw_series(pts.iter().filter(inside).map(|&p| Circle::new(p, 1, RGBColor(20, 60, 160).filled()))).map_err(plot_err)?;
    Ok(())
}

/// A heat map of `dens` (values at the cells of `w.grid()`, scaled by their finite maximum).
pub(crate) fn draw_heat_map(area: &DrawingArea<BitMapBackend, Shift>, caption: &str, w: Window, dens: &[f64]) -> Result<()> {
    let max = dens.iter().copied().filter(|v| v.is_finite()).fold(0.0, f64::max).max(1e-300);
    let cell = 2.0 * w.half / GRID as f64;
    let mut chart = square_chart(area, caption, w.x_range(), w.y_range())?;
    chart.configure_mesh().x_labels(5).y_labels(5).label_style(("sans-serif", 10)).disable_mesh().draw().map_err(plot_err)?;
    chart
        .draw_series(dens.iter().enumerate().map(|(i, d)| {
            let (col, row) = ((i as i64 % GRID) as f64, (i as i64 / GRID) as f64);
            let x0 = w.cx - w.half + col * cell;
            let y1 = w.cy + w.half - row * cell;
            let t = if d.is_finite() { (d / max).clamp(0.0, 1.0) } else { 0.0 };
            Rectangle::new([(x0, y1 - cell), (x0 + cell, y1)], heat(t).filled())
        }))
        .map_err(plot_err)?;
    Ok(())
}

/// The learned density of a 2-D model at the cells of `w.grid()`.
pub(crate) fn model_density(sess: &Session, w: Window) -> Result<Vec<f64>> {
    let _g = tch::no_grad_guard();
    let lp = sess.model.log_prob(&w.grid()?.f_to_kind(sess.kind())?.f_to_device(sess.device())?, &crate::flows::Ctx::eval())?;
    Ok(Vec::<f64>::try_from(&lp.f_exp()?.f_to_kind(Kind::Double)?.f_to_device(Device::Cpu)?)?)
}

/// A 2-D model: a scatter of `n` samples (left) beside a heat map of the learned density
/// (right), over the same square window; 610 × 300 pixels.
pub fn plot_2d_model(sess: &Session, path: &Path, n: i64, temperature: f64, seed: i64) -> Result<()> {
    if sess.model.dim() != 2 {
        bail!("a density plot needs a 2-D model; this one has {} dimensions", sess.model.dim());
    }
    let pts = finite_pairs(&sess.sample_rows(n, temperature, seed)?)?;
    if pts.is_empty() {
        bail!("all samples are non-finite");
    }
    let w = Window::around(&pts);
    let dens = model_density(sess, w)?;
    write_png(path, (610, 300), |root| {
        let areas = root.split_by_breakpoints([300, 310], [] as [u32; 0]);
        draw_scatter(&areas[0], &format!("{} samples, T = {temperature}", pts.len()), w, &pts)?;
        draw_heat_map(&areas[2], "learned density", w, &dens)
    })
}
