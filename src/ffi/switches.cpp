// libtorch switches that tch 0.24 does not expose: TF32 math on CUDA (process-wide) and the
// thread-local grad mode, a variable's `.grad` and version counter. Compiled by build.rs with the TorchScript shim; the Rust side is
// src/ffi/switches.rs. Nothing here throws across the C boundary.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <c10/core/GradMode.h>

extern "C" {

// Like torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32 together.
int fz_set_allow_tf32(int allow) {
  try {
    at::globalContext().setAllowTF32CuDNN(allow != 0);
    at::globalContext().setAllowTF32CuBLAS(allow != 0);
    return 0;
  } catch (...) {
    return -1;
  }
}

int fz_allow_tf32_cublas() {
  try {
    return at::globalContext().allowTF32CuBLAS() ? 1 : 0;
  } catch (...) {
    return -1;
  }
}

// torch.is_grad_enabled() on this thread.
int fz_grad_mode_enabled() { return c10::GradMode::is_enabled() ? 1 : 0; }

// `var.grad = grad` (Python's setter; tch has none). Both are tch's `at::Tensor*` handles.
int fz_set_grad(void* var, void* grad) {
  try {
    static_cast<at::Tensor*>(var)->mutable_grad() = *static_cast<at::Tensor*>(grad);
    return 0;
  } catch (...) {
    return -1;
  }
}

// Bumps the version counter of each of `n` tensors, as an in-place op on them would: for
// variables whose storage was written through another tensor (a flat buffer they are views of
// by `set_data`, which keeps each variable's own counter), so version-keyed caches and
// autograd's in-place checks see the change.
int fz_bump_versions(void* const* tensors, int n) {
  try {
    for (int i = 0; i < n; ++i) static_cast<at::Tensor*>(tensors[i])->unsafeGetTensorImpl()->bump_version();
    return 0;
  } catch (...) {
    return -1;
  }
}

}  // extern "C"
