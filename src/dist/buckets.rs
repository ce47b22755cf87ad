//! Gradient averaging as PyTorch's DDP does it: gradients packed into a few flat buckets,
//! one all-reduce per bucket instead of one per parameter, each started as soon as its
//! bucket is packed.
//!
//! Buckets are laid out in reverse parameter order, the order in which backward produces
//! gradients (the last layer's first), so a caller that learns of each gradient as backward
//! produces it ([`GradBuckets::grad_ready`]) can start the first buckets' all-reduce while
//! backward still runs on the earlier layers. [`GradBuckets::all_reduce_mean`] does the whole
//! step after backward: pack, start, wait, average, unpack; with Gloo the all-reduce of bucket
//! k runs on Gloo's threads while bucket k+1 is packed.
use super::group::{tensor_bytes, ProcessGroup, Work};
use anyhow::{bail, Context, Result};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// How gradients are bucketed.
#[derive(Clone, Copy, Debug)]
pub struct BucketOptions {
    /// Close a bucket before it would exceed this many bytes (DDP's default: 25 MiB). A
    /// tensor larger than this gets a bucket of its own.
    pub bucket_bytes: usize,
    /// Start each bucket's all-reduce as soon as all its gradients are packed (true), or
    /// only when [`GradBuckets::finish`] is called (false: no overlap, for comparison).
    pub overlap: bool,
}

impl Default for BucketOptions {
    fn default() -> Self {
        BucketOptions { bucket_bytes: 25 * 1024 * 1024, overlap: true }
    }
}

/// Where one gradient sits: its bucket and a view of the bucket's flat buffer shaped like it.
struct Slot {
    bucket: usize,
    shape: Vec<i64>,
    kind: Kind,
    device: Device,
    view: Tensor,
    ready: bool,
}

struct Bucket {
    members: Vec<usize>,
    flat: Tensor,
    packed: usize,
    work: Option<Work>,
}

/// A fixed bucket layout for a list of gradient tensors (one per parameter, in parameter
/// order), reused every step. Not `Sync`; `Send` like the tensors it holds.
pub struct GradBuckets {
    slots: Vec<Slot>,
    buckets: Vec<Bucket>,
    overlap: bool,
    /// Seconds spent in this step's grad_ready calls (packing and starting), added to the
    /// group's CommStats by finish.
    step_seconds: f64,
}

impl GradBuckets {
    /// A layout for gradients shaped like `like` (the parameters, or their gradients).
    /// Tensors of one dtype and device share buckets; others get buckets of their own.
    pub fn new(like: &[Tensor], opts: BucketOptions) -> Result<GradBuckets> {
        if opts.bucket_bytes == 0 {
            bail!("gradient bucket size must be at least 1 byte");
        }
        let mut slots = Vec::with_capacity(like.len());
        for t in like {
            slots.push(Slot { bucket: 0, shape: t.size(), kind: t.kind(), device: t.device(), view: Tensor::new(), ready: false });
        }
        // Open bucket per (kind, device): its members and byte count.
        let mut open: Vec<((Kind, Device), Vec<usize>, usize)> = Vec::new();
        let mut closed: Vec<Vec<usize>> = Vec::new();
        for i in (0..like.len()).rev() {
            let key = (slots[i].kind, slots[i].device);
            let bytes = tensor_bytes(&like[i]) as usize;
            let pos = match open.iter().position(|(k, _, _)| *k == key) {
                Some(p) => p,
                None => {
                    open.push((key, Vec::new(), 0));
                    open.len() - 1
                }
            };
            let (_, members, size) = &mut open[pos];
            if !members.is_empty() && *size + bytes > opts.bucket_bytes {
                closed.push(std::mem::take(members));
                *size = 0;
            }
            members.push(i);
            *size += bytes;
        }
        closed.extend(open.into_iter().map(|(_, m, _)| m).filter(|m| !m.is_empty()));
        // Launch order: by the position of each bucket's first gradient in backward order.
        closed.sort_by_key(|m| std::cmp::Reverse(m[0]));
        let mut buckets = Vec::with_capacity(closed.len());
        for (b, members) in closed.into_iter().enumerate() {
            let first = &slots[members[0]];
            let numel: i64 = members.iter().map(|&i| slots[i].shape.iter().product::<i64>()).sum();
            let flat = Tensor::f_zeros(&[numel], (first.kind, first.device))?;
            let mut offset = 0;
            for &i in &members {
                let n: i64 = slots[i].shape.iter().product();
                slots[i].view = flat.f_narrow(0, offset, n)?.f_view(slots[i].shape.as_slice())?;
                slots[i].bucket = b;
                offset += n;
            }
            buckets.push(Bucket { members, flat, packed: 0, work: None });
        }
        Ok(GradBuckets { slots, buckets, overlap: opts.overlap, step_seconds: 0.0 })
    }

    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    /// The tensor indices of each bucket, in the order their all-reduces start.
    pub fn bucket_members(&self) -> Vec<Vec<usize>> {
        self.buckets.iter().map(|b| b.members.clone()).collect()
    }

    /// Hands over gradient `index` of this step: copies it into its bucket and, when that
    /// completes the bucket (and overlap is on), starts the bucket's all-reduce.
    pub fn grad_ready(&mut self, pg: &ProcessGroup, index: usize, grad: &Tensor) -> Result<()> {
        let t0 = Instant::now();
        let Some(slot) = self.slots.get_mut(index) else {
            bail!("gradient {index} given, but the bucket layout has {} tensors", self.slots.len());
        };
        if slot.ready {
            bail!("gradient {index} given twice in one step");
        }
        if grad.size() != slot.shape || grad.kind() != slot.kind || grad.device() != slot.device {
            bail!(
                "gradient {index} is {:?} {:?} on {:?}; the bucket layout expects {:?} {:?} on {:?}",
                grad.kind(),
                grad.size(),
                grad.device(),
                slot.kind,
                slot.shape,
                slot.device
            );
        }
        {
            let _g = tch::no_grad_guard();
            slot.view.shallow_clone().f_copy_(grad)?;
        }
        slot.ready = true;
        let b = slot.bucket;
        self.buckets[b].packed += 1;
        if self.overlap && self.buckets[b].packed == self.buckets[b].members.len() {
            self.start(pg, b)?;
        }
        self.step_seconds += t0.elapsed().as_secs_f64();
        Ok(())
    }

    fn start(&mut self, pg: &ProcessGroup, b: usize) -> Result<()> {
        let bucket = &mut self.buckets[b];
        let work = pg.raw().all_reduce_sum(&bucket.flat).with_context(|| {
            pg.what(&format!("all-reduce of gradient bucket {b} ({} tensors, {} bytes)", bucket.members.len(), tensor_bytes(&bucket.flat)))
        })?;
        bucket.work = Some(work);
        Ok(())
    }

    /// Ends the step: starts what is not started yet, waits for every bucket, divides by the
    /// world size and writes the averages back into `grads` (the tensors given to
    /// [`GradBuckets::grad_ready`], in parameter order). Every gradient must have been given.
    pub fn finish(&mut self, pg: &ProcessGroup, grads: &[Tensor]) -> Result<()> {
        let t0 = Instant::now();
        if grads.len() != self.slots.len() {
            bail!("{} gradients given back, but the bucket layout has {}", grads.len(), self.slots.len());
        }
        let missing: Vec<usize> = (0..self.slots.len()).filter(|&i| !self.slots[i].ready).collect();
        if !missing.is_empty() {
            bail!("gradients {missing:?} were not handed over this step: every rank must all-reduce every gradient (does some parameter get no gradient?)");
        }
        for b in 0..self.buckets.len() {
            if self.buckets[b].work.is_none() {
                self.start(pg, b)?;
            }
        }
        let scale = 1.0 / pg.world_size() as f64;
        let _g = tch::no_grad_guard();
        let mut result = Ok(());
        for (b, bucket) in self.buckets.iter_mut().enumerate() {
            let work = bucket.work.take().expect("every bucket was started above");
            // Wait for every bucket even after a failure, so no collective outlives the step.
            let waited = work.wait().with_context(|| pg.what(&format!("all-reduce of gradient bucket {b}")));
            if result.is_ok() {
                result = waited.and_then(|_| Ok(bucket.flat.f_mul_scalar_(scale).map(|_| ())?));
            }
            bucket.packed = 0;
        }
        for slot in &mut self.slots {
            slot.ready = false;
        }
        result?;
        for (slot, g) in self.slots.iter().zip(grads) {
            g.shallow_clone().f_copy_(&slot.view)?;
        }
        let bytes = self.buckets.iter().map(|b| tensor_bytes(&b.flat)).sum();
        let seconds = std::mem::take(&mut self.step_seconds) + t0.elapsed().as_secs_f64();
        pg.add_stats(self.buckets.len() as u64, bytes, seconds);
        Ok(())
    }

    /// A whole step after backward: every gradient of `grads` (parameter order) replaced by
    /// its mean over all ranks.
    pub fn all_reduce_mean(&mut self, pg: &ProcessGroup, grads: &[Tensor]) -> Result<()> {
        if grads.len() != self.slots.len() {
            bail!("{} gradients given, but the bucket layout has {}", grads.len(), self.slots.len());
        }
        for i in (0..grads.len()).rev() {
            self.grad_ready(pg, i, &grads[i])?;
        }
        self.finish(pg, grads)
    }
}
