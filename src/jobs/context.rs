//! The context a user hands `flowzoo sample` for a conditional tabular model: `--context
//! V1,V2,...` (one context for every sample) or `--context-csv FILE` (one per sample), or
//! `--label L` for a label-conditional one. Values are the conditioning columns' own (raw)
//! values, as in the training table; a label's value is mapped to its class.
use crate::config::{DataConfig, DataKind, Header};
use crate::data::labels::class_name;
use crate::data::tabular::load_table;
use crate::session::Session;
use anyhow::{bail, Context, Result};
use std::path::Path;
use tch::{Kind, Tensor};

/// Where the context comes from.
#[derive(Clone, Copy, Debug)]
pub enum ContextArg<'a> {
    /// `--context 0.5,1.0`, as typed.
    Values(&'a str),
    /// `--context-csv FILE`.
    Csv(&'a Path),
}

/// The contexts to sample at.
pub struct SampleContext {
    /// The conditioning input ([`Session::cond_for`]): class indices `[N]` or raw contexts
    /// `[N, K]`, `N = 1` for one context shared by every sample.
    pub input: Tensor,
    /// The raw values `[N, K]` float64 (a label's value), written beside the samples.
    pub raw: Tensor,
    /// One per sample (`--context-csv`): the number of samples is `N`.
    pub per_row: bool,
}

/// `--context 0.5,1.0` as numbers; each must be finite.
pub fn parse_context_values(s: &str) -> Result<Vec<f64>> {
    s.split(',')
        .map(|v| match v.trim().parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(x),
            _ => bail!("--context {s}: {:?} is not a finite number (give the context's values separated by commas, e.g. --context 0.5,1.0)", v.trim()),
        })
        .collect()
}

/// The contexts `flowzoo sample` draws at: from `arg` or `label` (a class index), checked
/// against the model. `None`: an unconditional model, or a label-conditional one cycling through
/// its classes.
pub fn sample_context(sess: &Session, arg: Option<ContextArg>, label: Option<i64>) -> Result<Option<SampleContext>> {
    let cols = sess.cfg.data.conditioning_columns();
    if !sess.is_tabular() || !sess.is_conditional() {
        match (arg, sess.is_conditional()) {
            (Some(_), false) => bail!("--context / --context-csv: this model is not conditional"),
            (Some(_), true) => bail!("--context / --context-csv: this model is conditional on {}: use --label", sess.conditioning_description()),
            (None, _) => return Ok(None),
        }
    }
    let labelled = sess.context.is_none();
    let (raw, per_row) = match (arg, label) {
        (Some(_), Some(_)) => bail!("--label and --context / --context-csv: give one of them"),
        (None, Some(l)) if labelled => {
            let Some(name) = sess.classes.get(l as usize).filter(|_| l >= 0) else {
                bail!("--label {l}: the model has classes 0..{} ({})", sess.classes.len().max(1) - 1, sess.classes.join(", "))
            };
            let value: f64 = name.parse().with_context(|| format!("internal error: class {name:?} is not a number"))?;
            (Tensor::from_slice(&[value]).f_reshape([1, 1])?, false)
        }
        (None, Some(_)) => bail!("--label: this model is conditional on {}, not on a label: pass --context or --context-csv", sess.conditioning_description()),
        (None, None) if labelled => return Ok(None),
        (None, None) => bail!(
            "this model samples p(x | context) given {}: pass --context V1,V2,... ({} value(s)) or --context-csv FILE",
            sess.conditioning_description(),
            cols.len()
        ),
        (Some(ContextArg::Values(s)), None) => {
            let v = parse_context_values(s)?;
            if v.len() != cols.len() {
                bail!("--context {s}: this model reads {} context value(s) ({}), got {}", cols.len(), cols.join(", "), v.len());
            }
            (Tensor::f_from_slice(&v)?.f_reshape([1, -1])?, false)
        }
        (Some(ContextArg::Csv(path)), None) => (read_context_csv(path, &cols)?, true),
    };
    let what = match arg {
        Some(ContextArg::Csv(p)) => format!("--context-csv {}", p.display()),
        _ => "--context".to_string(),
    };
    let input = sess.context_from_columns(&raw, &what)?;
    Ok(Some(SampleContext { input, raw, per_row }))
}

/// The conditioning columns `cols` of a CSV file: named by its header, or, without one, its
/// only columns in order.
fn read_context_csv(path: &Path, cols: &[String]) -> Result<Tensor> {
    let all = DataConfig { kind: DataKind::Tabular, header: Header::Auto, ..DataConfig::default() };
    let t = load_table(path, &all).with_context(|| format!("--context-csv {}", path.display()))?;
    let named = cols.iter().all(|c| t.columns.contains(c));
    let headerless = t.columns.iter().enumerate().all(|(i, c)| *c == i.to_string());
    if !named && !(headerless && t.columns.len() == cols.len()) {
        bail!(
            "--context-csv {}: needs the context column(s) {} (a header naming them, or exactly {} unnamed column(s)); it has: {}",
            path.display(),
            cols.join(", "),
            cols.len(),
            t.columns.join(", ")
        );
    }
    if !named {
        return Ok(t.rows);
    }
    let pick = DataConfig { columns: cols.to_vec(), ..all };
    Ok(load_table(path, &pick)?.rows)
}

/// The raw label values `[n, 1]` of samples cycling through a label model's classes.
pub fn cycled_label_values(sess: &Session, n: i64) -> Result<Tensor> {
    let k = sess.classes.len().max(1);
    let vals: Vec<f64> = (0..n as usize).map(|i| sess.classes.get(i % k).and_then(|c| c.parse().ok()).unwrap_or(f64::NAN)).collect();
    Ok(Tensor::f_from_slice(&vals)?.f_reshape([n, 1])?.f_to_kind(Kind::Double)?)
}

/// A class's caption for plots: `label = 3`.
pub fn label_caption(sess: &Session, value: f64) -> String {
    format!("{} = {}", sess.cfg.data.label_column, class_name(value))
}
