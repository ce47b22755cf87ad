// The error convention every flowzoo C++ shim follows (jit_shim.cpp, dist_*.cpp):
//  * a function that can fail returns `char*`: NULL on success, otherwise a malloc'd,
//    NUL-terminated message that the Rust side frees;
//  * no C++ exception ever crosses the C boundary: FZ_TRY ... FZ_CATCH("what") around every
//    entry point turns whatever was thrown into that message (c10::Error without its C++
//    backtrace, which means nothing to a flowzoo user).
#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

namespace fzshim {

inline char* dup_string(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out == nullptr) {
    return nullptr;  // out of memory: nothing better to report
  }
  std::memcpy(out, s.data(), s.size());
  out[s.size()] = '\0';
  return out;
}

}  // namespace fzshim

#define FZ_TRY try {
#define FZ_CATCH(shim)                                                                 \
  }                                                                                    \
  catch (const c10::Error& e) {                                                        \
    return fzshim::dup_string(e.what_without_backtrace());                             \
  }                                                                                    \
  catch (const std::exception& e) {                                                    \
    return fzshim::dup_string(e.what());                                               \
  }                                                                                    \
  catch (...) {                                                                        \
    return fzshim::dup_string("unknown C++ exception in flowzoo's " shim " shim");     \
  }                                                                                    \
  return nullptr;
