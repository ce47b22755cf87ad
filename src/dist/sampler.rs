//! Which examples each rank sees: the semantics of `torch.utils.data.DistributedSampler`.
//!
//! Every rank computes the same epoch order (a seeded shuffle: the same seed and epoch on
//! every rank give the same permutation), then rank r takes positions r, r + W, r + 2W, ...
//! of it. So with batch B per rank, step k of all W ranks together covers positions
//! `k·W·B .. (k+1)·W·B` of the order: the examples of step k of one process with batch W·B.
//!
//! When the example count N is not a multiple of W, ranks need equal lengths (every rank
//! must run the same number of steps, or the collectives no longer pair up):
//!  * `drop_last = false` (torch's default): the order is padded by repeating its first
//!    `W·ceil(N/W) − N` entries, so every example is seen at least once per epoch and those
//!    few twice;
//!  * `drop_last = true`: the order's last `N mod W` entries are dropped this epoch (the
//!    shuffle changes which), so no example is seen twice.
use crate::rng::seeded_permutation;
use anyhow::{bail, Result};

/// Rank `rank`'s share of `order` (the epoch's global order, identical on every rank):
/// positions `rank, rank + world, ...` after padding (or trimming, `drop_last`) to a multiple
/// of `world`. Every rank gets the same length.
pub fn shard_order(order: &[i64], rank: usize, world: usize, drop_last: bool) -> Result<Vec<i64>> {
    if world == 0 || rank >= world {
        bail!("sharding for rank {rank} of a world of {world}");
    }
    let n = order.len();
    let per_rank = if drop_last { n / world } else { n.div_ceil(world) };
    if per_rank == 0 {
        bail!("{n} examples cannot be shared by {world} ranks with drop_last: each would get none");
    }
    let total = per_rank * world;
    // Position p of the padded order is order[p mod n] (torch repeats the order from the start).
    Ok((rank..total).step_by(world).map(|p| order[p % n]).collect())
}

/// `DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle, seed, drop_last)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistributedSampler {
    pub len: usize,
    pub rank: usize,
    pub world: usize,
    pub shuffle: bool,
    pub seed: u64,
    pub drop_last: bool,
}

impl DistributedSampler {
    /// torch's defaults: shuffled, no example dropped.
    pub fn new(len: usize, rank: usize, world: usize, seed: u64) -> Result<DistributedSampler> {
        if world == 0 || rank >= world {
            bail!("sampler for rank {rank} of a world of {world}");
        }
        Ok(DistributedSampler { len, rank, world, shuffle: true, seed, drop_last: false })
    }

    /// Examples per rank per epoch (torch's `num_samples`).
    pub fn per_rank(&self) -> usize {
        if self.drop_last {
            self.len / self.world
        } else {
            self.len.div_ceil(self.world)
        }
    }

    /// The epoch's global order, identical on every rank: a permutation seeded by
    /// `seed + epoch` (as torch seeds its generator), or `0..len` without shuffling.
    pub fn epoch_order(&self, epoch: u64) -> Vec<i64> {
        if self.shuffle {
            seeded_permutation(self.len, self.seed.wrapping_add(epoch))
        } else {
            (0..self.len as i64).collect()
        }
    }

    /// This rank's example indices for `epoch`.
    pub fn indices(&self, epoch: u64) -> Result<Vec<i64>> {
        shard_order(&self.epoch_order(epoch), self.rank, self.world, self.drop_last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torch_layout_without_shuffle() {
        // torch: DistributedSampler(range(10), num_replicas=3, rank=r, shuffle=False)
        // gives [0, 3, 6, 9], [1, 4, 7, 0], [2, 5, 8, 1].
        let order: Vec<i64> = (0..10).collect();
        assert_eq!(shard_order(&order, 0, 3, false).unwrap(), vec![0, 3, 6, 9]);
        assert_eq!(shard_order(&order, 1, 3, false).unwrap(), vec![1, 4, 7, 0]);
        assert_eq!(shard_order(&order, 2, 3, false).unwrap(), vec![2, 5, 8, 1]);
        // drop_last=True: [0, 3, 6], [1, 4, 7], [2, 5, 8].
        assert_eq!(shard_order(&order, 1, 3, true).unwrap(), vec![1, 4, 7]);
    }

    #[test]
    fn padding_repeats_the_order_more_than_once_when_needed() {
        // 2 examples over 5 ranks: torch repeats [a, b] until 5 entries.
        let order = [7, 9];
        let all: Vec<i64> = (0..5).flat_map(|r| shard_order(&order, r, 5, false).unwrap()).collect();
        assert_eq!(all, vec![7, 9, 7, 9, 7]);
        assert!(shard_order(&order, 0, 5, true).unwrap_err().to_string().contains("each would get none"));
    }

    #[test]
    fn epochs_shuffle_differently_and_ranks_agree() {
        let a = DistributedSampler::new(100, 0, 2, 5).unwrap();
        let b = DistributedSampler { rank: 1, ..a.clone() };
        assert_ne!(a.epoch_order(0), a.epoch_order(1));
        assert_eq!(a.epoch_order(3), b.epoch_order(3));
        assert_eq!(a.indices(0).unwrap().len(), a.per_rank());
        assert!(DistributedSampler::new(10, 2, 2, 0).is_err());
    }
}
