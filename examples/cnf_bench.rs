//! The flowzoo side of `bench/bench_cnf.py` and `bench/cnf_objectives.py`: trains the FFJORD
//! model of a config on a given train.csv with `flowzoo train`'s step (our Adam, linear
//! warm-up, global-norm clipping; the loss of `train.objective`: the mean negative
//! log-likelihood in nats or the flow-matching loss, plus the layers' weighted penalties, as
//! `Trainer::train_step` adds them), counting the CNF's function evaluations through a `Sink`,
//! then scores test.csv exactly. Prints one JSON object on stdout.
//!
//! ```text
//! cnf_bench --config C --train train.csv --test test.csv --steps N [--threads T] [--seed S]
//!           [--stochastic] [--tight-rtol 1e-8] [--save-weights w.safetensors] [--set key=value ...]
//!           [--eval-every K]
//! ```
//! `--stochastic` sets `ctx.stochastic_logdet` in training (Hutchinson where `model.cnf.trace`
//! picks it). Timing covers the training steps only; each step's wall and process CPU seconds
//! are recorded and the JSON holds their medians and totals. `--eval-every K` also scores the
//! test set exactly every K steps (outside the timing) and reports the curve: test
//! log-likelihood against the training seconds spent so far.
use anyhow::{bail, Context, Result};
use flowzoo::config::Config;
use flowzoo::data::tabular::{load_table, standardization};
use flowzoo::flows::{Ctx, Sink};
use flowzoo::models::DataInfo;
use flowzoo::session::Session;
use flowzoo::train::Adam;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

struct Args {
    config: PathBuf,
    train: PathBuf,
    test: PathBuf,
    steps: i64,
    threads: i32,
    seed: i64,
    stochastic: bool,
    tight_rtol: f64,
    save_weights: Option<PathBuf>,
    sets: Vec<String>,
    eval_every: i64,
}

fn parse() -> Result<Args> {
    let mut a = Args { config: "".into(), train: "".into(), test: "".into(), steps: 100, threads: 2, seed: 0, stochastic: false, tight_rtol: 0.0, save_weights: None, sets: vec![], eval_every: 0 };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--config" => a.config = v()?.into(),
            "--train" => a.train = v()?.into(),
            "--test" => a.test = v()?.into(),
            "--steps" => a.steps = v()?.parse()?,
            "--threads" => a.threads = v()?.parse()?,
            "--seed" => a.seed = v()?.parse()?,
            "--tight-rtol" => a.tight_rtol = v()?.parse()?,
            "--set" => a.sets.push(v()?),
            "--save-weights" => a.save_weights = Some(v()?.into()),
            "--stochastic" => a.stochastic = true,
            "--eval-every" => a.eval_every = v()?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

fn cpu_seconds() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// Mean and standard error of the per-row exact test log-likelihoods, and the NFE of scoring, in
/// the session's dtype.
fn score(sess: &Session, test: &Tensor) -> Result<(f64, f64, f64, f64)> {
    let t0 = Instant::now();
    let _g = tch::no_grad_guard();
    let sink = Sink::new();
    let mut lps = vec![];
    let n = test.size()[0];
    let mut start = 0;
    while start < n {
        let len = 1024.min(n - start);
        let x = test.narrow(0, start, len).to_kind(sess.kind());
        lps.push(sess.model.log_prob(&x, &Ctx::eval().with_sink(&sink))?.to_kind(Kind::Double));
        start += len;
    }
    let lp = Vec::<f64>::try_from(&Tensor::cat(&lps, 0))?;
    let m = lp.iter().sum::<f64>() / lp.len() as f64;
    let var = lp.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (lp.len() as f64 - 1.0);
    let nfe = sink.counters().get("nfe_forward").copied().unwrap_or(0.0);
    Ok((m, (var / lp.len() as f64).sqrt(), nfe, t0.elapsed().as_secs_f64()))
}

fn main() -> Result<()> {
    let a = parse()?;
    tch::set_num_threads(a.threads);
    let cfg = Config::load(&a.config)?.with_overrides(&a.sets)?;
    let train = load_table(&a.train, &cfg.data)?;
    let test = load_table(&a.test, &cfg.data)?.rows.to_kind(Kind::Float);
    let columns = train.columns.clone();
    let rows = train.rows.to_kind(Kind::Float);
    let noise = cfg.data.uniform_noise;
    let sess = Session::new_for(&cfg, DataInfo { classes: vec![], columns }, Device::Cpu)?;
    let (mean, std) = standardization(&rows, noise)?;
    sess.set_standardization(&mean, &std)?;
    let mut params: Vec<(String, Tensor)> = flowzoo::io::tensors::named_variables(&sess.vs).into_iter().filter(|(_, t)| t.requires_grad()).collect();
    params.sort_by(|x, y| x.0.cmp(&y.0));
    let mut opt = Adam::new(params)?;
    let t = &cfg.train;
    let n = rows.size()[0];
    let per_epoch = (n / t.batch_size).max(1);
    let (mut wall, mut cpu, mut nfe_f, mut nfe_b, mut losses) = (vec![], vec![], vec![], vec![], vec![]);
    let mut perm = Tensor::zeros([0], (Kind::Int64, Device::Cpu));
    let flow_matching = t.objective == flowzoo::config::Objective::FlowMatching;
    let mut curve = vec![];
    let (mut pen, mut pen_steps) = (0.0, 0);
    let t_start = Instant::now();
    for step in 0..a.steps {
        if step % per_epoch == 0 {
            tch::manual_seed(a.seed * 1_000_003 + step / per_epoch);
            perm = Tensor::randperm(n, (Kind::Int64, Device::Cpu));
        }
        let idx = perm.narrow(0, (step % per_epoch) * t.batch_size, t.batch_size.min(n));
        let mut x = rows.index_select(0, &idx);
        if noise > 0.0 {
            x = &x + x.rand_like() * noise;
        }
        let (w0, c0) = (Instant::now(), cpu_seconds());
        let sink = Sink::new();
        let ctx = Ctx { stochastic_logdet: a.stochastic, ..sess.ctx_train(None) }.with_sink(&sink);
        opt.zero_grad();
        let objective = if flow_matching { sess.model.flow_matching_loss(&x, &ctx)? } else { sess.model.log_prob(&x, &ctx)?.f_mean(Kind::Float)?.f_neg()? };
        let loss = match sink.total_penalty()? {
            Some(p) => {
                pen += p.double_value(&[]);
                pen_steps += 1;
                objective.f_add(&p)?
            }
            None => objective,
        };
        loss.f_backward()?;
        let norm = opt.grad_norm()?.double_value(&[]);
        let lr = if t.warmup_steps > 0 { t.lr * ((step + 1) as f64 / t.warmup_steps as f64).min(1.0) } else { t.lr };
        let scale = if t.grad_clip > 0.0 && norm > t.grad_clip { t.grad_clip / norm } else { 1.0 };
        let lv = loss.double_value(&[]);
        if lv.is_finite() && norm.is_finite() {
            opt.step(lr, scale)?;
        }
        wall.push(w0.elapsed().as_secs_f64());
        cpu.push(cpu_seconds() - c0);
        let c = sink.counters();
        nfe_f.push(c.get("nfe_forward").copied().unwrap_or(0.0));
        nfe_b.push(c.get("nfe_backward").copied().unwrap_or(0.0));
        losses.push(lv);
        let done = step + 1;
        if a.eval_every > 0 && (done % a.eval_every == 0 || done == a.steps) {
            let (lp, se, nfe, secs) = score(&sess, &test)?;
            curve.push(serde_json::json!({
                "step": done,
                "train_wall_s": wall.iter().sum::<f64>(),
                "train_cpu_s": cpu.iter().sum::<f64>(),
                "test_log_prob": lp,
                "stderr": se,
                "eval_nfe": nfe,
                "eval_seconds": secs,
                "nfe_forward_per_step": nfe_f.iter().sum::<f64>() / nfe_f.len() as f64,
                "nfe_backward_per_step": nfe_b.iter().sum::<f64>() / nfe_b.len() as f64,
            }));
        }
    }
    let train_seconds = t_start.elapsed().as_secs_f64() - curve.iter().map(|c| c["eval_seconds"].as_f64().unwrap_or(0.0)).sum::<f64>();
    if let Some(path) = &a.save_weights {
        sess.save_weights(path, a.steps)?;
    }
    let (lp, se, eval_nfe, eval_s) = score(&sess, &test)?;
    let mut out = serde_json::json!({
        "impl": "flowzoo",
        "threads": a.threads,
        "steps": a.steps,
        "batch_size": t.batch_size,
        "parameters": sess.parameter_count(),
        "train_seconds": train_seconds,
        "s_per_step": wall.iter().sum::<f64>() / wall.len().max(1) as f64,
        "median_s_per_step": median(&mut wall.clone()),
        "cpu_s_per_step": cpu.iter().sum::<f64>() / cpu.len().max(1) as f64,
        "nfe_forward_per_step": nfe_f.iter().sum::<f64>() / nfe_f.len().max(1) as f64,
        "nfe_backward_per_step": nfe_b.iter().sum::<f64>() / nfe_b.len().max(1) as f64,
        "final_train_nll": losses.iter().rev().take(per_epoch as usize).sum::<f64>() / (per_epoch.min(a.steps).max(1)) as f64,
        "mean_log_prob": lp,
        "stderr": se,
        "eval_nfe": eval_nfe,
        "eval_seconds": eval_s,
        "objective": if flow_matching { "flow_matching" } else { "mle" },
        "penalty_per_step": if pen_steps > 0 { pen / pen_steps as f64 } else { 0.0 },
        "curve": curve,
        "end_times": sess.vs.variables().iter().filter(|(k, _)| k.ends_with("sqrt_end_time")).map(|(_, v)| v.double_value(&[]).powi(2)).collect::<Vec<_>>(),
    });
    if a.tight_rtol > 0.0 {
        // The same weights scored in float64 at a tight tolerance: how much of the test
        // log-likelihood is solver (or float32) error.
        let tight = cfg.with_overrides(&[format!("model.cnf.eval_rtol={}", a.tight_rtol), format!("model.cnf.eval_atol={}", a.tight_rtol)])?;
        let mut sess_tight = Session::new_for(&tight, DataInfo { classes: vec![], columns: sess.columns.clone() }, Device::Cpu)?;
        sess_tight.vs.copy(&sess.vs)?;
        sess_tight.vs.double();
        let (lp_t, _, nfe_t, _) = score(&sess_tight, &test)?;
        out["tight_rtol"] = a.tight_rtol.into();
        out["tight_mean_log_prob"] = lp_t.into();
        out["tight_eval_nfe"] = nfe_t.into();
    }
    println!("{out}");
    Ok(())
}
