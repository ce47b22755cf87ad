//! Gradient averaging overlapped with backward, by PyTorch's own DDP engine (c10d::Reducer).
//!
//! [`super::GradBuckets`] averages after backward has finished. [`DdpReducer`] instead hooks
//! every parameter's gradient accumulator, exactly as `DistributedDataParallel` does: during
//! backward, as soon as all gradients of a bucket are accumulated, that bucket's all-reduce
//! starts on the backend's threads while backward goes on with earlier layers; when backward
//! returns, every `.grad` holds the mean over all ranks. Per step the trainer calls
//! [`DdpReducer::backward`] instead of `loss.backward()` (or
//! [`DdpReducer::prepare_for_backward`] just before its own backward).
//!
//! Rules (DDP's): every trainable parameter must receive a gradient in every prepared backward
//! (otherwise the next prepare fails with c10d's "Expected to have finished reduction in the
//! prior iteration" error); a backward that was not prepared (evaluation, tests) is left alone.
use super::group::{BackendKind, ProcessGroup, Reducer, ReducerLayout};
use anyhow::{Context, Result};
use tch::Tensor;

/// DDP's bucket layout.
#[derive(Clone, Copy, Debug)]
pub struct DdpOptions {
    /// Bucket cap (DDP's `bucket_cap_mb`, 25 MiB).
    pub bucket_bytes: usize,
    /// Cap of the bucket holding the first parameters, whose gradients come last (DDP: 1 MiB),
    /// so the last all-reduce after backward is short.
    pub first_bucket_bytes: usize,
    /// Make each `.grad` a view into its bucket (DDP's `gradient_as_bucket_view`): no copies
    /// in or out. Gradients must then be zeroed in place (`zero_()`), never replaced.
    pub gradient_as_bucket_view: bool,
}

impl Default for DdpOptions {
    fn default() -> Self {
        DdpOptions { bucket_bytes: 25 << 20, first_bucket_bytes: 1 << 20, gradient_as_bucket_view: false }
    }
}

/// The communication of one backward, as c10d's reducer timed it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DdpTiming {
    /// Wall seconds from the first bucket's all-reduce start to the last one's end.
    pub comm_seconds: f64,
    /// The part of `comm_seconds` after backward's own computation had ended: what the step
    /// waited for (the rest was hidden behind backward).
    pub exposed_seconds: f64,
}

/// c10d::Reducer bound to a process group and a list of parameters.
pub struct DdpReducer {
    raw: Reducer,
    buckets: usize,
    /// Error context for a backward whose all-reduce failed (rank, world, backend, timeout).
    failure: String,
}

impl DdpReducer {
    /// Hooks `params` (the trainable parameters, in parameter order, identical on every rank:
    /// check that first with [`ProcessGroup::check_consistent`]).
    pub fn new(pg: &ProcessGroup, params: &[Tensor], opts: DdpOptions) -> Result<DdpReducer> {
        let layout = ReducerLayout {
            bucket_bytes: opts.bucket_bytes,
            first_bucket_bytes: opts.first_bucket_bytes,
            gradient_as_bucket_view: opts.gradient_as_bucket_view,
        };
        let (raw, buckets) = Reducer::new(
            pg.raw_store(),
            pg.raw(),
            pg.rank(),
            pg.world_size(),
            pg.backend() == BackendKind::Nccl,
            params,
            layout,
        )
        .with_context(|| format!("setting up DDP's gradient reducer for {} parameters on rank {}", params.len(), pg.rank()))?;
        let failure = pg.what("backward with DDP's gradient all-reduce");
        Ok(DdpReducer { raw, buckets, failure })
    }

    pub fn bucket_count(&self) -> usize {
        self.buckets
    }

    /// Call after the forward pass and before `loss.backward()`: the next backward from
    /// `loss` averages every gradient over all ranks as it goes.
    pub fn prepare_for_backward(&self, loss: &Tensor) -> Result<()> {
        self.raw.prepare_for_backward(loss).context("DDP reducer: preparing for backward")
    }

    /// `prepare_for_backward(loss)` then `loss.backward()`: when it returns, every gradient
    /// is the mean over all ranks. A failed all-reduce (a peer gone, the timeout) comes back
    /// as an error naming this rank.
    pub fn backward(&self, loss: &Tensor) -> Result<()> {
        self.prepare_for_backward(loss)?;
        loss.f_backward().with_context(|| self.failure.clone())
    }

    /// The last prepared backward's all-reduce time (c10d's DDP timer, read through its
    /// logger; on CUDA it waits for the backward's events). Not added to the group's
    /// [`super::CommStats`]: the overlapped part is not time the caller spent waiting.
    pub fn last_timing(&self) -> Result<DdpTiming> {
        let (comm, overlap) = self.raw.last_timing().context("DDP reducer: reading its timer")?;
        let comm = comm.unwrap_or(0) as f64 * 1e-9;
        let overlap = overlap.unwrap_or(0) as f64 * 1e-9;
        Ok(DdpTiming { comm_seconds: comm, exposed_seconds: (comm - overlap).max(0.0) })
    }
}
