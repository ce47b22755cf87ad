//! MAF, IAF and NSF (coupling and autoregressive) as whole models: every combination of the
//! between-layer choices inverts with an exact log-det, the conditional models depend on their
//! context, IAF samples in one pass per layer, and the new config keys are range-checked with
//! messages naming them.
mod common;
use flowzoo::config::{Config, DataKind};
use flowzoo::flows::testing::{check_flow, perturb};
use flowzoo::flows::{Ctx, Sink};
use flowzoo::models::realnvp::VectorSpec;
use flowzoo::models::{self, DataInfo, DensityModel, Maf, Nsf};
use tch::{nn::VarStore, Device, Kind, Tensor};

const F64: (Kind, Device) = (Kind::Double, Device::Cpu);

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

fn config(kind: &str, sets: &[&str]) -> Config {
    let mut c = Config::default();
    c.data.kind = DataKind::Tabular;
    c.model.kind = kind.parse().unwrap();
    c.model.blocks = 3;
    c.model.width = 10;
    c.model.depth = 2;
    c.model.bins = 4;
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    c.with_overrides(&sets).unwrap()
}

/// Moves every parameter and the batch-norm statistics off their initial values. (Larger
/// moves give splines with slopes near their 1e-3..1e3 limits, whose compositions amplify
/// float64 round-off past 1e-10.)
fn perturb_all(vs: &VarStore) {
    perturb(vs, 0.15);
    let _g = tch::no_grad_guard();
    for (name, mut t) in flowzoo::flows::testing::sorted_variables(vs) {
        if name.ends_with("running_var") {
            let _ = t.f_mul_(&(t.rand_like() + 0.5));
        }
    }
}

fn assert_exact(what: &str, m: &dyn DensityModel, x: &Tensor, ctx: &Ctx) {
    let r = check_flow(m.flow(), x, ctx).unwrap_or_else(|e| panic!("{what}: {e:#}"));
    assert!(r.inverse_err < 1e-10, "{what}: inverse error {}", r.inverse_err);
    assert!(r.logdet_err < 1e-8, "{what}: log-det differs from brute force by {}", r.logdet_err);
    assert!(r.inverse_logdet_err < 1e-10, "{what}: forward + inverse log-det = {}", r.inverse_logdet_err);
}

#[test]
fn every_family_inverts_with_exact_log_dets() {
    // Seeded draws: tests that use libtorch's global generator take turns.
    let _rng = common::rng_lock();
    let cols: Vec<String> = (0..5).map(|i| format!("c{i}")).collect();
    let cases: &[(&str, &[&str])] = &[
        ("maf", &["model.permutation=reverse", "model.norm=batchnorm"]),
        ("maf", &["model.permutation=shuffle", "model.norm=actnorm", "model.base=diag_gaussian", "model.made_order=random", "model.made_degrees=random"]),
        ("maf", &["model.permutation=invconv_lu", "model.norm=none", "model.inverse=jacobi", "model.residual=true"]),
        ("maf", &["model.permutation=none", "model.made_order=alternating", "model.activation=tanh"]),
        ("iaf", &["model.permutation=reverse", "model.norm=batchnorm"]),
        ("iaf", &["model.permutation=invconv_lu", "model.inverse=jacobi", "model.jacobi_tol=0"]),
        ("nsf", &["model.structure=autoregressive", "model.permutation=reverse", "model.norm=none", "model.residual=true"]),
        ("nsf", &["model.structure=autoregressive", "model.permutation=invconv_lu", "model.inverse=jacobi", "model.tail_bound=2"]),
        ("nsf", &["model.structure=coupling", "model.mask=alternating", "model.permutation=reverse", "model.norm=batchnorm"]),
        ("nsf", &["model.structure=coupling", "model.mask=halves", "model.permutation=invconv_lu", "model.norm=none", "model.base=diag_gaussian"]),
    ];
    for (kind, sets) in cases {
        let what = format!("{kind} {sets:?}");
        let c = config(kind, sets);
        tch::manual_seed(7);
        let mut vs = VarStore::new(Device::Cpu);
        let m = models::build_for(&c, vs.root(), &DataInfo { classes: vec![], columns: cols.clone() }).unwrap();
        perturb_all(&vs);
        vs.double();
        // Beyond the splines' [-B, B] too.
        let x = Tensor::randn([4, 5], F64) * 2.0;
        assert_exact(&what, m.as_ref(), &x, &Ctx::eval());
        let (z, _) = m.flow().forward(&x, &Ctx::eval()).unwrap();
        assert!(max_abs(&(z - &x)) > 0.05, "{what}: the perturbed model is close to the identity; the check means little");
        assert_eq!(m.event_shape(), vec![5]);
        let lp = m.log_prob(&x, &Ctx::eval()).unwrap();
        assert!(bool::try_from(lp.isfinite().all()).unwrap(), "{what}");
        let names: Vec<String> = vs.variables().into_keys().collect();
        let layer = if c.model.structure == flowzoo::config::StructureChoice::Coupling && *kind == "nsf" { "blocks.0.coupling.net." } else { "blocks.0.made." };
        assert!(names.iter().any(|n| n.starts_with(layer)), "{what}: no {layer}* in {names:?}");
        assert!(names.iter().any(|n| n.starts_with("standardize.")), "{what}");
        assert!(!names.iter().any(|n| n.starts_with(&format!("blocks.{}.permutation", c.model.blocks - 1))), "{what}: a permutation after the last layer does nothing");
    }
}

/// Every model built with a context dimension: the density depends on the context (for every
/// feature of the first autoregressive layer too), log-dets stay exact, and a missing context is
/// an error naming its shape.
#[test]
fn conditional_models_depend_on_their_context() {
    // Seeded draws: tests that use libtorch's global generator take turns.
    let _rng = common::rng_lock();
    let spec = VectorSpec { dim: 3, standardize: true, context_dim: 2 };
    for (what, kind, sets) in [
        ("MAF", "maf", &["model.permutation=reverse"][..]),
        ("IAF", "iaf", &["model.permutation=reverse"][..]),
        ("NSF-AR", "nsf", &["model.residual=true"][..]),
        ("NSF-C", "nsf", &["model.structure=coupling", "model.permutation=invconv_lu"][..]),
    ] {
        let c = config(kind, sets);
        tch::manual_seed(8);
        let mut vs = VarStore::new(Device::Cpu);
        let m = match kind {
            "nsf" => Nsf::build(vs.root(), &c, &spec).unwrap(),
            k => Maf::build(vs.root(), &c, &spec, k == "iaf").unwrap(),
        };
        assert!(m.desc.contains("context 2"), "{what}: {}", m.desc);
        perturb_all(&vs);
        vs.double();
        let x = Tensor::randn([6, 3], F64);
        let (c1, c2) = (Tensor::randn([6, 2], F64), Tensor::randn([6, 2], F64));
        let lp1 = m.log_prob(&x, &Ctx::eval().with_cond(Some(&c1))).unwrap();
        let lp2 = m.log_prob(&x, &Ctx::eval().with_cond(Some(&c2))).unwrap();
        assert!(bool::try_from((&lp1 - &lp2).abs().gt(1e-6).all()).unwrap(), "{what}: log p(x | c) ignores c for some rows");
        assert_exact(what, &m, &x, &Ctx::eval().with_cond(Some(&c1)));
        let err = format!("{:#}", m.log_prob(&x, &Ctx::eval()).unwrap_err());
        assert!(err.contains("pass a context of shape [B, 2]"), "{what}: {err}");
        // p(x | c) samples: finite, and they move with the context.
        tch::manual_seed(1);
        let s1 = m.sample(6, 1.0, &Ctx::eval().with_cond(Some(&c1)), F64).unwrap();
        tch::manual_seed(1);
        let s2 = m.sample(6, 1.0, &Ctx::eval().with_cond(Some(&c2)), F64).unwrap();
        assert!(bool::try_from(s1.isfinite().all()).unwrap() && max_abs(&(s1 - s2)) > 1e-6, "{what}");
    }
}

/// An IAF samples with one MADE pass per layer and scores with D; a MAF the other way round.
#[test]
fn iaf_samples_and_maf_scores_in_one_pass_per_layer() {
    // Seeded draws: tests that use libtorch's global generator take turns.
    let _rng = common::rng_lock();
    let cols: Vec<String> = (0..4).map(|i| format!("c{i}")).collect();
    for (kind, sample_passes, density_passes) in [("iaf", 1.0, 4.0), ("maf", 4.0, 1.0)] {
        let c = config(kind, &["model.permutation=reverse", "model.norm=none"]);
        tch::manual_seed(9);
        let vs = VarStore::new(Device::Cpu);
        let m = models::build_for(&c, vs.root(), &DataInfo { classes: vec![], columns: cols.clone() }).unwrap();
        let _g = tch::no_grad_guard();
        let sink = Sink::new();
        let x = m.sample(5, 1.0, &Ctx::eval().with_sink(&sink), (Kind::Float, Device::Cpu)).unwrap();
        assert_eq!(sink.counters()["made_passes"], 3.0 * sample_passes, "{kind}: sampling passes (3 layers)");
        let sink = Sink::new();
        let _ = m.log_prob(&x, &Ctx::eval().with_sink(&sink)).unwrap();
        assert_eq!(sink.counters()["made_passes"], 3.0 * density_passes, "{kind}: density passes (3 layers)");
    }
}

#[test]
fn new_keys_are_range_checked_by_name() {
    let base = config("nsf", &[]);
    for (set, want) in [
        ("model.bins=1", "model.bins = 1: must be between 2 and 256"),
        ("model.bins=1000", "model.bins = 1000"),
        ("model.tail_bound=0", "model.tail_bound = 0: must be a positive number"),
        ("model.tail_bound=-2", "model.tail_bound = -2"),
        ("model.jacobi_tol=-1e-3", "model.jacobi_tol = -0.001: must be a number >= 0"),
        ("model.made_order=sideways", "made_order"),
        ("model.inverse=newton", "inverse"),
        ("model.structure=tree", "structure"),
        ("model.made_degrees=odd", "made_degrees"),
    ] {
        let err = format!("{:#}", base.with_overrides(&[set.to_string()]).unwrap_err());
        assert!(err.contains(want), "{set}: {err}");
    }
    let err = format!("{:#}", base.with_overrides(&["model.residual=true".into(), "model.made_degrees=random".into()]).unwrap_err());
    assert!(err.contains("model.residual = true needs model.made_degrees = \"cyclic\""), "{err}");
    let err = format!("{:#}", base.with_overrides(&["model.kind=iaf".into(), "model.structure=coupling".into()]).unwrap_err());
    assert!(err.contains("model.structure = \"coupling\" is for model.kind = \"nsf\""), "{err}");
    for kind in ["maf", "iaf", "nsf"] {
        let mut c = Config::default();
        c.model.kind = kind.parse().unwrap();
        let err = format!("{:#}", c.validate().unwrap_err());
        assert!(err.contains(&format!("model.kind = \"{kind}\" is for tabular data")), "{kind}: {err}");
    }
    // NSF-C on one feature has nothing to condition on.
    let c = config("nsf", &["model.structure=coupling"]);
    let vs = VarStore::new(Device::Cpu);
    let err = format!("{:#}", models::build_for(&c, vs.root(), &DataInfo { classes: vec![], columns: vec!["x".into()] }).err().unwrap());
    assert!(err.contains("needs at least 2 dimensions"), "{err}");
}
