// flowzoo's C++ shim over libtorch's TorchScript module API (torch::jit::Module).
//
// Compiled by build.rs (cc crate) against the torch headers of the venv's PyTorch wheel.
// The Rust side is src/ffi/mod.rs; keep the two in sync.
//
// Conventions:
//  * Every function that can fail returns `char*`: NULL on success, otherwise a malloc'd,
//    NUL-terminated error message that the caller frees with fzjit_string_free.
//  * No C++ exception ever crosses the C boundary: every entry point catches everything.
//  * A module handle is a heap `torch::jit::Module*`. torch::jit::Module is itself a handle
//    (it wraps a c10::intrusive_ptr to the module object), so two handles to the same
//    module share state: registering into a child after it was registered into its parent
//    is seen by the parent. fzjit_module_free frees the handle only; the object lives as
//    long as some handle or parent holds it.
//  * Tensors come from tch: `tch::Tensor::as_ptr()` is a `torch::Tensor*` (torch-sys
//    libtch/torch_api.h: `typedef torch::Tensor *tensor;`).
#include <torch/csrc/jit/api/module.h>

#include "shim_errors.h"
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <sstream>
#include <string>

namespace {

using fzshim::dup_string;

#define FZJIT_TRY FZ_TRY
#define FZJIT_CATCH FZ_CATCH("TorchScript")

torch::jit::Module* as_module(void* m) {
  if (m == nullptr) {
    throw std::runtime_error("null module handle");
  }
  return static_cast<torch::jit::Module*>(m);
}

const at::Tensor& as_tensor(const void* t) {
  if (t == nullptr) {
    throw std::runtime_error("null tensor");
  }
  return *static_cast<const at::Tensor*>(t);
}

std::string as_string(const char* s, const char* what) {
  if (s == nullptr) {
    throw std::runtime_error(std::string("null ") + what);
  }
  return std::string(s);
}

// An attribute name must be a single, non-empty component: a dot would make the state_dict
// key ambiguous (nesting is done with submodules, see fzjit_child).
void check_attr_name(const torch::jit::Module& m, const std::string& name) {
  if (name.empty()) {
    throw std::runtime_error("empty attribute name");
  }
  if (name.find('.') != std::string::npos) {
    throw std::runtime_error("attribute name '" + name +
                             "' contains '.': register nested names through submodules");
  }
  if (m.type()->hasAttribute(name) || m.type()->findMethod(name) != nullptr ||
      m.type()->hasConstant(name)) {
    throw std::runtime_error("module " + m.type()->name()->qualifiedName() +
                             " already has an attribute or method named '" + name + "'");
  }
}

}  // namespace

extern "C" {

void fzjit_string_free(char* s) { std::free(s); }

void fzjit_bytes_free(uint8_t* b) { std::free(b); }

void fzjit_module_free(void* m) { delete static_cast<torch::jit::Module*>(m); }

// A fresh module whose class has the fully qualified name `qualname` (for instance
// "__torch__.flowzoo.Glow"). It gets a `training` attribute (True), like every module that
// Python scripts, so that `m.train()` / `m.eval()` work on the loaded module.
char* fzjit_module_new(const char* qualname, void** out) {
  FZJIT_TRY
  if (out == nullptr) throw std::runtime_error("null out pointer");
  *out = nullptr;
  auto name = as_string(qualname, "module name");
  auto* m = new torch::jit::Module(c10::QualifiedName(name));
  try {
    m->register_attribute("training", c10::BoolType::get(), c10::IValue(true));
  } catch (...) {
    delete m;
    throw;
  }
  *out = m;
  FZJIT_CATCH
}

// A second handle to the same module object.
char* fzjit_module_share(void* m, void** out) {
  FZJIT_TRY
  if (out == nullptr) throw std::runtime_error("null out pointer");
  *out = nullptr;
  *out = new torch::jit::Module(*as_module(m));
  FZJIT_CATCH
}

// The module's qualified class name, as a malloc'd string in *out.
char* fzjit_module_name(void* m, char** out) {
  FZJIT_TRY
  if (out == nullptr) throw std::runtime_error("null out pointer");
  *out = dup_string(as_module(m)->type()->name()->qualifiedName());
  FZJIT_CATCH
}

// Registers `tensor` as a parameter (is_buffer = 0) or a buffer (is_buffer = 1).
// The module stores a detached alias of the tensor (same storage, no autograd history)
// with requires_grad set as asked (buffers never require grad).
char* fzjit_register_tensor(void* m, const char* name, const void* tensor, int requires_grad,
                            int is_buffer) {
  FZJIT_TRY
  auto* mod = as_module(m);
  auto n = as_string(name, "name");
  check_attr_name(*mod, n);
  const at::Tensor& t = as_tensor(tensor);
  if (!t.defined()) throw std::runtime_error("tensor '" + n + "' is undefined");
  at::Tensor v = t.detach();
  if (is_buffer) {
    mod->register_buffer(n, v);
  } else {
    v.set_requires_grad(requires_grad != 0);
    mod->register_parameter(n, v, /*is_buffer=*/false);
  }
  FZJIT_CATCH
}

char* fzjit_register_attribute_int(void* m, const char* name, int64_t v) {
  FZJIT_TRY
  auto* mod = as_module(m);
  auto n = as_string(name, "name");
  check_attr_name(*mod, n);
  mod->register_attribute(n, c10::IntType::get(), c10::IValue(v));
  FZJIT_CATCH
}

char* fzjit_register_attribute_float(void* m, const char* name, double v) {
  FZJIT_TRY
  auto* mod = as_module(m);
  auto n = as_string(name, "name");
  check_attr_name(*mod, n);
  mod->register_attribute(n, c10::FloatType::get(), c10::IValue(v));
  FZJIT_CATCH
}

char* fzjit_register_attribute_bool(void* m, const char* name, int v) {
  FZJIT_TRY
  auto* mod = as_module(m);
  auto n = as_string(name, "name");
  check_attr_name(*mod, n);
  mod->register_attribute(n, c10::BoolType::get(), c10::IValue(v != 0));
  FZJIT_CATCH
}

char* fzjit_register_module(void* m, const char* name, void* child) {
  FZJIT_TRY
  auto* mod = as_module(m);
  auto* ch = as_module(child);
  auto n = as_string(name, "name");
  check_attr_name(*mod, n);
  // A cycle would make save() and every recursive walk overflow the stack: refuse it.
  for (const auto& sub : ch->modules()) {
    if (sub._ivalue() == mod->_ivalue()) {
      throw std::runtime_error("registering submodule '" + n + "' would make a cycle: module " +
                               mod->type()->name()->qualifiedName() + " is inside it");
    }
  }
  mod->register_module(n, *ch);
  FZJIT_CATCH
}

// Kind of attribute `name` of the module: 0 none, 1 submodule, 2 parameter, 3 buffer,
// 4 another attribute, 5 method.
char* fzjit_attr_kind(void* m, const char* name, int* out) {
  FZJIT_TRY
  if (out == nullptr) throw std::runtime_error("null out pointer");
  auto* mod = as_module(m);
  auto n = as_string(name, "name");
  const auto& type = mod->type();
  *out = 0;
  if (auto slot = type->findAttributeSlot(n)) {
    if (type->getAttribute(*slot)->is_module()) {
      *out = 1;
    } else if (type->is_parameter(*slot)) {
      *out = 2;
    } else if (type->is_buffer(*slot)) {
      *out = 3;
    } else {
      *out = 4;
    }
  } else if (type->findMethod(n) != nullptr) {
    *out = 5;
  }
  FZJIT_CATCH
}

// The submodule `name` of m: a new handle to it in *out. If m has no attribute `name`, a
// fresh module of class `qualname_if_new` is created and registered under `name` first
// (when qualname_if_new is NULL, a missing submodule is an error).
char* fzjit_child(void* m, const char* name, const char* qualname_if_new, void** out) {
  FZJIT_TRY
  if (out == nullptr) throw std::runtime_error("null out pointer");
  *out = nullptr;
  auto* mod = as_module(m);
  auto n = as_string(name, "name");
  const auto& type = mod->type();
  if (auto slot = type->findAttributeSlot(n)) {
    if (!type->getAttribute(*slot)->is_module()) {
      throw std::runtime_error("'" + n + "' of module " + type->name()->qualifiedName() +
                               " exists and is not a submodule");
    }
    *out = new torch::jit::Module(mod->attr(n).toObject());
    return nullptr;
  }
  if (qualname_if_new == nullptr) {
    throw std::runtime_error("module " + type->name()->qualifiedName() +
                             " has no submodule '" + n + "'");
  }
  check_attr_name(*mod, n);
  torch::jit::Module child{c10::QualifiedName(std::string(qualname_if_new))};
  child.register_attribute("training", c10::BoolType::get(), c10::IValue(true));
  mod->register_module(n, child);
  *out = new torch::jit::Module(child);
  FZJIT_CATCH
}

// Compiles TorchScript source (one or more `def name(self, ...)` methods) into the module.
//
// Module::define only parses: the methods' bodies are type-checked lazily, on first use (or
// at save). Here every new method is compiled at once, so that a type error (an unknown
// attribute, a wrong return type) is reported by define itself; on any error the methods
// that this call added are removed again, so the module stays as it was.
char* fzjit_define(void* m, const char* source) {
  FZJIT_TRY
  auto* mod = as_module(m);
  auto src = as_string(source, "source");
  const auto type = mod->type();
  const std::vector<torch::jit::Function*> old = type->methods();
  auto added = [&]() {
    std::vector<torch::jit::Function*> fs;
    for (auto* f : type->methods()) {
      if (std::find(old.begin(), old.end(), f) == old.end()) fs.push_back(f);
    }
    return fs;
  };
  try {
    mod->define(src);
    for (auto* f : added()) f->ensure_defined();
  } catch (...) {
    auto cu = mod->_ivalue()->compilation_unit();
    for (auto* f : added()) {
      const c10::QualifiedName qn = f->qualname();
      type->unsafeRemoveMethod(qn.name());
      if (cu->find_function(qn) != nullptr) cu->unsafeRemoveMethod(qn);
    }
    throw;
  }
  FZJIT_CATCH
}

char* fzjit_save_file(void* m, const char* path) {
  FZJIT_TRY
  as_module(m)->save(as_string(path, "path"));
  FZJIT_CATCH
}

// The module serialized as a TorchScript zip archive, in a malloc'd buffer (free with
// fzjit_bytes_free).
char* fzjit_save_bytes(void* m, uint8_t** out, size_t* out_len) {
  FZJIT_TRY
  if (out == nullptr || out_len == nullptr) throw std::runtime_error("null out pointer");
  *out = nullptr;
  *out_len = 0;
  std::ostringstream buf(std::ios::out | std::ios::binary);
  as_module(m)->save(buf);
  const std::string s = buf.str();
  auto* b = static_cast<uint8_t*>(std::malloc(s.size() == 0 ? 1 : s.size()));
  if (b == nullptr) throw std::runtime_error("out of memory copying the saved module");
  std::memcpy(b, s.data(), s.size());
  *out = b;
  *out_len = s.size();
  FZJIT_CATCH
}

// Human-readable dump of the module (methods' code included), for debugging.
char* fzjit_dump(void* m, char** out) {
  FZJIT_TRY
  if (out == nullptr) throw std::runtime_error("null out pointer");
  *out = dup_string(as_module(m)->dump_to_str(true, false, false));
  FZJIT_CATCH
}

}  // extern "C"
