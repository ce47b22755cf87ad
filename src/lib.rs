//! flowzoo: normalizing flows with exact likelihoods on libtorch.
//!
//! The modules, lowest layer first; a module may use the ones above it in this list, never one
//! below (the command line, `src/cli/`, is part of the binary only and not of this library):
//!
//! - [`ffi`]: the small C++ shim over libtorch (TorchScript modules, c10d process groups,
//!   global switches), with a safe Rust face.
//! - [`rng`]: seeded random numbers independent of libtorch (splits, batch order, toys).
//! - [`script`]: the writer the layers describe themselves to (TorchScript and plain PyTorch
//!   source from one description).
//! - [`flows`]: the layer zoo; every bijection implements [`flows::Flow`]; a coupling is a
//!   partition × an elementwise bijection × a conditioner; a model's base is a
//!   [`flows::Base`]. A new layer (or partition, bijection, conditioner) is a new file here.
//!   Its ODE solvers (Dormand–Prince, RK4, Euler on tensors, `flows::ode`) are a leaf inside it.
//! - [`config`]: the run configuration (plain serde structs, validated); knows no runtime.
//! - [`models`]: models composed only of the zoo (Glow, RealNVP, NICE, MAF/IAF, NSF, FFJORD, the
//!   VAE with flow posteriors), built from a config. A
//!   new model is a new file there plus its `model.kind` in `config`.
//! - [`data`]: image folders, IDX files, tabular files, toys, dequantisation.
//! - [`io`]: run directories, atomic writes, checked safetensors, the `.pt` reader.
//! - [`runtime`]: device, threads, precision and TF32: every process-wide libtorch switch.
//! - [`dist`]: data-parallel training on c10d (Gloo, NCCL) under torchrun: process groups,
//!   bucketed gradient all-reduce, DistributedSampler sharding, config consistency.
//! - [`session`]: a model with its weights: build, open a run, score, sample.
//! - [`score`]: anomaly / out-of-distribution scores (nll, typicality, complexity), the run's
//!   score statistics and thresholds, AUROC / AUPRC / FPR95.
//! - [`train`]: the loop, our own Adam (its state is saved), checkpoints, metrics, plots, and
//!   the run's score statistics saved when training ends.
//! - [`vi`]: variational inference: fit a flow to an unnormalised density given as a
//!   TorchScript module or a closure (reverse KL, `flowzoo fit`), and importance-sampling
//!   estimates of its normaliser (`flowzoo eval --target`).
//! - [`export`]: a trained model for PyTorch: TorchScript (`torch.jit.load`) and plain PyTorch
//!   source (`torch.export`, `torch.compile`).
//! - [`import`]: PyTorch Glow checkpoints (y0ast, rosinality) and state dicts into runs.
//! - [`bench`]: `flowzoo bench`, timing against the PyTorch reference.
//! - [`jobs`]: what the subcommands do beyond parsing their flags (evaluate a run, sample to a
//!   file, read user tensors), as library calls. A new subcommand is a file in `src/cli/` whose
//!   `run` calls the library, and its logic, if any, a file here.

pub mod bench;
pub mod config;
pub mod data;
pub mod dist;
pub mod export;
pub mod ffi;
pub mod flows;
pub mod import;
pub mod io;
pub mod jobs;
pub mod models;
pub mod script;
pub mod rng;
pub mod runtime;
pub mod score;
pub mod session;
pub mod train;
pub mod vi;

pub use anyhow::{Error, Result};
