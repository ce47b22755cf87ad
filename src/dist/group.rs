//! One rank's process group: rendezvous, backend choice, collectives and their timing.
use super::env::DistEnv;
pub use crate::config::BackendChoice;
use anyhow::{bail, Context, Result};
use std::cell::Cell;
use std::time::{Duration, Instant};
use tch::{Device, Tensor};

#[cfg(flowzoo_dist)]
pub(super) use crate::ffi::dist::{Backend, GlooDevice, Reducer, ReducerLayout, Store, Work};
#[cfg(not(flowzoo_dist))]
pub(super) use super::off::{Backend, GlooDevice, Reducer, ReducerLayout, Store, Work};

/// The backend a group actually runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Gloo,
    Nccl,
}

impl BackendChoice {
    /// The backend for tensors on `device`; an error when that backend is not in this build
    /// or cannot carry such tensors (NCCL needs CUDA tensors).
    pub fn resolve(self, device: Device) -> Result<BackendKind> {
        let kind = match self {
            BackendChoice::Auto if device.is_cuda() => BackendKind::Nccl,
            BackendChoice::Auto | BackendChoice::Gloo => BackendKind::Gloo,
            BackendChoice::Nccl => BackendKind::Nccl,
        };
        if kind == BackendKind::Nccl {
            if !device.is_cuda() {
                bail!("the NCCL backend carries CUDA tensors only, but training runs on the CPU: use --set train.backend=gloo (or auto)");
            }
            if !super::NCCL_AVAILABLE {
                bail!("{}", super::no_nccl_message());
            }
        }
        Ok(kind)
    }
}

/// How to form a process group.
#[derive(Clone, Debug)]
pub struct DistOptions {
    pub backend: BackendChoice,
    /// The device the training tensors live on (picks the backend under `Auto`; NCCL groups
    /// run on `cuda:LOCAL_RANK`, whatever index this names).
    pub device: Device,
    /// How long rendezvous waits for every rank, and how long any collective waits for a
    /// peer before failing. PyTorch's default is 30 minutes; ours is 5, because a flowzoo
    /// step is seconds, not minutes, and a stuck run should say so soon.
    pub timeout: Duration,
    /// Gloo's network device; `None`: the interface in `GLOO_SOCKET_IFNAME` when set (as in
    /// PyTorch), else this host's name.
    pub gloo_device: Option<GlooDevice>,
    /// Gloo's worker threads (c10d's default is 2).
    pub gloo_threads: usize,
}

impl Default for DistOptions {
    fn default() -> Self {
        DistOptions {
            backend: BackendChoice::Auto,
            device: Device::Cpu,
            timeout: Duration::from_secs(300),
            gloo_device: None,
            gloo_threads: 2,
        }
    }
}

/// Time and volume of the collectives a group ran, for the trainer's metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CommStats {
    /// Collectives issued (a bucketed gradient all-reduce counts one per bucket).
    pub calls: u64,
    /// Bytes handed to all-reduce (each rank's share, not what went over the wire).
    pub bytes: u64,
    /// Wall seconds the caller spent inside collectives: from issuing to the end of the wait
    /// (work overlapped with the caller's own computation is not counted).
    pub seconds: f64,
}

/// This process's membership of a distributed run: a c10d TCPStore and a ProcessGroupGloo or
/// ProcessGroupNCCL.
///
/// `Send` (it can move to a training thread) but not `Sync`: every rank must issue the same
/// collectives in the same order, which one owner issuing them one at a time guarantees.
pub struct ProcessGroup {
    // Field order is drop order: the backend goes before the store it uses.
    backend: Backend,
    store: Store,
    rank: usize,
    world_size: usize,
    local_rank: usize,
    kind: BackendKind,
    device: Device,
    timeout: Duration,
    stats: Cell<CommStats>,
}

impl ProcessGroup {
    /// Joins the run `env` describes: rendezvous through the TCPStore at
    /// `MASTER_ADDR:MASTER_PORT` (hosted by rank 0 unless torchrun's agent hosts it), then the
    /// backend's own connection between every pair of ranks. Fails after `opts.timeout` when a
    /// rank never arrives; fails at once without distributed support in this build.
    pub fn connect(env: &DistEnv, opts: &DistOptions) -> Result<ProcessGroup> {
        if !super::AVAILABLE {
            bail!("{}", super::no_support_message());
        }
        let kind = opts.backend.resolve(opts.device)?;
        let device = match kind {
            BackendKind::Gloo => opts.device,
            BackendKind::Nccl => {
                // Before any rendezvous, so a misconfigured rank fails at once.
                let visible = tch::Cuda::device_count().max(0) as usize;
                if env.local_rank >= visible {
                    bail!(
                        "LOCAL_RANK={} but this machine shows {visible} CUDA device(s): the NCCL backend needs one GPU per process on each machine (torchrun --nproc-per-node at most the GPU count)",
                        env.local_rank
                    );
                }
                Device::Cuda(env.local_rank)
            }
        };
        let at = format!(
            "rendezvous at {}:{} as rank {} of {} ({kind:?}, timeout {} s)",
            env.master_addr,
            env.master_port,
            env.rank,
            env.world_size,
            opts.timeout.as_secs_f64()
        );
        let base = Store::tcp(&env.master_addr, env.master_port, env.world_size, env.hosts_store(), opts.timeout)
            .with_context(|| at.clone())?;
        let store = base.prefixed(&format!("{}{}/", env.store_prefix(), kind_name(kind))).with_context(|| at.clone())?;
        let backend = match kind {
            BackendKind::Gloo => {
                let gloo_device = match &opts.gloo_device {
                    Some(d) => d.clone(),
                    None => match std::env::var("GLOO_SOCKET_IFNAME") {
                        Ok(ifname) if !ifname.is_empty() => GlooDevice::Interface(ifname),
                        _ => GlooDevice::Default,
                    },
                };
                Backend::gloo(&store, env.rank, env.world_size, &gloo_device, opts.timeout, opts.gloo_threads)
            }
            BackendKind::Nccl => nccl_backend(&store, env, opts.timeout),
        }
        .with_context(|| at.clone())?;
        Ok(ProcessGroup {
            backend,
            store,
            rank: env.rank,
            world_size: env.world_size,
            local_rank: env.local_rank,
            kind,
            device,
            timeout: opts.timeout,
            stats: Cell::new(CommStats::default()),
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }
    pub fn world_size(&self) -> usize {
        self.world_size
    }
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }
    pub fn backend(&self) -> BackendKind {
        self.kind
    }
    /// Where this group's own small tensors (config checks, gathers) live.
    pub fn device(&self) -> Device {
        self.device
    }
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Collectives run so far, and the time spent in them.
    pub fn comm_stats(&self) -> CommStats {
        self.stats.get()
    }

    /// [`ProcessGroup::comm_stats`], then starts counting from zero (per-interval reporting).
    pub fn take_comm_stats(&self) -> CommStats {
        self.stats.replace(CommStats::default())
    }

    /// In-place sum of each tensor over every rank. All are started before any is waited
    /// for, so the backend pipelines them; for many small tensors prefer [`super::GradBuckets`].
    pub fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<()> {
        let t0 = Instant::now();
        let mut works = Vec::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            works.push(self.backend.all_reduce_sum(t).with_context(|| self.what(&format!("all-reduce of tensor {i} {:?}", t.size())))?);
        }
        for (i, w) in works.into_iter().enumerate() {
            w.wait().with_context(|| self.what(&format!("all-reduce of tensor {i}")))?;
        }
        let bytes = tensors.iter().map(tensor_bytes).sum();
        self.record(tensors.len() as u64, bytes, t0);
        Ok(())
    }

    /// In-place mean over every rank (sum, then divide by the world size) of floating-point
    /// tensors; integer tensors are refused (their mean is not an integer).
    pub fn all_reduce_mean(&self, tensors: &[Tensor]) -> Result<()> {
        for (i, t) in tensors.iter().enumerate() {
            if !t.f_is_floating_point()? {
                bail!("all_reduce_mean: tensor {i} is {:?}; only floating-point tensors have a mean (use all_reduce_sum)", t.kind());
            }
        }
        self.all_reduce_sum(tensors)?;
        let _g = tch::no_grad_guard();
        for t in tensors {
            let _ = t.shallow_clone().f_div_scalar_(self.world_size as f64)?;
        }
        Ok(())
    }

    /// One all-reduce (sum) of several tensors through c10d's `allreduce_coalesced` (c10d
    /// flattens them itself; one dtype, one device). Kept for comparison with
    /// [`super::GradBuckets`], which flattens on our side and pipelines buckets.
    pub fn all_reduce_coalesced_sum(&self, tensors: &[Tensor]) -> Result<()> {
        let t0 = Instant::now();
        self.backend
            .all_reduce_coalesced_sum(tensors)
            .and_then(Work::wait)
            .with_context(|| self.what(&format!("coalesced all-reduce of {} tensors", tensors.len())))?;
        self.record(1, tensors.iter().map(tensor_bytes).sum(), t0);
        Ok(())
    }

    /// Overwrites every tensor with rank `root`'s (start-of-training weight sync).
    pub fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<()> {
        if root >= self.world_size {
            bail!("broadcast from rank {root}, but the world has {} ranks", self.world_size);
        }
        let t0 = Instant::now();
        let mut works = Vec::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            works.push(self.backend.broadcast(t, root).with_context(|| self.what(&format!("broadcast of tensor {i}")))?);
        }
        for (i, w) in works.into_iter().enumerate() {
            w.wait().with_context(|| self.what(&format!("broadcast of tensor {i} from rank {root}")))?;
        }
        self.record(tensors.len() as u64, 0, t0);
        Ok(())
    }

    /// Returns when every rank has reached it.
    pub fn barrier(&self) -> Result<()> {
        let t0 = Instant::now();
        self.backend.barrier().and_then(Work::wait).with_context(|| self.what("barrier"))?;
        self.record(1, 0, t0);
        Ok(())
    }

    /// Every rank's `input` (same shape and dtype on all ranks), in rank order.
    pub fn all_gather(&self, input: &Tensor) -> Result<Vec<Tensor>> {
        let t0 = Instant::now();
        let input = input.f_contiguous()?;
        let outputs: Vec<Tensor> = (0..self.world_size).map(|_| input.f_empty_like()).collect::<Result<_, _>>()?;
        self.backend
            .all_gather(&input, &outputs)
            .and_then(Work::wait)
            .with_context(|| self.what(&format!("all-gather of a {:?} {:?} tensor", input.kind(), input.size())))?;
        self.record(1, 0, t0);
        Ok(outputs)
    }

    /// Every rank's `values` (the same length on every rank), in rank order.
    pub fn all_gather_i64(&self, values: &[i64]) -> Result<Vec<Vec<i64>>> {
        let t = Tensor::f_from_slice(values)?.f_to_device(self.device)?;
        self.all_gather(&t)?
            .into_iter()
            .map(|g| Ok(Vec::<i64>::try_from(g.f_to_device(Device::Cpu)?)?))
            .collect()
    }

    /// Every rank's `values` (the same length on every rank), in rank order.
    pub fn all_gather_f64(&self, values: &[f64]) -> Result<Vec<Vec<f64>>> {
        let t = Tensor::f_from_slice(values)?.f_to_device(self.device)?;
        self.all_gather(&t)?
            .into_iter()
            .map(|g| Ok(Vec::<f64>::try_from(g.f_to_device(Device::Cpu)?)?))
            .collect()
    }

    pub(super) fn raw(&self) -> &Backend {
        &self.backend
    }

    pub(super) fn raw_store(&self) -> &Store {
        &self.store
    }

    /// Error context: which collective, where, and what usually causes its failure.
    pub(super) fn what(&self, collective: &str) -> String {
        format!(
            "{collective} failed on rank {} of {} ({:?}; a peer process exited, or did not answer within {} s)",
            self.rank,
            self.world_size,
            self.kind,
            self.timeout.as_secs_f64()
        )
    }

    pub(super) fn record(&self, calls: u64, bytes: u64, since: Instant) {
        self.add_stats(calls, bytes, since.elapsed().as_secs_f64());
    }

    pub(super) fn add_stats(&self, calls: u64, bytes: u64, seconds: f64) {
        let mut extra = 0.0;
        if let Device::Cuda(index) = self.device {
            // NCCL's wait only orders the CUDA stream; count the time until the work is done.
            let t0 = Instant::now();
            tch::Cuda::synchronize(index as i64);
            extra = t0.elapsed().as_secs_f64();
        }
        let mut s = self.stats.get();
        s.calls += calls;
        s.bytes += bytes;
        s.seconds += seconds + extra;
        self.stats.set(s);
    }
}

fn kind_name(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::Gloo => "gloo",
        BackendKind::Nccl => "nccl",
    }
}

pub(super) fn tensor_bytes(t: &Tensor) -> u64 {
    (t.numel() * t.kind().elt_size_in_bytes()) as u64
}

#[cfg(flowzoo_nccl)]
fn nccl_backend(store: &Store, env: &DistEnv, timeout: Duration) -> Result<Backend> {
    Backend::nccl(store, env.rank, env.world_size, timeout)
}

#[cfg(not(flowzoo_nccl))]
fn nccl_backend(_store: &Store, _env: &DistEnv, _timeout: Duration) -> Result<Backend> {
    // BackendChoice::resolve refuses NCCL in such a build before any store exists.
    bail!("{}", super::no_nccl_message())
}

// ProcessGroup must stay Send (the trainer may run on a thread of its own).
const _: fn() = || {
    fn is_send<T: Send>() {}
    is_send::<ProcessGroup>();
};
