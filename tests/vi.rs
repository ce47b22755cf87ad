//! Variational inference (`flowzoo fit`, `eval --target`): the ELBO and log Z against closed
//! forms on Gaussian targets, the ESS of a perfect proposal, a target with NaNs in part of its
//! domain, malformed target modules, exact resume, and the command line.
mod common;
use common::{fails, ok};
use flowzoo::config::Config;
use flowzoo::ffi::ScriptModule;
use flowzoo::models::DataInfo;
use flowzoo::session::Session;
use flowzoo::vi::fit::{fit, fit_columns, fit_config, FitOptions};
use flowzoo::vi::{evaluate_fit, probe_target, FnTarget, ScriptTarget, Target};
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

/// A TorchScript module `name` with the given methods, saved under `dir`.
fn script(dir: &Path, name: &str, source: &str) -> PathBuf {
    let mut m = ScriptModule::new(name).unwrap();
    m.define(source).unwrap();
    let p = dir.join(format!("{name}.pt"));
    m.save(&p).unwrap();
    p
}

/// `log p̃(x) = log N(x; μ, diag σ²) + C` on R², with log Z = C. Every σ² < 4/3 so that the
/// importance weights p̃/q under q = N(0, I) have a finite fourth moment: with σ² ≥ 2 their
/// variance is infinite, the estimate of log Z is heavy-tailed and biased low, and its standard
/// error means nothing (with σ = 2, CI saw 1.342 ± 0.031 against 1.5).
const MU: [f64; 2] = [1.0, -1.0];
const SIGMA: [f64; 2] = [0.5, 1.1];
const C: f64 = 1.5;
const GAUSSIAN: &str = "def log_prob(self, x: Tensor) -> Tensor:
    mu = torch.tensor([1.0, -1.0], dtype=x.dtype, device=x.device)
    sigma = torch.tensor([0.5, 1.1], dtype=x.dtype, device=x.device)
    u = (x - mu) / sigma
    return -0.5 * (u * u).sum(1) - torch.log(sigma).sum() - 0.9189385332046727 * 2.0 + 1.5
";

/// A small fit config: RealNVP with a learned diagonal base (which alone can be any diagonal
/// Gaussian), few steps, one thread, CPU.
fn small_fit(steps: i64) -> Config {
    let mut c = Config::from_toml_str(include_str!("../configs/fit_default.toml"), "fit_default.toml").unwrap();
    c.model.blocks = 2;
    c.model.width = 16;
    c.train.max_steps = steps;
    c.train.warmup_steps = 10;
    c.train.lr = 5e-3;
    c.train.vi_samples = 256;
    c.train.vi_eval_samples = 2048;
    c.train.eval_every = steps / 2;
    c.train.checkpoint_every = steps / 2;
    c.train.sample_every = 0;
    c.train.log_every = 10;
    c.train.threads = 1;
    c.train.device = flowzoo::config::DeviceChoice::Cpu;
    c
}

fn opts(out: &Path, resume: bool, target_file: Option<&Path>) -> FitOptions {
    FitOptions { out: out.to_path_buf(), resume, device: Device::Cpu, verbose: false, target_file: target_file.map(Path::to_path_buf) }
}

fn fresh_session(cfg: &Config, dim: i64) -> Session {
    Session::new_for(&fit_config(cfg, dim).unwrap(), DataInfo { classes: vec![], columns: fit_columns(dim) }, Device::Cpu).unwrap()
}

#[test]
fn elbo_and_log_z_match_the_closed_form_for_a_known_proposal() {
    // A fresh flow is the identity on N(0, I): q is known, so the ELBO is C − KL(q ‖ p).
    let d = tempfile::tempdir().unwrap();
    let target = ScriptTarget::load(&script(d.path(), "gaussian", GAUSSIAN), Device::Cpu).unwrap();
    let sess = fresh_session(&small_fit(10), 2);
    let kl: f64 = (0..2).map(|i| SIGMA[i].ln() + (1.0 + MU[i] * MU[i]) / (2.0 * SIGMA[i] * SIGMA[i]) - 0.5).sum();
    let e = evaluate_fit(&sess, &target, 200_000, 3).unwrap();
    // The ELBO's Monte Carlo error at n = 2e5 is ~0.01 here.
    assert!((e.elbo - (C - kl)).abs() < 0.03, "ELBO {} vs closed form {}", e.elbo, C - kl);
    assert!((e.log_z - C).abs() < 4.0 * e.log_z_stderr + 1e-3, "log Z {} ± {} vs {C}", e.log_z, e.log_z_stderr);
    assert!(e.ess_fraction > 0.0 && e.ess_fraction < 0.5, "a poor proposal has a small ESS: {}", e.ess_fraction);
}

#[test]
fn fitting_a_gaussian_recovers_log_z() {
    let d = tempfile::tempdir().unwrap();
    let file = script(d.path(), "gaussian", GAUSSIAN);
    let target = ScriptTarget::load(&file, Device::Cpu).unwrap();
    let run = d.path().join("run");
    let s = fit(&small_fit(400), 2, &target, &opts(&run, false, Some(&file))).unwrap();
    assert_eq!((s.steps, s.skipped_steps), (400, 0));
    assert!(s.report.summary().is_none());
    let sess = Session::open(&flowzoo::io::RunDir::open(&run).unwrap(), flowzoo::io::Checkpoint::Best, Device::Cpu).unwrap();
    let e = evaluate_fit(&sess, &target, 50_000, 1).unwrap();
    assert!(e.elbo <= e.log_z + 1e-9 && C - e.elbo < 0.05, "ELBO {} should approach log Z = {C}", e.elbo);
    assert!((e.log_z - C).abs() < 4.0 * e.log_z_stderr + 2e-3, "log Z {} ± {} vs {C}", e.log_z, e.log_z_stderr);
    assert!(e.ess_fraction > 0.9, "ESS fraction {}", e.ess_fraction);
    for f in ["config.toml", "weights.safetensors", "optimizer.safetensors", "best.safetensors", "metrics.csv", "curves.png", "target.json", "target_report.json", "samples/final.png"] {
        assert!(run.join(f).is_file(), "missing {f}");
    }
}

/// `log N(x; 0, Σ) + C` on R² with unit variances and correlation 0.8: the best diagonal
/// Gaussian stays `−½·log(1 − 0.8²) = 0.51` nats below log Z = C; an affine autoregressive flow
/// can be the target exactly.
const CORRELATED: &str = "def log_prob(self, x: Tensor) -> Tensor:
    a = x[:, 0]
    b = x[:, 1]
    q = (a * a - 1.6 * a * b + b * b) / 0.36
    return -0.5 * q + 0.5108256237659907 - 1.8378770664093453 + 1.5
";

#[test]
fn fitting_with_an_iaf_closes_the_gap_of_a_diagonal_gaussian() {
    let d = tempfile::tempdir().unwrap();
    let file = script(d.path(), "correlated", CORRELATED);
    let target = ScriptTarget::load(&file, Device::Cpu).unwrap();
    let mut c = small_fit(400);
    c.model.kind = flowzoo::config::ModelKind::Iaf;
    c.model.made_order = flowzoo::config::MadeOrderChoice::Alternating;
    c.model.permutation = flowzoo::config::PermutationChoice::None;
    let run = d.path().join("run");
    fit_the_correlated_gaussian(&c, &target, Some(&file), &run, "IAF", 0.2);
    assert!(run.join("samples/final.png").is_file());
}

/// Fits `c` (400 steps) to the correlated Gaussian `target` into `run`, checks the model family
/// (`describe()` starts with `family`), that the ELBO is within `gap_fraction` of the best
/// diagonal Gaussian's gap of log Z, and that importance sampling recovers log Z = C.
fn fit_the_correlated_gaussian(c: &Config, target: &dyn Target, file: Option<&Path>, run: &Path, family: &str, gap_fraction: f64) {
    let s = fit(c, 2, target, &opts(run, false, file)).unwrap();
    assert_eq!((s.steps, s.skipped_steps), (400, 0));
    let sess = Session::open(&flowzoo::io::RunDir::open(run).unwrap(), flowzoo::io::Checkpoint::Best, Device::Cpu).unwrap();
    assert!(sess.model.describe().starts_with(family), "{}", sess.model.describe());
    let e = evaluate_fit(&sess, target, 50_000, 1).unwrap();
    let diagonal_gap = -0.5 * (1.0f64 - 0.64).ln();
    assert!(C - e.elbo < gap_fraction * diagonal_gap, "ELBO {} vs log Z = {C}: a diagonal Gaussian reaches {}", e.elbo, C - diagonal_gap);
    assert!((e.log_z - C).abs() < 4.0 * e.log_z_stderr + 2e-3, "log Z {} ± {} vs {C}", e.log_z, e.log_z_stderr);
}

#[test]
fn fitting_an_nsf_coupling_to_a_closure_target() {
    // The library's closure target driving `fit` end to end, with a neural spline coupling
    // flow: the correlated Gaussian that no diagonal Gaussian gets within 0.51 nats of.
    let d = tempfile::tempdir().unwrap();
    let target = FnTarget::new("correlated", |x: &Tensor| {
        let a = x.f_select(1, 0)?;
        let b = x.f_select(1, 1)?;
        let q = a.f_square()?.f_sub(&a.f_mul(&b)?.f_mul_scalar(1.6)?)?.f_add(&b.f_square()?)?.f_div_scalar(0.36)?;
        Ok(q.f_mul_scalar(-0.5)?.f_add_scalar(0.5108256237659907 - 1.8378770664093453 + C)?)
    });
    let mut c = small_fit(400);
    c.model.kind = flowzoo::config::ModelKind::Nsf;
    c.model.structure = flowzoo::config::StructureChoice::Coupling;
    c.model.blocks = 4;
    fit_the_correlated_gaussian(&c, &target, None, &d.path().join("run"), "NSF", 0.5);
}

#[test]
fn a_perfect_proposal_has_ess_one() {
    // The target is the flow's own log-density (a closure) plus a constant: every weight equal.
    let sess = fresh_session(&small_fit(10), 3);
    flowzoo::flows::testing::perturb(&sess.vs, 0.3);
    let model = &sess.model;
    let target = FnTarget::new("the flow itself", |x: &Tensor| Ok(model.log_prob(x, &flowzoo::flows::Ctx::eval())?.f_add_scalar(-4.25)?));
    let e = evaluate_fit(&sess, &target, 20_000, 0).unwrap();
    assert!((e.ess_fraction - 1.0).abs() < 1e-6, "ESS fraction {}", e.ess_fraction);
    assert!((e.log_z + 4.25).abs() < 1e-4 && (e.elbo + 4.25).abs() < 1e-4 && e.log_z_stderr < 1e-4, "{e:?}");
}

#[test]
fn a_target_with_nans_in_part_of_its_domain_is_reported_and_survived() {
    // NaN where x0 > 1, through a sqrt whose gradient is NaN there too (0 · NaN would poison a
    // gradient taken through the dropped draws).
    let d = tempfile::tempdir().unwrap();
    let file = script(
        d.path(),
        "half_nan",
        "def log_prob(self, x: Tensor) -> Tensor:\n    return -0.5 * (x * x).sum(1) + 0.0 * torch.sqrt(1.0 - x[:, 0])\n",
    );
    let target = ScriptTarget::load(&file, Device::Cpu).unwrap();
    let run = d.path().join("run");
    let s = fit(&small_fit(60), 2, &target, &opts(&run, false, Some(&file))).unwrap();
    assert_eq!(s.skipped_steps, 0, "no step may be poisoned");
    let r = &s.report;
    assert_eq!(r.draws, 60 * 256);
    // q starts as N(0, I): P(x0 > 1) ≈ 0.16.
    assert!(r.dropped.nan > 1000 && r.dropped.pos_inf == 0 && r.dropped.neg_inf == 0, "{r:?}");
    assert_eq!(r.first_step, Some(1));
    let (x, v) = r.example.clone().unwrap();
    assert!(x[0] > 1.0 && v == "NaN", "example {x:?} {v}");
    let line = r.summary().unwrap();
    assert!(line.contains("NaN") && line.contains("left out") && line.contains("steps 1.."), "{line}");
    let saved: flowzoo::vi::elbo::NonFiniteReport = serde_json::from_str(&std::fs::read_to_string(run.join("target_report.json")).unwrap()).unwrap();
    assert_eq!(&saved, r);
    assert!(s.final_elbo.is_finite());
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert!(metrics.lines().next().unwrap().ends_with("target_nonfinite"), "{metrics}");
}

/// The message for one malformed module (or `None` when it loads and probes fine).
fn probe_error(dir: &Path, name: &str, source: &str) -> String {
    let t = ScriptTarget::load(&script(dir, name, source), Device::Cpu).unwrap();
    format!("{:#}", probe_target(&t, 2, Kind::Float, Device::Cpu).unwrap_err())
}

#[test]
fn malformed_targets_get_one_clear_error_each() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let e = probe_error(p, "no_log_prob", "def forward(self, x: Tensor) -> Tensor:\n    return x.sum(1)\n");
    assert!(e.contains("no_log_prob.pt") && e.contains("has no method log_prob"), "{e}");
    let e = probe_error(p, "column", "def log_prob(self, x: Tensor) -> Tensor:\n    return x.sum(1, keepdim=True)\n");
    assert!(e.contains("returned shape [3, 1]") && e.contains("must return shape [3]") && e.contains("squeeze"), "{e}");
    let e = probe_error(p, "per_coordinate", "def log_prob(self, x: Tensor) -> Tensor:\n    return -x * x\n");
    assert!(e.contains("returned shape [3, 2]") && e.contains(".sum(-1)"), "{e}");
    let e = probe_error(p, "scalar", "def log_prob(self, x: Tensor) -> Tensor:\n    return x.sum()\n");
    assert!(e.contains("returned shape []") && e.contains("scalar"), "{e}");
    let e = probe_error(p, "integers", "def log_prob(self, x: Tensor) -> Tensor:\n    return x.sum(1).long()\n");
    assert!(e.contains("returned int64 values") && e.contains("floating-point"), "{e}");
    let e = probe_error(p, "throws", "def log_prob(self, x: Tensor) -> Tensor:\n    assert x.size(1) == 5, \"this target is 5-dimensional\"\n    return x.sum(1)\n");
    assert!(e.contains("log_prob raised an error") && e.contains("this target is 5-dimensional"), "{e}");
    assert!(!e.contains("Exception raised from"), "C++ frames should be cut: {e}");
    let e = probe_error(p, "detached", "def log_prob(self, x: Tensor) -> Tensor:\n    return x.detach().sum(1)\n");
    assert!(e.contains("does not depend on x through autograd"), "{e}");
    let e = probe_error(p, "tuple", "def log_prob(self, x: Tensor) -> Tuple[Tensor, Tensor]:\n    return x.sum(1), x\n");
    assert!(e.contains("returned a tuple instead of a tensor"), "{e}");
    // Not a TorchScript archive at all, and a missing file.
    let junk = p.join("junk.pt");
    std::fs::write(&junk, b"not a zip").unwrap();
    let e = format!("{:#}", ScriptTarget::load(&junk, Device::Cpu).err().unwrap());
    assert!(e.contains("junk.pt") && e.contains("not a TorchScript module"), "{e}");
    let e = format!("{:#}", ScriptTarget::load(&p.join("missing.pt"), Device::Cpu).err().unwrap());
    assert!(e.contains("missing.pt: no such file"), "{e}");
    // A closure gets the same checks.
    let t = FnTarget::new("closure", |x: &Tensor| Ok(x.f_sum_dim_intlist(Some(&[1i64][..]), true, None)?));
    let e = format!("{:#}", probe_target(&t, 2, Kind::Float, Device::Cpu).unwrap_err());
    assert!(e.starts_with("target closure: log_prob(x) on x of shape [3, 2] returned shape [3, 1]"), "{e}");
    assert_eq!(t.name(), "target closure");
}

#[test]
fn models_that_cannot_be_fitted_are_refused_naming_the_key() {
    let mut c = small_fit(10);
    c.model.kind = flowzoo::config::ModelKind::Glow;
    let e = format!("{:#}", fit_config(&c, 2).unwrap_err());
    assert!(e.contains("model.kind = \"glow\"") && e.contains("one pass"), "{e}");
    let mut c = small_fit(10);
    c.model.norm = flowzoo::config::NormChoice::Batchnorm;
    let e = format!("{:#}", fit_config(&c, 2).unwrap_err());
    assert!(e.contains("model.norm = \"batchnorm\""), "{e}");
    let mut c = small_fit(10);
    c.train.vi_samples = 0;
    assert!(format!("{:#}", fit_config(&c, 2).unwrap_err()).contains("train.vi_samples = 0"));
    assert!(format!("{:#}", fit_config(&small_fit(10), 0).unwrap_err()).contains("--dim 0"));
    // NICE samples in one pass too.
    let mut c = small_fit(10);
    c.model.kind = flowzoo::config::ModelKind::Nice;
    c.model.norm = flowzoo::config::NormChoice::None;
    fit_config(&c, 4).unwrap();
}

fn weights(run: &Path) -> Vec<(String, Tensor)> {
    let (t, _) = flowzoo::io::read_safetensors(&run.join("weights.safetensors")).unwrap();
    t.into_iter().collect()
}

#[test]
fn resume_is_exact_and_checks_the_target() {
    let d = tempfile::tempdir().unwrap();
    let file = script(d.path(), "gaussian", GAUSSIAN);
    let target = ScriptTarget::load(&file, Device::Cpu).unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    fit(&small_fit(40), 2, &target, &opts(&a, false, Some(&file))).unwrap();
    // The same run stopped at step 20 (a checkpoint) and resumed.
    let mut half = small_fit(40);
    half.train.max_steps = 20;
    fit(&half, 2, &target, &opts(&b, false, Some(&file))).unwrap();
    fit(&small_fit(40), 2, &target, &opts(&b, true, Some(&file))).unwrap();
    for ((na, ta), (nb, tb)) in weights(&a).iter().zip(weights(&b).iter()) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs after resume");
    }
    let (ma, mb) = (std::fs::read_to_string(a.join("metrics.csv")).unwrap(), std::fs::read_to_string(b.join("metrics.csv")).unwrap());
    let elbos = |m: &str| m.lines().map(|l| l.split(',').take(3).collect::<Vec<_>>().join(",")).collect::<Vec<_>>();
    assert_eq!(elbos(&ma), elbos(&mb));
    // Another target file, or another dimension, is refused.
    let other = script(d.path(), "other", &GAUSSIAN.replace("+ 1.5", "+ 2.5"));
    let t2 = ScriptTarget::load(&other, Device::Cpu).unwrap();
    let e = format!("{:#}", fit(&small_fit(60), 2, &t2, &opts(&b, true, Some(&other))).err().unwrap());
    assert!(e.contains("is not the file the run was fitted to"), "{e}");
    let e = format!("{:#}", fit(&small_fit(60), 3, &target, &opts(&b, true, Some(&file))).err().unwrap());
    assert!(e.contains("fits a 2-dimensional target"), "{e}");
}

#[test]
fn fit_eval_sample_from_the_command_line() {
    let d = tempfile::tempdir().unwrap();
    let file = script(d.path(), "gaussian", GAUSSIAN);
    let (f, run) = (file.to_str().unwrap(), d.path().join("run"));
    let r = run.to_str().unwrap();
    let small = ["--set", "train.max_steps=300", "--set", "model.blocks=2", "--set", "train.lr=5e-3", "--set", "train.threads=1", "-q"];
    let mut args = vec!["fit", "--target", f, "--dim", "2", "--out", r, "--device", "cpu"];
    args.extend_from_slice(&small);
    let out = ok(&args);
    assert!(out.contains("fitted 300 steps") && out.contains("ELBO"), "{out}");
    let line = ok(&["eval", "--model", r, "--target", f, "--n", "20000", "--json", "--device", "cpu"]);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 4, "{line}");
    assert!(line.trim().starts_with("{\"elbo\": ") && line.contains("\"log_z\": ") && line.contains("\"log_z_stderr\": ") && line.contains("\"ess_fraction\": "), "{line}");
    // Exactly these four keys, in this order, on one line.
    let at: Vec<usize> = ["{\"elbo\": ", ", \"log_z\": ", ", \"log_z_stderr\": ", ", \"ess_fraction\": "].iter().map(|k| line.find(k).unwrap_or(usize::MAX)).collect();
    assert!(at[0] == 0 && at.windows(2).all(|w| w[0] < w[1] && w[1] != usize::MAX) && line.trim_end().ends_with('}') && line.trim_end().lines().count() == 1, "{line}");
    let (z, se) = (v["log_z"].as_f64().unwrap(), v["log_z_stderr"].as_f64().unwrap());
    assert!((z - C).abs() < 4.0 * se + 2e-3, "log Z {z} ± {se} vs {C}");
    // sample works as for any 2-D tabular run: CSV rows and the scatter + density PNG.
    let csv = d.path().join("s.csv");
    ok(&["sample", "--model", r, "-n", "50", "-o", csv.to_str().unwrap(), "--device", "cpu"]);
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.lines().next(), Some("x0,x1"));
    assert_eq!(text.lines().count(), 51);
    let png = d.path().join("s.png");
    assert!(ok(&["sample", "--model", r, "-o", png.to_str().unwrap(), "--device", "cpu"]).contains("learned density"));
    // Resume to more steps; wrong uses get one clear message.
    let mut args = vec!["fit", "--target", f, "--dim", "2", "--out", r, "--resume", "--set", "train.max_steps=320", "-q"];
    args.extend_from_slice(&["--device", "cpu"]);
    assert!(ok(&args).contains("fitted 320 steps"));
    fails(&["eval", "--model", r, "--device", "cpu"], "fitted to a target density by `flowzoo fit`: pass --target");
    fails(&["train", "--resume", "--out", r], "use `flowzoo fit --target FILE.pt --dim D`");
    fails(&["fit", "--target", f, "--dim", "3", "--out", d.path().join("x").to_str().unwrap(), "-q"], "log_prob raised an error");
    let junk = d.path().join("junk.pt");
    std::fs::write(&junk, "junk").unwrap();
    fails(&["fit", "--target", junk.to_str().unwrap(), "--dim", "2", "-q"], "not a TorchScript module");
    fails(&["fit", "--target", f, "--dim", "2", "--set", "model.kind=\"glow\"", "--set", "model.permutation=\"reverse\"", "-q"], "one pass");
}

/// README's Rust example of `flowzoo fit` is the doc example of `flowzoo::vi` (src/vi/mod.rs),
/// which `cargo test` compiles: the two stay the same text (the doc's hidden `# ` lines aside).
#[test]
fn the_readme_example_is_the_compiled_doc_example() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let at = readme.find("## Fitting densities and variational posteriors").expect("README has the section");
    let section = &readme[at..];
    let start = section.find("```rust\n").expect("a Rust example in the section") + "```rust\n".len();
    let block: Vec<&str> = section[start..start + section[start..].find("```").unwrap()].lines().collect();
    let src = std::fs::read_to_string(format!("{root}/src/vi/mod.rs")).unwrap();
    let doc: Vec<&str> = src.lines().filter_map(|l| l.strip_prefix("//!")).map(|l| l.strip_prefix(' ').unwrap_or(l)).collect();
    let a = doc.iter().position(|l| *l == "```no_run").expect("a doc example") + 1;
    let b = a + doc[a..].iter().position(|l| *l == "```").unwrap();
    let code: Vec<&str> = doc[a..b].iter().copied().filter(|l| !l.starts_with("# ")).collect();
    assert_eq!(block, code, "README's example and src/vi/mod.rs's doc example differ");
}
