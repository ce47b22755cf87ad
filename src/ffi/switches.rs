//! libtorch's switches that tch 0.24 does not expose, through the C++ shim
//! (`src/ffi/switches.cpp`): TF32 math on CUDA and the thread-local grad mode.
use anyhow::{bail, Result};
use std::ffi::c_int;

extern "C" {
    fn fz_set_allow_tf32(allow: c_int) -> c_int;
    fn fz_allow_tf32_cublas() -> c_int;
    fn fz_grad_mode_enabled() -> c_int;
}

/// Allows (or forbids) TF32 tensor-core math in cuDNN convolutions and cuBLAS matmuls, like
/// `torch.backends.cudnn.allow_tf32` and `torch.backends.cuda.matmul.allow_tf32` together.
/// Process-wide.
pub fn set_allow_tf32(allow: bool) -> Result<()> {
    // SAFETY: stores two flags of libtorch's global context; catches every C++ exception.
    if unsafe { fz_set_allow_tf32(allow as c_int) } != 0 {
        bail!("libtorch refused to set the TF32 switches");
    }
    Ok(())
}

/// libtorch's cuBLAS TF32 switch (read back, for the record).
pub fn allow_tf32_cublas() -> bool {
    // SAFETY: reads a flag of libtorch's global context.
    unsafe { fz_allow_tf32_cublas() == 1 }
}

/// Whether autograd records operations on this thread now (`torch.is_grad_enabled()`).
pub fn grad_mode_enabled() -> bool {
    // SAFETY: reads a thread-local flag.
    unsafe { fz_grad_mode_enabled() == 1 }
}
