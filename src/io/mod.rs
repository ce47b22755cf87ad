//! Files: atomic writes, safetensors with checked names and shapes, run directories.
pub mod atomic;
pub mod rundir;
pub mod tensors;

pub use atomic::atomic_write;
pub use rundir::{Checkpoint, RunDir, RunState};
pub use tensors::{load_into_varstore, read_safetensors, write_safetensors};
pub mod png;
/// PyTorch `.pt` files (zip + pickle) read without executing anything.
pub mod pt;
