// flowzoo's C++ shim over PyTorch's distributed engine, c10d: a TCPStore for rendezvous, a
// ProcessGroupGloo, and the collectives the trainer needs (all-reduce, broadcast, barrier,
// all-gather), each returning a c10d::Work handle to wait on.
//
// Compiled by build.rs only when Gloo's headers are found (Debian/Ubuntu: libgloo-dev):
// libtorch carries Gloo's implementation but the wheel ships only c10d's headers, and
// ProcessGroupGloo.hpp includes <gloo/...>. The Rust side is src/ffi/dist.rs; keep the two in
// sync. Conventions (error strings, handles) are in dist_common.h.
//
// Tensors come from tch: `tch::Tensor::as_ptr()` is a `torch::Tensor*`.
#include "dist_common.h"

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cstdint>
#include <vector>

namespace {

using fzdist::as_backend;
using fzdist::as_store;
using WorkHandle = c10::intrusive_ptr<c10d::Work>;

const at::Tensor& as_tensor(void* t) {
  if (t == nullptr) {
    throw std::runtime_error("null tensor handle");
  }
  return *static_cast<at::Tensor*>(t);
}

void give_work(WorkHandle work, void** out) {
  *out = new WorkHandle(std::move(work));
}

}  // namespace

extern "C" {

void fzdist_string_free(char* s) { std::free(s); }

// A TCPStore client, or (is_server) the server plus a client. Every client counts itself in
// (waitWorkers, as torch.distributed does) and the server waits until `world_size` have, at
// most `timeout_ms`; clients retry connecting for as long. multiTenant lets several stores share the port in one process, as
// torch.distributed's own rank-0 store does.
char* fzdist_store_new(const char* host, int port, int world_size, int is_server,
                       int64_t timeout_ms, void** out) {
  FZDIST_TRY
  if (host == nullptr || out == nullptr) {
    throw std::runtime_error("null argument");
  }
  if (port < 0 || port > 65535) {
    throw std::invalid_argument("port must be in 0..65535, got " + std::to_string(port));
  }
  c10d::TCPStoreOptions opts;
  opts.port = static_cast<std::uint16_t>(port);
  opts.isServer = is_server != 0;
  opts.numWorkers = static_cast<std::size_t>(world_size);
  opts.waitWorkers = true;
  opts.timeout = fzdist::millis(timeout_ms);
  opts.multiTenant = is_server != 0;
  fzdist::StoreHandle store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
  *out = new fzdist::StoreHandle(std::move(store));
  FZDIST_CATCH
}

// A view of `store` whose keys all start with `prefix` (keeps ours apart from the keys
// torchrun's agent keeps in the same store).
char* fzdist_store_prefixed(void* store, const char* prefix, void** out) {
  FZDIST_TRY
  if (prefix == nullptr || out == nullptr) {
    throw std::runtime_error("null argument");
  }
  fzdist::StoreHandle prefixed =
      c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), as_store(store));
  *out = new fzdist::StoreHandle(std::move(prefixed));
  FZDIST_CATCH
}

void fzdist_store_free(void* s) { delete static_cast<fzdist::StoreHandle*>(s); }

// device_kind: 0 = createDefaultDevice (this host's name, loopback when it does not resolve),
// 1 = createDeviceForHostname(name), 2 = createDeviceForInterface(name) (GLOO_SOCKET_IFNAME).
// The constructor connects the full mesh through the store, so it fails (after the timeout)
// when a peer never arrives.
char* fzdist_gloo_new(void* store, int rank, int size, int device_kind, const char* name,
                      int64_t timeout_ms, int threads, void** out) {
  FZDIST_TRY
  if (out == nullptr) {
    throw std::runtime_error("null argument");
  }
  auto opts = c10d::ProcessGroupGloo::Options::create(fzdist::millis(timeout_ms));
  std::string device_name = name == nullptr ? "" : name;
  switch (device_kind) {
    case 0:
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      break;
    case 1:
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(device_name));
      break;
    case 2:
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(device_name));
      break;
    default:
      throw std::invalid_argument("unknown Gloo device kind " + std::to_string(device_kind));
  }
  if (threads < 1) {
    throw std::invalid_argument("Gloo needs at least one thread, got " + std::to_string(threads));
  }
  opts->threads = threads;
  fzdist::BackendHandle pg =
      c10::make_intrusive<c10d::ProcessGroupGloo>(as_store(store), rank, size, opts);
  *out = new fzdist::BackendHandle(std::move(pg));
  FZDIST_CATCH
}

void fzdist_backend_free(void* b) { delete static_cast<fzdist::BackendHandle*>(b); }

// In-place sum of one tensor over every rank.
char* fzdist_allreduce_sum(void* backend, void* tensor, void** work) {
  FZDIST_TRY
  std::vector<at::Tensor> tensors{as_tensor(tensor)};
  c10d::AllreduceOptions opts;
  opts.reduceOp = c10d::ReduceOp::SUM;
  give_work(as_backend(backend)->allreduce(tensors, opts), work);
  FZDIST_CATCH
}

// In-place sum of several tensors in one collective (c10d flattens them itself; Gloo needs
// them dense, on the CPU and of one dtype).
char* fzdist_allreduce_coalesced_sum(void* backend, void* const* tensors, size_t n,
                                     void** work) {
  FZDIST_TRY
  std::vector<at::Tensor> list;
  list.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    list.push_back(as_tensor(tensors[i]));
  }
  c10d::AllreduceCoalescedOptions opts;
  opts.reduceOp = c10d::ReduceOp::SUM;
  give_work(as_backend(backend)->allreduce_coalesced(list, opts), work);
  FZDIST_CATCH
}

// Overwrites `tensor` on every rank with root's.
char* fzdist_broadcast(void* backend, void* tensor, int root, void** work) {
  FZDIST_TRY
  std::vector<at::Tensor> tensors{as_tensor(tensor)};
  c10d::BroadcastOptions opts;
  opts.rootRank = root;
  give_work(as_backend(backend)->broadcast(tensors, opts), work);
  FZDIST_CATCH
}

char* fzdist_barrier(void* backend, void** work) {
  FZDIST_TRY
  give_work(as_backend(backend)->barrier(c10d::BarrierOptions()), work);
  FZDIST_CATCH
}

// outputs[r] receives rank r's `input`; n must be the world size and every output must have
// input's shape and dtype.
char* fzdist_allgather(void* backend, void* input, void* const* outputs, size_t n,
                       void** work) {
  FZDIST_TRY
  std::vector<at::Tensor> inputs{as_tensor(input)};
  std::vector<std::vector<at::Tensor>> outs(1);
  outs[0].reserve(n);
  for (size_t i = 0; i < n; ++i) {
    outs[0].push_back(as_tensor(outputs[i]));
  }
  give_work(as_backend(backend)->allgather(outs, inputs, c10d::AllgatherOptions()), work);
  FZDIST_CATCH
}

// Blocks until the work is done; a failed collective (a peer that closed its connection, the
// process group's timeout) comes back as its error message.
char* fzdist_work_wait(void* work) {
  FZDIST_TRY
  if (work == nullptr) {
    throw std::runtime_error("null work handle");
  }
  (*static_cast<WorkHandle*>(work))->wait();
  FZDIST_CATCH
}

void fzdist_work_free(void* w) { delete static_cast<WorkHandle*>(w); }

}  // extern "C"
