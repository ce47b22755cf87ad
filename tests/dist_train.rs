//! `flowzoo train` as several processes (c10d over Gloo, loopback), on a tiny Glow, launched by
//! torchrun (one machine, and two `--nnodes 2` launches) when the venv has it, by hand
//! otherwise: the same weights as one process with the whole batch, only rank 0 writes, exact `--resume`, a
//! killed, stopped or missing rank gives a clear error within the timeout, a config mismatch
//! is named, and one process under torchrun is bit for bit the run without it.
mod dist_support;
use dist_support::*;
use flowzoo::io::read_safetensors;
use flowzoo::train::MetricsLog;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tch::Tensor;

/// A tiny Glow on the bundled digits: a few seconds for a run.
fn tiny(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["train", "--config", "configs/glow_digits.toml", "-q", "--out"].iter().map(|s| s.to_string()).collect();
    a.push(out.display().to_string());
    for kv in [
        "model.steps=2", "model.width=16", "train.threads=1", "train.device=\"cpu\"", "train.sample_every=0", "train.n_samples=4",
        "train.log_every=2", "train.warmup_steps=2", "train.checkpoint_every=0", "train.eval_every=4", "train.dist_timeout_s=60",
    ] {
        a.extend(["--set".to_string(), kv.to_string()]);
    }
    for kv in extra {
        a.extend(["--set".to_string(), kv.to_string()]);
    }
    a
}

/// Runs `args_of(rank)` as ranks 0..world by hand and expects every rank to succeed.
fn ranks_ok(dir: &Path, world: usize, args_of: impl Fn(usize) -> Vec<String>) -> Vec<String> {
    let port = free_port();
    let procs = (0..world).map(|r| spawn_flowzoo_rank(dir, port, r, world, &args_of(r))).collect();
    let outs = wait_procs(procs, Duration::from_secs(240));
    for (rank, (status, out)) in outs.iter().enumerate() {
        assert!(status.success(), "rank {rank} failed ({status}):\n{out}");
    }
    outs.into_iter().map(|(_, o)| o).collect()
}

fn one_process(args: &[String]) {
    let o = Command::new(env!("CARGO_BIN_EXE_flowzoo")).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).env_remove("WORLD_SIZE").env_remove("RANK").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn tensors(path: &Path) -> BTreeMap<String, Tensor> {
    read_safetensors(path).unwrap().0
}

/// The largest absolute difference between two files' tensors (same names required).
fn max_diff(a: &Path, b: &Path) -> f64 {
    let (a, b) = (tensors(a), tensors(b));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter().map(|(k, t)| (t - &b[k]).abs().max().double_value(&[])).fold(0.0, f64::max)
}

fn metrics(run: &Path) -> MetricsLog {
    MetricsLog::read(&run.join("metrics.csv"), MetricsLog::IMAGE_COLUMNS, i64::MAX).unwrap()
}

fn column(m: &MetricsLog, name: &str) -> Vec<String> {
    let j = m.columns.iter().position(|c| c == name).unwrap();
    m.rows.iter().map(|r| r[j].clone()).collect()
}

#[test]
fn two_ranks_with_batch_b_match_one_process_with_batch_2b() {
    if train_without_support_says_so() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let single = d.path().join("single");
    one_process(&tiny(&single, &["train.batch_size=32", "train.max_steps=8"]));
    for sync in ["overlap", "after_backward"] {
        let run = d.path().join(sync);
        let args = tiny(&run, &["train.batch_size=16", "train.max_steps=8", &format!("train.grad_sync=\"{sync}\"")]);
        match torchrun() {
            // torchrun as users launch it (its agent hosts the store).
            Some(tr) if sync == "overlap" => {
                let o = Command::new(tr)
                    .args(["--nproc-per-node", "2", "--master-port", &free_port().to_string(), "--no-python", env!("CARGO_BIN_EXE_flowzoo")])
                    .args(&args)
                    .current_dir(env!("CARGO_MANIFEST_DIR"))
                    .env("GLOO_SOCKET_IFNAME", "lo")
                    .output()
                    .unwrap();
                assert!(o.status.success(), "torchrun failed:\n{}", String::from_utf8_lossy(&o.stderr));
            }
            // Two machines' launches (--nnodes 2), here both on this one.
            Some(tr) => {
                let port = free_port().to_string();
                let nodes: Vec<_> = (0..2)
                    .map(|node| {
                        Command::new(&tr)
                            .args(["--nnodes", "2", "--node-rank", &node.to_string(), "--nproc-per-node", "1"])
                            .args(["--master-addr", "127.0.0.1", "--master-port", &port, "--no-python", env!("CARGO_BIN_EXE_flowzoo")])
                            .args(&args)
                            .current_dir(env!("CARGO_MANIFEST_DIR"))
                            .env("GLOO_SOCKET_IFNAME", "lo")
                            .stdout(std::process::Stdio::piped())
                            .stderr(std::process::Stdio::piped())
                            .spawn()
                            .unwrap()
                    })
                    .collect();
                for (node, child) in nodes.into_iter().enumerate() {
                    let o = child.wait_with_output().unwrap();
                    assert!(o.status.success(), "torchrun --node-rank {node} failed:\n{}", String::from_utf8_lossy(&o.stderr));
                }
            }
            None => {
                ranks_ok(d.path(), 2, |_| args.clone());
            }
        }
        // Not bit for bit: the sums over the batch run in another order (two halves, then
        // their mean), a few ulps per step that Adam carries on; 8 steps stay below 1e-5.
        let w = max_diff(&run.join("weights.safetensors"), &single.join("weights.safetensors"));
        assert!(w < 1e-5, "{sync}: weights differ by {w} from one process with batch 32");
        let o = max_diff(&run.join("optimizer.safetensors"), &single.join("optimizer.safetensors"));
        assert!(o < 1e-5, "{sync}: optimizer state differs by {o}");
        let (m, s) = (metrics(&run), metrics(&single));
        for (a, b) in column(&m, "train_bpd").iter().zip(column(&s, "train_bpd")) {
            let (a, b): (f64, f64) = (a.parse().unwrap(), b.parse().unwrap());
            assert!((a - b).abs() < 1e-4, "{sync}: train loss averaged over the ranks {a} vs one process {b}");
        }
        // Evaluation: each rank scores half the test set with its own noise.
        let (a, b): (f64, f64) = (column(&m, "test_bpd")[3].parse().unwrap(), column(&s, "test_bpd")[3].parse().unwrap());
        assert!((a - b).abs() < 0.05, "{sync}: test bits/dim {a} vs {b}");
        let ms: Vec<f64> = column(&m, "allreduce_ms").iter().map(|v| v.parse().unwrap()).collect();
        assert!(ms.iter().all(|&v| v > 0.0 && v < 10_000.0), "{sync}: all-reduce times {ms:?}");
        assert!(column(&s, "allreduce_ms").iter().all(String::is_empty), "one process has no all-reduce");
    }
}

#[test]
fn only_rank_zero_writes_and_resume_continues_exactly() {
    if train_without_support_says_so() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (run, elsewhere) = (d.path().join("run"), d.path().join("rank1_out"));
    // Rank 1 is pointed elsewhere: nothing may appear there.
    ranks_ok(d.path(), 2, |r| tiny(if r == 0 { &run } else { &elsewhere }, &["train.batch_size=16", "train.max_steps=6", "train.eval_every=3"]));
    assert!(!elsewhere.exists(), "rank 1 wrote {}", elsewhere.display());
    for f in ["config.toml", "weights.safetensors", "optimizer.safetensors", "state.json", "metrics.csv", "best.safetensors", "curves.png", "samples/final.png"] {
        assert!(run.join(f).is_file(), "rank 0 did not write {f}");
    }
    // Every rank resumes from the checkpoint; the result is the uninterrupted run's.
    let resume = |_rank: usize| -> Vec<String> {
        ["train", "--resume", "-q", "--out", run.to_str().unwrap(), "--set", "train.max_steps=10"].iter().map(|s| s.to_string()).collect()
    };
    ranks_ok(d.path(), 2, resume);
    let (whole, whole1) = (d.path().join("whole"), d.path().join("whole1"));
    ranks_ok(d.path(), 2, |r| tiny(if r == 0 { &whole } else { &whole1 }, &["train.batch_size=16", "train.max_steps=10", "train.eval_every=3"]));
    for f in ["weights.safetensors", "optimizer.safetensors"] {
        let diff = max_diff(&run.join(f), &whole.join(f));
        assert_eq!(diff, 0.0, "{f}: the resumed run differs from the uninterrupted one by {diff}");
    }
    assert_eq!(column(&metrics(&run), "train_bpd"), column(&metrics(&whole), "train_bpd"));
}

#[test]
fn a_killed_rank_makes_the_other_fail_clearly_at_once() {
    if train_without_support_says_so() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let port = free_port();
    let run = d.path().join("run");
    let mut args = tiny(&run, &["train.max_steps=100000", "train.eval_every=0", "train.dist_timeout_s=20"]);
    args.retain(|a| a != "-q");
    let rank0 = spawn_flowzoo_rank(d.path(), port, 0, 2, &args);
    let mut rank1 = spawn_flowzoo_rank(d.path(), port, 1, 2, &args);
    // Rank 0 prints its data-parallel line just before the first step.
    let t0 = Instant::now();
    while !rank0.output().contains("data-parallel:") {
        assert!(t0.elapsed() < Duration::from_secs(120), "never started:\n{}\n{}", rank0.output(), rank1.output());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    rank1.child.kill().unwrap();
    let _ = rank1.child.wait();
    let killed = Instant::now();
    let outs = wait_procs(vec![rank0], Duration::from_secs(60));
    let (status, out) = &outs[0];
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("failed on rank 0 of 2") && out.contains("a peer process exited"), "{out}");
    // Whether a step was logged before the kill depends on the machine: only the error matters.
    assert!(!out.contains("panicked"), "{out}");
    // Gloo sees the closed connection: no need to wait for the 20 s timeout.
    assert!(killed.elapsed() < Duration::from_secs(15), "took {:?}:\n{out}", killed.elapsed());
}

#[test]
fn a_stopped_rank_times_out_and_a_missing_one_fails_rendezvous() {
    if train_without_support_says_so() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    // A rank that never arrives: rank 0 gives up after train.dist_timeout_s.
    let args = tiny(&d.path().join("alone"), &["train.dist_timeout_s=3"]);
    let t0 = Instant::now();
    let outs = wait_procs(vec![spawn_flowzoo_rank(d.path(), free_port(), 0, 2, &args)], Duration::from_secs(60));
    let (status, out) = &outs[0];
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("rendezvous at 127.0.0.1") && out.contains("as rank 0 of 2") && out.contains("timeout 3 s"), "{out}");
    assert!((2.5..20.0).contains(&t0.elapsed().as_secs_f64()), "gave up after {:?} with a 3 s timeout", t0.elapsed());
    // A rank that stops answering mid-run (SIGSTOP): the other fails after the timeout.
    let port = free_port();
    let mut args = tiny(&d.path().join("run"), &["train.max_steps=100000", "train.eval_every=0", "train.dist_timeout_s=4"]);
    args.retain(|a| a != "-q");
    let rank0 = spawn_flowzoo_rank(d.path(), port, 0, 2, &args);
    let mut rank1 = spawn_flowzoo_rank(d.path(), port, 1, 2, &args);
    let t0 = Instant::now();
    while !rank0.output().contains("data-parallel:") {
        assert!(t0.elapsed() < Duration::from_secs(120), "never started:\n{}", rank0.output());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let pid = rank1.child.id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let stopped = Instant::now();
    let outs = wait_procs(vec![rank0], Duration::from_secs(60));
    let waited = stopped.elapsed();
    let _ = rank1.child.kill();
    let _ = rank1.child.wait();
    let (status, out) = &outs[0];
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("failed on rank 0 of 2") && out.contains("did not answer within 4 s"), "{out}");
    assert!((3.0..20.0).contains(&waited.as_secs_f64()), "gave up {waited:?} after the peer stopped, with a 4 s timeout:\n{out}");
}

#[test]
fn a_config_mismatch_between_ranks_is_named() {
    if train_without_support_says_so() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let port = free_port();
    let procs = (0..2)
        .map(|r| {
            let width = if r == 0 { "model.width=16" } else { "model.width=8" };
            spawn_flowzoo_rank(d.path(), port, r, 2, &tiny(&d.path().join(format!("run{r}")), &[width]))
        })
        .collect();
    for (rank, (status, out)) in wait_procs(procs, Duration::from_secs(120)).iter().enumerate() {
        assert_eq!(status.code(), Some(1), "rank {rank}:\n{out}");
        assert!(out.contains("config mismatch between ranks") && out.contains("model.width differs (rank 0: \"16\"; rank 1: \"8\")"), "rank {rank}:\n{out}");
        assert!(!out.contains("variable "), "the key is named, not the shapes it changed:\n{out}");
    }
}

#[test]
fn one_process_under_torchrun_is_bit_identical_to_none() {
    if train_without_support_says_so() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (plain, launched) = (d.path().join("plain"), d.path().join("launched"));
    let extra = ["train.batch_size=16", "train.max_steps=6", "train.eval_every=3", "train.sample_every=3"];
    one_process(&tiny(&plain, &extra));
    let args = tiny(&launched, &extra);
    match torchrun() {
        Some(tr) => {
            let o = Command::new(tr)
                .args(["--nproc-per-node", "1", "--master-port", &free_port().to_string(), "--no-python", env!("CARGO_BIN_EXE_flowzoo")])
                .args(&args)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .env("GLOO_SOCKET_IFNAME", "lo")
                .output()
                .unwrap();
            assert!(o.status.success(), "torchrun failed:\n{}", String::from_utf8_lossy(&o.stderr));
        }
        None => {
            ranks_ok(d.path(), 1, |_| args.clone());
        }
    }
    // Tensors bit for bit (the files' metadata order is a hash map's, so not their bytes).
    for f in ["weights.safetensors", "optimizer.safetensors", "best.safetensors"] {
        let (a, b) = (tensors(&plain.join(f)), tensors(&launched.join(f)));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "{f}");
        for (k, t) in &a {
            assert!(t.kind() == b[k].kind() && t.equal(&b[k]), "{f}: {k} differs");
        }
    }
    for f in ["samples/step_0000003.png", "samples/final.png"] {
        assert!(std::fs::read(plain.join(f)).unwrap() == std::fs::read(launched.join(f)).unwrap(), "{f} differs");
    }
    let (a, b) = (metrics(&plain), metrics(&launched));
    for c in ["step", "lr", "train_bpd", "grad_norm", "test_bpd", "skipped_steps"] {
        assert_eq!(column(&a, c), column(&b, c), "metrics column {c}");
    }
}

#[test]
fn a_non_finite_loss_on_one_rank_skips_the_step_on_every_rank() {
    use flowzoo::config::Config;
    use flowzoo::dist::DistEnv;
    use flowzoo::session::Session;
    use flowzoo::train::{DataParallel, StepOutcome, Trainer};
    use tch::{Device, Kind};
    if std::env::var(CHILD).is_ok() {
        let overrides: Vec<String> = ["model.steps=2", "model.width=16", "train.warmup_steps=0", "train.dist_timeout_s=30"].iter().map(|s| s.to_string()).collect();
        let cfg = Config::load(Path::new("configs/glow_digits.toml")).unwrap().with_overrides(&overrides).unwrap();
        tch::set_num_threads(1);
        let mut tr = Trainer::new(Session::new(&cfg, vec![], Device::Cpu).unwrap(), vec![]).unwrap();
        let env = DistEnv::from_env().unwrap().unwrap();
        let rank = env.rank;
        tch::manual_seed(7);
        let x = Tensor::rand([8, 1, 8, 8], (Kind::Float, Device::Cpu)) - 0.5;
        tr.data_init(&x, None).unwrap();
        tr.parallel = Some(DataParallel::connect(&env, &cfg, Device::Cpu).unwrap());
        let weights = |tr: &Trainer| Tensor::cat(&tr.opt.params().iter().map(|(_, p)| p.detach().reshape([-1])).collect::<Vec<_>>(), 0);
        let before = weights(&tr);
        // Only rank 1's batch holds a NaN: both ranks must skip. Two things carry that (each
        // alone suffices here, checked by breaking them): rank 1's NaN gradients poison the
        // averaged ones, and the loss is averaged too.
        let bad = x.copy();
        if rank == 1 {
            let _ = bad.get(0).fill_(f64::NAN);
        }
        let first = tr.train_step(&bad, None).unwrap();
        assert!(matches!(first, StepOutcome::Skipped { .. }), "rank {rank}: {first:?}");
        assert!(weights(&tr).equal(&before), "rank {rank} changed its weights on a skipped step");
        assert_eq!(tr.state.skipped_steps, 1);
        // Then a finite step on both, and the ranks still hold the same weights, bit for bit.
        let second = tr.train_step(&(&x * (1.0 + rank as f64 * 0.1)), None).unwrap();
        assert!(matches!(second, StepOutcome::Updated { .. }), "rank {rank}: {second:?}");
        let w = weights(&tr);
        assert!(!w.equal(&before));
        let all = tr.parallel.as_ref().unwrap().group().all_gather(&w).unwrap();
        assert!(all[0].equal(&all[1]), "the ranks' weights differ after an averaged step");
        return;
    }
    if train_without_support_says_so() {
        return;
    }
    assert_all_ok(&run_ranks("a_non_finite_loss_on_one_rank_skips_the_step_on_every_rank", 2, 2, &[("GLOO_SOCKET_IFNAME", "lo")]));
}
