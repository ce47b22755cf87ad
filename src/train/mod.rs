//! Training: the loop, our own Adam, sessions (a model with its weights), checkpoints,
//! metrics and plots.
pub mod optim;
pub mod plot;
pub mod session;
pub mod trainer;

pub use optim::Adam;
pub use session::{Scores, Session};
pub use trainer::{train, StepOutcome, TrainOptions, Trainer};

use anyhow::{bail, Result};
use tch::Device;

/// "auto" (CUDA when present), "cpu", "cuda", "cuda:N".
pub fn parse_device(s: &str) -> Result<Device> {
    Ok(match s {
        "auto" => Device::cuda_if_available(),
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        _ => match s.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
            Some(i) => Device::Cuda(i),
            None => bail!("unknown device {s:?}: use auto, cpu, cuda or cuda:N"),
        },
    })
}

/// The device, checked to exist.
pub fn resolve_device(s: &str) -> Result<Device> {
    let d = parse_device(s)?;
    if let Device::Cuda(i) = d {
        if !tch::Cuda::is_available() {
            bail!("device {s:?} requested but CUDA is not available on this machine (libtorch sees no GPU)");
        }
        if i >= tch::Cuda::device_count() as usize {
            bail!("device cuda:{i} requested but only {} CUDA devices exist", tch::Cuda::device_count());
        }
    }
    Ok(d)
}
