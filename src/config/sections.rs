//! The three sections of a config (`[data]`, `[model]`, `[train]`) with their defaults. Every
//! field's range is checked by `Config::validate` (src/config/validate.rs).
use super::autoregressive::*;
use super::choices::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// "images" (a folder) or "tabular" (a CSV / .npy / .npz file).
    pub kind: DataKind,
    /// Images: a folder (recursive; class sub-folders become labels; `train/` + `test/` give the
    /// split). Tabular: a `.csv`, `.npy` or `.npz` file. `${VAR}` and `${VAR:-default}` are
    /// replaced from the environment; a relative path in a config file is looked up in the
    /// current directory, then in the config file's folder (see `Config::data_path`).
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
    pub header: Header,
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
    /// Tabular: columns (header names or 0-based indices) that condition the flow instead of
    /// being modelled: the model is p(x | context), every conditioner reads them (standardised
    /// with training-set statistics when `standardize` is on). The modelled columns are
    /// `columns`, or all the others.
    pub context_columns: Vec<String>,
    /// Tabular: a column holding a class label (numbers; each distinct value is a class) that
    /// conditions the flow as a one-hot vector: p(x | label). Not with `context_columns`.
    pub label_column: String,
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
            header: Header::Auto,
            bad_rows: BadRows::Fail,
            val_fraction: 0.1,
            uniform_noise: 0.0,
            standardize: true,
            npz_key: String::new(),
            context_columns: vec![],
            label_column: String::new(),
        }
    }
}

impl DataConfig {
    /// The columns a conditional tabular model reads: `context_columns`, or the
    /// `label_column` (empty: an unconditional model).
    pub fn conditioning_columns(&self) -> Vec<String> {
        if self.label_column.is_empty() {
            self.context_columns.clone()
        } else {
            vec![self.label_column.clone()]
        }
    }

    /// The config key that names the conditioning columns, for messages.
    pub fn conditioning_key(&self) -> &'static str {
        if self.label_column.is_empty() {
            "data.context_columns"
        } else {
            "data.label_column"
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Model family: "glow" (images), "realnvp" (images or tabular), "nice", "ffjord", "maf",
    /// "iaf", "nsf" (tabular).
    pub kind: ModelKind,
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
    /// FFJORD's continuous flows (`[model.cnf]`); FFJORD also reads `blocks` and `norm`, and on
    /// images `levels`, `base`, `learn_top` and `conditional`.
    pub cnf: super::cnf::CnfConfig,
    /// VAE: size of the latent z.
    pub latent: i64,
    /// VAE: the approximate posterior, "diagonal", or a flow on the encoder's diagonal Gaussian
    /// conditioned on the encoder's features: "realnvp" (couplings), "iaf" or "maf" (MADEs).
    pub posterior: PosteriorChoice,
    /// VAE: layers of the posterior flow (ignored for "diagonal").
    pub posterior_layers: i64,
    /// VAE: hidden units of the posterior flow's conditioners (`model.depth` hidden layers).
    pub posterior_width: i64,
    /// VAE: features the encoder hands to the posterior flow as its context (`ctx.cond`).
    pub context: i64,
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

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            kind: ModelKind::Glow,
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
            cnf: super::cnf::CnfConfig::default(),
            latent: 16,
            posterior: PosteriorChoice::Diagonal,
            posterior_layers: 4,
            posterior_width: 64,
            context: 32,
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
    /// Steps between evaluations (0 = only at the end).
    pub eval_every: i64,
    /// Steps between sample grids (0 = only at the end).
    pub sample_every: i64,
    /// Steps between checkpoints (0 = only at the end).
    pub checkpoint_every: i64,
    /// "auto" (CUDA when present), "cpu", "cuda" or "cuda:N".
    pub device: DeviceChoice,
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
    pub precision: Precision,
    /// Distributed runs (launched by torchrun): the c10d backend, "auto" (NCCL on CUDA, Gloo on
    /// the CPU), "gloo" or "nccl". Ignored in one process.
    pub backend: BackendChoice,
    /// Distributed runs: seconds a rank waits for the others (at rendezvous and in every
    /// collective) before it fails with an error naming the collective.
    pub dist_timeout_s: f64,
    /// Distributed runs: "overlap" (all-reduce during backward, PyTorch DDP's reducer) or
    /// "after_backward" (bucketed all-reduce once backward is done).
    pub grad_sync: GradSync,
    /// Distributed runs: the largest gradient bucket one all-reduce carries, in MiB.
    pub bucket_mib: f64,
    /// "mle" (maximum likelihood on data: `flowzoo train`; "likelihood" also reads),
    /// "flow_matching" (FFJORD: conditional flow matching on data) or "reverse_kl" (fit an
    /// unnormalised target density: `flowzoo fit`, which sets it).
    pub objective: Objective,
    /// Reverse KL: samples drawn from the flow per step (the ELBO's Monte Carlo size).
    pub vi_samples: i64,
    /// Reverse KL: samples of each evaluation's ELBO estimate (the same seeded draws every time).
    pub vi_eval_samples: i64,
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
            device: DeviceChoice::Auto,
            threads: 0,
            ema: 0.0,
            eval_draws: 1,
            max_nonfinite: 20,
            sample_temperature: 0.7,
            n_samples: 64,
            log_every: 10,
            patience: 0,
            precision: Precision::Fp32,
            backend: BackendChoice::Auto,
            dist_timeout_s: 300.0,
            grad_sync: GradSync::Overlap,
            bucket_mib: 4.0,
            objective: Objective::Likelihood,
            vi_samples: 256,
            vi_eval_samples: 4096,
        }
    }
}
