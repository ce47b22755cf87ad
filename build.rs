//! Links flowzoo's binaries against the libtorch that the venv's PyTorch wheel carries.
//!
//! tch's own link flags only reach tch's binaries: without these lines our binary links
//! `libtorch_cpu` alone (so CUDA is never seen, even on a GPU machine) and has no library
//! path (it fails at start unless LD_LIBRARY_PATH is set).
use std::path::PathBuf;
use std::process::Command;

// Distributed training (c10d): finding Gloo's and CUDA's headers, compiling src/ffi/dist_*.cpp.
#[path = "build/dist.rs"]
mod dist;

fn torch_lib_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("LIBTORCH_LIB") {
        return PathBuf::from(dir).join("lib");
    }
    if let Ok(dir) = std::env::var("LIBTORCH") {
        return PathBuf::from(dir).join("lib");
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let out = Command::new(&python)
        .args(["-c", "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))"])
        .output()
        .unwrap_or_else(|e| panic!("flowzoo build: cannot run `{python}` to locate torch: {e}"));
    if !out.status.success() {
        panic!(
            "flowzoo build: `{python} -c 'import torch'` failed; run `make setup` (or put the venv's bin first on PATH).\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for var in ["LIBTORCH", "LIBTORCH_LIB", "LIBTORCH_USE_PYTORCH", "PYTHON", "PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let lib = torch_lib_dir();
    let lib = lib.display();
    println!("cargo:rustc-link-search=native={lib}");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    // Keep libtorch (and through it libtorch_cuda) in NEEDED even though no symbol of ours
    // references it directly: that is what makes CUDA visible at run time.
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-L{lib}");
    println!("cargo:rustc-link-arg=-ltorch");
    if std::path::Path::new(&format!("{lib}/libtorch_cuda.so")).exists() {
        println!("cargo:rustc-link-arg=-ltorch_cuda");
    }
    println!("cargo:rustc-link-arg=-ltorch_cpu");
    println!("cargo:rustc-link-arg=-lc10");
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
    let lib_dir = PathBuf::from(lib.to_string());
    compile_jit_shim(&lib_dir);
    dist::compile_dist_shims(&lib_dir);
}

/// Compiles src/ffi/jit_shim.cpp (flowzoo's extern "C" shim over torch::jit::Module, see
/// src/ffi/mod.rs) and src/ffi/switches.cpp (libtorch's global switches) against the headers of the same libtorch we link, as a static library
/// that the cc crate tells cargo to link into the flowzoo lib.
fn compile_jit_shim(lib_dir: &std::path::Path) {
    let sources = ["src/ffi/jit_shim.cpp", "src/ffi/switches.cpp"];
    for src in sources.iter().chain(&["src/ffi/shim_errors.h"]) {
        println!("cargo:rerun-if-changed={src}");
    }
    let include = lib_dir.join("..").join("include");
    if !include.join("torch").join("script.h").exists() {
        panic!(
            "flowzoo build: no torch headers under {} (torch lib dir {})",
            include.display(),
            lib_dir.display()
        );
    }
    let api_include = include.join("torch/csrc/api/include");
    cc::Build::new()
        .cpp(true)
        .files(sources)
        .include(&include)
        .include(&api_include)
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        // The torch headers warn a lot; the shim itself is checked with -Wall -Wextra by hand.
        .warnings(false)
        .flag("-w")
        .compile("flowzoo_jit_shim");
}
