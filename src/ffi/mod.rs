//! The one small C++ shim over libtorch, with a safe Rust face: everything flowzoo needs from
//! libtorch that tch 0.24 does not expose.
//!
//! - [`jit`]: building `torch::jit::Module`s (parameters, buffers, methods from TorchScript
//!   source) and saving them: the TorchScript export's back end.
//! - [`switches`]: TF32 math on CUDA and the thread-local grad mode.
//! - `dist` (only when build.rs found Gloo's headers, `cfg(flowzoo_dist)`): c10d's TCPStore,
//!   ProcessGroupGloo/NCCL, collectives and DDP's Reducer; the safe face is `crate::dist`.
//!
//! The C++ side (`src/ffi/*.cpp`) is compiled by `build.rs` against the headers of the libtorch
//! we link. Every C++ exception is caught there and comes back as an `Err`; nothing aborts.
#[cfg(flowzoo_dist)]
pub mod dist;
pub mod jit;
mod jit_sys;
pub mod switches;

pub use jit::{torchscript_path, AttrKind, ScriptModule};

/// How the c10d shim's DDP reducer lays out its gradient buckets. Outside `cfg(flowzoo_dist)` so
/// that builds without distributed support name the same type.
#[derive(Clone, Copy, Debug)]
pub struct ReducerLayout {
    pub bucket_bytes: usize,
    pub first_bucket_bytes: usize,
    pub gradient_as_bucket_view: bool,
}
