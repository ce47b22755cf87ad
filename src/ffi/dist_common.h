// Shared by flowzoo's c10d shims (dist_shim.cpp: store, Gloo, collectives; dist_nccl.cpp:
// ProcessGroupNCCL). The conventions are those of jit_shim.cpp:
//  * Every function that can fail returns `char*`: NULL on success, otherwise a malloc'd,
//    NUL-terminated error message that the caller frees with fzdist_string_free.
//  * No C++ exception ever crosses the C boundary: every entry point catches everything.
//  * Handles are heap-allocated c10::intrusive_ptr<...>* (Store, Backend, Work); the
//    matching *_free deletes the handle, the object lives while anything else holds it.
#pragma once

#include <c10/util/Exception.h>
#include "shim_errors.h"
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>

namespace fzdist {

using fzshim::dup_string;

using StoreHandle = c10::intrusive_ptr<c10d::Store>;
using BackendHandle = c10::intrusive_ptr<c10d::Backend>;

inline StoreHandle& as_store(void* s) {
  if (s == nullptr) {
    throw std::runtime_error("null store handle");
  }
  return *static_cast<StoreHandle*>(s);
}

inline BackendHandle& as_backend(void* b) {
  if (b == nullptr) {
    throw std::runtime_error("null process group handle");
  }
  return *static_cast<BackendHandle*>(b);
}

inline std::chrono::milliseconds millis(int64_t ms) {
  if (ms <= 0) {
    throw std::invalid_argument("timeout must be positive, got " + std::to_string(ms) + " ms");
  }
  return std::chrono::milliseconds(ms);
}

}  // namespace fzdist

#define FZDIST_TRY FZ_TRY
#define FZDIST_CATCH FZ_CATCH("c10d")
