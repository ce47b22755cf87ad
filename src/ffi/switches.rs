//! libtorch's switches that tch 0.24 does not expose, through the C++ shim
//! (`src/ffi/switches.cpp`): TF32 math on CUDA, the thread-local grad mode, and a variable's
//! gradient tensor and version counter.
use anyhow::{bail, Result};
use std::ffi::{c_int, c_void};
use tch::Tensor;

extern "C" {
    fn fz_set_allow_tf32(allow: c_int) -> c_int;
    fn fz_allow_tf32_cublas() -> c_int;
    fn fz_grad_mode_enabled() -> c_int;
    fn fz_set_grad(var: *mut c_void, grad: *mut c_void) -> c_int;
    fn fz_bump_versions(tensors: *const *mut c_void, n: c_int) -> c_int;
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

/// `var.grad = grad`: autograd then accumulates into `grad` in place (first-order backward
/// with a defined gradient), so `grad` may be a view of a buffer the caller owns. The shapes,
/// dtype and device must match the variable's.
pub fn set_grad(var: &Tensor, grad: &Tensor) -> Result<()> {
    if var.size() != grad.size() || var.kind() != grad.kind() || var.device() != grad.device() {
        bail!("set_grad: gradient {:?} {:?} on {:?} for a variable {:?} {:?} on {:?}", grad.size(), grad.kind(), grad.device(), var.size(), var.kind(), var.device());
    }
    // SAFETY: both are live tch tensor handles (`at::Tensor*`); the shim assigns the gradient
    // (a refcounted handle copy) and catches every C++ exception.
    if unsafe { fz_set_grad(var.as_ptr() as *mut c_void, grad.as_ptr() as *mut c_void) } != 0 {
        bail!("libtorch refused to set a gradient");
    }
    Ok(())
}

/// Marks each tensor as modified in place (bumps its version counter), for tensors whose data
/// was written through another tensor on the same storage that does not share their counter.
pub fn bump_versions<'a>(tensors: impl IntoIterator<Item = &'a Tensor>) -> Result<()> {
    let ptrs: Vec<*mut c_void> = tensors.into_iter().map(|t| t.as_ptr() as *mut c_void).collect();
    let n = c_int::try_from(ptrs.len()).map_err(|_| anyhow::anyhow!("bump_versions: {} tensors", ptrs.len()))?;
    // SAFETY: `ptrs` holds `n` live tch tensor handles (`at::Tensor*`) for the whole call; the
    // shim only bumps their counters and catches every C++ exception.
    if unsafe { fz_bump_versions(ptrs.as_ptr(), n) } != 0 {
        bail!("libtorch refused to bump a version counter (an inference tensor?)");
    }
    Ok(())
}
