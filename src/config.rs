//! The run configuration: plain serde structs mirroring `configs/*.toml`. Unknown or ill-typed
//! keys are errors naming the key (and, for a file, its line); `--set a.b=v` overrides any key.
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub data: DataConfig,
    pub model: ModelConfig,
    pub train: TrainConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config { data: DataConfig::default(), model: ModelConfig::default(), train: TrainConfig::default() }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BadImages {
    /// Warn with the path, count, and go on.
    Skip,
    /// Stop at the first bad image.
    Fail,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DataKind {
    /// A folder of images.
    Images,
    /// Rows of numbers: CSV, `.npy` or `.npz`.
    Tabular,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BadRows {
    /// Stop at the first bad row, naming its line and column.
    Fail,
    /// Drop bad rows and report how many.
    Drop,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// "images" (a folder) or "tabular" (a CSV / .npy / .npz file).
    pub kind: DataKind,
    /// Images: a folder (recursive; class sub-folders become labels; `train/` + `test/` give the
    /// split). Tabular: a `.csv`, `.npy` or `.npz` file.
    pub path: String,
    /// Images are resized (shorter side) and centre-cropped to `image_size × image_size`.
    pub image_size: i64,
    /// 1 (grayscale) or 3 (RGB).
    pub channels: i64,
    /// Bits of depth the model sees (1–8): `x = k / 2^n_bits - 0.5` plus uniform noise.
    pub n_bits: i64,
    /// Held-out fraction when the folder has no `train/`/`test/` split.
    pub test_fraction: f64,
    pub bad_images: BadImages,
    /// Tabular: columns to use, by header name or 0-based index (empty = all).
    pub columns: Vec<String>,
    /// Tabular CSV: whether the first line is a header ("auto" = when it is not numeric).
    pub header: String,
    /// Tabular: what to do with non-numeric, NaN or short rows.
    pub bad_rows: BadRows,
    /// Tabular: held-out validation fraction (early stopping and the best checkpoint).
    pub val_fraction: f64,
    /// Tabular: width of the uniform noise added to every value (dequantisation of integer
    /// data such as the 64-d digits); 0 for continuous data.
    pub uniform_noise: f64,
    /// Tabular: standardise with training-set mean/std, as the model's first (fixed) layer.
    pub standardize: bool,
    /// Tabular `.npz`: the array to read.
    pub npz_key: String,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            kind: DataKind::Images,
            path: "data/digits".into(),
            image_size: 8,
            channels: 1,
            n_bits: 5,
            test_fraction: 0.2,
            bad_images: BadImages::Skip,
            columns: vec![],
            header: "auto".into(),
            bad_rows: BadRows::Fail,
            val_fraction: 0.1,
            uniform_noise: 0.0,
            standardize: true,
            npz_key: String::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CouplingChoice {
    Affine,
    Additive,
}

/// Layer conventions of a Glow. `Rosinality` (rosinality/glow-pytorch): linear ActNorm, hidden
/// convs with a bias and no ActNorm, zero-convs padded with ones, contiguous (scale, shift) and
/// (mean, log-std) halves, a top-prior conv C -> 2C on zeros, LU 1×1 convs in the last level.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GlowStyle {
    #[default]
    Flowzoo,
    Rosinality,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PermutationChoice {
    InvconvLu,
    Invconv,
    Reverse,
    Shuffle,
    /// No permutation (vector models whose masks alternate by themselves).
    None,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Model family: "glow" | "realnvp" (images or tabular) | "nice" | "maf" | "iaf" | "nsf"
    /// (tabular).
    pub kind: String,
    /// L: number of levels (squeeze + K steps [+ split]).
    pub levels: i64,
    /// K: flow steps per level.
    pub steps: i64,
    /// Hidden channels of the coupling networks.
    pub width: i64,
    pub coupling: CouplingChoice,
    pub permutation: PermutationChoice,
    /// Learned mean/std for the top latent.
    pub learn_top: bool,
    /// Class-conditional prior (labels from class sub-folders).
    pub conditional: bool,
    /// ActNorm's target std after data-dependent initialisation.
    pub actnorm_scale: f64,
    /// Glow layer conventions: "flowzoo" (native; the same as y0ast/Glow-PyTorch) or
    /// "rosinality" (rosinality/glow-pytorch, set by `flowzoo import rosinality`).
    pub style: GlowStyle,
    /// RealNVP / NICE on vectors: number of coupling blocks.
    pub blocks: i64,
    /// Hidden layers of the MLP conditioners.
    pub depth: i64,
    /// Activation of the MLP conditioners.
    pub activation: crate::flows::Activation,
    /// Normalisation after each coupling block on vectors: "batchnorm" | "actnorm" | "none".
    pub norm: NormChoice,
    /// Coupling masks on vectors: "alternating" (even/odd features) or "halves".
    pub mask: MaskChoice,
    /// Base distribution: "normal" (N(0, I)) or "diag_gaussian" (learned mean and std).
    pub base: BaseChoice,
    /// NSF: K, the rational-quadratic spline's bins (2..=256).
    pub bins: i64,
    /// NSF: B, the splines cover [-B, B] (the identity outside); > 0.
    pub tail_bound: f64,
    /// NSF: "autoregressive" (NSF-AR, a MADE conditioner) or "coupling" (NSF-C, an MLP
    /// conditioner on `mask`ed halves).
    pub structure: StructureChoice,
    /// MAF / IAF / NSF-AR: each MADE's feature order: "natural", "reversed", "random" (seeded
    /// by `train.seed`, saved with the weights) or "alternating" (natural, reversed, natural, ...;
    /// zuko's default, with `permutation = "none"` the same model as natural orders with
    /// reversals between the layers).
    pub made_order: MadeOrderChoice,
    /// MAF / IAF / NSF-AR: the MADEs' hidden degrees: "cyclic" or "random" (not with `residual`).
    pub made_degrees: DegreesChoice,
    /// MAF / IAF / NSF-AR: residual MADE blocks (the NSF paper's); `depth` counts the blocks.
    pub residual: bool,
    /// MAF / IAF / NSF-AR: how the autoregressive layers invert (sampling a MAF, density of an
    /// IAF): "sequential" (D passes, one feature each) or "jacobi" (fixed-point iteration over all
    /// features, stopping at `jacobi_tol`, at most D iterations).
    pub inverse: InverseChoice,
    /// Jacobi inverse: stop when no feature moves by more than this (>= 0; 0 = always D
    /// iterations).
    pub jacobi_tol: f64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StructureChoice {
    Autoregressive,
    Coupling,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MadeOrderChoice {
    Natural,
    Reversed,
    Random,
    Alternating,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DegreesChoice {
    Cyclic,
    Random,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum InverseChoice {
    Sequential,
    Jacobi,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NormChoice {
    Batchnorm,
    Actnorm,
    None,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MaskChoice {
    Alternating,
    Halves,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BaseChoice {
    Normal,
    DiagGaussian,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            kind: "glow".into(),
            levels: 2,
            steps: 8,
            width: 128,
            coupling: CouplingChoice::Affine,
            permutation: PermutationChoice::InvconvLu,
            learn_top: true,
            conditional: false,
            actnorm_scale: 1.0,
            style: GlowStyle::Flowzoo,
            blocks: 8,
            depth: 2,
            activation: crate::flows::Activation::Relu,
            norm: NormChoice::Batchnorm,
            mask: MaskChoice::Alternating,
            base: BaseChoice::Normal,
            bins: 8,
            tail_bound: 3.0,
            structure: StructureChoice::Autoregressive,
            made_order: MadeOrderChoice::Natural,
            made_degrees: DegreesChoice::Cyclic,
            residual: false,
            inverse: InverseChoice::Sequential,
            jacobi_tol: 1e-6,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub batch_size: i64,
    pub lr: f64,
    /// Linear learning-rate warm-up from 0 over this many steps.
    pub warmup_steps: i64,
    pub max_steps: i64,
    /// Max global gradient norm (0 = no clipping).
    pub grad_clip: f64,
    pub seed: u64,
    pub eval_every: i64,
    pub sample_every: i64,
    pub checkpoint_every: i64,
    /// "auto" (CUDA when present), "cpu", "cuda" or "cuda:N".
    pub device: String,
    /// CPU threads for libtorch (0 = libtorch's default).
    pub threads: i64,
    /// Polyak/EMA decay of the weights used for eval and samples (0 = off).
    pub ema: f64,
    /// Dequantisation draws averaged per test image at evaluation.
    pub eval_draws: i64,
    /// Consecutive non-finite steps after which training stops.
    pub max_nonfinite: i64,
    /// Temperature of the sample grids written during training.
    pub sample_temperature: f64,
    /// Images in each sample grid.
    pub n_samples: i64,
    /// Steps between metrics rows (train loss averaged over them).
    pub log_every: i64,
    /// Stop after this many evaluations without a better validation score (0 = never).
    pub patience: i64,
    /// "fp32", "tf32" (TF32 matmuls/convs on CUDA) or "bf16" (the coupling networks' convs in
    /// bfloat16; log-dets and priors stay float32).
    pub precision: String,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            batch_size: 64,
            lr: 1e-3,
            warmup_steps: 100,
            max_steps: 1000,
            grad_clip: 50.0,
            seed: 0,
            eval_every: 250,
            sample_every: 500,
            checkpoint_every: 250,
            device: "auto".into(),
            threads: 0,
            ema: 0.0,
            eval_draws: 1,
            max_nonfinite: 20,
            sample_temperature: 0.7,
            n_samples: 64,
            log_every: 10,
            patience: 0,
            precision: "fp32".into(),
        }
    }
}

impl Config {
    /// Parses TOML text; `origin` (a file name) is named in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config> {
        let cfg: Config = toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        cfg.validate().with_context(|| format!("in {origin}"))?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }

    /// Applies `key.path=value` overrides; the value is read as TOML (`1e-4`, `true`, `"x"`),
    /// or as a bare string when it is not valid TOML (`--set data.path=data/x`).
    pub fn with_overrides(&self, overrides: &[String]) -> Result<Config> {
        let mut root = toml::Value::try_from(self)?;
        for ov in overrides {
            let Some((key, raw)) = ov.split_once('=') else {
                bail!("--set {ov}: expected KEY=VALUE, e.g. --set train.lr=1e-4");
            };
            let key = key.trim();
            let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
                Ok(mut t) => t.remove("v").expect("parsed key"),
                Err(_) => toml::Value::String(raw.to_string()),
            };
            let mut node = &mut root;
            let parts: Vec<&str> = key.split('.').collect();
            for (i, part) in parts.iter().enumerate() {
                let table = node.as_table_mut().with_context(|| format!("--set {key}: `{}` is not a section", parts[..i].join(".")))?;
                if !table.contains_key(*part) {
                    bail!("--set {key}: unknown config key `{key}`");
                }
                node = table.get_mut(*part).expect("checked");
            }
            if std::mem::discriminant(node) != std::mem::discriminant(&value)
                && !(node.is_float() && value.is_integer())
            {
                bail!("--set {key}={raw}: expected a {}, got a {}", node.type_str(), value.type_str());
            }
            *node = match (node.is_float(), value) {
                (true, toml::Value::Integer(i)) => toml::Value::Float(i as f64),
                (_, v) => v,
            };
        }
        let cfg: Config = root.try_into().map_err(|e| anyhow::anyhow!("--set: {e}"))?;
        cfg.validate().context("after --set overrides")?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let d = &self.data;
        let m = &self.model;
        let known = ["glow", "realnvp", "nice", "maf", "iaf", "nsf"];
        if !known.contains(&m.kind.as_str()) {
            bail!("model.kind = {:?}: known kinds are {}", m.kind, known.join(", "));
        }
        self.validate_autoregressive()?;
        if m.blocks < 1 || m.depth < 1 || m.width < 1 {
            bail!("model.blocks, model.depth and model.width must be >= 1");
        }
        if !(0.0..1.0).contains(&(d.test_fraction + d.val_fraction)) {
            bail!("data.test_fraction + data.val_fraction must be below 1");
        }
        if d.uniform_noise < 0.0 {
            bail!("data.uniform_noise must be >= 0");
        }
        if !["auto", "true", "false"].contains(&d.header.as_str()) {
            bail!("data.header = {:?}: use \"auto\", \"true\" or \"false\"", d.header);
        }
        if d.kind == DataKind::Tabular {
            if m.kind == "glow" {
                bail!("model.kind = \"glow\" models images: use data.kind = \"images\" (or model.kind = \"realnvp\", \"nice\", \"maf\", \"iaf\" or \"nsf\" for tabular data)");
            }
            let t = &self.train;
            if t.batch_size < 1 || t.max_steps < 0 || t.lr <= 0.0 {
                bail!("train.batch_size must be >= 1, train.max_steps >= 0, train.lr > 0");
            }
            crate::train::parse_device(&t.device).context("train.device")?;
            return Ok(());
        }
        if ["nice", "maf", "iaf", "nsf"].contains(&m.kind.as_str()) {
            bail!("model.kind = {:?} is for tabular data (data.kind = \"tabular\")", m.kind);
        }
        if !(1..=8).contains(&d.n_bits) {
            bail!("data.n_bits = {} must be between 1 and 8", d.n_bits);
        }
        if d.channels != 1 && d.channels != 3 {
            bail!("data.channels = {} must be 1 (grayscale) or 3 (RGB)", d.channels);
        }
        if !(0.0..1.0).contains(&d.test_fraction) {
            bail!("data.test_fraction = {} must be in [0, 1)", d.test_fraction);
        }
        if m.kind == "glow" && m.permutation == PermutationChoice::None {
            bail!("model.permutation = \"none\": Glow's couplings always transform the second half, so it needs a permutation");
        }
        if m.levels < 1 || m.steps < 1 || m.width < 1 {
            bail!("model.levels, model.steps and model.width must be >= 1");
        }
        let div = 1i64 << m.levels;
        if d.image_size % div != 0 {
            bail!("data.image_size = {} must be divisible by 2^levels = {div} (model.levels = {})", d.image_size, m.levels);
        }
        let t = &self.train;
        if t.batch_size < 1 || t.max_steps < 0 || t.lr <= 0.0 {
            bail!("train.batch_size must be >= 1, train.max_steps >= 0, train.lr > 0");
        }
        if !(0.0..1.0).contains(&t.ema) {
            bail!("train.ema = {} must be in [0, 1)", t.ema);
        }
        if t.eval_draws < 1 || t.max_nonfinite < 1 || t.log_every < 1 {
            bail!("train.eval_draws, train.max_nonfinite and train.log_every must be >= 1");
        }
        crate::train::parse_device(&t.device).context("train.device")?;
        t.precision.parse::<crate::bench::Precision>().context("train.precision")?;
        Ok(())
    }

    /// The keys of the MAF / IAF / NSF families, each range-checked with its name.
    fn validate_autoregressive(&self) -> Result<()> {
        let m = &self.model;
        if !(2..=256).contains(&m.bins) {
            bail!("model.bins = {} must be between 2 and 256", m.bins);
        }
        if !(m.tail_bound.is_finite() && m.tail_bound > 0.0) {
            bail!("model.tail_bound = {} must be a positive number", m.tail_bound);
        }
        if !(m.jacobi_tol.is_finite() && m.jacobi_tol >= 0.0) {
            bail!("model.jacobi_tol = {} must be a number >= 0", m.jacobi_tol);
        }
        if m.residual && m.made_degrees == DegreesChoice::Random {
            bail!("model.residual = true needs model.made_degrees = \"cyclic\": a residual block keeps its degrees, so random hidden degrees are not allowed");
        }
        if m.kind == "iaf" && m.structure == StructureChoice::Coupling {
            bail!("model.structure = \"coupling\" is for model.kind = \"nsf\" (an IAF is autoregressive)");
        }
        Ok(())
    }
}
