//! Raw c10d bindings (src/ffi/dist_shim.cpp, dist_nccl.cpp) behind owning handles.
//!
//! Only built with `cfg(flowzoo_dist)` (build.rs found Gloo's headers). The safe, documented
//! face is [`crate::dist`]; this module only turns the shim's conventions into Rust ones:
//! every call that can fail returns `Result` with libtorch's/Gloo's message, and each handle
//! frees its C++ `intrusive_ptr` on drop.
//!
//! Collectives are asynchronous: they return a [`Work`] at once and run on the process
//! group's own threads (Gloo) or CUDA stream (NCCL). The tensors a collective was given must
//! not be read or written until its [`Work::wait`] has returned; the C++ side keeps them alive.
use anyhow::{anyhow, Result};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::time::Duration;
use tch::Tensor;

mod sys {
    use std::ffi::{c_char, c_int, c_void};
    extern "C" {
        pub fn fzdist_string_free(s: *mut c_char);
        pub fn fzdist_store_new(
            host: *const c_char,
            port: c_int,
            world_size: c_int,
            is_server: c_int,
            timeout_ms: i64,
            out: *mut *mut c_void,
        ) -> *mut c_char;
        pub fn fzdist_store_prefixed(
            store: *mut c_void,
            prefix: *const c_char,
            out: *mut *mut c_void,
        ) -> *mut c_char;
        pub fn fzdist_store_free(s: *mut c_void);
        pub fn fzdist_gloo_new(
            store: *mut c_void,
            rank: c_int,
            size: c_int,
            device_kind: c_int,
            name: *const c_char,
            timeout_ms: i64,
            threads: c_int,
            out: *mut *mut c_void,
        ) -> *mut c_char;
        #[cfg(flowzoo_nccl)]
        pub fn fzdist_nccl_new(
            store: *mut c_void,
            rank: c_int,
            size: c_int,
            timeout_ms: i64,
            out: *mut *mut c_void,
        ) -> *mut c_char;
        pub fn fzdist_backend_free(b: *mut c_void);
        pub fn fzdist_allreduce_sum(
            b: *mut c_void,
            t: *mut c_void,
            work: *mut *mut c_void,
        ) -> *mut c_char;
        pub fn fzdist_allreduce_coalesced_sum(
            b: *mut c_void,
            ts: *const *mut c_void,
            n: usize,
            work: *mut *mut c_void,
        ) -> *mut c_char;
        pub fn fzdist_broadcast(
            b: *mut c_void,
            t: *mut c_void,
            root: c_int,
            work: *mut *mut c_void,
        ) -> *mut c_char;
        pub fn fzdist_barrier(b: *mut c_void, work: *mut *mut c_void) -> *mut c_char;
        pub fn fzdist_allgather(
            b: *mut c_void,
            input: *mut c_void,
            outputs: *const *mut c_void,
            n: usize,
            work: *mut *mut c_void,
        ) -> *mut c_char;
        pub fn fzdist_reducer_new(
            store: *mut c_void,
            backend: *mut c_void,
            rank: c_int,
            size: c_int,
            is_nccl: c_int,
            params: *const *mut c_void,
            n: usize,
            bucket_bytes: i64,
            first_bucket_bytes: i64,
            as_bucket_view: c_int,
            out: *mut *mut c_void,
            n_buckets: *mut usize,
        ) -> *mut c_char;
        pub fn fzdist_reducer_prepare(r: *mut c_void, loss: *mut c_void) -> *mut c_char;
        pub fn fzdist_reducer_timing(r: *mut c_void, comm_ns: *mut i64, overlap_ns: *mut i64) -> *mut c_char;
        pub fn fzdist_reducer_free(r: *mut c_void);
        pub fn fzdist_work_wait(w: *mut c_void) -> *mut c_char;
        pub fn fzdist_work_free(w: *mut c_void);
    }
}

/// NULL = ok, otherwise a malloc'd message that we own.
fn check(err: *mut c_char) -> Result<()> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated string malloc'd by the shim.
    let msg = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    unsafe { sys::fzdist_string_free(err) };
    Err(anyhow!("{}", msg.trim_end()))
}

fn millis(d: Duration) -> i64 {
    // The shim rejects 0; a sub-millisecond timeout means "as short as possible".
    (d.as_millis().min(i64::MAX as u128) as i64).max(1)
}

fn int(v: usize, what: &str) -> Result<c_int> {
    c_int::try_from(v).map_err(|_| anyhow!("{what} {v} does not fit in a C int"))
}

fn tensor_ptr(t: &Tensor) -> *mut c_void {
    t.as_ptr() as *mut c_void
}

/// A c10d key-value store (a TCPStore, possibly seen through a key prefix).
pub struct Store(*mut c_void);

// SAFETY: c10d stores are shared between threads inside libtorch itself (Gloo's worker
// threads use them); the handle is an intrusive_ptr with an atomic count.
unsafe impl Send for Store {}

impl Store {
    /// Connects to (or, `is_server`, hosts) the TCPStore at `host:port`. The server waits up
    /// to `timeout` for all `world_size` members; a client retries connecting that long.
    pub fn tcp(host: &str, port: u16, world_size: usize, is_server: bool, timeout: Duration) -> Result<Store> {
        let host_c = CString::new(host).map_err(|_| anyhow!("host {host:?} contains a NUL byte"))?;
        let mut out = std::ptr::null_mut();
        check(unsafe {
            sys::fzdist_store_new(
                host_c.as_ptr(),
                c_int::from(port),
                int(world_size, "world size")?,
                c_int::from(is_server),
                millis(timeout),
                &mut out,
            )
        })?;
        Ok(Store(out))
    }

    /// The same store with every key prefixed by `prefix`.
    pub fn prefixed(&self, prefix: &str) -> Result<Store> {
        let p = CString::new(prefix).map_err(|_| anyhow!("store prefix {prefix:?} contains a NUL byte"))?;
        let mut out = std::ptr::null_mut();
        check(unsafe { sys::fzdist_store_prefixed(self.0, p.as_ptr(), &mut out) })?;
        Ok(Store(out))
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        unsafe { sys::fzdist_store_free(self.0) }
    }
}

/// Which network device Gloo binds (c10d's three constructors).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GlooDevice {
    /// `createDefaultDevice`: this host's name, falling back to loopback.
    Default,
    /// `createDeviceForHostname`: a host name or address to bind, e.g. `127.0.0.1`.
    Hostname(String),
    /// `createDeviceForInterface`: a network interface, e.g. `eth0` (GLOO_SOCKET_IFNAME).
    Interface(String),
}

/// A c10d backend (ProcessGroupGloo or ProcessGroupNCCL) for one rank.
pub struct Backend(*mut c_void);

// SAFETY: c10d backends are thread-safe (a work queue behind a mutex); the handle is an
// intrusive_ptr. (Collectives must also be issued in the same order on every rank: that is
// why crate::dist::ProcessGroup, which owns this, is Send but not Sync.)
unsafe impl Send for Backend {}

impl Backend {
    /// A ProcessGroupGloo; connects the full mesh through `store` (fails after `timeout` when a
    /// peer never arrives). `threads` is Gloo's worker thread count (c10d's default: 2).
    pub fn gloo(store: &Store, rank: usize, size: usize, device: &GlooDevice, timeout: Duration, threads: usize) -> Result<Backend> {
        let (kind, name) = match device {
            GlooDevice::Default => (0, String::new()),
            GlooDevice::Hostname(h) => (1, h.clone()),
            GlooDevice::Interface(i) => (2, i.clone()),
        };
        let name = CString::new(name).map_err(|_| anyhow!("Gloo device name contains a NUL byte"))?;
        let mut out = std::ptr::null_mut();
        check(unsafe {
            sys::fzdist_gloo_new(
                store.0,
                int(rank, "rank")?,
                int(size, "world size")?,
                kind,
                name.as_ptr(),
                millis(timeout),
                int(threads, "Gloo thread count")?,
                &mut out,
            )
        })?;
        Ok(Backend(out))
    }

    /// A ProcessGroupNCCL on the calling thread's current CUDA device.
    #[cfg(flowzoo_nccl)]
    pub fn nccl(store: &Store, rank: usize, size: usize, timeout: Duration) -> Result<Backend> {
        let mut out = std::ptr::null_mut();
        check(unsafe {
            sys::fzdist_nccl_new(store.0, int(rank, "rank")?, int(size, "world size")?, millis(timeout), &mut out)
        })?;
        Ok(Backend(out))
    }

    /// Starts an in-place sum of `t` over all ranks.
    pub fn all_reduce_sum(&self, t: &Tensor) -> Result<Work> {
        let mut w = std::ptr::null_mut();
        check(unsafe { sys::fzdist_allreduce_sum(self.0, tensor_ptr(t), &mut w) })?;
        Ok(Work(w))
    }

    /// Starts an in-place sum of every tensor of `ts` in one collective (c10d's
    /// `allreduce_coalesced`: one dtype, dense, on one device).
    pub fn all_reduce_coalesced_sum(&self, ts: &[Tensor]) -> Result<Work> {
        let ptrs: Vec<*mut c_void> = ts.iter().map(tensor_ptr).collect();
        let mut w = std::ptr::null_mut();
        check(unsafe { sys::fzdist_allreduce_coalesced_sum(self.0, ptrs.as_ptr(), ptrs.len(), &mut w) })?;
        Ok(Work(w))
    }

    /// Starts overwriting `t` with rank `root`'s.
    pub fn broadcast(&self, t: &Tensor, root: usize) -> Result<Work> {
        let mut w = std::ptr::null_mut();
        check(unsafe { sys::fzdist_broadcast(self.0, tensor_ptr(t), int(root, "root rank")?, &mut w) })?;
        Ok(Work(w))
    }

    pub fn barrier(&self) -> Result<Work> {
        let mut w = std::ptr::null_mut();
        check(unsafe { sys::fzdist_barrier(self.0, &mut w) })?;
        Ok(Work(w))
    }

    /// Starts gathering `input` from every rank: `outputs[r]` (one per rank, input's shape
    /// and dtype) receives rank r's.
    pub fn all_gather(&self, input: &Tensor, outputs: &[Tensor]) -> Result<Work> {
        let ptrs: Vec<*mut c_void> = outputs.iter().map(tensor_ptr).collect();
        let mut w = std::ptr::null_mut();
        check(unsafe { sys::fzdist_allgather(self.0, tensor_ptr(input), ptrs.as_ptr(), ptrs.len(), &mut w) })?;
        Ok(Work(w))
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        unsafe { sys::fzdist_backend_free(self.0) }
    }
}

/// A collective in flight (c10d::Work).
pub struct Work(*mut c_void);

// SAFETY: c10d::Work is waited on from other threads than the one that ran it by design.
unsafe impl Send for Work {}

impl Work {
    /// Blocks until the collective is done; its failure (a peer that closed its connection,
    /// the group's timeout) comes back as the error.
    pub fn wait(self) -> Result<()> {
        check(unsafe { sys::fzdist_work_wait(self.0) })
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        unsafe { sys::fzdist_work_free(self.0) }
    }
}

/// PyTorch DDP's gradient reducer (c10d::Reducer, src/ffi/dist_reducer.cpp) over a backend.
pub struct Reducer(*mut c_void);

// SAFETY: the reducer's state is guarded by its own mutex (autograd hooks may run on the
// autograd engine's device threads); the handle itself is a plain owning pointer.
unsafe impl Send for Reducer {}

pub use super::ReducerLayout;

impl Reducer {
    /// A reducer for `params` (trainable, in parameter order) over `backend`, with `store`
    /// for the c10d::ProcessGroup around it. Returns it with its bucket count.
    pub fn new(store: &Store, backend: &Backend, rank: usize, size: usize, nccl: bool, params: &[Tensor], layout: ReducerLayout) -> Result<(Reducer, usize)> {
        let ptrs: Vec<*mut c_void> = params.iter().map(tensor_ptr).collect();
        let bytes = |v: usize, what: &str| i64::try_from(v).map_err(|_| anyhow!("{what} {v} is too large"));
        let mut out = std::ptr::null_mut();
        let mut n_buckets = 0usize;
        check(unsafe {
            sys::fzdist_reducer_new(
                store.0,
                backend.0,
                int(rank, "rank")?,
                int(size, "world size")?,
                c_int::from(nccl),
                ptrs.as_ptr(),
                ptrs.len(),
                bytes(layout.bucket_bytes, "bucket size")?,
                bytes(layout.first_bucket_bytes, "first bucket size")?,
                c_int::from(layout.gradient_as_bucket_view),
                &mut out,
                &mut n_buckets,
            )
        })?;
        Ok((Reducer(out), n_buckets))
    }

    /// Arms the gradient hooks for the backward that will start from `loss`.
    pub fn prepare_for_backward(&self, loss: &Tensor) -> Result<()> {
        check(unsafe { sys::fzdist_reducer_prepare(self.0, tensor_ptr(loss)) })
    }

    /// The last backward's communication as the reducer's timer saw it, in nanoseconds:
    /// (first bucket's all-reduce start to the last one's end, the part of that before
    /// backward's computation ended); `None` where the timer recorded no value.
    pub fn last_timing(&self) -> Result<(Option<i64>, Option<i64>)> {
        let (mut comm, mut overlap) = (-1i64, -1i64);
        check(unsafe { sys::fzdist_reducer_timing(self.0, &mut comm, &mut overlap) })?;
        let known = |v: i64| (v >= 0).then_some(v);
        Ok((known(comm), known(overlap)))
    }
}

impl Drop for Reducer {
    fn drop(&mut self) {
        unsafe { sys::fzdist_reducer_free(self.0) }
    }
}
