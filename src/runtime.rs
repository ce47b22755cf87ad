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

/// Sets libtorch's process-wide TF32 switches for `precision` (through the C++ shim); the
/// conditioners' dtype is per call ([`compute_kind`], carried by `flows::Ctx`).
pub fn apply_precision(precision: Precision) -> Result<()> {
    crate::ffi::switches::set_allow_tf32(precision == Precision::Tf32)
}

/// The dtype conditioner networks compute in at `precision` (`flows::Ctx::compute_kind`):
/// bf16 runs their convolutions in bfloat16; fp32 and tf32 in the parameters' dtype.
pub fn compute_kind(precision: Precision) -> Option<Kind> {
    match precision {
        Precision::Bf16 => Some(Kind::BFloat16),
        Precision::Fp32 | Precision::Tf32 => None,
    }
}

/// libtorch's cuBLAS TF32 switch (read back, for the record).
pub fn allow_tf32_cublas() -> bool {
    crate::ffi::switches::allow_tf32_cublas()
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

/// Above this size glibc's malloc serves a block with its own `mmap`, and `free` unmaps it, so
/// every step pays fresh page faults for its activations (see [`keep_freed_memory`]).
pub const MMAP_THRESHOLD_BYTES: i32 = 32 << 20;
/// glibc gives the top of its heap back to the system once this much of it is free.
pub const TRIM_THRESHOLD_BYTES: i32 = 256 << 20;

/// Keeps freed tensor memory in the process for reuse instead of handing it back to the system
/// at every `free`. libtorch's CPU tensors come from glibc's malloc: with its defaults a
/// `[1000, 64]` activation (256 KB) is `mmap`ed, zero-filled by page faults and unmapped again on
/// every call, and a trimmed heap refaults as it regrows. `perf` put more than half of a 2-D MAF's
/// sampling time (n = 1,000) in the kernel, page faults and their memory accounting first
/// (bench/NOTES.md). Fixed thresholds ([`MMAP_THRESHOLD_BYTES`], [`TRIM_THRESHOLD_BYTES`]) also
/// turn off glibc's own adjustment of them. A process keeps up to the trim threshold of freed
/// memory beyond what it uses at its peak.
///
/// Does nothing where the C library is not glibc, or when the user set `GLIBC_TUNABLES` or
/// glibc's `MALLOC_*_` variables themselves. Call it once, early, before other threads start
/// (the CLI's `main` does); it returns whether it changed anything.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let user_set = std::env::vars_os().any(|(k, _)| {
            let k = k.to_string_lossy();
            k == "GLIBC_TUNABLES" || (k.starts_with("MALLOC_") && k.ends_with('_'))
        });
        if user_set {
            return false;
        }
        // SAFETY: mallopt only sets malloc parameters; both values are in range.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
