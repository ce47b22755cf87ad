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
#include <torch/csrc/distributed/c10d/logger.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>

#include <algorithm>
#include <memory>
#include <vector>

namespace {

struct FzReducer {
  c10::intrusive_ptr<c10d::ProcessGroup> group;
  std::shared_ptr<c10d::Reducer> reducer;
  // DDP's logger: the only public reader of the reducer's timer (when the first bucket's
  // all-reduce started, when backward's computation ended, when the last all-reduce ended).
  std::shared_ptr<c10d::Logger> logger;
};

int64_t logged(const at::DDPLoggingData& data, const char* key) {
  auto it = data.ints_map.find(key);
  return it == data.ints_map.end() ? -1 : it->second;
}

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
  fz->reducer = std::make_shared<c10d::Reducer>(
      tensors, buckets, group, sparse, bucket_bytes,
      /*find_unused_parameters=*/false, as_bucket_view != 0,
      std::unordered_map<size_t, std::string>{}, first_bucket_bytes,
      /*skip_all_reduce_unused_params=*/false, /*use_python_reducer=*/false,
      std::vector<int64_t>{});
  // Time every iteration (DDP samples the first 10, then every 100th): the trainer reports
  // the all-reduce time of each step.
  fz->reducer->set_ddp_runtime_logging_sample_rate(1);
  fz->logger = std::make_shared<c10d::Logger>(fz->reducer);
  fz->reducer->set_logger(fz->logger);
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
  auto& r = *static_cast<FzReducer*>(reducer)->reducer;
  // DDP's forward calls this (it counts iterations and starts the iteration's timer); we have
  // no wrapped forward, so it is called here, just before backward.
  r.prepare_for_forward();
  r.prepare_for_backward({*static_cast<at::Tensor*>(loss)});
  FZDIST_CATCH
}

// The last backward's communication, from the reducer's timer, in nanoseconds: `comm_ns` from
// the first bucket's all-reduce start to the last one's end, `overlap_ns` the part of it
// before backward's own computation ended. -1 where the timer has no value.
char* fzdist_reducer_timing(void* reducer, int64_t* comm_ns, int64_t* overlap_ns) {
  FZDIST_TRY
  if (reducer == nullptr || comm_ns == nullptr || overlap_ns == nullptr) {
    throw std::runtime_error("null argument");
  }
  auto* fz = static_cast<FzReducer*>(reducer);
  fz->logger->set_runtime_stats_and_log();
  at::DDPLoggingData data = fz->logger->get_ddp_logging_data();
  *comm_ns = logged(data, "backward_comm_time");
  *overlap_ns = logged(data, "backward_compute_comm_overlap_time");
  FZDIST_CATCH
}

// ~Reducer is noexcept(false): never let it throw across the C boundary.
void fzdist_reducer_free(void* reducer) {
  try {
    auto* fz = static_cast<FzReducer*>(reducer);
    // The logger first (it reads the reducer in its destructor), then the reducer.
    fz->logger.reset();
    delete fz;
  } catch (...) {
  }
}

}  // extern "C"
