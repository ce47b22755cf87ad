//! `flowzoo eval`: the scores of a run's model on its own test split, on a folder or file, on
//! tensors already in model space, or on CSV rows.
use super::inputs::read_tensor_spec;
use crate::config::Header;
use crate::data::load_evaluation_images;
use crate::data::tabular::{load_table, split_table};
use crate::session::{Scores, Session};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::Path;
use tch::{Kind, Tensor};

/// What to score and how.
#[derive(Clone, Debug, Default)]
pub struct EvalOptions<'a> {
    /// Images ([`load_evaluation_images`]: a folder, its `test/` when it has `train/` and
    /// `test/`, an IDX folder's test part, an IDX file, one image) or a tabular file.
    pub data: Option<&'a Path>,
    /// `FILE.safetensors:KEY`: points already in model space (no noise added).
    pub tensors: Option<&'a str>,
    /// Tabular models: rows of a CSV file with the run's columns, scored as given.
    pub csv: Option<&'a Path>,
    /// Dequantisation draws averaged per point (>= 1).
    pub draws: i64,
    pub seed: i64,
    /// Points per forward pass (>= 1).
    pub batch: i64,
}

/// The scores `eval` reports.
pub enum EvalReport {
    /// Per-image bits/dim and log-density (nats, model space).
    Images { what: String, scores: Scores },
    /// Per-row log-likelihood (nats, the data's own units), its mean and standard error.
    Tabular { what: String, log_prob: Vec<f64>, mean: f64, stderr: f64 },
}

impl EvalReport {
    /// The object `eval --json` prints.
    pub fn to_json(&self) -> Value {
        match self {
            EvalReport::Images { scores, .. } => json!({
                "n": scores.bpd.len(), "mean_bpd": scores.mean_bpd(), "bpd": scores.bpd, "log_prob": scores.log_prob,
            }),
            EvalReport::Tabular { log_prob, mean, stderr, .. } => {
                json!({"n": log_prob.len(), "mean_log_prob": mean, "stderr": stderr, "log_prob": log_prob})
            }
        }
    }

    /// One line for a person.
    pub fn summary(&self) -> String {
        match self {
            EvalReport::Images { what, scores } => format!("{what}: {} images, {:.4} bits/dim", scores.bpd.len(), scores.mean_bpd()),
            EvalReport::Tabular { what, log_prob, mean, stderr } => {
                format!("{what}: {} rows, mean log-likelihood {mean:.4} ± {stderr:.4} nats", log_prob.len())
            }
        }
    }
}

/// Scores `sess` as `opts` says.
pub fn evaluate(sess: &Session, opts: &EvalOptions) -> Result<EvalReport> {
    if opts.draws < 1 || opts.batch < 1 {
        bail!("--draws and --batch must be >= 1 (got {} and {})", opts.draws, opts.batch);
    }
    if sess.is_tabular() {
        return eval_tabular(sess, opts);
    }
    if opts.csv.is_some() {
        bail!("--csv is for tabular models; this is an image model (use --data or --tensors)");
    }
    if let Some(spec) = opts.tensors {
        let x = read_tensor_spec("--tensors", spec)?;
        x.expect_points(&sess.model.event_shape(), "input")?;
        let scores = sess.score_tensor(&x.tensor, None, opts.batch).with_context(|| x.origin())?;
        return Ok(EvalReport::Images { what: spec.to_string(), scores });
    }
    let (images, labels, what) = eval_images(sess, opts.data)?;
    Ok(EvalReport::Images { what, scores: sess.score_pixels(&images, &labels, opts.draws, opts.batch, opts.seed)? })
}

/// The images `eval` scores: those at `data` ([`load_evaluation_images`]) or the run's own
/// test split; with their labels and a description.
pub fn eval_images(sess: &Session, data: Option<&Path>) -> Result<(Tensor, Tensor, String)> {
    let cfg = &sess.cfg.data;
    match data {
        Some(dir) => {
            // A model without classes scores any folder; a conditional one needs its classes.
            let (set, _, _, what) = load_evaluation_images(dir, cfg, Some(&sess.classes)).or_else(|e| {
                if sess.model.n_classes().is_none() {
                    load_evaluation_images(dir, cfg, None)
                } else {
                    Err(e)
                }
            })?;
            Ok((set.images, set.labels, what))
        }
        None => {
            let path = sess.cfg.data_path().context("the run's own test split (pass --data DIR to score another folder)")?;
            let (_, test, _) = crate::data::load_split(&path, cfg, sess.cfg.train.seed)?;
            if test.is_empty() {
                bail!("the run's data {} has no test split; pass --data DIR", path.display());
            }
            Ok((test.images, test.labels, format!("{} (test split)", path.display())))
        }
    }
}

/// `eval` of a tabular model: mean log-likelihood (nats, data units) with its standard error.
/// A conditional model scores each row given its context: log p(x | context), the context read
/// from the table's conditioning columns (the run's `data.context_columns` / `label_column`).
pub fn eval_tabular(sess: &Session, opts: &EvalOptions) -> Result<EvalReport> {
    let cfg = &sess.cfg.data;
    let (rows, context, noise, what) = if let Some(spec) = opts.tensors {
        if sess.is_conditional() {
            bail!("--tensors {spec}: this model is conditional on {}: score rows with their context from a table (--csv FILE or --data FILE)", sess.conditioning_description());
        }
        let x = read_tensor_spec("--tensors", spec)?;
        x.expect_points(&sess.model.event_shape(), "input")?;
        (x.tensor.f_to_kind(Kind::Double)?, None, 0.0, spec.to_string())
    } else if let Some(file) = opts.csv.or(opts.data) {
        let flag = if opts.csv.is_some() { "--csv" } else { "--data" };
        let mut c = cfg.clone();
        c.columns = sess.columns.clone();
        if opts.csv.is_some() {
            c.header = Header::Auto;
        }
        let t = load_table(file, &c).context(flag)?;
        sess.model.check_input(&t.rows).with_context(|| format!("{flag} {}", file.display()))?;
        let what = file.display().to_string();
        let context = t.context.as_ref().map(|v| sess.context_from_columns(v, &format!("{flag} {what}"))).transpose()?;
        let noise = if opts.csv.is_some() { 0.0 } else { cfg.uniform_noise };
        (t.rows, context, noise, what)
    } else {
        let path = sess.cfg.data_path().context("the run's own test split (pass --csv FILE to score other rows)")?;
        let table = load_table(&path, cfg)?;
        let split = split_table(&table, cfg, sess.cfg.train.seed)?;
        if split.test.size()[0] == 0 {
            bail!("the run's data {} has no test split; pass --csv FILE", path.display());
        }
        let what = format!("{} (test split)", path.display());
        let context = split.context.as_ref().map(|[_, _, test]| sess.context_from_columns(test, &what)).transpose()?;
        (split.test, context, cfg.uniform_noise, what)
    };
    let lp = sess.score_rows_given(&rows, context.as_ref(), noise, opts.draws, opts.batch, opts.seed)?;
    let n = lp.len() as f64;
    let mean = lp.iter().sum::<f64>() / n;
    let var = lp.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    Ok(EvalReport::Tabular { what, mean, stderr: (var / n).sqrt(), log_prob: lp })
}
