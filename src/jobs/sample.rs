//! `flowzoo sample`: samples of a run's model written to a file: a PNG grid of images, CSV rows
//! of a tabular model, or, for 2-D data, a PNG of the samples beside the learned density.
use super::context::{cycled_label_values, label_caption, sample_context, ContextArg, SampleContext};
use super::inputs::UserTensor;
use crate::train::plot_conditional::MAX_CONTEXTS;
use crate::io::png::save_grid;
use crate::session::Session;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// What to draw and where to write it.
pub struct SampleRequest<'a> {
    /// Number of samples (replaced by the rows of `eps` when it is given).
    pub n: i64,
    pub temperature: f64,
    pub seed: i64,
    /// The class of every sample of a class-conditional model (default: cycle through them).
    pub label: Option<i64>,
    /// Standard-normal noise `[N, D]` in flowzoo's flat latent order: `x = f⁻¹(T · eps)`.
    pub eps: Option<&'a UserTensor>,
    /// Also write the raw model-space samples (images: `[N, C, H, W]`, key `x`).
    pub raw_out: Option<&'a Path>,
    /// `.png` (images, or 2-D tabular data) or `.csv` (tabular).
    pub output: &'a Path,
    /// The context of a conditional tabular model (see [`super::context`]).
    pub context: Option<ContextArg<'a>>,
}

/// What was written.
pub struct Written {
    pub n: i64,
    pub path: PathBuf,
    /// A 2-D tabular model's PNG: the samples beside the learned density.
    pub with_density: bool,
}

/// Draws and writes the samples `req` asks for.
pub fn sample(sess: &Session, req: &SampleRequest) -> Result<Written> {
    if let Some(eps) = req.eps {
        eps.expect_points(&[sess.model.noise_dim()], "standard-normal noise (flowzoo's flat latent)")?;
    }
    let n = req.eps.map_or(req.n, |e| e.tensor.size()[0]);
    if n < 1 {
        bail!("-n {n}: must be >= 1");
    }
    if !(req.temperature.is_finite() && req.temperature >= 0.0) {
        bail!("--temperature {}: must be a finite number >= 0", req.temperature);
    }
    if sess.is_tabular() {
        return sample_tabular(sess, n, req);
    }
    if req.context.is_some() {
        bail!("--context / --context-csv: this is an image model (use --label for a class-conditional one)");
    }
    let labels = match (req.label, sess.model.n_classes()) {
        (Some(l), Some(k)) if (0..k).contains(&l) => Some(Tensor::f_full([n], l, (Kind::Int64, Device::Cpu))?),
        (Some(l), Some(k)) => bail!("--label {l}: the model has classes 0..{}", k - 1),
        (Some(_), None) => bail!("--label: this model is not class-conditional"),
        (None, _) => None,
    };
    let eps = req.eps.map(|e| &e.tensor);
    let px = if eps.is_some() || req.raw_out.is_some() {
        let x = sess.sample_model_space(eps, n, req.temperature, req.seed, labels.as_ref())?;
        if let Some(p) = req.raw_out {
            crate::io::write_safetensors(p, &[("x".to_string(), x.shallow_clone())], &Default::default())?;
        }
        crate::data::to_pixels(&x, sess.cfg.data.n_bits)?
    } else {
        sess.sample_pixels(n, req.temperature, req.seed, labels.as_ref())?
    };
    save_grid(&px, req.output)?;
    Ok(Written { n, path: req.output.to_path_buf(), with_density: false })
}

/// A tabular model's samples: CSV rows under the run's column names (written with the `csv`
/// crate, so a name holding a comma or a quote survives), or, when the output ends in `.png`
/// and the data is 2-D, the samples beside the learned density. A conditional model samples
/// p(x | context) at the request's context (one for all samples, or one per `--context-csv`
/// row, whose count is then the number of samples); its CSV rows carry the context columns
/// after the model's; its PNG shows each context (each class of a label model by default).
pub fn sample_tabular(sess: &Session, n: i64, req: &SampleRequest) -> Result<Written> {
    if req.raw_out.is_some() {
        bail!("--raw-out is for image models; a tabular model's CSV samples are already raw");
    }
    let ctx = sample_context(sess, req.context, req.label)?;
    let is_png = req.output.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
    // CSV rows: one sample per context row; a PNG draws `n` samples at each context.
    let n = match &ctx {
        Some(c) if c.per_row && !is_png => {
            let rows = c.raw.size()[0];
            if let Some(e) = req.eps.filter(|e| e.tensor.size()[0] != rows) {
                bail!("{}: {} rows of noise but {rows} contexts in --context-csv", e.origin(), e.tensor.size()[0]);
            }
            rows
        }
        _ => n,
    };
    if is_png {
        if sess.model.dim() != 2 {
            bail!("a PNG scatter needs 2-D data; this model has {} dimensions: write CSV (-o samples.csv)", sess.model.dim());
        }
        if req.eps.is_some() {
            bail!("--eps with a PNG: the density plot draws its own samples; write CSV (-o samples.csv) to sample from given noise");
        }
        if !sess.is_conditional() {
            crate::train::plot::plot_2d_model(sess, req.output, n, req.temperature, req.seed)?;
        } else {
            let contexts = plot_contexts(sess, ctx.as_ref())?;
            crate::train::plot_conditional::plot_2d_contexts(sess, req.output, &contexts, n, req.temperature, req.seed)?;
        }
        return Ok(Written { n, path: req.output.to_path_buf(), with_density: true });
    }
    let input = ctx.as_ref().map(|c| &c.input);
    let x = match req.eps {
        Some(e) => sess.sample_model_space(Some(&e.tensor), n, req.temperature, req.seed, input)?.f_to_kind(Kind::Double)?.f_to_device(Device::Cpu)?,
        None => sess.sample_rows_given(n, req.temperature, req.seed, input)?,
    };
    if !sess.is_conditional() {
        write_rows_csv(req.output, &sess.columns, &x)?;
        return Ok(Written { n, path: req.output.to_path_buf(), with_density: false });
    }
    let raw = match &ctx {
        Some(c) => c.raw.f_expand([n, c.raw.size()[1]], false)?,
        None => cycled_label_values(sess, n)?,
    };
    let columns: Vec<String> = sess.columns.iter().cloned().chain(sess.cfg.data.conditioning_columns()).collect();
    write_rows_csv(req.output, &columns, &Tensor::f_cat(&[x, raw.f_to_kind(Kind::Double)?], 1)?)?;
    Ok(Written { n, path: req.output.to_path_buf(), with_density: false })
}

/// The contexts a conditional 2-D model's PNG shows: each row of the request's context (at most
/// [`MAX_CONTEXTS`]), or every class of a label model.
fn plot_contexts(sess: &Session, ctx: Option<&SampleContext>) -> Result<Vec<(String, Tensor)>> {
    let Some(c) = ctx else {
        let all = Tensor::f_arange(sess.classes.len() as i64, (Kind::Int64, Device::Cpu))?;
        return crate::train::plot_conditional::plot_contexts(sess, &all);
    };
    let rows = c.raw.size()[0];
    if rows as usize > MAX_CONTEXTS {
        bail!("a PNG shows at most {MAX_CONTEXTS} contexts; --context-csv has {rows} rows (write CSV to sample one per row)");
    }
    let cols = sess.cfg.data.conditioning_columns();
    let mut out = vec![];
    for i in 0..rows {
        let vals = Vec::<f64>::try_from(&c.raw.f_get(i)?.f_to_kind(Kind::Double)?)?;
        let caption = if sess.context.is_none() {
            label_caption(sess, vals[0])
        } else {
            cols.iter().zip(&vals).map(|(n, v)| format!("{n} = {v}")).collect::<Vec<_>>().join(", ")
        };
        out.push((caption, c.input.f_get(i)?));
    }
    Ok(out)
}

/// Writes `[N, D]` rows under `columns` as CSV (six decimals), atomically.
pub fn write_rows_csv(path: &Path, columns: &[String], rows: &Tensor) -> Result<()> {
    let size = rows.size();
    if size.len() != 2 || size[1] as usize != columns.len() {
        bail!("internal error: {} columns but rows of shape {size:?}", columns.len());
    }
    let vals = Vec::<f64>::try_from(&rows.f_reshape([-1])?.f_to_kind(Kind::Double)?)?;
    crate::io::atomic::atomic_write(path, |f| {
        let mut w = csv::Writer::from_writer(f);
        w.write_record(columns)?;
        for row in vals.chunks(columns.len().max(1)) {
            w.write_record(row.iter().map(|v| format!("{v:.6}")))?;
        }
        w.flush()?;
        Ok(())
    })
}
