//! The VAE (`model.kind = "vae"`): its discretised logistic likelihood, the ELBO against the
//! importance-weighted bound, the posterior flow's context, and train / eval / sample / export
//! from the command line.
mod common;
use common::{flowzoo, ok};
use flowzoo::config::{Config, PosteriorChoice};
use flowzoo::flows::Ctx;
use flowzoo::models::vae::likelihood::{bins, discretized_logistic_log_prob};
use flowzoo::models::vae::posterior::{posterior_flow, sample_posterior};
use flowzoo::session::Session;

use tch::{nn::VarStore, Device, Kind, Tensor};

fn tiny(posterior: PosteriorChoice) -> Config {
    let mut c = Config::load("configs/vae_digits_diag.toml".as_ref()).unwrap();
    c.model.posterior = posterior;
    c.model.latent = 4;
    c.model.width = 8;
    c.model.context = 6;
    c.model.posterior_layers = 2;
    c.model.posterior_width = 16;
    c.train.threads = 1;
    c
}

#[test]
fn the_discretised_logistic_sums_to_one_over_the_bins() {
    for n_bits in [1, 3, 5] {
        let k = 1i64 << n_bits;
        let mu = Tensor::from_slice(&[-0.9, -0.3, 0.0, 0.21, 0.7, 3.0]).to_kind(Kind::Double);
        let log_s = Tensor::from_slice(&[-6.0, -3.0, -1.0, 0.0, 1.5, -2.0]).to_kind(Kind::Double);
        let probs: Vec<Tensor> = (0..k)
            .map(|b| discretized_logistic_log_prob(&Tensor::full([6], b as f64, (Kind::Double, Device::Cpu)), &mu, &log_s, n_bits).unwrap().exp())
            .collect();
        let total = Tensor::stack(&probs, 0).sum_dim_intlist(Some(&[0i64][..]), false, None);
        let err = (total - 1.0).abs().max().double_value(&[]);
        assert!(err < 1e-12, "n_bits {n_bits}: probabilities sum to 1 ± {err}");
        // A very confident logistic puts its mass on the bin holding its location.
        let lp = discretized_logistic_log_prob(&Tensor::from_slice(&[0.0]).to_kind(Kind::Double), &Tensor::from_slice(&[-0.5 + 0.5 / k as f64]).to_kind(Kind::Double), &Tensor::from_slice(&[-7.0]).to_kind(Kind::Double), n_bits).unwrap();
        assert!(lp.double_value(&[0]) > -1e-6);
    }
    // A very wide logistic in float32 (e^{−log_s} underflows): still finite, ≈ log(w/4) with
    // w = 1/(K s), the same as in float64 where it does not underflow, with finite gradients.
    let log_s = Tensor::from_slice(&[5.0f32, 30.0, 100.0, 200.0]).set_requires_grad(true);
    let (bin, mu) = (Tensor::full([4], 5.0, (Kind::Float, Device::Cpu)), Tensor::zeros([4], (Kind::Float, Device::Cpu)));
    let lp = discretized_logistic_log_prob(&bin, &mu, &log_s, 4).unwrap();
    let lp64 = discretized_logistic_log_prob(&bin.to_kind(Kind::Double), &mu.to_kind(Kind::Double), &log_s.detach().to_kind(Kind::Double), 4).unwrap();
    let want = log_s.detach().to_kind(Kind::Double).neg() - 16f64.ln() - 2.0 * 2f64.ln();
    for (name, got, tol) in [("float32", lp.detach().to_kind(Kind::Double), 1e-3), ("float64", lp64, 1e-5)] {
        let err = (got - &want).abs().max().double_value(&[]);
        assert!(err < tol, "{name}: a wide logistic's log-probability is off by {err}");
    }
    lp.sum(Kind::Float).backward();
    assert!(bool::try_from(log_s.grad().isfinite().all()).unwrap(), "gradients {}", log_s.grad());
    // Model-space values, dequantised or not, fall in their pixel's bin.
    let px = Tensor::arange(16, (Kind::Uint8, Device::Cpu)).f_mul_scalar(16).unwrap();
    let x = flowzoo::data::to_model_space(&px, 4, Kind::Float).unwrap();
    let want = Tensor::arange(16, (Kind::Float, Device::Cpu));
    assert!(bins(&x, 4).unwrap().equal(&want));
    tch::manual_seed(0);
    assert!(bins(&flowzoo::data::dequantize(&x, 4).unwrap(), 4).unwrap().equal(&want));
}

#[test]
fn the_elbo_never_exceeds_the_importance_weighted_bound() {
    // Seeded draws are compared below: libtorch's generator is global, so tests take turns.
    let _rng = common::rng_lock();
    for posterior in [PosteriorChoice::Diagonal, PosteriorChoice::Realnvp, PosteriorChoice::Iaf, PosteriorChoice::Maf] {
        tch::manual_seed(0);
        let sess = Session::new(&tiny(posterior), vec!["0".into()], Device::Cpu).unwrap();
        flowzoo::flows::testing::perturb(&sess.vs, 0.2);
        let lv = sess.model.latent_variable().expect("a VAE has latent variables");
        tch::manual_seed(1);
        let x = Tensor::rand([5, 1, 8, 8], (Kind::Float, Device::Cpu)) - 0.5;
        let _g = tch::no_grad_guard();
        let ctx = Ctx::eval();
        tch::manual_seed(7);
        let lw = lv.log_weights(&x, 64, &ctx).unwrap().to_kind(Kind::Double);
        assert_eq!(lw.size(), [5, 64]);
        let elbo = lw.mean_dim(Some(&[1i64][..]), false, None);
        let iw = lw.logsumexp(&[1i64][..], false) - (64f64).ln();
        let gap = Vec::<f64>::try_from(&(iw - &elbo)).unwrap();
        assert!(gap.iter().all(|g| *g >= -1e-9), "{posterior:?}: IW bound below the ELBO: {gap:?}");
        assert!(gap.iter().any(|g| *g > 1e-3), "{posterior:?}: a perturbed VAE's bound should be strictly above its ELBO: {gap:?}");
        // k = 1: the bound is the ELBO, which is log_prob from the same draw.
        tch::manual_seed(9);
        let one = lv.log_weights(&x, 1, &ctx).unwrap().squeeze_dim(1);
        tch::manual_seed(9);
        let lp = sess.model.log_prob(&x, &ctx).unwrap();
        assert!(one.equal(&lp), "{posterior:?}: k = 1 differs from log_prob");
        // The ELBO depends on the discrete pixels only: dequantisation noise changes nothing.
        tch::manual_seed(5);
        let noisy = flowzoo::data::dequantize(&flowzoo::data::to_model_space(&flowzoo::data::to_pixels(&x, 4).unwrap(), 4, Kind::Float).unwrap(), 4).unwrap();
        tch::manual_seed(9);
        let lp_noisy = sess.model.log_prob(&noisy, &ctx).unwrap();
        assert!(lp_noisy.equal(&lp), "{posterior:?}: dequantisation noise changed the ELBO");
        tch::manual_seed(9);
        let report = flowzoo::jobs::vae::bounds_per_image(&sess, &flowzoo::data::to_pixels(&x, 4).unwrap(), 1, 2, 9).unwrap();
        assert_eq!(report.0, report.1, "{posterior:?}: k = 1 bound equals the ELBO");
    }
}

const FLOWS: [PosteriorChoice; 3] = [PosteriorChoice::Realnvp, PosteriorChoice::Iaf, PosteriorChoice::Maf];

#[test]
fn the_posterior_flow_reads_the_encoders_context() {
    let _rng = common::rng_lock();
    for posterior in FLOWS {
        let cfg = tiny(posterior);
        let vs = VarStore::new(Device::Cpu);
        let flow = posterior_flow(vs.root() / "posterior", &cfg.model).unwrap().unwrap();
        flowzoo::flows::testing::perturb(&vs, 0.3);
        let (mu, log_sigma) = (Tensor::zeros([3, 4], (Kind::Float, Device::Cpu)), Tensor::zeros([3, 4], (Kind::Float, Device::Cpu)));
        let h = Tensor::randn([3, 6], (Kind::Float, Device::Cpu));
        let draw = |h: &Tensor| {
            tch::manual_seed(3);
            sample_posterior(Some(&flow), &mu, &log_sigma, h, 2, &Ctx::eval()).unwrap()
        };
        let (z1, lq1) = draw(&h);
        let (z2, _) = draw(&(&h + 1.0));
        assert_eq!((z1.size(), lq1.size()), (vec![6, 4], vec![6]));
        assert!(!z1.allclose(&z2, 1e-4, 1e-4, false), "{posterior:?}: the context must change the posterior");
        // Only the context differs between the rows of one draw: each row of h changes the
        // whole of z, the first coordinate of every autoregressive layer's ordering too.
        let hs = h.copy();
        let _ = hs.get(0).f_add_scalar_(1.0).unwrap();
        let (z3, _) = draw(&hs);
        let moved = (&z3 - &z1).abs().gt(1e-5).to_kind(Kind::Int64);
        assert!(bool::try_from(moved.narrow(0, 0, 2).all()).unwrap(), "{posterior:?}: every coordinate of z reads h: {moved}");
        assert!(z3.narrow(0, 2, 4).allclose(&z1.narrow(0, 2, 4), 1e-6, 1e-7, false), "{posterior:?}: another image's context changed this one's z");
    }
    // Without the flow, log q is the diagonal Gaussian's density of z.
    let (mu, log_sigma) = (Tensor::zeros([3, 4], (Kind::Float, Device::Cpu)), Tensor::zeros([3, 4], (Kind::Float, Device::Cpu)));
    let h = Tensor::randn([3, 6], (Kind::Float, Device::Cpu));
    tch::manual_seed(3);
    let (z, lq) = sample_posterior(None, &mu, &log_sigma, &h, 2, &Ctx::eval()).unwrap();
    let want = z.square().sum_dim_intlist(Some(&[1i64][..]), false, None) * -0.5 - 2.0 * (2.0 * std::f64::consts::PI).ln();
    assert!(lq.allclose(&want, 1e-5, 1e-5, false));
}

/// `log q(z | x)` of a draw, recomputed from `z` alone in the flow's density direction
/// (`z₀ = f(z)`, `log q = log N(z₀; μ, σ) + log|det ∂z₀/∂z|`): the sampling pass's log q is
/// the density of the z it drew, for every flow posterior. And the MADE passes a draw costs:
/// one per layer for an IAF, `latent` per layer for a MAF.
#[test]
fn a_draws_log_q_is_the_density_of_its_z() {
    for posterior in FLOWS {
        let cfg = tiny(posterior);
        let mut vs = VarStore::new(Device::Cpu);
        let flow = posterior_flow(vs.root() / "posterior", &cfg.model).unwrap().unwrap();
        flowzoo::flows::testing::perturb(&vs, 0.3);
        vs.double();
        let dbl = (Kind::Double, Device::Cpu);
        tch::manual_seed(11);
        let (mu, log_sigma, h) = (Tensor::randn([3, 4], dbl), Tensor::randn([3, 4], dbl) * 0.5, Tensor::randn([3, 6], dbl));
        let sink = flowzoo::flows::Sink::new();
        let (z, lq) = sample_posterior(Some(&flow), &mu, &log_sigma, &h, 2, &Ctx::eval().with_sink(&sink)).unwrap();
        let passes = sink.counters().get("made_passes").copied().unwrap_or(0.0);
        let rep = |t: &Tensor| t.repeat_interleave_self_int(2, Some(0), None);
        let hk = rep(&h);
        let (z0, ld) = flowzoo::flows::Flow::forward(&flow, &z, &Ctx::eval().with_cond(Some(&hk))).unwrap();
        let (m, ls) = (rep(&mu), rep(&log_sigma));
        let u = (&z0 - &m) / ls.exp();
        let log_n = (u.square() * -0.5 - &ls - 0.5 * (2.0 * std::f64::consts::PI).ln()).sum_dim_intlist(Some(&[1i64][..]), false, None);
        let err = (log_n + ld - &lq).abs().max().double_value(&[]);
        assert!(err < 1e-9, "{posterior:?}: log q of the draw differs from the density of z by {err}");
        let want = match posterior {
            PosteriorChoice::Iaf => 2.0,
            PosteriorChoice::Maf => 2.0 * 4.0,
            _ => 0.0,
        };
        assert_eq!(passes, want, "{posterior:?}: MADE passes of one draw (2 layers, latent 4)");
    }
}

#[test]
fn train_eval_sample_a_vae_from_the_command_line() {
    let d = tempfile::tempdir().unwrap();
    for (config, name) in [("configs/vae_digits_diag.toml", "diag"), ("configs/vae_digits_realnvp.toml", "realnvp"), ("configs/vae_digits_iaf.toml", "iaf")] {
        let run = d.path().join(name);
        let r = run.to_str().unwrap();
        let small = [
            "--set", "model.width=8", "--set", "model.latent=4", "--set", "model.posterior_layers=2", "--set", "model.posterior_width=16",
            "--set", "train.max_steps=30", "--set", "train.eval_every=15", "--set", "train.checkpoint_every=15", "--set", "train.sample_every=0",
            "--set", "train.threads=1", "--set", "train.n_samples=16",
        ];
        let mut args = vec!["train", "--config", config, "--out", r, "--device", "cpu", "-q"];
        args.extend_from_slice(&small);
        assert!(ok(&args).contains("trained 30 steps"));
        assert!(run.join("samples/final.png").is_file() && run.join("best.safetensors").is_file());
        let v: serde_json::Value = serde_json::from_str(&ok(&["eval", "--model", r, "--k", "20", "--json", "--device", "cpu"])).unwrap();
        assert_eq!((v["n"].as_u64(), v["k"].as_i64()), (Some(360), Some(20)), "{v}");
        let (e, b) = (v["elbo_nats"].as_f64().unwrap(), v["iw_bound_nats"].as_f64().unwrap());
        assert!(e.is_finite() && b >= e && v["gap_nats"].as_f64().unwrap() >= 0.0, "{v}");
        assert!(v["iw_bound_bpd"].as_f64().unwrap() <= v["elbo_bpd"].as_f64().unwrap());
        // bits/dim of the discrete pixels: −nats / (64 ln 2).
        assert!((v["elbo_bpd"].as_f64().unwrap() + e / (64.0 * std::f64::consts::LN_2)).abs() < 1e-9);
        let grid = d.path().join(format!("{name}.png"));
        ok(&["sample", "--model", r, "-n", "16", "-o", grid.to_str().unwrap(), "--device", "cpu"]);
        assert!(image::open(&grid).is_ok());
        let o = flowzoo(&["export", "--model", r, "--torchscript", d.path().join("x.pt").to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.code() == Some(1) && err.contains("a VAE cannot be exported"), "{err}");
    }
    // A tabular VAE config is refused naming the key.
    let o = flowzoo(&["train", "--config", "configs/vae_digits_diag.toml", "--set", "data.kind=\"tabular\"", "-q"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("model.kind = \"vae\" models images"));
    // An unknown posterior names the key and every choice.
    let o = flowzoo(&["train", "--config", "configs/vae_digits_iaf.toml", "--set", "model.posterior=\"planar\"", "-q"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.code() == Some(1) && err.contains("posterior") && ["diagonal", "realnvp", "iaf", "maf"].iter().all(|w| err.contains(w)), "{err}");
}
