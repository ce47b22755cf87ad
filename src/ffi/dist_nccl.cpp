// flowzoo's c10d shim, NCCL part: a ProcessGroupNCCL for CUDA tensors. The collectives and
// the Work handles are those of dist_shim.cpp (they act on any c10d::Backend).
//
// Compiled by build.rs only when the linked libtorch has libtorch_cuda and the CUDA runtime
// and NCCL headers of the wheel's nvidia-* packages are found (nvidia/cu*/include,
// nvidia/nccl/include); the build sets USE_C10D_NCCL, which ProcessGroupNCCL.hpp needs.
#include "dist_common.h"

#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <cstdint>

extern "C" {

// Each collective runs on the CUDA device of the tensors it is given: the model and its
// gradients sit on cuda:LOCAL_RANK (dist::group picks it), so rank r's communicator is built on
// that device at the first collective. `timeout_ms` bounds each collective: NCCL's watchdog
// aborts the communicator and fails the work when a peer stops responding. (Not run on a GPU
// yet: no machine with one was lent to this work.)
char* fzdist_nccl_new(void* store, int rank, int size, int64_t timeout_ms, void** out) {
  FZDIST_TRY
  if (out == nullptr) {
    throw std::runtime_error("null argument");
  }
  auto opts = c10d::ProcessGroupNCCL::Options::create();
  opts->timeout = fzdist::millis(timeout_ms);
  fzdist::BackendHandle pg =
      c10::make_intrusive<c10d::ProcessGroupNCCL>(fzdist::as_store(store), rank, size, opts);
  *out = new fzdist::BackendHandle(std::move(pg));
  FZDIST_CATCH
}

}  // extern "C"
