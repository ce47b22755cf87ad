//! Config parsing: unknown and ill-typed keys name the key and the line; --set overrides.
use flowzoo::config::Config;

#[test]
fn shipped_configs_parse() {
    for f in ["configs/glow_digits.toml", "configs/glow_cifar10.toml"] {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(f);
        Config::load(&p).unwrap_or_else(|e| panic!("{f}: {e:#}"));
    }
}

#[test]
fn unknown_key_names_key_and_line() {
    let text = "[data]\nn_bits = 5\n\n[train]\nlr = 1e-3\nlearning_rate = 2\n";
    let err = format!("{:#}", Config::from_toml_str(text, "my.toml").unwrap_err());
    assert!(err.contains("my.toml"), "{err}");
    assert!(err.contains("learning_rate"), "{err}");
    assert!(err.contains("line 6"), "{err}");
}

#[test]
fn ill_typed_and_out_of_range_values() {
    let err = format!("{:#}", Config::from_toml_str("[model]\nlevels = \"three\"\n", "c.toml").unwrap_err());
    assert!(err.contains("line 2") && err.contains("levels") || err.contains("invalid type"), "{err}");
    let err = format!("{:#}", Config::from_toml_str("[data]\nn_bits = 9\n", "c.toml").unwrap_err());
    assert!(err.contains("data.n_bits"), "{err}");
    let err = format!("{:#}", Config::from_toml_str("[model]\ncoupling = \"spline\"\n", "c.toml").unwrap_err());
    assert!(err.contains("spline") && err.contains("line 2"), "{err}");
    let err = format!("{:#}", Config::from_toml_str("[data]\nimage_size = 12\n[model]\nlevels = 3\n", "c.toml").unwrap_err());
    assert!(err.contains("divisible"), "{err}");
}

#[test]
fn set_overrides() {
    let c = Config::default();
    let c2 = c.with_overrides(&["train.lr=1e-4".into(), "train.max_steps=7".into(), "data.path=some/dir".into(), "model.coupling=\"additive\"".into()]).unwrap();
    assert_eq!(c2.train.lr, 1e-4);
    assert_eq!(c2.train.max_steps, 7);
    assert_eq!(c2.data.path, "some/dir");
    assert_eq!(c2.model.coupling, flowzoo::config::CouplingChoice::Additive);
    // integer given for a float key is fine
    assert_eq!(c.with_overrides(&["train.lr=1".into()]).unwrap().train.lr, 1.0);
    let err = format!("{:#}", c.with_overrides(&["train.lrr=1".into()]).unwrap_err());
    assert!(err.contains("unknown config key `train.lrr`"), "{err}");
    let err = format!("{:#}", c.with_overrides(&["train.max_steps=abc".into()]).unwrap_err());
    assert!(err.contains("train.max_steps") && err.contains("expected a integer"), "{err}");
    let err = format!("{:#}", c.with_overrides(&["train.precision=\"fp8\"".into()]).unwrap_err());
    assert!(err.contains("train.precision") && err.contains("fp8"), "{err}");
    assert_eq!(c.with_overrides(&["train.precision=\"bf16\"".into()]).unwrap().train.precision, flowzoo::config::Precision::Bf16);
    let err = format!("{:#}", c.with_overrides(&["train.lr".into()]).unwrap_err());
    assert!(err.contains("KEY=VALUE"), "{err}");
}

#[test]
fn resolved_config_round_trips() {
    let c = Config::default().with_overrides(&["train.seed=9".into()]).unwrap();
    let back = Config::from_toml_str(&c.to_toml().unwrap(), "x").unwrap();
    assert_eq!(c, back);
}
