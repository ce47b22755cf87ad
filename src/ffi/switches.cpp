// libtorch switches that tch 0.24 does not expose: TF32 math on CUDA (process-wide) and the
// thread-local grad mode. Compiled by build.rs with the TorchScript shim; the Rust side is
// src/ffi/switches.rs. Nothing here throws across the C boundary.
#include <ATen/Context.h>
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

}  // extern "C"
