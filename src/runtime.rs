//! Every process-wide libtorch switch in one place: which device, how many CPU threads, which
//! arithmetic precision (TF32, bf16 conditioners), and which libtorch this process runs on.
//!
//! The config holds plain choices ([`DeviceChoice`], [`Precision`]); this module turns them
//! into `tch` devices and switches, so `crate::config` needs no runtime code.
use anyhow::{bail, Result};
use tch::{Device, Kind};

pub use crate::config::{DeviceChoice, Precision};

/// The device a choice names, checked to exist: `auto` is CUDA when libtorch sees a GPU, else
/// the CPU; `cuda:N` must be one of the GPUs.
pub fn device(choice: DeviceChoice) -> Result<Device> {
    Ok(match choice {
        DeviceChoice::Auto => Device::cuda_if_available(),
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Cuda(i) => {
            if !tch::Cuda::is_available() {
                bail!("device {:?} requested but CUDA is not available on this machine (libtorch sees no GPU)", choice.to_string());
            }
            let n = tch::Cuda::device_count();
            if i as i64 >= n {
                bail!("device cuda:{i} requested but only {n} CUDA devices exist");
            }
            Device::Cuda(i)
        }
    })
}

/// [`device`] of a spelling (`--device auto|cpu|cuda|cuda:N`).
pub fn parse_device(s: &str) -> Result<Device> {
    device(s.parse()?)
}

/// libtorch's intra-op CPU threads; 0 leaves libtorch's default.
pub fn set_threads(threads: i64) -> Result<()> {
    if threads < 0 || threads > i32::MAX as i64 {
        bail!("{threads} threads: must be between 0 (libtorch's default) and {}", i32::MAX);
    }
    if threads > 0 {
        tch::set_num_threads(threads as i32);
    }
    Ok(())
}

/// Sets libtorch's process-wide TF32 switches and flowzoo's conditioner dtype (this thread)
/// for `precision`.
pub fn apply_precision(precision: Precision) {
    set_allow_tf32(precision == Precision::Tf32);
    crate::flows::coupling::set_conditioner_kind(match precision {
        Precision::Bf16 => Some(Kind::BFloat16),
        _ => None,
    });
}

// tch 0.24 does not expose libtorch's TF32 switches; they are plain exported member functions of
// `at::Context` (Itanium ABI: `this` is the first argument), present in libtorch_cpu since 1.7.
#[allow(improper_ctypes)]
extern "C" {
    #[link_name = "_ZN2at13globalContextEv"]
    fn at_global_context() -> *mut std::ffi::c_void;
    #[link_name = "_ZN2at7Context17setAllowTF32CuDNNEb"]
    fn at_set_allow_tf32_cudnn(ctx: *mut std::ffi::c_void, b: bool);
    #[link_name = "_ZN2at7Context18setAllowTF32CuBLASEb"]
    fn at_set_allow_tf32_cublas(ctx: *mut std::ffi::c_void, b: bool);
    #[link_name = "_ZNK2at7Context15allowTF32CuBLASEv"]
    fn at_allow_tf32_cublas(ctx: *const std::ffi::c_void) -> bool;
}

/// Allows (or forbids) TF32 tensor-core math in cuDNN convolutions and cuBLAS matmuls, like
/// `torch.backends.cudnn.allow_tf32` and `torch.backends.cuda.matmul.allow_tf32` together.
pub fn set_allow_tf32(allow: bool) {
    // SAFETY: `at::globalContext()` returns the process-wide context, valid for the whole run;
    // the setters only store a flag (they are what the Python flags call).
    unsafe {
        let ctx = at_global_context();
        at_set_allow_tf32_cudnn(ctx, allow);
        at_set_allow_tf32_cublas(ctx, allow);
    }
}

/// libtorch's cuBLAS TF32 switch (a read-back, for the record).
pub fn allow_tf32_cublas() -> bool {
    // SAFETY: see `set_allow_tf32`.
    unsafe { at_allow_tf32_cublas(at_global_context()) }
}

/// The version of the libtorch this process runs on, read from the `torch/version.py` next to
/// the loaded `libtorch_cpu.so` (PyTorch wheels), e.g. "2.11.0+cu130".
pub fn libtorch_version() -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let lib = maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find(|p| p.ends_with("/libtorch_cpu.so"))?;
    let torch_dir = std::path::Path::new(lib).parent()?.parent()?;
    let text = std::fs::read_to_string(torch_dir.join("version.py")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("__version__ = "))
        .map(|v| v.trim().trim_matches(|c| c == '\'' || c == '"').to_string())
}
