// flowzoo's c10d shim, DDP part: PyTorch's own gradient reducer (c10d::Reducer, the engine
// of torch.nn.parallel.DistributedDataParallel) over a flowzoo process group.
//
// The Reducer registers a hook on every parameter's gradient accumulator; during backward,
// as soon as every gradient of a bucket has been accumulated it starts that bucket's
// all-reduce (on Gloo's threads or NCCL's stream), so communication overlaps the rest of
// backward; at the end of backward it waits for all buckets and writes the averages into
// the parameters' .grad. Compiled with dist_shim.cpp (build.rs, cfg flowzoo_dist).
#include "dist_common.h"

#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>

#include <algorithm>
#include <memory>
#include <vector>

namespace {

struct FzReducer {
  c10::intrusive_ptr<c10d::ProcessGroup> group;
  std::unique_ptr<c10d::Reducer> reducer;
};

}  // namespace

extern "C" {

// A c10d::ProcessGroup around `backend` (what torch.distributed builds in
// init_process_group), and a Reducer for `params` with DDP's bucket layout: buckets of at most
// `bucket_bytes`, the first (the parameters whose gradients come last) at most
// `first_bucket_bytes`, launched in reverse parameter order. `as_bucket_view`: make each
// .grad a view into its bucket (DDP's gradient_as_bucket_view: no copies, less memory).
// `n_buckets` receives the bucket count.
char* fzdist_reducer_new(void* store, void* backend, int rank, int size, int is_nccl,
                         void* const* params, size_t n, int64_t bucket_bytes,
                         int64_t first_bucket_bytes, int as_bucket_view, void** out,
                         size_t* n_buckets) {
  FZDIST_TRY
  if (out == nullptr || n_buckets == nullptr || params == nullptr || n == 0) {
    throw std::runtime_error("a reducer needs at least one parameter");
  }
  if (bucket_bytes <= 0 || first_bucket_bytes <= 0) {
    throw std::invalid_argument("bucket sizes must be positive");
  }
  auto type = is_nccl ? c10d::ProcessGroup::BackendType::NCCL
                      : c10d::ProcessGroup::BackendType::GLOO;
  auto group = c10::make_intrusive<c10d::ProcessGroup>(fzdist::as_store(store), rank, size);
  group->setDefaultBackend(type);
  group->setBackend(is_nccl ? c10::DeviceType::CUDA : c10::DeviceType::CPU, type,
                    fzdist::as_backend(backend));
  std::vector<at::Tensor> tensors;
  tensors.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    if (params[i] == nullptr) {
      throw std::runtime_error("null parameter handle");
    }
    const at::Tensor& p = *static_cast<at::Tensor*>(params[i]);
    if (!p.requires_grad()) {
      throw std::invalid_argument("parameter " + std::to_string(i) +
                                  " does not require grad; give the reducer trainable parameters only");
    }
    tensors.push_back(p);
  }
  std::vector<bool> sparse(n, false);
  std::vector<size_t> limits{static_cast<size_t>(first_bucket_bytes),
                             static_cast<size_t>(bucket_bytes)};
  auto assignment = c10d::compute_bucket_assignment_by_size(tensors, limits, sparse);
  std::vector<std::vector<size_t>> buckets = std::get<0>(assignment);
  // As DistributedDataParallel does: backward produces the last parameters' gradients first.
  std::reverse(buckets.begin(), buckets.end());
  auto fz = std::make_unique<FzReducer>();
  fz->group = group;
  fz->reducer = std::make_unique<c10d::Reducer>(
      tensors, buckets, group, sparse, bucket_bytes,
      /*find_unused_parameters=*/false, as_bucket_view != 0,
      std::unordered_map<size_t, std::string>{}, first_bucket_bytes,
      /*skip_all_reduce_unused_params=*/false, /*use_python_reducer=*/false,
      std::vector<int64_t>{});
  *n_buckets = buckets.size();
  *out = fz.release();
  FZDIST_CATCH
}

// Arms the hooks for the next backward (DDP calls this after every forward that will be
// differentiated). `loss` is the tensor backward will start from.
char* fzdist_reducer_prepare(void* reducer, void* loss) {
  FZDIST_TRY
  if (reducer == nullptr || loss == nullptr) {
    throw std::runtime_error("null argument");
  }
  static_cast<FzReducer*>(reducer)->reducer->prepare_for_backward(
      {*static_cast<at::Tensor*>(loss)});
  FZDIST_CATCH
}

// ~Reducer is noexcept(false): never let it throw across the C boundary.
void fzdist_reducer_free(void* reducer) {
  try {
    delete static_cast<FzReducer*>(reducer);
  } catch (...) {
  }
}

}  // extern "C"
