//! Part of build.rs: distributed training through c10d (src/ffi/dist_shim.cpp, dist_nccl.cpp).
//!
//! libtorch carries c10d's implementation (TCPStore, ProcessGroupGloo, ProcessGroupNCCL) and
//! the wheel ships c10d's headers, but `ProcessGroupGloo.hpp` includes Gloo's own headers,
//! which the wheel lacks (Debian/Ubuntu: `libgloo-dev`). So:
//!  * Gloo headers found -> compile dist_shim.cpp (store, Gloo, collectives) and
//!    dist_reducer.cpp (DDP's c10d::Reducer) and set `cfg(flowzoo_dist)`;
//!    not found -> no cfg, and `flowzoo::dist` reports how to get distributed support.
//!  * Additionally, libtorch_cuda present and complete CUDA headers (the runtime's, `crt/` and
//!    `nv/target`) plus `nccl.h` found -> compile dist_nccl.cpp and set `cfg(flowzoo_nccl)`.
//!    The runtime wheel lacks `crt/` and `nv/target`; `make setup` adds them
//!    (nvidia-cuda-crt, nvidia-cuda-cccl), or a CUDA toolkit (CUDA_HOME) has them.
//!
//! `FLOWZOO_DIST=0` builds without distributed support even when the headers are there;
//! `GLOO_INCLUDE_DIR` names a Gloo header root that is not in /usr/include or /usr/local/include.
use std::path::{Path, PathBuf};

pub fn compile_dist_shims(lib_dir: &Path) {
    println!("cargo:rustc-check-cfg=cfg(flowzoo_dist)");
    println!("cargo:rustc-check-cfg=cfg(flowzoo_nccl)");
    for var in ["FLOWZOO_DIST", "GLOO_INCLUDE_DIR", "CUDA_HOME", "CUDA_PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    for src in ["src/ffi/dist_shim.cpp", "src/ffi/dist_reducer.cpp", "src/ffi/dist_nccl.cpp", "src/ffi/dist_common.h", "src/ffi/shim_errors.h"] {
        println!("cargo:rerun-if-changed={src}");
    }
    if std::env::var("FLOWZOO_DIST").is_ok_and(|v| v == "0") {
        println!("cargo:warning=flowzoo: FLOWZOO_DIST=0, building without distributed support");
        return;
    }
    let include = lib_dir.join("..").join("include");
    let c10d = include.join("torch/csrc/distributed/c10d");
    if !c10d.join("ProcessGroupGloo.hpp").exists() {
        println!(
            "cargo:warning=flowzoo: this libtorch has no c10d headers under {}; building without distributed support",
            c10d.display()
        );
        return;
    }
    let Some(gloo) = find_gloo_headers() else {
        println!(
            "cargo:warning=flowzoo: Gloo's headers (gloo/algorithm.h) not found; building without distributed support (Debian/Ubuntu: apt-get install libgloo-dev, then rebuild)"
        );
        return;
    };
    let base = || {
        let mut b = cc::Build::new();
        b.cpp(true)
            .include(&include)
            .include(include.join("torch/csrc/api/include"))
            .flag("-std=c++17")
            .define("_GLIBCXX_USE_CXX11_ABI", "1")
            // The torch headers warn a lot; the shim itself is checked with -Wall -Wextra by hand.
            .warnings(false)
            .flag("-w");
        b
    };
    let mut gloo_build = base();
    gloo_build
        .file("src/ffi/dist_shim.cpp")
        .file("src/ffi/dist_reducer.cpp")
        .include(&gloo)
        .define("USE_C10D_GLOO", None);
    if let Err(e) = gloo_build.try_compile("flowzoo_dist_shim") {
        // The headers are there, so this is a real incompatibility (or a bug in the shim):
        // say so rather than silently building a flowzoo that cannot train distributed.
        panic!(
            "flowzoo build: src/ffi/dist_shim.cpp or dist_reducer.cpp failed to compile against Gloo's headers in {} and c10d's in {}: {e}\n\
             Build without distributed support with FLOWZOO_DIST=0.",
            gloo.display(),
            c10d.display()
        );
    }
    println!("cargo:rustc-cfg=flowzoo_dist");
    compile_nccl_shim(lib_dir, base());
}

/// The directory holding `gloo/algorithm.h`, watched so that installing or upgrading Gloo
/// re-runs this script (when absent, the include roots are watched instead: cheap, ~9k files).
fn find_gloo_headers() -> Option<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(dir) = std::env::var("GLOO_INCLUDE_DIR") {
        roots.push(PathBuf::from(dir));
    }
    roots.push(PathBuf::from("/usr/include"));
    roots.push(PathBuf::from("/usr/local/include"));
    for root in &roots {
        if root.join("gloo/algorithm.h").exists() {
            println!("cargo:rerun-if-changed={}", root.join("gloo").display());
            return Some(root.clone());
        }
    }
    for root in roots.iter().filter(|r| r.is_dir()) {
        println!("cargo:rerun-if-changed={}", root.display());
    }
    None
}

/// Compiles dist_nccl.cpp when this libtorch has CUDA and every header it pulls in is found;
/// otherwise the NCCL backend is reported as not built (a warning, never a failure).
fn compile_nccl_shim(lib_dir: &Path, mut build: cc::Build) {
    if !lib_dir.join("libtorch_cuda.so").exists() {
        return;
    }
    let nvidia = lib_dir.join("../../nvidia");
    let mut cuda_dirs: Vec<PathBuf> = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(dir) = std::env::var(var) {
            cuda_dirs.push(PathBuf::from(dir).join("include"));
        }
    }
    cuda_dirs.push(PathBuf::from("/usr/local/cuda/include"));
    if let Ok(entries) = std::fs::read_dir(&nvidia) {
        let mut wheel: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path().join("include"))
            .filter(|p| p.join("cuda_runtime_api.h").exists())
            .collect();
        wheel.sort();
        cuda_dirs.extend(wheel);
    }
    let complete = |d: &PathBuf| {
        ["cuda_runtime_api.h", "crt/host_config.h", "nv/target"].iter().all(|f| d.join(f).exists())
    };
    let Some(cuda) = cuda_dirs.iter().find(|d| complete(d)) else {
        println!(
            "cargo:warning=flowzoo: libtorch has CUDA but no complete CUDA headers were found (need crt/host_config.h and nv/target: `make setup` installs nvidia-cuda-crt and nvidia-cuda-cccl, or set CUDA_HOME); building without the NCCL backend (Gloo only)"
        );
        return;
    };
    for dir in [nvidia.join("nccl/include"), cuda.clone(), PathBuf::from("/usr/include")] {
        if dir.join("nccl.h").exists() {
            build.include(&dir);
            break;
        }
    }
    build.file("src/ffi/dist_nccl.cpp").include(cuda).define("USE_C10D_NCCL", None);
    match build.try_compile("flowzoo_dist_nccl") {
        Ok(()) => println!("cargo:rustc-cfg=flowzoo_nccl"),
        Err(e) => println!(
            "cargo:warning=flowzoo: src/ffi/dist_nccl.cpp did not compile with CUDA headers from {}: {e}; building without the NCCL backend (Gloo only)",
            cuda.display()
        ),
    }
}
