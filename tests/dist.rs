//! Distributed engine (c10d over Gloo, loopback), 2 ranks: collectives, bucketed gradient
//! mean, sharding, config consistency, backend choice. Faults: tests/dist_faults.rs; DDP's
//! reducer: tests/dist_ddp.rs; how the ranks are started: tests/dist_support.
mod dist_support;
use dist_support::*;
use flowzoo::dist::{self, BucketOptions, DistEnv, DistOptions, DistributedSampler, GradBuckets, ProcessGroup};
use tch::{Device, Kind, Tensor};

#[test]
fn no_support_message_says_how_to_get_support() {
    let m = dist::no_support_message();
    assert!(m.contains("no distributed support") && m.contains("libgloo-dev") && m.contains("rebuild"), "{m}");
    // In a build without Gloo this exercises the real path; with Gloo it is a no-op.
    unsupported_build_says_so();
}

#[test]
fn all_reduce_broadcast_gather_barrier() {
    if let Some(pg) = child_group() {
        let r = pg.rank() as f64;
        let a = Tensor::from_slice(&[r + 1.0, 10.0 * (r + 1.0)]).to_kind(Kind::Float);
        let b = Tensor::from_slice(&[r, -r, 2.0 * r]);
        pg.all_reduce_sum(&[a.shallow_clone(), b.shallow_clone()]).unwrap();
        assert_eq!(Vec::<f32>::try_from(&a).unwrap(), vec![3.0, 30.0]);
        assert_eq!(Vec::<f64>::try_from(&b).unwrap(), vec![1.0, -1.0, 2.0]);
        let m = Tensor::from_slice(&[r + 1.0, 4.0 * r]);
        pg.all_reduce_mean(&[m.shallow_clone()]).unwrap();
        assert_eq!(Vec::<f64>::try_from(&m).unwrap(), vec![1.5, 2.0]);
        let ints = Tensor::from_slice(&[pg.rank() as i64 + 5]);
        pg.all_reduce_sum(&[ints.shallow_clone()]).unwrap();
        assert_eq!(ints.int64_value(&[0]), 11);
        let err = pg.all_reduce_mean(&[ints.shallow_clone()]).unwrap_err().to_string();
        assert!(err.contains("only floating-point tensors have a mean"), "{err}");
        let w = Tensor::from_slice(&[r, r, r]);
        pg.broadcast(&[w.shallow_clone()], 0).unwrap();
        assert_eq!(Vec::<f64>::try_from(&w).unwrap(), vec![0.0; 3]);
        assert_eq!(pg.all_gather_i64(&[pg.rank() as i64, 7]).unwrap(), vec![vec![0, 7], vec![1, 7]]);
        assert_eq!(pg.all_gather_f64(&[r * 0.5]).unwrap(), vec![vec![0.0], vec![0.5]]);
        pg.barrier().unwrap();
        let s = pg.take_comm_stats();
        assert_eq!(s.calls, 2 + 1 + 1 + 1 + 1 + 1 + 1, "{s:?}");
        assert_eq!(s.bytes, 2 * 4 + 3 * 8 + 2 * 8 + 8);
        assert!(s.seconds > 0.0);
        assert_eq!(pg.comm_stats(), Default::default());
        return;
    }
    if unsupported_build_says_so() {
        return;
    }
    assert_all_ok(&run_ranks("all_reduce_broadcast_gather_barrier", 2, 2, &[]));
}

/// Deterministic per-rank values: rank r's tensor i is a function of (r, i).
fn grads_of(rank: usize, shapes: &[Vec<i64>], kinds: &[Kind]) -> Vec<Tensor> {
    shapes
        .iter()
        .zip(kinds)
        .enumerate()
        .map(|(i, (s, &k))| {
            let n: i64 = s.iter().product();
            let base = Tensor::arange(n, (Kind::Double, Device::Cpu)).sin() * (1.0 + rank as f64) + (i as f64) * 0.25 - rank as f64;
            base.view(s.as_slice()).to_kind(k)
        })
        .collect()
}

#[test]
fn bucketed_mean_matches_per_tensor_mean() {
    // Mixed sizes (scalars up to one tensor larger than a bucket) and two dtypes.
    let shapes: Vec<Vec<i64>> = (0..37)
        .map(|i| match i % 6 {
            0 => vec![],
            1 => vec![3],
            2 => vec![5, 7],
            3 => vec![16, 3, 3, 3],
            4 => vec![1],
            _ => vec![2, 50],
        })
        .chain([vec![40, 40]])
        .collect();
    let kinds: Vec<Kind> = (0..shapes.len()).map(|i| if i % 9 == 4 { Kind::Double } else { Kind::Float }).collect();
    if let Some(pg) = child_group() {
        let expected: Vec<Tensor> = {
            let a = grads_of(0, &shapes, &kinds);
            let b = grads_of(1, &shapes, &kinds);
            a.iter().zip(&b).map(|(x, y)| (x + y) * 0.5).collect()
        };
        let per_tensor = grads_of(pg.rank(), &shapes, &kinds);
        pg.all_reduce_mean(&per_tensor).unwrap();
        for overlap in [true, false] {
            let grads = grads_of(pg.rank(), &shapes, &kinds);
            let mut buckets = GradBuckets::new(&grads, BucketOptions { bucket_bytes: 2048, overlap }).unwrap();
            assert!(buckets.bucket_count() >= 4, "{}", buckets.bucket_count());
            // Every tensor in exactly one bucket, one dtype per bucket, launch order = backward order.
            let members = buckets.bucket_members();
            let mut seen: Vec<usize> = members.concat();
            seen.sort();
            assert_eq!(seen, (0..shapes.len()).collect::<Vec<_>>());
            assert!(members.iter().all(|m| m.iter().all(|&i| kinds[i] == kinds[m[0]])));
            assert_eq!(members[0][0], shapes.len() - 1);
            for step in 0..2 {
                if step == 1 {
                    for (g, fresh) in grads.iter().zip(grads_of(pg.rank(), &shapes, &kinds)) {
                        g.shallow_clone().copy_(&fresh);
                    }
                }
                buckets.all_reduce_mean(&pg, &grads).unwrap();
                for i in 0..shapes.len() {
                    assert_eq!(grads[i].size(), shapes[i]);
                    assert!(grads[i].equal(&per_tensor[i]), "tensor {i} (overlap {overlap}, step {step}) differs from per-tensor all-reduce");
                    assert!(grads[i].equal(&expected[i]), "tensor {i} is not the mean of both ranks' values");
                }
            }
        }
        // A gradient of the wrong shape is named.
        let mut buckets = GradBuckets::new(&per_tensor, BucketOptions::default()).unwrap();
        assert_eq!(buckets.bucket_count(), 2, "one bucket per dtype under the 25 MiB default");
        let err = buckets.grad_ready(&pg, 2, &Tensor::zeros([7, 5], (Kind::Float, Device::Cpu))).unwrap_err().to_string();
        assert!(err.contains("gradient 2 is Float [7, 5]") && err.contains("expects Float [5, 7]"), "{err}");
        return;
    }
    if unsupported_build_says_so() {
        return;
    }
    assert_all_ok(&run_ranks("bucketed_mean_matches_per_tensor_mean", 2, 2, &[]));
}

#[test]
fn sharding_covers_every_index_once_per_epoch() {
    for world in 1..=4usize {
        for n in [1usize, 7, 8, 12, 101] {
            for drop_last in [false, true] {
                for epoch in 0..3u64 {
                    let sampler = |rank| DistributedSampler { drop_last, ..DistributedSampler::new(n, rank, world, 11).unwrap() };
                    if drop_last && n < world {
                        assert!(sampler(0).indices(epoch).is_err());
                        continue;
                    }
                    let shards: Vec<Vec<i64>> = (0..world).map(|r| sampler(r).indices(epoch).unwrap()).collect();
                    let per_rank = sampler(0).per_rank();
                    assert!(shards.iter().all(|s| s.len() == per_rank), "equal lengths for n={n} world={world}");
                    let mut count = vec![0usize; n];
                    for &i in shards.iter().flatten() {
                        count[i as usize] += 1;
                    }
                    let order = sampler(0).epoch_order(epoch);
                    if n % world == 0 {
                        assert!(count.iter().all(|&c| c == 1), "n={n} world={world}: {count:?}");
                    } else if drop_last {
                        // Exactly the order's last n mod world entries are left out.
                        let dropped: Vec<i64> = order[n - n % world..].to_vec();
                        for (i, &c) in count.iter().enumerate() {
                            assert_eq!(c, usize::from(!dropped.contains(&(i as i64))), "n={n} world={world} index {i}");
                        }
                    } else {
                        // Padding repeats the order's first entries; everything else once.
                        let pad = per_rank * world - n;
                        for (i, &c) in count.iter().enumerate() {
                            let extra = order.iter().cycle().take(pad).filter(|&&j| j == i as i64).count();
                            assert_eq!(c, 1 + extra, "n={n} world={world} index {i}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn config_mismatch_is_detected_and_named() {
    if let Some(pg) = child_group() {
        let r = pg.rank();
        let same = vec![("model.width", "128".to_string()), ("data.n_bits", "5".to_string())];
        pg.check_consistent(&same).unwrap();
        let differ = vec![("model.width", if r == 0 { "128" } else { "64" }.to_string()), ("data.n_bits", "5".to_string())];
        let err = pg.check_consistent(&differ).unwrap_err().to_string();
        assert!(err.contains("model.width differs (rank 0: \"128\"; rank 1: \"64\")"), "{err}");
        assert!(!err.contains("data.n_bits"), "{err}");
        let mut extra = same.clone();
        if r == 1 {
            extra.push(("model.levels", "3".to_string()));
        }
        let err = pg.check_consistent(&extra).unwrap_err().to_string();
        assert!(err.contains("rank 0 checks 2 items and rank 1 3"), "{err}");
        // The group is still usable after a detected mismatch (all ranks agreed on it).
        pg.check_consistent(&same).unwrap();
        return;
    }
    if unsupported_build_says_so() {
        return;
    }
    assert_all_ok(&run_ranks("config_mismatch_is_detected_and_named", 2, 2, &[]));
}

#[test]
fn backend_choice_and_nccl_without_a_gpu() {
    use flowzoo::dist::{BackendChoice, BackendKind};
    assert_eq!("auto".parse::<BackendChoice>().unwrap(), BackendChoice::Auto);
    assert_eq!("nccl".parse::<BackendChoice>().unwrap(), BackendChoice::Nccl);
    let err = "mpi".parse::<BackendChoice>().unwrap_err().to_string();
    assert!(err.contains("\"mpi\"") && err.contains("auto, gloo or nccl"), "{err}");
    assert_eq!(BackendChoice::Auto.resolve(Device::Cpu).unwrap(), BackendKind::Gloo);
    assert_eq!(BackendChoice::Gloo.resolve(Device::Cuda(0)).unwrap(), BackendKind::Gloo);
    let err = BackendChoice::Nccl.resolve(Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("CUDA tensors only"), "{err}");
    if tch::Cuda::is_available() {
        return; // the rest is about a machine without a GPU
    }
    let env = DistEnv::from_lookup(|k| {
        Some(match k {
            "MASTER_ADDR" => "127.0.0.1".into(),
            "MASTER_PORT" => free_port().to_string(),
            "RANK" => "0".into(),
            "WORLD_SIZE" => "1".into(),
            _ => return None,
        })
    })
    .unwrap()
    .unwrap();
    let opts = DistOptions { backend: BackendChoice::Auto, device: Device::Cuda(0), ..DistOptions::default() };
    let err = format!("{:#}", ProcessGroup::connect(&env, &opts).err().expect("no GPU here"));
    if !dist::AVAILABLE {
        assert_eq!(err, dist::no_support_message());
    } else if dist::NCCL_AVAILABLE {
        assert!(err.contains("LOCAL_RANK=0 but this machine shows 0 CUDA device(s)"), "{err}");
    } else {
        assert_eq!(err, dist::no_nccl_message());
    }
}

