//! Data-parallel training across processes and machines on PyTorch's own distributed engine,
//! c10d (Gloo for CPU tensors, NCCL for CUDA tensors), launched by `torchrun` exactly as a
//! PyTorch script is.
//!
//! - [`DistEnv`]: the rendezvous torchrun describes in `MASTER_ADDR`, `MASTER_PORT`, `RANK`,
//!   `WORLD_SIZE`, `LOCAL_RANK`; `None` when they are absent (train in one process as before).
//! - [`ProcessGroup`]: one rank's membership of the group (a c10d TCPStore plus a
//!   ProcessGroupGloo or ProcessGroupNCCL): all-reduce (sum, mean), broadcast, barrier,
//!   all-gather, and the wall time spent in them ([`CommStats`]).
//! - [`GradBuckets`]: gradient averaging after backward: gradients packed into a few flat
//!   buckets (25 MiB by default), each bucket's all-reduce started as soon as it is packed.
//! - [`DdpReducer`]: PyTorch DDP's own reducer (c10d::Reducer): the same averaging started
//!   from autograd hooks during backward, so communication overlaps backward.
//! - [`DistributedSampler`] / [`shard_order`]: torch's DistributedSampler semantics.
//! - [`ProcessGroup::check_consistent`]: every rank describes its config; a mismatch is named.
//!
//! Errors, not hangs: a peer that exits makes the others' next collective fail at once
//! (Gloo sees the connection close); a peer that stops responding or never arrives fails
//! them after [`DistOptions::timeout`]. Either way the error says which collective, which
//! rank and what c10d reported; nothing panics.
//!
//! # Builds without distributed support
//! c10d's Gloo backend needs Gloo's headers at build time (Debian/Ubuntu: `libgloo-dev`,
//! which `make setup` installs when it can). Without them build.rs leaves `cfg(flowzoo_dist)`
//! off, everything else builds, [`AVAILABLE`] is false and [`ProcessGroup::connect`] returns
//! [`no_support_message`]. The NCCL backend additionally needs CUDA's headers
//! ([`NCCL_AVAILABLE`]).
// Every in-place op's returned tensor is discarded explicitly (ready for the crate-wide
// allow(unused_must_use) to go).
#![warn(unused_must_use)]

mod buckets;
mod consistency;
mod ddp;
mod env;
mod group;
#[cfg(not(flowzoo_dist))]
mod off;
mod sampler;

pub use buckets::{BucketOptions, GradBuckets};
pub use ddp::{DdpOptions, DdpReducer, DdpTiming};
pub use env::DistEnv;
pub use group::{BackendChoice, BackendKind, CommStats, DistOptions, ProcessGroup};
pub use sampler::{shard_order, DistributedSampler};

#[cfg(flowzoo_dist)]
pub use crate::ffi::dist::GlooDevice;
#[cfg(not(flowzoo_dist))]
pub use off::GlooDevice;

/// Whether this build can train distributed at all (Gloo found at build time).
pub const AVAILABLE: bool = cfg!(flowzoo_dist);

/// Whether this build has the NCCL backend (libtorch with CUDA and CUDA's headers).
pub const NCCL_AVAILABLE: bool = cfg!(flowzoo_nccl);

/// What a build without distributed support says when asked to train distributed.
pub fn no_support_message() -> &'static str {
    "this flowzoo build has no distributed support: install libgloo-dev (Debian/Ubuntu) and rebuild (`make build`)"
}

/// What a build without the NCCL backend says when asked for it.
pub fn no_nccl_message() -> &'static str {
    "this flowzoo build has no NCCL backend: it needs a libtorch with CUDA and CUDA's headers at build time (`make setup` installs nvidia-cuda-crt and nvidia-cuda-cccl into the venv, or set CUDA_HOME to a CUDA toolkit) and a rebuild; use --set train.backend=gloo meanwhile"
}
