//! Times the gradient all-reduce of real flowzoo models between processes (Gloo): one call
//! per parameter, all parameters started at once, c10d's coalesced all-reduce, and
//! GradBuckets (with and without starting buckets as soon as they are packed).
//!
//!   cargo run --release --example dist_allreduce -- [--world 2] [--reps 20] [--bucket-mib 25,4,1]
//!       [--step-batch 64] [CONFIG[:KEY=VALUE,...]]...
//!
//! Then, for the first model, whole training steps (forward, backward, gradient mean) with
//! `--step-batch` random images per rank: backward alone, backward then a barrier (the cost
//! of waiting for the slower rank, no data), backward then GradBuckets, and DdpReducer
//! (all-reduce from autograd hooks, overlapped with backward), taking turns.
//!
//! Without torchrun's variables it starts `--world` copies of itself on loopback (one libtorch
//! thread each) and prints rank 0's table; under torchrun each rank measures and rank 0
//! prints. Gradients are random tensors shaped like the model's parameters.
use anyhow::{bail, Context, Result};
use flowzoo::config::Config;
use flowzoo::dist::{BucketOptions, DistEnv, DistOptions, GlooDevice, GradBuckets, ProcessGroup};
use std::path::Path;
use std::process::Command;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

struct Args {
    world: usize,
    reps: usize,
    bucket_mib: Vec<f64>,
    /// Batch per rank of the training-step timing (0: skip it).
    step_batch: i64,
    models: Vec<String>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args { world: 2, reps: 20, bucket_mib: vec![25.0, 4.0, 1.0], step_batch: 64, models: Vec::new() };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--world" => args.world = it.next().context("--world needs a value")?.parse()?,
            "--reps" => args.reps = it.next().context("--reps needs a value")?.parse()?,
            "--step-batch" => args.step_batch = it.next().context("--step-batch needs a value")?.parse()?,
            "--bucket-mib" => {
                let list = it.next().context("--bucket-mib needs a comma-separated list")?;
                args.bucket_mib = list.split(',').map(|v| v.parse()).collect::<Result<_, _>>()?;
            }
            _ if a.starts_with("--") => bail!("unknown flag {a}"),
            _ => args.models.push(a),
        }
    }
    if args.models.is_empty() {
        args.models = vec![
            "configs/glow_digits.toml".into(),
            "configs/glow_cifar10.toml:model.steps=8,model.width=256".into(),
            "configs/glow_cifar10.toml".into(),
        ];
    }
    Ok(args)
}

fn load_config(spec: &str) -> Result<Config> {
    let (path, overrides) = match spec.split_once(':') {
        Some((p, o)) => (p, o.split(',').map(str::to_string).collect::<Vec<_>>()),
        None => (spec, Vec::new()),
    };
    Config::load(Path::new(path))?.with_overrides(&overrides)
}

/// The trainable parameters of `vs`, in name order (the same on every rank).
fn trainable(vs: &nn::VarStore) -> Vec<Tensor> {
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named.into_iter().map(|(_, t)| t).collect()
}

/// The parameter shapes of the model a `CONFIG[:overrides]` spec names.
fn param_shapes(spec: &str) -> Result<Vec<Vec<i64>>> {
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = flowzoo::models::build(&load_config(spec)?, vs.root(), 10)?;
    Ok(trainable(&vs).iter().map(|t| t.size()).collect())
}

fn zero_grads(params: &[Tensor]) {
    for p in params {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
}

/// Whole training steps of the model `spec` names on random images, three ways.
fn measure_steps(pg: &ProcessGroup, spec: &str, batch: i64, reps: usize) -> Result<()> {
    use flowzoo::flows::Ctx;
    let cfg = load_config(spec)?;
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = flowzoo::models::build(&cfg, vs.root(), 10)?;
    let params = trainable(&vs);
    pg.broadcast(&params.iter().map(|p| p.detach()).collect::<Vec<_>>(), 0)?;
    let shape: Vec<i64> = std::iter::once(batch).chain(model.event_shape()).collect();
    tch::manual_seed(1 + pg.rank() as i64);
    let x = Tensor::rand(shape.as_slice(), (Kind::Float, Device::Cpu)) - 0.5;
    tch::no_grad(|| model.log_prob(&x, &Ctx { data_init: true, train: true, ..Ctx::default() })).map(|_| ())?;
    let loss = || -> Result<Tensor> { Ok(model.log_prob(&x, &Ctx::train())?.f_mean(Kind::Float)?.f_neg()?) };
    zero_grads(&params);
    loss()?.f_backward()?;
    let grads: Vec<Tensor> = params.iter().map(|p| p.grad()).collect();
    let mut buckets = GradBuckets::new(&grads, BucketOptions::default())?;
    let reducer = flowzoo::dist::DdpReducer::new(pg, &params, flowzoo::dist::DdpOptions::default())?;
    // The three variants take turns, so the machine's load drifts over all of them alike.
    let mut secs: [Vec<f64>; 4] = Default::default();
    for rep in 0..reps + 2 {
        for (v, times) in secs.iter_mut().enumerate() {
            pg.barrier()?;
            let t0 = Instant::now();
            zero_grads(&params);
            match v {
                0 => loss()?.f_backward()?,
                1 => {
                    loss()?.f_backward()?;
                    let grads: Vec<Tensor> = params.iter().map(|p| p.grad()).collect();
                    buckets.all_reduce_mean(pg, &grads)?
                }
                2 => reducer.backward(&loss()?)?,
                _ => {
                    // No data moved: what waiting for the slower rank costs by itself.
                    loss()?.f_backward()?;
                    pg.barrier()?
                }
            }
            if rep >= 2 {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
    }
    let [local, bucketed, ddp, synced] = secs.map(|mut t| {
        t.sort_by(|a, b| a.partial_cmp(b).unwrap());
        t[t.len() / 2]
    });
    if pg.rank() == 0 {
        println!("\n{spec}: training step (forward + backward + gradient mean), batch {batch} per rank, {} processes", pg.world_size());
        println!("  {:<55} {:>9.1} ms/step", "backward only (no communication)", local * 1e3);
        println!("  {:<55} {:>9.1} ms/step  (+{:.1} ms)", "backward, then a barrier (waiting for the slower rank)", synced * 1e3, (synced - local) * 1e3);
        println!("  {:<55} {:>9.1} ms/step  (+{:.1} ms)", "backward, then GradBuckets (25 MiB)", bucketed * 1e3, (bucketed - local) * 1e3);
        let label = format!("DdpReducer ({} buckets, overlapped with backward)", reducer.bucket_count());
        println!("  {label:<55} {:>9.1} ms/step  (+{:.1} ms)", ddp * 1e3, (ddp - local) * 1e3);
    }
    Ok(())
}

/// Median seconds per call of `f` over `reps` calls (after two warm-up calls).
fn time(pg: &ProcessGroup, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..2 {
        f()?;
    }
    let mut secs = Vec::with_capacity(reps);
    for _ in 0..reps {
        pg.barrier()?;
        let t0 = Instant::now();
        f()?;
        secs.push(t0.elapsed().as_secs_f64());
    }
    secs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok(secs[secs.len() / 2])
}

fn measure(pg: &ProcessGroup, args: &Args) -> Result<()> {
    let rank = pg.rank();
    if args.step_batch > 0 {
        measure_steps(pg, &args.models[0], args.step_batch, args.reps)?;
    }
    for spec in &args.models {
        let shapes = param_shapes(spec)?;
        let numel: i64 = shapes.iter().map(|s| s.iter().product::<i64>()).sum();
        pg.check_consistent(&[("model", spec.clone()), ("numel", numel.to_string())])?;
        let grads: Vec<Tensor> = shapes.iter().map(|s| Tensor::randn(s.as_slice(), (Kind::Float, Device::Cpu))).collect();
        let flat = Tensor::randn([numel], (Kind::Float, Device::Cpu));
        let mut rows: Vec<(String, f64)> = Vec::new();
        rows.push(("one flat tensor (lower bound)".into(), time(pg, args.reps, || pg.all_reduce_mean(std::slice::from_ref(&flat)))?));
        rows.push((
            "per tensor, one at a time".into(),
            time(pg, args.reps, || {
                for g in &grads {
                    pg.all_reduce_mean(std::slice::from_ref(g))?;
                }
                Ok(())
            })?,
        ));
        rows.push(("per tensor, all started at once".into(), time(pg, args.reps, || pg.all_reduce_mean(&grads))?));
        rows.push((
            "c10d allreduce_coalesced".into(),
            time(pg, args.reps, || {
                pg.all_reduce_coalesced_sum(&grads)?;
                for g in &grads {
                    let _ = g.shallow_clone().f_div_scalar_(pg.world_size() as f64)?;
                }
                Ok(())
            })?,
        ));
        let first = args.bucket_mib[0];
        let variants = std::iter::once((first, false)).chain(args.bucket_mib.iter().map(|&m| (m, true)));
        for (mib, overlap) in variants {
            let bucket_bytes = (mib * 1048576.0) as usize;
            let mut b = GradBuckets::new(&grads, BucketOptions { bucket_bytes, overlap })?;
            let n = b.bucket_count();
            let t = time(pg, args.reps, || b.all_reduce_mean(pg, &grads))?;
            let mode = if overlap { "each started when packed" } else { "started after packing all" };
            rows.push((format!("GradBuckets {mib} MiB ({n} buckets), {mode}"), t));
        }
        if rank == 0 {
            println!("\n{spec}: {} tensors, {numel} float32 ({:.2} MB), {} processes", shapes.len(), numel as f64 * 4e-6, pg.world_size());
            for (what, t) in rows {
                println!("  {what:<55} {:>9.3} ms/call  {:>7.1} MB/s", t * 1e3, numel as f64 * 4e-6 / t);
            }
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = parse_args()?;
    match DistEnv::from_env()? {
        Some(env) => {
            tch::set_num_threads(1);
            // Loopback runs bind Gloo to loopback; otherwise c10d's default (this host's name).
            let local = ["127.0.0.1", "localhost"].contains(&env.master_addr.as_str());
            let gloo_device = local.then(|| GlooDevice::Hostname("127.0.0.1".into()));
            let opts = DistOptions { gloo_device, ..DistOptions::default() };
            let pg = ProcessGroup::connect(&env, &opts)?;
            measure(&pg, &args)
        }
        None => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port().to_string();
            let exe = std::env::current_exe()?;
            let children: Vec<_> = (0..args.world)
                .map(|rank| {
                    Command::new(&exe)
                        .args(std::env::args().skip(1))
                        .env("MASTER_ADDR", "127.0.0.1")
                        .env("MASTER_PORT", &port)
                        .env("RANK", rank.to_string())
                        .env("WORLD_SIZE", args.world.to_string())
                        .spawn()
                })
                .collect::<Result<_, _>>()?;
            for (rank, mut c) in children.into_iter().enumerate() {
                let status = c.wait()?;
                if !status.success() {
                    bail!("rank {rank} failed: {status}");
                }
            }
            Ok(())
        }
    }
}
