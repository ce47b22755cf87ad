//! The extern "C" declarations of `src/ffi/jit_shim.cpp` (see [`super::jit`] for the safe face).
use std::ffi::{c_char, c_int, c_void};
extern "C" {
    pub fn fzjit_string_free(s: *mut c_char);
    pub fn fzjit_bytes_free(b: *mut u8);
    pub fn fzjit_module_free(m: *mut c_void);
    pub fn fzjit_module_new(qualname: *const c_char, out: *mut *mut c_void) -> *mut c_char;
    pub fn fzjit_module_share(m: *mut c_void, out: *mut *mut c_void) -> *mut c_char;
    pub fn fzjit_module_name(m: *mut c_void, out: *mut *mut c_char) -> *mut c_char;
    pub fn fzjit_register_tensor(
        m: *mut c_void,
        name: *const c_char,
        tensor: *const c_void,
        requires_grad: c_int,
        is_buffer: c_int,
    ) -> *mut c_char;
    pub fn fzjit_register_attribute_int(
        m: *mut c_void,
        name: *const c_char,
        v: i64,
    ) -> *mut c_char;
    pub fn fzjit_register_attribute_float(
        m: *mut c_void,
        name: *const c_char,
        v: f64,
    ) -> *mut c_char;
    pub fn fzjit_register_attribute_bool(
        m: *mut c_void,
        name: *const c_char,
        v: c_int,
    ) -> *mut c_char;
    pub fn fzjit_register_module(
        m: *mut c_void,
        name: *const c_char,
        child: *mut c_void,
    ) -> *mut c_char;
    pub fn fzjit_attr_kind(m: *mut c_void, name: *const c_char, out: *mut c_int)
        -> *mut c_char;
    pub fn fzjit_child(
        m: *mut c_void,
        name: *const c_char,
        qualname_if_new: *const c_char,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    pub fn fzjit_define(m: *mut c_void, source: *const c_char) -> *mut c_char;
    pub fn fzjit_save_file(m: *mut c_void, path: *const c_char) -> *mut c_char;
    pub fn fzjit_save_bytes(
        m: *mut c_void,
        out: *mut *mut u8,
        out_len: *mut usize,
    ) -> *mut c_char;
    pub fn fzjit_dump(m: *mut c_void, out: *mut *mut c_char) -> *mut c_char;
}
