// Shared by flowzoo's c10d shims (dist_shim.cpp: store, Gloo, collectives; dist_nccl.cpp:
// ProcessGroupNCCL). The conventions are those of jit_shim.cpp:
//  * Every function that can fail returns `char*`: NULL on success, otherwise a malloc'd,
//    NUL-terminated error message that the caller frees with fzdist_string_free.
//  * No C++ exception ever crosses the C boundary: every entry point catches everything.
//  * Handles are heap-allocated c10::intrusive_ptr<...>* (Store, Backend, Work); the
//    matching *_free deletes the handle, the object lives while anything else holds it.
#pragma once

#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>

namespace fzdist {

inline char* dup_string(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out == nullptr) {
    return nullptr;  // out of memory: nothing better to report
  }
  std::memcpy(out, s.data(), s.size());
  out[s.size()] = '\0';
  return out;
}

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

// The same message in every failure path, whatever was thrown (c10::Error without its C++
// backtrace, which means nothing to a flowzoo user).
#define FZDIST_TRY try {
#define FZDIST_CATCH                                                         \
  }                                                                          \
  catch (const c10::Error& e) {                                              \
    return fzdist::dup_string(e.what_without_backtrace());                   \
  }                                                                          \
  catch (const std::exception& e) {                                          \
    return fzdist::dup_string(e.what());                                     \
  }                                                                          \
  catch (...) {                                                              \
    return fzdist::dup_string("unknown C++ exception in flowzoo's c10d shim"); \
  }                                                                          \
  return nullptr;
