//! flowzoo: normalizing flows with exact likelihoods on libtorch.
//!
//! - [`flows`]: the layer zoo; every bijection implements [`flows::Flow`].
//! - [`ode`]: ODE solvers on tensors (Dormand–Prince, RK4, Euler) for continuous flows; a leaf.
//! - [`models`]: models composed only of the zoo (Glow, ...), built from plain config structs.
//! - [`data`]: image folders, dequantisation.
//! - [`train`]: the loop, our own Adam (its state is saved), checkpoints, metrics, plots.
//! - [`io`]: run directories, atomic writes, safetensors.
//! - [`bench`]: `flowzoo bench`, timing against the PyTorch reference; CUDA precision switches.
//! - [`export`]: a trained model as a TorchScript module for PyTorch (`torch.jit.load`).
// In-place tensor ops (`f_add_`, `f_copy_`...) return the tensor they changed; we ignore it.
#![allow(unused_must_use)]

pub mod bench;
pub mod config;
pub mod data;
pub mod export;
pub mod ffi;
pub mod flows;
pub mod io;
pub mod models;
pub mod ode;
pub mod script;
pub mod train;

pub use anyhow::{Error, Result};
