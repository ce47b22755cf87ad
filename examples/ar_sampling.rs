//! Sampling throughput of a trained tabular run, in process (bench/bench_ar.py runs this for
//! flowzoo's side of the sampling table): `ar_sampling RUN N REPEATS [sequential|jacobi]`
//! prints one JSON object: samples/s (median over at most REPEATS timed calls of
//! `model.sample(N)` under no_grad, after one warm-up call; at least 3, and no more once 8 s are
//! spent) and the MADE passes one call makes (from `ctx.sink`).
//! Threads: libtorch's default (OMP_NUM_THREADS).
use anyhow::{bail, Context, Result};
use flowzoo::config::InverseChoice;
use flowzoo::flows::{Ctx, Sink};
use flowzoo::io::{Checkpoint, RunDir};
use flowzoo::models::DataInfo;
use flowzoo::session::Session;
use std::time::Instant;
use tch::{Device, Kind};

fn main() -> Result<()> {
    // As the flowzoo binary does at start.
    flowzoo::runtime::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        bail!("usage: ar_sampling RUN N REPEATS [sequential|jacobi]");
    }
    let run = RunDir::open(args[1].as_ref())?;
    let n: i64 = args[2].parse().context("N")?;
    let repeats: usize = args[3].parse().context("REPEATS")?;
    let mut cfg = run.load_config()?;
    match args.get(4).map(String::as_str) {
        None | Some("sequential") => cfg.model.inverse = InverseChoice::Sequential,
        Some("jacobi") => cfg.model.inverse = InverseChoice::Jacobi,
        Some(other) => bail!("unknown inverse {other:?}: sequential or jacobi"),
    }
    let state = run.load_state()?;
    let sess = Session::new_for(&cfg, DataInfo { classes: state.classes, columns: state.columns }, Device::Cpu)?;
    sess.load_weights(&run.checkpoint_path(Checkpoint::Last))?;
    let _g = tch::no_grad_guard();
    let like = (Kind::Float, Device::Cpu);
    let sink = Sink::new();
    let _ = sess.model.sample(n.min(16), 1.0, &Ctx::eval(), like)?;
    // At most REPEATS timed calls, and no more once 3 are done and 8 s have been spent.
    let mut times = vec![];
    for r in 0..repeats {
        if r >= 3 && times.iter().sum::<f64>() > 8.0 {
            break;
        }
        tch::manual_seed(r as i64);
        let sink_r = Sink::new();
        let ctx = if r == 0 { Ctx::eval().with_sink(&sink) } else { Ctx::eval().with_sink(&sink_r) };
        let t = Instant::now();
        let s = sess.model.sample(n, 1.0, &ctx, like)?;
        times.push(t.elapsed().as_secs_f64());
        if !bool::try_from(s.isfinite().all())? {
            bail!("non-finite samples");
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    let passes = sink.counters().get("made_passes").copied().unwrap_or(0.0);
    println!(
        "{}",
        serde_json::json!({"samples_per_s": n as f64 / median, "n": n, "median_seconds": median, "calls": times.len(), "made_passes": passes, "threads": tch::get_num_threads()})
    );
    Ok(())
}
