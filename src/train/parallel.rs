//! Data-parallel training: what the trainer does differently when it runs as one rank of
//! several (launched by torchrun, or by hand with torchrun's variables). Every rank holds the
//! whole model and the whole data set; they stay identical because they start identical and
//! apply identical updates:
//!
//! - **Start**: the config, the data (sizes, classes, checksum) and every variable's name and
//!   shape are compared across ranks ([`ProcessGroup::check_consistent`]); a mismatch is named.
//!   ActNorm's data-dependent initialisation runs on every rank on the *same* batch, the one a
//!   single process with batch `W·B` would use (every rank can build it: the data is
//!   replicated, only the steps are sharded), so it is exact, needs no statistics all-reduced
//!   and keeps `src/flows` free of communication. Then every variable is broadcast from rank 0
//!   (a safety net: it changes nothing when the ranks agree); on `--resume` the optimizer
//!   moments and EMA weights too.
//! - **Each step**: the batch of a single process with batch `W·B` (same seeded order, same
//!   dequantisation noise) is drawn on every rank and rank r keeps rows r, r+W, ... of it
//!   (`DistributedSampler`'s layout, [`shard_order`]); backward's gradients are averaged over
//!   the ranks (`train.grad_sync`: DDP's reducer during backward, or buckets after it); the
//!   loss is averaged too, so every rank sees the same loss and gradient norm and all skip a
//!   non-finite step together.
//! - **Evaluation**: each rank scores its share of the held-out set; sums are all-reduced.
//!   Non-trainable buffers (BatchNorm's running statistics) follow rank 0 (DDP's
//!   `broadcast_buffers`), re-broadcast before each evaluation.
use super::{streams, Adam, Trainer};
use crate::config::{Config, GradSync};
use crate::dist::{shard_order, BucketOptions, DdpOptions, DdpReducer, DistEnv, DistOptions, GradBuckets, ProcessGroup};
use crate::rng::derive_seed;
use crate::session::Session;
use anyhow::{bail, Context, Result};
use std::time::Duration;
use tch::{Device, Kind, Tensor};

/// How far the gradient averaging has got: which parameters take part is learned from the
/// first backward (a parameter that gets no gradient is left out on every rank, as Adam
/// leaves it alone).
enum GradSyncState {
    FirstStep,
    /// Buckets all-reduced after backward; `members` index the optimizer's parameters.
    AfterBackward { buckets: GradBuckets, members: Vec<usize> },
    Overlap(DdpReducer),
}

/// Communication time summed since the last metrics row.
#[derive(Default)]
struct CommWindow {
    allreduce_s: f64,
    wait_s: f64,
    steps: i64,
}

/// One rank's part in a data-parallel run (the trainer's `parallel` field).
pub struct DataParallel {
    pg: ProcessGroup,
    choice: GradSync,
    bucket_bytes: usize,
    state: GradSyncState,
    window: CommWindow,
}

/// Under a distributed launch, a CUDA device means this process's GPU, `cuda:LOCAL_RANK`.
pub fn rank_device(env: &DistEnv, device: Device) -> Result<Device> {
    if !device.is_cuda() {
        return Ok(device);
    }
    let visible = tch::Cuda::device_count().max(0) as usize;
    if env.local_rank >= visible {
        bail!(
            "LOCAL_RANK={} but this machine shows {visible} CUDA device(s): run at most one process per GPU (torchrun --nproc-per-node {visible}), or train on the CPU (--device cpu)",
            env.local_rank
        );
    }
    Ok(Device::Cuda(env.local_rank))
}

/// The rows of a batch of `n` (all ranks' batch) that rank `rank` of `world` trains on:
/// r, r+W, ... (DistributedSampler's layout; padded by repeating when `n` is not a multiple).
pub fn rank_rows(n: i64, rank: usize, world: usize) -> Result<Vec<i64>> {
    shard_order(&(0..n).collect::<Vec<i64>>(), rank, world, false)
}

impl DataParallel {
    /// Joins the run `env` describes, with the backend and timeout of `cfg.train`.
    pub fn connect(env: &DistEnv, cfg: &Config, device: Device) -> Result<DataParallel> {
        let at = format!("launched as rank {} of {} (torchrun's variables are set)", env.rank, env.world_size);
        if !crate::dist::AVAILABLE {
            bail!("{at}, but {}", crate::dist::no_support_message());
        }
        let t = &cfg.train;
        let opts = DistOptions {
            backend: t.backend,
            device,
            timeout: Duration::from_secs_f64(t.dist_timeout_s),
            ..DistOptions::default()
        };
        let pg = ProcessGroup::connect(env, &opts).with_context(|| at.clone())?;
        let bucket_bytes = (t.bucket_mib * (1 << 20) as f64).round().max(1.0) as usize;
        Ok(DataParallel { pg, choice: t.grad_sync, bucket_bytes, state: GradSyncState::FirstStep, window: CommWindow::default() })
    }

    pub fn rank(&self) -> usize {
        self.pg.rank()
    }
    pub fn world(&self) -> usize {
        self.pg.world_size()
    }
    pub fn group(&self) -> &ProcessGroup {
        &self.pg
    }

    /// A line for the start of training (and a warning when this machine's processes ask
    /// for more libtorch threads than it has cores).
    pub fn describe(&self, batch: i64) -> String {
        let sync = match self.choice {
            GradSync::Overlap => "during backward (DDP's reducer)",
            GradSync::AfterBackward => "after backward",
        };
        let mut line = format!(
            "data-parallel: {} processes ({:?}), batch {batch} per process ({} per step), gradients averaged {sync} in buckets of {:.1} MiB, timeout {} s",
            self.world(),
            self.pg.backend(),
            batch * self.world() as i64,
            self.bucket_bytes as f64 / (1 << 20) as f64,
            self.pg.timeout().as_secs_f64()
        );
        let local = std::env::var("LOCAL_WORLD_SIZE").ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(1);
        let threads = tch::get_num_threads().max(1) as usize;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if self.pg.device() == Device::Cpu && local * threads > cores {
            line.push_str(&format!(
                "\nwarning: {local} processes × {threads} libtorch threads on {cores} cores: set train.threads to {} (cores / processes per machine) to avoid oversubscription",
                (cores / local).max(1)
            ));
        }
        line
    }

    /// Stops with one error, the same on every rank, when the ranks do not train the same
    /// thing: config (except where each machine may differ: `data.path`, `train.device`,
    /// `train.threads`), flowzoo version, device kind, data, every variable's name, dtype and
    /// shape, and after `--resume` the checkpoint's step.
    pub fn check_consistent(&self, cfg: &Config, tr: &Trainer, data: Vec<(String, String)>) -> Result<()> {
        let mut items: Vec<(String, String)> = vec![("flowzoo version".into(), env!("CARGO_PKG_VERSION").into())];
        let table = toml::Value::try_from(cfg).context("describing the config for the ranks' comparison")?;
        for (section, keys) in table.as_table().into_iter().flatten() {
            for (key, value) in keys.as_table().into_iter().flatten() {
                let dotted = format!("{section}.{key}");
                if !["data.path", "train.device", "train.threads"].contains(&dotted.as_str()) {
                    items.push((dotted, value.to_string()));
                }
            }
        }
        items.push(("device kind".into(), if tr.sess.device().is_cuda() { "cuda" } else { "cpu" }.into()));
        items.extend(data);
        items.push(("run.step".into(), tr.state.step.to_string()));
        items.push(("run.adam_step".into(), tr.opt.step.to_string()));
        // The config first: a different model then names the key, not the variables it changed.
        let check = |items: &[(String, String)]| {
            let named: Vec<(&str, String)> = items.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            self.pg.check_consistent(&named)
        };
        check(&items)?;
        let variables: Vec<(String, String)> = crate::io::tensors::named_variables(&tr.sess.vs)
            .into_iter()
            .map(|(name, t)| (format!("variable {name}"), format!("{:?} {:?} trainable={}", t.kind(), t.size(), t.requires_grad())))
            .collect();
        check(&variables)
    }

    /// Every variable (and on resume the optimizer moments and the EMA weights) overwritten by
    /// rank 0's: identical starts even if a rank's initialisation or checkpoint differed.
    pub fn broadcast_from_rank0(&self, tr: &Trainer, resumed: bool) -> Result<()> {
        let mut tensors: Vec<Tensor> = crate::io::tensors::named_variables(&tr.sess.vs).into_iter().map(|(_, t)| t).collect();
        if resumed {
            tensors.extend(tr.opt.state_tensors().into_iter().map(|(_, t)| t));
            tensors.extend(tr.ema.iter().flatten().map(Tensor::shallow_clone));
        }
        broadcast_flat(&self.pg, &tensors).context("broadcasting rank 0's weights")
    }

    /// Non-trainable buffers (BatchNorm's running statistics, which each rank updates from its
    /// own batches) set to rank 0's, before an evaluation.
    pub fn sync_buffers(&self, sess: &Session) -> Result<()> {
        let buffers: Vec<Tensor> = crate::io::tensors::named_variables(&sess.vs).into_iter().filter(|(_, t)| !t.requires_grad()).map(|(_, t)| t).collect();
        broadcast_flat(&self.pg, &buffers).context("broadcasting rank 0's buffers before evaluation")
    }

    /// This rank's rows of step `step`'s whole batch (`x`, `labels`: the batch of all ranks):
    /// rows r, r+W, ...; then a per-rank seed for whatever the step draws itself.
    pub fn shard_batch(&self, x: &Tensor, labels: &Tensor, step: i64, seed: u64) -> Result<(Tensor, Tensor)> {
        let mine = Tensor::f_from_slice(&rank_rows(x.size()[0], self.rank(), self.world())?)?;
        let xs = x.f_index_select(0, &mine.f_to_device(x.device())?)?;
        let ls = labels.f_index_select(0, &mine.f_to_device(labels.device())?)?;
        if self.world() > 1 {
            let (w, r) = (self.world() as i64, self.rank() as i64);
            tch::manual_seed(derive_seed(seed, streams::RANK_STEP, step * w + r));
        }
        Ok((xs, ls))
    }

    /// Backward from `loss`; when it returns, every gradient is the mean over the ranks.
    pub fn backward(&mut self, loss: &Tensor, opt: &Adam, step: i64) -> Result<()> {
        let at = format!("step {}: averaging the gradients over {} ranks", step + 1, self.pg.world_size());
        if let GradSyncState::Overlap(reducer) = &self.state {
            reducer.backward(loss).context(at)?;
            let t = reducer.last_timing()?;
            self.window.allreduce_s += t.comm_seconds;
            self.window.wait_s += t.exposed_seconds;
            return Ok(());
        }
        loss.f_backward()?;
        if matches!(self.state, GradSyncState::FirstStep) {
            // The first step's backward is over: it goes through the buckets whatever comes next.
            let (after, overlap) = self.choose_sync(opt)?;
            self.state = after;
            self.reduce_after_backward(opt).context(at)?;
            if let Some(reducer) = overlap {
                self.state = GradSyncState::Overlap(reducer);
            }
            return Ok(());
        }
        self.reduce_after_backward(opt).context(at)
    }

    fn reduce_after_backward(&mut self, opt: &Adam) -> Result<()> {
        let GradSyncState::AfterBackward { buckets, members } = &mut self.state else {
            bail!("internal error: gradients reduced after backward without a bucket layout");
        };
        let params = opt.params();
        let late = params.iter().enumerate().find(|(i, (_, p))| !members.contains(i) && p.grad().defined());
        if let Some((_, (name, _))) = late {
            bail!("parameter {name} got a gradient, but none in the first step: every rank must average the same parameters in every step");
        }
        let grads: Vec<Tensor> = members.iter().map(|&i| params[i].1.grad()).collect();
        let _ = self.pg.take_comm_stats();
        buckets.all_reduce_mean(&self.pg, &grads)?;
        let s = self.pg.take_comm_stats();
        self.window.allreduce_s += s.seconds;
        self.window.wait_s += s.seconds;
        Ok(())
    }

    /// After the first backward: the parameters that got a gradient (checked to be the same
    /// on every rank) in buckets, and DDP's reducer for the following steps when
    /// `train.grad_sync = "overlap"` and every parameter got one.
    fn choose_sync(&mut self, opt: &Adam) -> Result<(GradSyncState, Option<DdpReducer>)> {
        let params = opt.params();
        let members: Vec<usize> = (0..params.len()).filter(|&i| params[i].1.grad().defined()).collect();
        let without: Vec<&str> = (0..params.len()).filter(|i| !members.contains(i)).map(|i| params[i].0.as_str()).collect();
        self.pg.check_consistent(&[("parameters without a gradient in the first step", without.join(", "))])?;
        let grads: Vec<Tensor> = members.iter().map(|&i| params[i].1.grad()).collect();
        let buckets = GradBuckets::new(&grads, BucketOptions { bucket_bytes: self.bucket_bytes, overlap: true })?;
        let mut overlap = None;
        if self.choice == GradSync::Overlap && without.is_empty() {
            let tensors: Vec<Tensor> = params.iter().map(|(_, p)| p.shallow_clone()).collect();
            let opts = DdpOptions { bucket_bytes: self.bucket_bytes, first_bucket_bytes: self.bucket_bytes.min(1 << 20), gradient_as_bucket_view: true };
            overlap = Some(DdpReducer::new(&self.pg, &tensors, opts)?);
        } else if self.choice == GradSync::Overlap && self.pg.is_main() {
            eprintln!(
                "note: train.grad_sync = \"overlap\" needs a gradient for every parameter in every step, but {} get none ({}): averaging after backward instead",
                without.len(),
                without.join(", ")
            );
        }
        Ok((GradSyncState::AfterBackward { buckets, members }, overlap))
    }

    /// The mean of `loss` (a float64 scalar, or a vector of the loss and its parts) over the
    /// ranks: every rank then sees the same loss, and a non-finite loss on any rank makes the
    /// step non-finite on all.
    pub fn mean_loss(&mut self, loss: &Tensor) -> Result<Tensor> {
        let shape = loss.size();
        let t = loss.f_reshape([-1])?;
        let _ = self.pg.take_comm_stats();
        self.pg.all_reduce_mean(&[t.shallow_clone()]).context("averaging the loss over the ranks")?;
        self.window.wait_s += self.pg.take_comm_stats().seconds;
        self.window.steps += 1;
        Ok(t.f_reshape(&shape[..])?)
    }

    /// This rank's contiguous share `(start, len)` of `n` held-out rows.
    pub fn eval_share(&self, n: i64) -> (i64, i64) {
        let (w, r) = (self.world() as i64, self.rank() as i64);
        let (start, end) = (n * r / w, n * (r + 1) / w);
        (start, end - start)
    }

    /// Element-wise sums of `values` over the ranks (float64).
    pub fn sum_over_ranks(&self, values: &[f64]) -> Result<Vec<f64>> {
        let t = Tensor::f_from_slice(values)?.f_to_device(self.pg.device())?;
        self.pg.all_reduce_sum(&[t.shallow_clone()]).context("summing evaluation scores over the ranks")?;
        Ok(Vec::<f64>::try_from(t.f_to_device(Device::Cpu)?)?)
    }

    /// Milliseconds per step since the last call: the gradient all-reduce (first bucket's
    /// start to the last one's end, overlapped part included) and the communication the steps
    /// waited for (the all-reduce not hidden behind backward, plus the loss's). `None`
    /// without steps.
    pub fn take_comm_ms(&mut self) -> Option<(f64, f64)> {
        let w = std::mem::take(&mut self.window);
        (w.steps > 0).then(|| (1e3 * w.allreduce_s / w.steps as f64, 1e3 * w.wait_s / w.steps as f64))
    }

    /// Returns when every rank has got here (the end of training: rank 0 has written the run).
    pub fn barrier(&self) -> Result<()> {
        self.pg.barrier()
    }
}

/// Overwrites `tensors` with rank 0's: one broadcast per dtype of all of them packed flat
/// (hundreds of small buffers would otherwise cost one round trip each).
fn broadcast_flat(pg: &ProcessGroup, tensors: &[Tensor]) -> Result<()> {
    let _g = tch::no_grad_guard();
    let mut kinds: Vec<Kind> = vec![];
    for t in tensors {
        if !kinds.contains(&t.kind()) {
            kinds.push(t.kind());
        }
    }
    for kind in kinds {
        let group: Vec<&Tensor> = tensors.iter().filter(|t| t.kind() == kind).collect();
        let flat = Tensor::f_cat(&group.iter().map(|t| t.f_reshape([-1])).collect::<Result<Vec<_>, _>>()?, 0)?.f_to_device(pg.device())?;
        pg.broadcast(&[flat.shallow_clone()], 0)?;
        let mut offset = 0;
        for t in group {
            let n = t.numel() as i64;
            t.shallow_clone().f_copy_(&flat.f_narrow(0, offset, n)?.f_view(t.size().as_slice())?)?;
            offset += n;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::data::Batches;
    use super::rank_rows;

    /// Every rank's examples of every step of `epochs` epochs, and one process's with the
    /// whole batch.
    fn epochs_of(n: i64, batch: i64, world: usize, epochs: i64) -> (Vec<Vec<Vec<i64>>>, Vec<Vec<i64>>) {
        let global = batch * world as i64;
        let mut b = Batches { seed: 3, batch: global, n, epoch: -1, perm: vec![] };
        let steps = epochs * (n / global);
        let mut per_rank = vec![vec![]; world];
        let mut single = vec![];
        for step in 0..steps {
            let idx = Vec::<i64>::try_from(b.at(step).unwrap()).unwrap();
            for (r, mine) in per_rank.iter_mut().enumerate() {
                let rows = rank_rows(idx.len() as i64, r, world).unwrap();
                assert_eq!(rows.len() as i64, batch, "rank {r} gets batch_size rows");
                mine.push(rows.iter().map(|&i| idx[i as usize]).collect());
            }
            single.push(idx);
        }
        (per_rank, single)
    }

    #[test]
    fn ranks_share_each_step_of_one_process_with_the_whole_batch() {
        for (n, batch, world) in [(96, 8, 2), (96, 4, 3), (100, 8, 2), (1437, 64, 2)] {
            let (per_rank, single) = epochs_of(n, batch, world, 2);
            let steps_per_epoch = (n / (batch * world as i64)) as usize;
            for (step, whole) in single.iter().enumerate() {
                // Together the ranks take exactly the rows of one process's step, none twice.
                let mut union: Vec<i64> = per_rank.iter().flat_map(|r| r[step].clone()).collect();
                union.sort();
                let mut want = whole.clone();
                want.sort();
                assert_eq!(union, want, "n {n}, batch {batch}, world {world}, step {step}");
            }
            for epoch in 0..2 {
                let mut seen: Vec<i64> = per_rank.iter().flat_map(|r| r[epoch * steps_per_epoch..(epoch + 1) * steps_per_epoch].concat()).collect();
                seen.sort();
                let before = seen.len();
                seen.dedup();
                assert_eq!(seen.len(), before, "an example twice in epoch {epoch}");
                // Every example once per epoch when the batch of all ranks divides the data;
                // otherwise the last n mod W·B of the epoch's order wait for the next epoch.
                let expected = n - n % (batch * world as i64);
                assert_eq!(seen.len() as i64, expected, "n {n}, batch {batch}, world {world}");
                if n % (batch * world as i64) == 0 {
                    assert_eq!(seen, (0..n).collect::<Vec<_>>());
                }
            }
            // Epochs are shuffled differently.
            assert_ne!(per_rank[0][0], per_rank[0][steps_per_epoch]);
        }
    }
}
