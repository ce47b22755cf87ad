//! A conditional 2-D model drawn at a few contexts: per context, a column with a scatter of
//! samples of p(x | context) above a heat map of that density, all over one window, so the
//! pictures show how the context moves the density.
use super::plot::{draw_heat_map, draw_scatter, finite_pairs, write_png, Window};
use crate::session::Session;
use anyhow::{bail, Result};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The most contexts one picture shows.
pub const MAX_CONTEXTS: usize = 6;

/// `n` samples and the density of a conditional 2-D model at each of `contexts` (a caption and
/// the conditioning input of one point: a class index, or the raw context `[K]`); 300 × 610
/// pixels per context.
pub fn plot_2d_contexts(sess: &Session, path: &Path, contexts: &[(String, Tensor)], n: i64, temperature: f64, seed: i64) -> Result<()> {
    if sess.model.dim() != 2 {
        bail!("a density plot needs a 2-D model; this one has {} dimensions", sess.model.dim());
    }
    if contexts.is_empty() || contexts.len() > MAX_CONTEXTS {
        bail!("a conditional density plot shows 1 to {MAX_CONTEXTS} contexts, got {}", contexts.len());
    }
    let mut samples = vec![];
    for (_, c) in contexts {
        samples.push(finite_pairs(&sess.sample_rows_given(n, temperature, seed, Some(c))?)?);
    }
    let pooled: Vec<(f64, f64)> = samples.iter().flatten().copied().collect();
    if pooled.is_empty() {
        bail!("all samples are non-finite");
    }
    let w = Window::around(&pooled);
    let grid = w.grid()?;
    let mut densities = vec![];
    for (_, c) in contexts {
        let _g = tch::no_grad_guard();
        let cond = sess.cond_for(Some(c), grid.size()[0], "plotting")?;
        let lp = sess.model.log_prob(&grid.f_to_kind(sess.kind())?.f_to_device(sess.device())?, &sess.ctx_eval(cond.as_ref()))?;
        densities.push(Vec::<f64>::try_from(&lp.f_exp()?.f_to_kind(Kind::Double)?.f_to_device(Device::Cpu)?)?);
    }
    let k = contexts.len() as u32;
    write_png(path, (310 * k - 10, 610), |root| {
        let xs: Vec<u32> = (1..k).flat_map(|i| [310 * i - 10, 310 * i]).collect();
        let areas = root.split_by_breakpoints(xs, [300, 310]);
        // Row-major: scatter row, gap row, density row; columns alternate panel, gap.
        let cols = 2 * k as usize - 1;
        for (i, (caption, _)) in contexts.iter().enumerate() {
            draw_scatter(&areas[2 * i], &format!("{caption}: {} samples", samples[i].len()), w, &samples[i])?;
            draw_heat_map(&areas[2 * cols + 2 * i], &format!("p(x | {caption})"), w, &densities[i])?;
        }
        Ok(())
    })
}

/// Contexts to draw a conditional model at, from its training rows' conditioning input: each
/// class in turn (up to [`MAX_CONTEXTS`]) for class indices `[N]`, or the 10%, 50% and 90%
/// quantiles of every context column for raw contexts `[N, K]`.
pub fn plot_contexts(sess: &Session, values: &Tensor) -> Result<Vec<(String, Tensor)>> {
    let Some(c) = &sess.context else {
        let mut idx = Vec::<i64>::try_from(&values.f_reshape([-1])?.f_to_kind(Kind::Int64)?)?;
        idx.sort_unstable();
        idx.dedup();
        let name = |i: i64| sess.classes.get(i as usize).cloned().unwrap_or_else(|| i.to_string());
        return Ok(idx.into_iter().take(MAX_CONTEXTS).map(|i| (format!("{} = {}", sess.cfg.data.label_column, name(i)), Tensor::from_slice(&[i]))).collect());
    };
    let v = values.f_to_kind(Kind::Double)?;
    let mut out = vec![];
    for q in [0.1, 0.5, 0.9] {
        let at = v.f_quantile_scalar(q, Some(0), false, "linear")?;
        let vals = Vec::<f64>::try_from(&at)?;
        let caption = c.columns.iter().zip(&vals).map(|(n, v)| format!("{n} = {v:.2}")).collect::<Vec<_>>().join(", ");
        out.push((caption, at));
    }
    Ok(out)
}
