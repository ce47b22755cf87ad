//! Distributed engine (c10d over Gloo, loopback): collectives, bucketing, sharding, failures.
//!
//! A multi-process test re-runs this test binary as its ranks: the parent picks a free port
//! and starts `WORLD` copies of itself filtered to the same test, with torchrun's variables
//! (`MASTER_ADDR`, `MASTER_PORT`, `RANK`, `WORLD_SIZE`) and `FZ_DIST_CHILD=1`; inside a
//! child, the test body runs as that rank and panics on any failed check, which the parent
//! sees as a failed exit status (and prints the child's output).
use flowzoo::dist::{self, BucketOptions, DistEnv, DistOptions, DistributedSampler, GlooDevice, GradBuckets, ProcessGroup};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

const CHILD: &str = "FZ_DIST_CHILD";

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().unwrap().port()
}

/// In a child: this rank's group (timeout from FZ_DIST_TIMEOUT_MS, default 20 s). In the
/// parent: None.
fn child_group() -> Option<ProcessGroup> {
    std::env::var(CHILD).ok()?;
    let env = DistEnv::from_env().expect("torchrun variables").expect("set by the parent");
    let ms = std::env::var("FZ_DIST_TIMEOUT_MS").ok().map(|v| v.parse().unwrap()).unwrap_or(20_000);
    let opts = DistOptions {
        timeout: Duration::from_millis(ms),
        gloo_device: Some(GlooDevice::Hostname("127.0.0.1".into())),
        ..DistOptions::default()
    };
    tch::set_num_threads(1);
    Some(ProcessGroup::connect(&env, &opts).expect("connect"))
}

/// Runs `test` as ranks `0..spawn` of a world of `world` (spawn < world leaves ranks missing).
fn run_ranks(test: &str, world: usize, spawn: usize, extra: &[(&str, &str)]) -> Vec<Output> {
    let port = free_port().to_string();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..spawn)
        .map(|rank| {
            let mut cmd = Command::new(&exe);
            cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
                .env(CHILD, "1")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env_remove("TORCHELASTIC_USE_AGENT_STORE")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            for (k, v) in extra {
                cmd.env(k, v);
            }
            cmd.spawn().expect("spawn a rank")
        })
        .collect();
    children.into_iter().map(|c| c.wait_with_output().unwrap()).collect()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn assert_all_ok(outs: &[Output]) {
    for (rank, o) in outs.iter().enumerate() {
        assert!(o.status.success(), "rank {rank} failed ({}):\n{}", o.status, text(o));
    }
}

/// Without distributed support every multi-process test checks the message instead.
fn unsupported_build_says_so() -> bool {
    if dist::AVAILABLE {
        return false;
    }
    let env = DistEnv::from_lookup(|k| {
        Some(match k {
            "MASTER_ADDR" => "127.0.0.1".into(),
            "MASTER_PORT" => "29500".into(),
            "RANK" => "0".into(),
            "WORLD_SIZE" => "2".into(),
            _ => return None,
        })
    })
    .unwrap()
    .unwrap();
    let err = ProcessGroup::connect(&env, &DistOptions::default()).err().expect("no distributed support");
    assert_eq!(format!("{err:#}"), dist::no_support_message());
    true
}

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

fn child_timeout_env(ms: &str) -> [(&'static str, String); 1] {
    [("FZ_DIST_TIMEOUT_MS", ms.to_string())]
}

#[test]
fn rank_that_exits_early_makes_the_other_fail_clearly() {
    if let Some(pg) = child_group() {
        if pg.rank() == 1 {
            std::process::exit(0);
        }
        let t0 = Instant::now();
        let err = pg.all_reduce_mean(&[Tensor::ones([1000], (Kind::Float, Device::Cpu))]).unwrap_err();
        println!("FZ-ERROR after {:.2} s: {err:#}", t0.elapsed().as_secs_f64());
        return;
    }
    if unsupported_build_says_so() {
        return;
    }
    let [(k, v)] = child_timeout_env("4000");
    let t0 = Instant::now();
    let outs = run_ranks("rank_that_exits_early_makes_the_other_fail_clearly", 2, 2, &[(k, &v)]);
    assert_all_ok(&outs);
    assert!(t0.elapsed() < Duration::from_secs(20), "took {:?}", t0.elapsed());
    let out = text(&outs[0]);
    assert!(out.contains("FZ-ERROR") && out.contains("all-reduce of tensor 0 failed on rank 0 of 2"), "{out}");
}

#[test]
fn rank_that_stops_answering_times_out() {
    if let Some(pg) = child_group() {
        if pg.rank() == 1 {
            // Alive but silent: never joins the collective, exits after rank 0 gave up.
            std::thread::sleep(Duration::from_secs(4));
            std::process::exit(0);
        }
        let t0 = Instant::now();
        let err = pg.barrier().unwrap_err();
        println!("FZ-ERROR after {:.2} s: {err:#}", t0.elapsed().as_secs_f64());
        return;
    }
    if unsupported_build_says_so() {
        return;
    }
    let [(k, v)] = child_timeout_env("1500");
    let outs = run_ranks("rank_that_stops_answering_times_out", 2, 2, &[(k, &v)]);
    assert_all_ok(&outs);
    let out = text(&outs[0]);
    assert!(out.contains("FZ-ERROR") && out.contains("barrier failed on rank 0 of 2"), "{out}");
    let secs: f64 = out.split("FZ-ERROR after ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!((1.0..5.5).contains(&secs), "gave up after {secs} s with a 1.5 s timeout:\n{out}");
}

#[test]
fn rank_that_never_arrives_fails_rendezvous() {
    if std::env::var(CHILD).is_ok() {
        let env = DistEnv::from_env().unwrap().unwrap();
        let opts = DistOptions { timeout: Duration::from_millis(1500), gloo_device: Some(GlooDevice::Hostname("127.0.0.1".into())), ..DistOptions::default() };
        let t0 = Instant::now();
        let err = ProcessGroup::connect(&env, &opts).err().expect("rank 1 never comes");
        println!("FZ-ERROR after {:.2} s: {err:#}", t0.elapsed().as_secs_f64());
        return;
    }
    if unsupported_build_says_so() {
        return;
    }
    let outs = run_ranks("rank_that_never_arrives_fails_rendezvous", 2, 1, &[]);
    assert_all_ok(&outs);
    let out = text(&outs[0]);
    assert!(out.contains("FZ-ERROR") && out.contains("as rank 0 of 2"), "{out}");
    let secs: f64 = out.split("FZ-ERROR after ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(secs < 6.0, "gave up after {secs} s with a 1.5 s timeout:\n{out}");
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

/// A small model whose weights depend only on the seed, and a rank-dependent loss.
fn tiny_net(vs: &tch::nn::VarStore) -> impl Fn(&Tensor) -> Tensor {
    use tch::nn::{self, Module};
    let root = vs.root();
    let seq = nn::seq()
        .add(nn::linear(&root / "a", 6, 32, Default::default()))
        .add_fn(|x| x.tanh())
        .add(nn::linear(&root / "b", 32, 32, Default::default()))
        .add_fn(|x| x.tanh())
        .add(nn::linear(&root / "c", 32, 3, Default::default()));
    move |x: &Tensor| seq.forward(x).square().mean(Kind::Float)
}

fn input_of(rank: usize, step: usize) -> Tensor {
    Tensor::arange(8 * 6, (Kind::Float, Device::Cpu)).view([8, 6]).cos() * (1.0 + rank as f64 + 0.5 * step as f64)
}

fn sorted_params(vs: &tch::nn::VarStore) -> Vec<Tensor> {
    let mut named = vs.variables().into_iter().collect::<Vec<_>>();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named.into_iter().map(|(_, t)| t).collect()
}

fn zero_grads(params: &[Tensor]) {
    for p in params {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
}

#[test]
fn ddp_reducer_averages_gradients_during_backward() {
    use flowzoo::dist::{DdpOptions, DdpReducer};
    if let Some(pg) = child_group() {
        for as_view in [false, true] {
            tch::manual_seed(3);
            let vs = tch::nn::VarStore::new(Device::Cpu);
            let loss_of = tiny_net(&vs);
            let params = sorted_params(&vs);
            // Every rank computes both ranks' gradients alone first (no reducer yet).
            let mut expected: Vec<Vec<Tensor>> = Vec::new();
            let mut own_first: Vec<Tensor> = Vec::new();
            for step in 0..2 {
                let mut sum: Option<Vec<Tensor>> = None;
                for r in 0..2 {
                    zero_grads(&params);
                    loss_of(&input_of(r, step)).backward();
                    let g: Vec<Tensor> = params.iter().map(|p| p.grad().copy()).collect();
                    if r == pg.rank() && step == 0 {
                        own_first = g.iter().map(|t| t.copy()).collect();
                    }
                    sum = Some(match sum {
                        None => g,
                        Some(s) => s.iter().zip(&g).map(|(a, b)| a + b).collect(),
                    });
                }
                expected.push(sum.unwrap().iter().map(|s| s * 0.5).collect());
            }
            zero_grads(&params);
            let opts = DdpOptions { bucket_bytes: 1024, first_bucket_bytes: 256, gradient_as_bucket_view: as_view };
            let reducer = DdpReducer::new(&pg, &params, opts).unwrap();
            assert!(reducer.bucket_count() >= 3, "{}", reducer.bucket_count());
            for (step, want) in expected.iter().enumerate() {
                zero_grads(&params);
                let loss = loss_of(&input_of(pg.rank(), step));
                if as_view {
                    reducer.backward(&loss).unwrap();
                } else {
                    reducer.prepare_for_backward(&loss).unwrap();
                    loss.backward();
                }
                for (i, (p, w)) in params.iter().zip(want).enumerate() {
                    let got = p.grad();
                    let diff = (&got - w).abs().max().double_value(&[]);
                    assert!(diff < 1e-6, "parameter {i}, step {step}, as_view {as_view}: off by {diff}");
                }
            }
            // An unprepared backward is left alone (this rank's own gradients).
            zero_grads(&params);
            loss_of(&input_of(pg.rank(), 0)).backward();
            for (i, (p, own)) in params.iter().zip(&own_first).enumerate() {
                assert!(p.grad().allclose(own, 1e-6, 1e-7, false), "parameter {i}: an unprepared backward was all-reduced");
            }
            pg.barrier().unwrap();
        }
        return;
    }
    if unsupported_build_says_so() {
        return;
    }
    assert_all_ok(&run_ranks("ddp_reducer_averages_gradients_during_backward", 2, 2, &[]));
}

#[test]
fn ddp_backward_fails_clearly_when_a_rank_exits() {
    use flowzoo::dist::{DdpOptions, DdpReducer};
    if let Some(pg) = child_group() {
        tch::manual_seed(3);
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let loss_of = tiny_net(&vs);
        let params = sorted_params(&vs);
        let reducer = DdpReducer::new(&pg, &params, DdpOptions::default()).unwrap();
        if pg.rank() == 1 {
            std::process::exit(0);
        }
        let err = reducer.backward(&loss_of(&input_of(0, 0))).unwrap_err();
        println!("FZ-ERROR: {err:#}");
        return;
    }
    if unsupported_build_says_so() {
        return;
    }
    let [(k, v)] = child_timeout_env("4000");
    let t0 = Instant::now();
    let outs = run_ranks("ddp_backward_fails_clearly_when_a_rank_exits", 2, 2, &[(k, &v)]);
    assert_all_ok(&outs);
    assert!(t0.elapsed() < Duration::from_secs(20), "took {:?}", t0.elapsed());
    let out = text(&outs[0]);
    assert!(out.contains("FZ-ERROR: backward with DDP's gradient all-reduce failed on rank 0 of 2") && out.contains("Connection closed by peer"), "{out}");
}
