//! `Config::validate`: one pass over every key, for every data kind. Each problem is an
//! [`Invalid`] naming its key, so a config file's error can point at the key's line and a
//! `--set`'s at the override.
use super::choices::{DataKind, ModelKind, Objective, PermutationChoice, PosteriorChoice};
use super::Config;
use std::fmt;

/// The most levels a model may have: 2^levels must divide the image size, and no image
/// flowzoo reads (u32 sides) has more than 2^31 pixels a side.
pub const MAX_LEVELS: i64 = 30;

/// The longest `train.dist_timeout_s`: a day (PyTorch's default is 30 minutes).
pub const MAX_DIST_TIMEOUT_S: f64 = 86_400.0;

/// The largest `train.bucket_mib` (DDP's default is 25).
pub const MAX_BUCKET_MIB: f64 = 1024.0;

/// A value out of its range (or two keys that do not fit together).
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    /// The dotted key the problem is about, e.g. `train.lr`.
    pub key: &'static str,
    /// The whole message, starting with the key and its value.
    pub message: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Invalid {}

fn invalid(key: &'static str, message: String) -> Invalid {
    Invalid { key, message }
}

fn at_least(key: &'static str, v: i64, min: i64, meaning: &str) -> Result<(), Invalid> {
    if v < min {
        return Err(invalid(key, format!("{key} = {v}: must be >= {min}{meaning}")));
    }
    Ok(())
}

/// An interval in steps: >= 1, or 0 when 0 has a meaning (`zero_means`).
fn interval(key: &'static str, v: i64, zero_means: Option<&str>) -> Result<(), Invalid> {
    match zero_means {
        Some(z) if v < 0 => Err(invalid(key, format!("{key} = {v}: must be >= 1 (steps between them), or 0 = {z}"))),
        None if v < 1 => Err(invalid(key, format!("{key} = {v}: must be >= 1 (steps between them)"))),
        _ => Ok(()),
    }
}

fn finite(key: &'static str, v: f64) -> Result<(), Invalid> {
    if !v.is_finite() {
        return Err(invalid(key, format!("{key} = {v}: must be a finite number")));
    }
    Ok(())
}

fn non_negative(key: &'static str, v: f64, meaning: &str) -> Result<(), Invalid> {
    finite(key, v)?;
    if v < 0.0 {
        return Err(invalid(key, format!("{key} = {v}: must be >= 0{meaning}")));
    }
    Ok(())
}

fn positive(key: &'static str, v: f64) -> Result<(), Invalid> {
    finite(key, v)?;
    if v <= 0.0 {
        return Err(invalid(key, format!("{key} = {v}: must be > 0")));
    }
    Ok(())
}

/// In `[0, 1)`.
fn unit_interval(key: &'static str, v: f64, meaning: &str) -> Result<(), Invalid> {
    if !(0.0..1.0).contains(&v) {
        return Err(invalid(key, format!("{key} = {v}: must be in [0, 1){meaning}")));
    }
    Ok(())
}

/// Every range and every combination; the first problem found.
pub fn check(cfg: &Config) -> Result<(), Invalid> {
    let (d, m, t) = (&cfg.data, &cfg.model, &cfg.train);

    // [data]
    super::data_path::check_syntax(&d.path).map_err(|e| invalid("data.path", e.to_string()))?;
    at_least("data.image_size", d.image_size, 1, " (pixels a side)")?;
    if d.channels != 1 && d.channels != 3 {
        return Err(invalid("data.channels", format!("data.channels = {}: must be 1 (grayscale) or 3 (RGB)", d.channels)));
    }
    if !(1..=8).contains(&d.n_bits) {
        return Err(invalid("data.n_bits", format!("data.n_bits = {}: must be between 1 and 8", d.n_bits)));
    }
    unit_interval("data.test_fraction", d.test_fraction, "")?;
    unit_interval("data.val_fraction", d.val_fraction, "")?;
    if d.test_fraction + d.val_fraction >= 1.0 {
        return Err(invalid(
            "data.val_fraction",
            format!(
                "data.test_fraction + data.val_fraction = {} + {} must be below 1 (rows must be left for training)",
                d.test_fraction, d.val_fraction
            ),
        ));
    }
    non_negative("data.uniform_noise", d.uniform_noise, " (0 = no noise)")?;
    if let Some(i) = d.columns.iter().position(|c| c.is_empty()) {
        return Err(invalid("data.columns", format!("data.columns[{i}] is empty: name a column or give its 0-based index")));
    }
    check_context_columns(d)?;

    // [model]
    at_least("model.levels", m.levels, 1, "")?;
    if m.levels > MAX_LEVELS {
        return Err(invalid("model.levels", format!("model.levels = {}: must be at most {MAX_LEVELS}", m.levels)));
    }
    at_least("model.steps", m.steps, 1, "")?;
    at_least("model.width", m.width, 1, "")?;
    at_least("model.blocks", m.blocks, 1, "")?;
    at_least("model.depth", m.depth, 1, "")?;
    positive("model.actnorm_scale", m.actnorm_scale)?;
    at_least("model.latent", m.latent, 1, " (size of the VAE's latent)")?;
    at_least("model.posterior_layers", m.posterior_layers, 1, "")?;
    at_least("model.posterior_width", m.posterior_width, 1, "")?;
    at_least("model.context", m.context, 1, " (features the encoder hands to the posterior flow)")?;
    super::autoregressive::check(m)?;

    // [train]
    at_least("train.batch_size", t.batch_size, 1, "")?;
    positive("train.lr", t.lr)?;
    at_least("train.warmup_steps", t.warmup_steps, 0, " (0 = no warm-up)")?;
    at_least("train.max_steps", t.max_steps, 0, "")?;
    non_negative("train.grad_clip", t.grad_clip, " (0 = no clipping)")?;
    interval("train.eval_every", t.eval_every, Some("only at the end"))?;
    interval("train.sample_every", t.sample_every, Some("only at the end"))?;
    interval("train.checkpoint_every", t.checkpoint_every, Some("only at the end"))?;
    interval("train.log_every", t.log_every, None)?;
    if !(0..=i32::MAX as i64).contains(&t.threads) {
        return Err(invalid("train.threads", format!("train.threads = {}: must be >= 0 (0 = libtorch's default)", t.threads)));
    }
    unit_interval("train.ema", t.ema, " (a decay rate; 0 = off)")?;
    at_least("train.eval_draws", t.eval_draws, 1, "")?;
    at_least("train.max_nonfinite", t.max_nonfinite, 1, "")?;
    non_negative("train.sample_temperature", t.sample_temperature, "")?;
    at_least("train.n_samples", t.n_samples, 1, "")?;
    at_least("train.patience", t.patience, 0, " (0 = never stop early)")?;
    finite("train.dist_timeout_s", t.dist_timeout_s)?;
    if !(1.0..=MAX_DIST_TIMEOUT_S).contains(&t.dist_timeout_s) {
        return Err(invalid(
            "train.dist_timeout_s",
            format!("train.dist_timeout_s = {}: must be between 1 and {MAX_DIST_TIMEOUT_S} (seconds a rank waits for the others)", t.dist_timeout_s),
        ));
    }
    finite("train.bucket_mib", t.bucket_mib)?;
    if !(t.bucket_mib > 0.0 && t.bucket_mib <= MAX_BUCKET_MIB) {
        return Err(invalid("train.bucket_mib", format!("train.bucket_mib = {}: must be > 0 and at most {MAX_BUCKET_MIB} (MiB per gradient all-reduce)", t.bucket_mib)));
    }
    at_least("train.vi_samples", t.vi_samples, 1, " (samples per step)")?;
    at_least("train.vi_eval_samples", t.vi_eval_samples, 1, " (samples per evaluation)")?;
    if t.patience > 0 && t.eval_every == 0 {
        return Err(invalid(
            "train.patience",
            format!("train.patience = {} counts evaluations, but train.eval_every = 0 evaluates only at the end: set train.eval_every >= 1", t.patience),
        ));
    }

    // What fits together.
    match (m.kind, d.kind) {
        (ModelKind::Glow, DataKind::Tabular) => {
            return Err(invalid(
                "model.kind",
                "model.kind = \"glow\" models images: use data.kind = \"images\" (or model.kind = \"realnvp\", \"nice\", \"maf\", \"iaf\", \"nsf\" or \"ffjord\" for tabular data)".into(),
            ))
        }
        (ModelKind::Nice | ModelKind::Maf | ModelKind::Iaf | ModelKind::Nsf, DataKind::Images) => {
            return Err(invalid("model.kind", format!("model.kind = \"{}\" is for tabular data (data.kind = \"tabular\")", m.kind)))
        }
        (ModelKind::Ffjord, data) => {
            if let Err(e) = m.cnf.validate() {
                return Err(invalid("model.cnf", e.to_string()));
            }
            if data == DataKind::Images && m.cnf.layer_type == crate::flows::LayerType::Mlp {
                return Err(invalid(
                    "model.cnf.layer_type",
                    "model.cnf.layer_type = \"mlp\" is a field on vectors: FFJORD on images uses concat-squash conv layers (\"concatsquash\")".into(),
                ));
            }
        }
        (ModelKind::Vae, DataKind::Tabular) => {
            return Err(invalid("model.kind", "model.kind = \"vae\" models images: use data.kind = \"images\"".into()))
        }
        _ => {}
    }
    if m.kind == ModelKind::Vae {
        if d.image_size % 2 != 0 {
            return Err(invalid(
                "data.image_size",
                format!("data.image_size = {}: the VAE's encoder halves the image once, so the size must be even", d.image_size),
            ));
        }
        if m.posterior == PosteriorChoice::Realnvp && m.latent < 2 {
            return Err(invalid(
                "model.latent",
                format!("model.latent = {}: a \"realnvp\" posterior couples halves of z, so it needs model.latent >= 2", m.latent),
            ));
        }
    }
    if t.objective == Objective::FlowMatching && m.kind == ModelKind::Ffjord && d.kind == DataKind::Images {
        return Err(invalid(
            "train.objective",
            "train.objective = \"flow_matching\" trains the one vector field of a vector FFJORD: the multi-scale image FFJORD chains several continuous flows, so train it with \"mle\"".into(),
        ));
    }
    if t.objective == Objective::FlowMatching && (m.kind != ModelKind::Ffjord || m.blocks != 1 || m.norm != super::NormChoice::None) {
        return Err(invalid(
            "train.objective",
            format!(
                "train.objective = \"flow_matching\" trains the vector field of one continuous flow: it needs model.kind = \"ffjord\" with model.blocks = 1 and model.norm = \"none\" (got model.kind = \"{}\", model.blocks = {}, model.norm = \"{}\")",
                m.kind,
                m.blocks,
                format!("{:?}", m.norm).to_lowercase()
            ),
        ));
    }
    if t.objective == Objective::ReverseKl && d.kind != DataKind::Tabular {
        return Err(invalid(
            "train.objective",
            "train.objective = \"reverse_kl\" fits a flow on vectors to a target density: data.kind must be \"tabular\" (flowzoo fit sets it)".into(),
        ));
    }
    if d.kind == DataKind::Images && m.kind != ModelKind::Vae {
        if m.kind == ModelKind::Glow && m.permutation == PermutationChoice::None {
            return Err(invalid(
                "model.permutation",
                "model.permutation = \"none\": Glow's couplings always transform the second half, so it needs a permutation".into(),
            ));
        }
        // Each level squeezes 2×2 pixels into channels: the image must halve `levels` times
        // (FFJORD's multi-scale model does not squeeze at its last level).
        let squeezes = if m.kind == ModelKind::Ffjord { m.levels - 1 } else { m.levels };
        let div = 1i64 << squeezes;
        if d.image_size % div != 0 {
            let power = if squeezes == m.levels { "2^model.levels" } else { "2^(model.levels - 1)" };
            return Err(invalid(
                "data.image_size",
                format!(
                    "data.image_size = {} is not divisible by {power} = {div} (model.levels = {}): use a multiple of {div}, or fewer levels",
                    d.image_size, m.levels
                ),
            ));
        }
    }
    Ok(())
}

/// `data.context_columns` and `data.label_column`: tabular only, one or the other, each column
/// named once and not also modelled.
fn check_context_columns(d: &super::DataConfig) -> Result<(), Invalid> {
    let (ctx, label) = (&d.context_columns, &d.label_column);
    if ctx.is_empty() && label.is_empty() {
        return Ok(());
    }
    let key = if ctx.is_empty() { "data.label_column" } else { "data.context_columns" };
    if d.kind != DataKind::Tabular {
        return Err(invalid(key, format!("{key} conditions a tabular model on columns of its table: it needs data.kind = \"tabular\" (class-conditional image models use model.conditional)")));
    }
    if !ctx.is_empty() && !label.is_empty() {
        return Err(invalid("data.label_column", format!("data.label_column = {label:?} and data.context_columns = {ctx:?}: condition on one or the other (a label is a one-hot context)")));
    }
    if let Some(i) = ctx.iter().position(|c| c.is_empty()) {
        return Err(invalid("data.context_columns", format!("data.context_columns[{i}] is empty: name a column or give its 0-based index")));
    }
    for (i, c) in ctx.iter().enumerate() {
        if ctx[..i].contains(c) {
            return Err(invalid("data.context_columns", format!("data.context_columns names {c:?} twice")));
        }
    }
    for c in ctx.iter().chain(std::iter::once(label).filter(|l| !l.is_empty())) {
        if d.columns.contains(c) {
            return Err(invalid(key, format!("{key}: {c:?} is also in data.columns: a column is either modelled or conditioned on, not both")));
        }
    }
    Ok(())
}
