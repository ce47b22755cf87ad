//! The picture of a 2-D fit: the target density, the flow's samples and the flow's density,
//! side by side over one window.
use super::target::{target_log_prob, Target};
use crate::session::Session;
use crate::train::plot::{draw_heat_map, draw_scatter, finite_pairs, model_density, write_png, Window};
use anyhow::{bail, Result};
use std::path::Path;
use tch::{Device, Kind};

/// Target density | `n` samples of the flow (seeded with `seed`) | the flow's density, 920 × 300
/// pixels. The window is the samples' central 99%, widened by half again so that target mass
/// the flow misses nearby shows in the first panel.
pub fn plot_2d_fit(sess: &Session, target: &dyn Target, path: &Path, n: i64, seed: i64) -> Result<()> {
    if sess.model.dim() != 2 {
        bail!("a fit picture needs a 2-D target; this one has {} dimensions", sess.model.dim());
    }
    let pts = finite_pairs(&sess.sample_rows(n, 1.0, seed)?)?;
    if pts.is_empty() {
        bail!("all samples of the flow are non-finite");
    }
    let mut w = Window::around(&pts);
    w.half *= 1.5;
    let target_density = {
        let _g = tch::no_grad_guard();
        let lp = target_log_prob(target, &w.grid()?.f_to_kind(sess.kind())?.f_to_device(sess.device())?)?;
        let lp = lp.f_to_kind(Kind::Double)?.f_to_device(Device::Cpu)?;
        // exp(log p̃ − max): the unnormalised density may be far from 1 at its mode.
        let finite = lp.f_masked_select(&lp.f_isfinite()?)?;
        let max = if finite.numel() > 0 { finite.f_max()?.double_value(&[]) } else { 0.0 };
        Vec::<f64>::try_from(&lp.f_sub_scalar(max)?.f_exp()?)?
    };
    let flow_density = model_density(sess, w)?;
    write_png(path, (920, 300), |root| {
        let areas = root.split_by_breakpoints([300, 310, 610, 620], [] as [u32; 0]);
        draw_heat_map(&areas[0], "target density (unnormalised)", w, &target_density)?;
        draw_scatter(&areas[2], &format!("{} samples of the flow", pts.len()), w, &pts)?;
        draw_heat_map(&areas[4], "flow density", w, &flow_density)
    })
}
