//! A model in memory with its variables: build from a config, open from a run directory,
//! score and sample images.
use crate::config::Config;
use crate::data::{bits_per_dim, dequantize, to_model_space, to_pixels};
use crate::flows::{Ctx, Sink};
use crate::io::tensors::named_variables;
use crate::io::{read_safetensors, write_safetensors, Checkpoint, RunDir};
use crate::config::DataKind;
use crate::models::{self, DataInfo, DensityModel};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{nn::VarStore, Device, Kind, Tensor};

pub struct Session {
    pub cfg: Config,
    pub vs: VarStore,
    pub model: Box<dyn DensityModel>,
    pub classes: Vec<String>,
    /// Tabular column names (empty for images).
    pub columns: Vec<String>,
    /// The dtype the conditioner networks compute in (`train.precision = "bf16"`), carried
    /// into every call through [`Ctx::compute_kind`].
    pub compute_kind: Option<Kind>,
    /// The context of a tabular model conditioned on `data.context_columns`.
    pub context: Option<ContextInput>,
}

/// The context of a model conditioned on `data.context_columns`: the raw column values,
/// standardised with the training split's statistics when `data.standardize` is on (buffers
/// `context_standardize.{mean,std}`, saved with the weights and exported).
pub struct ContextInput {
    /// The columns as the config names them.
    pub columns: Vec<String>,
    /// `(mean, std)`, each `[K]`.
    pub standardize: Option<(Tensor, Tensor)>,
}

impl ContextInput {
    fn new(vs: &VarStore, cfg: &Config) -> Option<ContextInput> {
        let columns = cfg.data.context_columns.clone();
        if cfg.data.kind != DataKind::Tabular || columns.is_empty() {
            return None;
        }
        let k = columns.len() as i64;
        let standardize = cfg.data.standardize.then(|| {
            let p = vs.root() / "context_standardize";
            let zeros = Tensor::zeros([k], (Kind::Float, vs.device()));
            (p.add("mean", zeros.copy(), false), p.add("std", zeros.ones_like(), false))
        });
        Some(ContextInput { columns, standardize })
    }

    pub fn dim(&self) -> i64 {
        self.columns.len() as i64
    }
}

/// Per-sample scores.
pub struct Scores {
    pub bpd: Vec<f64>,
    pub log_prob: Vec<f64>,
}

impl Scores {
    pub fn mean_bpd(&self) -> f64 {
        self.bpd.iter().sum::<f64>() / self.bpd.len().max(1) as f64
    }
}

/// The batch size of `t` (its first dimension), or an error for a tensor without one.
fn leading_dim(t: &Tensor, what: &str) -> Result<i64> {
    match t.size().first() {
        Some(&n) => Ok(n),
        None => bail!("expected {what} with a batch dimension, got a scalar tensor"),
    }
}

impl Session {
    /// A freshly initialised image model (libtorch's generator seeded from `train.seed`).
    pub fn new(cfg: &Config, classes: Vec<String>, device: Device) -> Result<Session> {
        Self::new_for(cfg, DataInfo { classes, columns: vec![] }, device)
    }

    /// A freshly initialised model for data described by `info`.
    pub fn new_for(cfg: &Config, info: DataInfo, device: Device) -> Result<Session> {
        tch::manual_seed(cfg.train.seed as i64);
        let vs = VarStore::new(device);
        let model = models::build_for(cfg, vs.root(), &info)?;
        if let Some(dup) = vs.variables().keys().find(|k| k.contains("__")) {
            bail!("internal error: duplicate parameter name {dup}");
        }
        let compute_kind = crate::runtime::compute_kind(cfg.train.precision);
        let context = ContextInput::new(&vs, cfg);
        Ok(Session { cfg: cfg.clone(), vs, model, classes: info.classes, columns: info.columns, compute_kind, context })
    }

    /// An evaluation context with this session's compute dtype.
    pub fn ctx_eval<'a>(&self, cond: Option<&'a Tensor>) -> Ctx<'a> {
        Ctx::eval().with_cond(cond).with_compute_kind(self.compute_kind)
    }

    /// A training context with this session's compute dtype. Layers may return unbiased
    /// stochastic log-dets in it (a continuous flow's Hutchinson trace); evaluation stays exact.
    pub fn ctx_train<'a>(&self, cond: Option<&'a Tensor>) -> Ctx<'a> {
        Ctx { stochastic_logdet: true, ..Ctx::train() }.with_cond(cond).with_compute_kind(self.compute_kind)
    }

    pub fn is_tabular(&self) -> bool {
        self.cfg.data.kind == DataKind::Tabular
    }

    /// Sets the fixed standardisation layer (tabular models) from training-set statistics.
    pub fn set_standardization(&self, mean: &Tensor, std: &Tensor) -> Result<()> {
        let vars = self.vs.variables();
        let (Some(m), Some(s)) = (vars.get("standardize.mean"), vars.get("standardize.std")) else { return Ok(()) };
        let _g = tch::no_grad_guard();
        m.shallow_clone().f_copy_(&mean.f_to_kind(m.kind())?)?;
        s.shallow_clone().f_copy_(&std.f_to_kind(s.kind())?)?;
        Ok(())
    }

    /// Sets the context's standardisation (a model conditioned on `data.context_columns`) from
    /// training-set statistics of the raw context columns.
    pub fn set_context_standardization(&self, mean: &Tensor, std: &Tensor) -> Result<()> {
        let Some((m, s)) = self.context.as_ref().and_then(|c| c.standardize.as_ref()) else { return Ok(()) };
        let _g = tch::no_grad_guard();
        m.shallow_clone().f_copy_(&mean.f_to_kind(m.kind())?)?;
        s.shallow_clone().f_copy_(&std.f_to_kind(s.kind())?)?;
        Ok(())
    }

    /// Whether the model reads a context: class labels (a class-conditional Glow, a tabular
    /// `data.label_column`) or `data.context_columns`.
    pub fn is_conditional(&self) -> bool {
        self.model.n_classes().is_some() || self.context.is_some()
    }

    /// What conditions the model, for messages: `the label column "y" (classes 0, 1)`.
    pub fn conditioning_description(&self) -> String {
        match (&self.context, self.model.n_classes()) {
            (Some(c), _) => format!("the context columns {}", c.columns.join(", ")),
            (None, Some(_)) if self.is_tabular() => format!("the label column {:?} (classes {})", self.cfg.data.label_column, self.classes.join(", ")),
            (None, Some(k)) => format!("class labels (0..{})", k - 1),
            (None, None) => "nothing: the model is unconditional".into(),
        }
    }

    /// The conditioning input the data holds, from the conditioning columns' raw values `[N, K]`
    /// of a table: a label column's values become class indices (an unknown label is an error
    /// naming `rows`); context columns stay as they are.
    pub fn context_from_columns(&self, values: &Tensor, rows: &str) -> Result<Tensor> {
        if self.context.is_none() && self.model.n_classes().is_some() {
            return crate::data::labels::label_indices(values, &self.classes, rows);
        }
        Ok(values.shallow_clone())
    }

    /// The model's `ctx.cond` for `n` points from their conditioning input: class indices
    /// (int64 `[n]`) of a class- or label-conditional model, one-hot; the raw context `[n, K]`
    /// (or `[K]` / `[1, K]`: one context for every point) of a model conditioned on
    /// `data.context_columns`, standardised. `None` for an unconditional model, whatever
    /// `input` is; a conditional model without an input, or a context of another size, is an
    /// error naming `what`.
    pub fn cond_for(&self, input: Option<&Tensor>, n: i64, what: &str) -> Result<Option<Tensor>> {
        let Some(c) = &self.context else {
            return match (self.model.n_classes(), input) {
                // One label for every point, or one each.
                (Some(_), Some(l)) if l.numel() == 1 && n != 1 => self.one_hot(&l.f_reshape([1])?.f_expand([n], false)?),
                (Some(_), Some(l)) => self.one_hot(l),
                (Some(_), None) => bail!("{what}: this model is conditional on {}: its labels are needed", self.conditioning_description()),
                (None, _) => Ok(None),
            };
        };
        let k = c.dim();
        let Some(v) = input else {
            bail!("{what}: this model is conditional on {}: pass {k} context value(s) per point", self.conditioning_description())
        };
        let v = match v.dim() {
            1 => v.f_unsqueeze(0)?,
            2 => v.shallow_clone(),
            _ => bail!("{what}: expected a context of shape [{n}, {k}], got {:?}", v.size()),
        };
        let rows = v.size()[0];
        if v.size()[1] != k || !(rows == n || rows == 1) {
            bail!("{what}: expected a context of shape [{n}, {k}] ({}), got {:?}", c.columns.join(", "), v.size());
        }
        let v = v.f_expand([n, k], false)?.f_to_device(self.device())?.f_to_kind(self.kind())?;
        Ok(Some(match &c.standardize {
            Some((mean, std)) => v.f_sub(mean)?.f_div(std)?,
            None => v,
        }))
    }

    /// Per-row log-density (nats, data units) of tabular rows, each averaged over `draws`
    /// draws of the configured uniform noise (one pass when there is none). Only for an
    /// unconditional model (see [`score_rows_given`](Self::score_rows_given)).
    pub fn score_rows(&self, rows: &Tensor, noise: f64, draws: i64, batch: i64, seed: i64) -> Result<Vec<f64>> {
        self.score_rows_given(rows, None, noise, draws, batch, seed)
    }

    /// [`score_rows`](Self::score_rows) given each row's conditioning input (`[N, K]`, see
    /// [`cond_for`](Self::cond_for)): log p(x | context).
    pub fn score_rows_given(&self, rows: &Tensor, context: Option<&Tensor>, noise: f64, draws: i64, batch: i64, seed: i64) -> Result<Vec<f64>> {
        Ok(self.score_rows_with(rows, context, noise, draws, batch, seed, None)?.0)
    }

    /// [`score_rows_given`](Self::score_rows_given), with the layers' counters (an ODE solve's
    /// function evaluations) reported to `sink`; also returns the number of `log_prob` calls made.
    #[allow(clippy::too_many_arguments)]
    pub fn score_rows_counted(&self, rows: &Tensor, context: Option<&Tensor>, noise: f64, draws: i64, batch: i64, seed: i64, sink: &Sink) -> Result<(Vec<f64>, i64)> {
        self.score_rows_with(rows, context, noise, draws, batch, seed, Some(sink))
    }

    #[allow(clippy::too_many_arguments)]
    fn score_rows_with(&self, rows: &Tensor, context: Option<&Tensor>, noise: f64, draws: i64, batch: i64, seed: i64, sink: Option<&Sink>) -> Result<(Vec<f64>, i64)> {
        let draws = if noise > 0.0 { draws } else { 1 };
        let n = leading_dim(rows, "rows")?;
        if let Some(c) = context {
            if leading_dim(c, "a context")? != n {
                bail!("{n} rows but {} contexts", c.size()[0]);
            }
        }
        let lp = self.mean_log_prob(n, batch, draws, seed, sink, |start, len| {
            let x = rows.f_narrow(0, start, len)?.f_to_device(self.device())?.f_to_kind(self.kind())?;
            let x = if noise > 0.0 { x.f_add(&x.f_rand_like()?.f_mul_scalar(noise)?)? } else { x };
            let c = context.map(|c| c.f_narrow(0, start, len)).transpose()?;
            Ok((x, self.cond_for(c.as_ref(), len, "scoring rows")?))
        })?;
        let calls = draws * ((n + batch.max(1) - 1) / batch.max(1));
        Ok((Vec::<f64>::try_from(&lp)?, calls))
    }

    /// Per-point `log_prob` (float64, CPU) of `n` points taken `batch` at a time, averaged over
    /// `draws` passes each seeded from `seed`; `points(start, len)` gives one batch in model
    /// space (drawing any noise it adds) and its conditioning.
    fn mean_log_prob(
        &self,
        n: i64,
        batch: i64,
        draws: i64,
        seed: i64,
        sink: Option<&Sink>,
        mut points: impl FnMut(i64, i64) -> Result<(Tensor, Option<Tensor>)>,
    ) -> Result<Tensor> {
        let _g = tch::no_grad_guard();
        let mut sum = Tensor::zeros([n], (Kind::Double, Device::Cpu));
        for d in 0..draws {
            tch::manual_seed(seed.wrapping_mul(1_000_003).wrapping_add(d));
            let mut parts = vec![];
            let mut start = 0;
            while start < n {
                let len = batch.min(n - start);
                let (x, cond) = points(start, len)?;
                let ctx = self.ctx_eval(cond.as_ref());
                let lp = self.model.log_prob(&x, &Ctx { sink, ..ctx })?;
                parts.push(lp.f_to_kind(Kind::Double)?.f_to_device(Device::Cpu)?);
                start += len;
            }
            sum = sum.f_add(&Tensor::f_cat(&parts, 0)?)?;
        }
        Ok(sum.f_div_scalar(draws as f64)?)
    }

    /// `n` samples of a tabular model in data units, `[n, D]` on the CPU.
    pub fn sample_rows(&self, n: i64, temperature: f64, seed: i64) -> Result<Tensor> {
        self.sample_rows_given(n, temperature, seed, None)
    }

    /// [`sample_rows`](Self::sample_rows) given the conditioning input (see
    /// [`sample_model_space`](Self::sample_model_space)): samples of p(x | context).
    pub fn sample_rows_given(&self, n: i64, temperature: f64, seed: i64, context: Option<&Tensor>) -> Result<Tensor> {
        let x = self.sample_model_space(None, n, temperature, seed, context)?;
        Ok(x.f_to_kind(Kind::Double)?.f_to_device(Device::Cpu)?)
    }

    /// The model of a run directory with the chosen checkpoint's weights.
    pub fn open(run: &RunDir, which: Checkpoint, device: Device) -> Result<Session> {
        Self::open_with(run, which, device, &[])
    }

    /// [`open`](Self::open) with `--set`-style overrides of the run's config (e.g. another
    /// evaluation solver for a continuous flow); the weights must still fit.
    pub fn open_with(run: &RunDir, which: Checkpoint, device: Device, overrides: &[String]) -> Result<Session> {
        let cfg = run.load_config()?;
        let cfg = if overrides.is_empty() { cfg } else { cfg.with_overrides(overrides)? };
        let state = run.load_state()?;
        let sess = Session::new_for(&cfg, DataInfo { classes: state.classes, columns: state.columns }, device)?;
        let path = run.checkpoint_path(which);
        if !path.is_file() {
            bail!("{} has no weights yet ({} is missing)", run.path.display(), path.display());
        }
        sess.load_weights(&path)?;
        Ok(sess)
    }

    pub fn load_weights(&self, path: &Path) -> Result<()> {
        let (tensors, _meta) = read_safetensors(path)?;
        crate::io::load_into_varstore(&self.vs, &tensors, &path.display().to_string())
    }

    pub fn save_weights(&self, path: &Path, step: i64) -> Result<()> {
        let mut meta = BTreeMap::new();
        meta.insert("step".to_string(), step.to_string());
        meta.insert("format".to_string(), "flowzoo".to_string());
        write_safetensors(path, &named_variables(&self.vs), &meta)
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    pub fn kind(&self) -> Kind {
        self.vs.kind()
    }

    pub fn parameter_count(&self) -> i64 {
        self.vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
    }

    /// One-hot float labels for a class-conditional model, `None` otherwise.
    pub fn one_hot(&self, labels: &Tensor) -> Result<Option<Tensor>> {
        match self.model.n_classes() {
            Some(k) => Ok(Some(labels.f_to_device(self.device())?.f_one_hot(k)?.f_to_kind(self.kind())?)),
            None => Ok(None),
        }
    }

    /// Per-image bits/dim and log-density (nats, of the dequantised image in model space) of
    /// uint8 images, each averaged over `draws` dequantisation draws seeded from `seed`.
    pub fn score_pixels(&self, pixels: &Tensor, labels: &Tensor, draws: i64, batch: i64, seed: i64) -> Result<Scores> {
        let n = leading_dim(pixels, "images")?;
        let n_bits = self.cfg.data.n_bits;
        let dims = self.model.dim();
        let lp = self.mean_log_prob(n, batch, draws, seed, None, |start, len| {
            let px = pixels.f_narrow(0, start, len)?.f_to_device(self.device())?;
            let x = dequantize(&to_model_space(&px, n_bits, self.kind())?, n_bits)?;
            Ok((x, self.one_hot(&labels.f_narrow(0, start, len)?)?))
        })?;
        let bpd = bits_per_dim(&lp, dims, n_bits)?;
        Ok(Scores { bpd: Vec::<f64>::try_from(&bpd)?, log_prob: Vec::<f64>::try_from(&lp)? })
    }

    /// Per-sample log-density and bits/dim of tensors already in model space (no noise added).
    pub fn score_tensor(&self, x: &Tensor, labels: Option<&Tensor>, batch: i64) -> Result<Scores> {
        if labels.is_none() && self.model.n_classes().is_some() {
            bail!("this model is class-conditional: labels are needed");
        }
        let lp = self.mean_log_prob(leading_dim(x, "points")?, batch, 1, 0, None, |start, len| {
            let xb = x.f_narrow(0, start, len)?.f_to_device(self.device())?.f_to_kind(self.kind())?;
            let cond = match labels {
                Some(l) => self.one_hot(&l.f_narrow(0, start, len)?)?,
                None => None,
            };
            Ok((xb, cond))
        })?;
        let bpd = bits_per_dim(&lp, self.model.dim(), self.cfg.data.n_bits)?;
        Ok(Scores { bpd: Vec::<f64>::try_from(&bpd)?, log_prob: Vec::<f64>::try_from(&lp)? })
    }

    /// `n` samples as uint8 pixels; `labels` chooses classes for a conditional model (default:
    /// cycling through the classes).
    pub fn sample_pixels(&self, n: i64, temperature: f64, seed: i64, labels: Option<&Tensor>) -> Result<Tensor> {
        let x = self.sample_model_space(None, n, temperature, seed, labels)?;
        to_pixels(&x, self.cfg.data.n_bits).context("converting samples to pixels")
    }

    /// Samples in model space, `x = f⁻¹(T · eps)`, from given standard-normal noise `eps`
    /// (`[N, D]` in the flat latent order: level 0's factored-out half, level 1's, ..., the top,
    /// each (C, H, W) row-major) or, without it, from `n` draws after seeding with `seed`.
    /// `labels` pick classes of a class-conditional model (default: cycling through them), or
    /// hold the raw context (`[n, K]`, or one `[K]` for all) of a model conditioned on
    /// `data.context_columns` (required there).
    pub fn sample_model_space(&self, eps: Option<&Tensor>, n: i64, temperature: f64, seed: i64, labels: Option<&Tensor>) -> Result<Tensor> {
        let _g = tch::no_grad_guard();
        let d = self.model.noise_dim();
        let eps = match eps {
            Some(e) => {
                if e.size().len() != 2 || e.size()[1] != d {
                    bail!("--eps: expected standard-normal noise of shape [N, {d}] (flowzoo's flat latent), got {:?}", e.size());
                }
                e.f_to_kind(self.kind())?.f_to_device(self.device())?
            }
            None => {
                tch::manual_seed(seed);
                Tensor::f_randn([n, d], (self.kind(), self.device()))?
            }
        };
        let n = eps.size()[0];
        let cond = match (self.model.n_classes(), labels, &self.context) {
            (Some(k), None, None) => self.one_hot(&Tensor::f_arange(n, (Kind::Int64, Device::Cpu))?.f_remainder(k)?)?,
            _ => self.cond_for(labels, n, "sampling")?,
        };
        self.model.sample_from_noise(&eps.f_mul_scalar(temperature)?, &self.ctx_eval(cond.as_ref()))
    }

    /// Names of every variable that holds a NaN or Inf.
    pub fn non_finite_variables(&self) -> Vec<String> {
        let mut bad: Vec<String> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.is_floating_point() && !bool::try_from(t.isfinite().all()).unwrap_or(false))
            .map(|(n, _)| n)
            .collect();
        bad.sort();
        bad
    }
}
