//! The string choices of a config, as enums: an unknown value is an error that lists the known
//! ones (serde says "unknown variant `spline`, expected `affine` or `additive`"; the device and
//! precision parsers say the same in their own words). Plain data: turning a choice into a
//! libtorch device or switch is `crate::runtime`'s job, so the config depends on no runtime code.
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// `data.kind`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DataKind {
    /// A folder of images.
    Images,
    /// Rows of numbers: CSV, `.npy` or `.npz`.
    Tabular,
}

/// `data.bad_images`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BadImages {
    /// Warn with the path, count, and go on.
    Skip,
    /// Stop at the first bad image.
    Fail,
}

/// `data.bad_rows`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BadRows {
    /// Stop at the first bad row, naming its line and column.
    Fail,
    /// Drop bad rows and report how many.
    Drop,
}

/// `data.header`: whether a CSV file's first line names the columns. Written `"auto"`,
/// `"true"` or `"false"` (a TOML boolean is accepted too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    /// A header when the first line is not all numbers.
    Auto,
    /// The first line is a header.
    Present,
    /// Every line is data; columns are named by their index.
    Absent,
}

impl Header {
    pub fn as_str(self) -> &'static str {
        match self {
            Header::Auto => "auto",
            Header::Present => "true",
            Header::Absent => "false",
        }
    }
}

impl Serialize for Header {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Header {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Header, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Header;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"auto\", \"true\" or \"false\"")
            }
            fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<Header, E> {
                Ok(if b { Header::Present } else { Header::Absent })
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Header, E> {
                match s {
                    "auto" => Ok(Header::Auto),
                    "true" => Ok(Header::Present),
                    "false" => Ok(Header::Absent),
                    other => Err(E::custom(format!("unknown header choice {other:?}: use \"auto\", \"true\" or \"false\""))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `model.kind`: the model family.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Glow (Kingma & Dhariwal 2018): images.
    Glow,
    /// RealNVP (Dinh et al. 2017): images or tabular data.
    Realnvp,
    /// NICE (Dinh et al. 2015): tabular data.
    Nice,
    /// FFJORD (Grathwohl et al. 2019), continuous flows: tabular data, or images (multi-scale).
    Ffjord,
    /// A variational auto-encoder (Kingma & Welling 2014) with a flow posterior: images.
    Vae,
    /// MAF (Papamakarios et al. 2017): tabular data.
    Maf,
    /// IAF (Kingma et al. 2016), an inverted MAF: tabular data.
    Iaf,
    /// Neural spline flows (Durkan et al. 2019), coupling or autoregressive: tabular data.
    Nsf,
}

impl ModelKind {
    pub const ALL: [ModelKind; 8] = [
        ModelKind::Glow,
        ModelKind::Realnvp,
        ModelKind::Nice,
        ModelKind::Ffjord,
        ModelKind::Vae,
        ModelKind::Maf,
        ModelKind::Iaf,
        ModelKind::Nsf,
    ];

    /// The config spelling ("glow", "realnvp", "nice", "ffjord", "vae", "maf", "iaf", "nsf").
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Glow => "glow",
            ModelKind::Realnvp => "realnvp",
            ModelKind::Nice => "nice",
            ModelKind::Ffjord => "ffjord",
            ModelKind::Vae => "vae",
            ModelKind::Maf => "maf",
            ModelKind::Iaf => "iaf",
            ModelKind::Nsf => "nsf",
        }
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ModelKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<ModelKind> {
        ModelKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            let known: Vec<&str> = ModelKind::ALL.iter().map(|k| k.as_str()).collect();
            anyhow::anyhow!("unknown model kind {s:?}: known kinds are {}", known.join(", "))
        })
    }
}

/// `train.objective`: what training maximises.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// The log-likelihood of data (forward KL, maximum likelihood): `flowzoo train`. Written
    /// "mle"; "likelihood" (its first spelling) still reads.
    #[default]
    #[serde(rename = "mle", alias = "likelihood")]
    Likelihood,
    /// Conditional flow matching with straight paths (FFJORD with one block): simulation-free
    /// training of the vector field; likelihoods are still evaluated exactly with the ODE.
    FlowMatching,
    /// The ELBO `E_q[log p̃(x) − log q(x)]` of an unnormalised target density, from the flow's
    /// own reparameterised samples (reverse KL): `flowzoo fit`.
    ReverseKl,
}

/// `model.posterior`: the approximate posterior q(z | x) of a VAE. Each flow choice is a stack
/// of `model.posterior_layers` layers conditioned on the encoder's features (`ctx.cond`), on
/// top of the encoder's diagonal Gaussian.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PosteriorChoice {
    /// The encoder's diagonal Gaussian alone.
    #[default]
    Diagonal,
    /// Affine couplings (alternating masks, MLP conditioners reading the context).
    Realnvp,
    /// Inverse autoregressive flow (Kingma et al. 2016): affine MADE layers, inverted, so a
    /// draw of z is one pass per layer; every hidden unit reads the context.
    Iaf,
    /// Masked autoregressive flow layers: the same MADEs, not inverted, so a draw of z takes
    /// `latent` passes per layer.
    Maf,
}

/// `model.coupling`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CouplingChoice {
    Affine,
    Additive,
}

/// Layer conventions of a Glow (`model.style`). `Rosinality` (rosinality/glow-pytorch): linear
/// ActNorm, hidden convs with a bias and no ActNorm, zero-convs padded with ones, contiguous
/// (scale, shift) and (mean, log-std) halves, a top-prior conv C -> 2C on zeros, LU 1×1 convs in
/// the last level.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GlowStyle {
    #[default]
    Flowzoo,
    Rosinality,
}

/// `model.permutation`.
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

/// `model.norm`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NormChoice {
    Batchnorm,
    Actnorm,
    None,
}

/// `model.mask`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MaskChoice {
    Alternating,
    Halves,
}

/// `model.base`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BaseChoice {
    Normal,
    DiagGaussian,
}

/// `train.backend`: which c10d backend carries a distributed run's collectives
/// (`crate::dist` resolves it against the training device).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// NCCL when the training device is CUDA, Gloo on the CPU (what PyTorch users pick).
    #[default]
    Auto,
    Gloo,
    Nccl,
}

impl BackendChoice {
    pub fn name(self) -> &'static str {
        match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Gloo => "gloo",
            BackendChoice::Nccl => "nccl",
        }
    }
}

impl FromStr for BackendChoice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<BackendChoice> {
        Ok(match s {
            "auto" => BackendChoice::Auto,
            "gloo" => BackendChoice::Gloo,
            "nccl" => BackendChoice::Nccl,
            _ => anyhow::bail!("unknown distributed backend {s:?}: use auto, gloo or nccl"),
        })
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `train.grad_sync`: how a distributed run averages the gradients of each step over the ranks.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GradSync {
    /// PyTorch DDP's reducer: each bucket's all-reduce starts from autograd hooks while
    /// backward still runs (needs every parameter to get a gradient in every step; a model
    /// with parameters that get none falls back to `after_backward`).
    #[default]
    Overlap,
    /// Buckets all-reduced once backward has finished.
    AfterBackward,
}

/// `train.device` and every `--device`: `auto` (CUDA when libtorch sees a GPU), `cpu`, `cuda`
/// (the first GPU) or `cuda:N`. Whether the device exists is checked when it is used
/// (`crate::runtime::device`), not when a config is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<DeviceChoice> {
        Ok(match s {
            "auto" => DeviceChoice::Auto,
            "cpu" => DeviceChoice::Cpu,
            "cuda" => DeviceChoice::Cuda(0),
            _ => match s.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
                Some(i) => DeviceChoice::Cuda(i),
                None => anyhow::bail!("unknown device {s:?}: use auto, cpu, cuda or cuda:N"),
            },
        })
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(0) => f.write_str("cuda"),
            DeviceChoice::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Arithmetic precision (`train.precision`, `eval --precision`, `bench --precision`).
///
/// - `Fp32`: IEEE float32 everywhere (cuDNN and cuBLAS TF32 off; libtorch and PyTorch allow
///   TF32 in cuDNN convolutions by default, so this is stricter than the default).
/// - `Tf32`: float32 storage, TF32 tensor-core math in cuDNN convolutions and cuBLAS matmuls.
/// - `Bf16`: the coupling conditioner networks run their convolutions in bfloat16 (what
///   `torch.autocast(dtype=bfloat16)` does to them: conv inputs and weights cast to bf16); the
///   flow itself (ActNorm, 1×1 convs, the coupling transform, log-dets, split and top priors)
///   stays in IEEE float32.
///
/// On the CPU the TF32 switches do nothing; bf16 conditioners run through oneDNN's bf16 path.
/// `crate::runtime::apply_precision` sets the switches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Fp32,
    Tf32,
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl FromStr for Precision {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Precision> {
        Ok(match s {
            "fp32" | "float32" => Precision::Fp32,
            "tf32" => Precision::Tf32,
            "bf16" | "bfloat16" => Precision::Bf16,
            _ => anyhow::bail!("unknown precision {s:?}: use fp32, tf32 or bf16"),
        })
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Serde through the `FromStr`/`Display` spellings, so a config file and the command line
/// accept the same words and give the same error.
macro_rules! serde_as_string {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$t, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(|e: anyhow::Error| serde::de::Error::custom(e))
            }
        }
    };
}
serde_as_string!(DeviceChoice);
serde_as_string!(Precision);
serde_as_string!(BackendChoice);
