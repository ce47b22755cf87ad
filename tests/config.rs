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
    assert!(err.contains("line 2") && err.contains("levels") && err.contains("invalid type"), "{err}");
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

/// `text` must fail to load with every one of `needles` in the message.
fn rejects(text: &str, needles: &[&str]) {
    let err = format!("{:#}", Config::from_toml_str(text, "c.toml").unwrap_err());
    for n in needles {
        assert!(err.contains(n), "{text:?}: expected {n:?} in: {err}");
    }
}

#[test]
fn every_numeric_key_is_range_checked_naming_key_and_line() {
    // (section, key = value, what the message says). Each line sits at line 2 of its file.
    let cases: &[(&str, &str, &str)] = &[
        ("data", "image_size = 0", "must be >= 1"),
        ("data", "channels = 2", "must be 1 (grayscale) or 3 (RGB)"),
        ("data", "n_bits = 0", "between 1 and 8"),
        ("data", "n_bits = 9", "between 1 and 8"),
        ("data", "test_fraction = 1.0", "[0, 1)"),
        ("data", "test_fraction = -0.1", "[0, 1)"),
        ("data", "val_fraction = 1.5", "[0, 1)"),
        ("data", "val_fraction = 0.85", "must be below 1"),
        ("data", "uniform_noise = -1.0", "must be >= 0"),
        ("data", "uniform_noise = inf", "finite"),
        ("data", "columns = [\"x\", \"\"]", "data.columns[1] is empty"),
        ("data", "path = \"${UNCLOSED\"", "closing"),
        ("model", "levels = 0", "must be >= 1"),
        ("model", "levels = 40", "at most 30"),
        ("model", "steps = 0", "must be >= 1"),
        ("model", "width = 0", "must be >= 1"),
        ("model", "blocks = 0", "must be >= 1"),
        ("model", "depth = 0", "must be >= 1"),
        ("model", "actnorm_scale = 0.0", "must be > 0"),
        ("model", "actnorm_scale = nan", "finite"),
        ("train", "batch_size = 0", "must be >= 1"),
        ("train", "lr = 0.0", "must be > 0"),
        ("train", "lr = -1e-3", "must be > 0"),
        ("train", "lr = inf", "finite"),
        ("train", "warmup_steps = -1", "0 = no warm-up"),
        ("train", "max_steps = -5", "must be >= 0"),
        ("train", "grad_clip = -1.0", "0 = no clipping"),
        ("train", "eval_every = -1", "0 = only at the end"),
        ("train", "sample_every = -2", "0 = only at the end"),
        ("train", "checkpoint_every = -1", "0 = only at the end"),
        ("train", "log_every = 0", "must be >= 1"),
        ("train", "threads = -1", "0 = libtorch's default"),
        ("train", "ema = 1.0", "[0, 1)"),
        ("train", "ema = -0.5", "a decay rate"),
        ("train", "eval_draws = 0", "must be >= 1"),
        ("train", "max_nonfinite = 0", "must be >= 1"),
        ("train", "sample_temperature = -0.7", "must be >= 0"),
        ("train", "n_samples = 0", "must be >= 1"),
        ("train", "patience = -1", "0 = never stop early"),
        ("train", "dist_timeout_s = 0.5", "between 1 and 86400"),
        ("train", "dist_timeout_s = 1e6", "between 1 and 86400"),
        ("train", "dist_timeout_s = nan", "finite"),
        ("train", "bucket_mib = 0.0", "must be > 0 and at most 1024"),
        ("train", "bucket_mib = 4096.0", "must be > 0 and at most 1024"),
    ];
    for (section, line, says) in cases {
        let key = format!("{section}.{}", line.split(" = ").next().unwrap());
        rejects(&format!("[{section}]\n{line}\n"), &[&key, "c.toml, line 2", says]);
    }
    // Keys that only make sense together name the one the file set.
    rejects("[data]\nimage_size = 12\n[model]\nlevels = 3\n", &["c.toml, line 2", "data.image_size = 12", "divisible by 2^model.levels = 8"]);
    rejects("[train]\neval_every = 0\npatience = 3\n", &["c.toml, line 3", "train.patience", "train.eval_every = 0"]);
    // 0 keeps its meaning where it has one.
    let c = Config::from_toml_str("[train]\neval_every = 0\nsample_every = 0\ncheckpoint_every = 0\ngrad_clip = 0.0\nema = 0.0\n", "c.toml").unwrap();
    assert_eq!((c.train.eval_every, c.train.grad_clip), (0, 0.0));
}

#[test]
fn tabular_configs_are_checked_like_image_configs() {
    let tab = "[data]\nkind = \"tabular\"\npath = \"x.csv\"\n[model]\nkind = \"realnvp\"\n";
    Config::from_toml_str(tab, "t.toml").unwrap();
    let err = format!("{:#}", Config::from_toml_str(&format!("{tab}[train]\neval_draws = 0\n"), "t.toml").unwrap_err());
    assert!(err.contains("t.toml, line 7") && err.contains("train.eval_draws = 0"), "{err}");
    let err = format!("{:#}", Config::from_toml_str(&format!("{tab}[train]\nema = 1.5\n"), "t.toml").unwrap_err());
    assert!(err.contains("train.ema = 1.5"), "{err}");
    let err = format!("{:#}", Config::from_toml_str("[data]\nkind = \"tabular\"\n[model]\nkind = \"glow\"\n", "t.toml").unwrap_err());
    assert!(err.contains("t.toml, line 4") && err.contains("model.kind = \"glow\" models images"), "{err}");
}

#[test]
fn unknown_choices_list_the_known_ones() {
    rejects("[model]\nkind = \"flow\"\n", &["line 2", "flow", "glow", "realnvp", "nice"]);
    rejects("[model]\ncoupling = \"spline\"\n", &["line 2", "spline", "affine", "additive"]);
    rejects("[model]\npermutation = \"random\"\n", &["line 2", "invconv_lu", "shuffle", "none"]);
    rejects("[model]\nactivation = \"swish\"\n", &["line 2", "swish", "relu"]);
    rejects("[data]\nheader = \"maybe\"\n", &["line 2", "maybe", "\"auto\", \"true\" or \"false\""]);
    rejects("[data]\nbad_rows = \"ignore\"\n", &["line 2", "fail", "drop"]);
    rejects("[data]\nkind = \"audio\"\n", &["line 2", "images", "tabular"]);
    rejects("[train]\ndevice = \"tpu\"\n", &["line 2", "unknown device \"tpu\"", "auto, cpu, cuda or cuda:N"]);
    rejects("[train]\nprecision = \"fp8\"\n", &["line 2", "unknown precision \"fp8\"", "fp32, tf32 or bf16"]);
    rejects("[train]\nbackend = \"mpi\"\n", &["line 2", "unknown distributed backend \"mpi\"", "auto, gloo or nccl"]);
    rejects("[train]\ngrad_sync = \"sometimes\"\n", &["line 2", "sometimes", "overlap", "after_backward"]);
    // The spellings that work: a TOML boolean for the header, cuda:N, the long precision names.
    let c = Config::from_toml_str("[data]\nheader = false\n[train]\ndevice = \"cuda:1\"\nprecision = \"bfloat16\"\n", "c.toml").unwrap();
    assert_eq!(c.data.header, flowzoo::config::Header::Absent);
    assert_eq!(c.train.device, flowzoo::config::DeviceChoice::Cuda(1));
    assert_eq!(c.train.precision, flowzoo::config::Precision::Bf16);
    assert!(c.to_toml().unwrap().contains("device = \"cuda:1\""));
}

#[test]
fn set_errors_name_the_override() {
    let c = Config::default();
    let err = |ovs: &[&str]| format!("{:#}", c.with_overrides(&ovs.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap_err());
    let e = err(&["train.lr=0"]);
    assert!(e.contains("--set train.lr=0") && e.contains("train.lr = 0: must be > 0"), "{e}");
    let e = err(&["model.kind=flow"]);
    assert!(e.contains("--set model.kind=flow") && e.contains("glow") && e.contains("nice"), "{e}");
    let e = err(&["train.backend=mpi"]);
    assert!(e.contains("--set train.backend=mpi") && e.contains("auto, gloo or nccl"), "{e}");
    let e = err(&["train.dist_timeout_s=0"]);
    assert!(e.contains("--set train.dist_timeout_s=0") && e.contains("train.dist_timeout_s = 0: must be between 1 and 86400"), "{e}");
    let ok = c.with_overrides(&["train.backend=gloo".into(), "train.grad_sync=after_backward".into(), "train.dist_timeout_s=30".into()]).unwrap();
    assert_eq!((ok.train.backend, ok.train.grad_sync, ok.train.dist_timeout_s), (flowzoo::config::BackendChoice::Gloo, flowzoo::config::GradSync::AfterBackward, 30.0));
    let e = err(&["train.device=tpu"]);
    assert!(e.contains("--set train.device=tpu") && e.contains("unknown device"), "{e}");
    let e = err(&["data.n_bits=9", "train.seed=1"]);
    assert!(e.contains("--set data.n_bits=9") && e.contains("between 1 and 8"), "{e}");
    // A problem of two keys, only one of them overridden, names the result.
    let e = err(&["model.levels=4"]);
    assert!(e.contains("--set") && e.contains("data.image_size = 8 is not divisible by 2^model.levels = 16"), "{e}");
    // Keys that are only valid together may be set in any order.
    let ok = c.with_overrides(&["model.levels=4".into(), "data.image_size=16".into()]).unwrap();
    assert_eq!((ok.model.levels, ok.data.image_size), (4, 16));
}

#[test]
fn data_path_is_found_beside_the_config_and_says_where_it_looked() {
    let d = tempfile::tempdir().unwrap();
    let conf_dir = d.path().join("confs");
    std::fs::create_dir_all(conf_dir.join("my_data")).unwrap();
    let file = conf_dir.join("c.toml");
    std::fs::write(&file, "[data]\npath = \"my_data\"\n").unwrap();
    // The test runs in the crate's folder, which has no my_data: found beside the config.
    let c = Config::load(&file).unwrap();
    assert_eq!(c.data_path().unwrap(), conf_dir.join("my_data"));
    // The run records where it was found.
    assert_eq!(c.with_resolved_data_path().unwrap().data.path, conf_dir.join("my_data").display().to_string());
    // A missing path names both places.
    std::fs::write(&file, "[data]\npath = \"nowhere/x\"\n").unwrap();
    let e = format!("{:#}", Config::load(&file).unwrap().data_path().unwrap_err());
    let cwd = std::env::current_dir().unwrap();
    assert!(e.contains("data.path = \"nowhere/x\" does not exist; looked in"), "{e}");
    assert!(e.contains(&format!("{} (relative to the current directory)", cwd.join("nowhere/x").display())), "{e}");
    assert!(e.contains(&format!("{} (relative to the config file's folder)", conf_dir.join("nowhere/x").display())), "{e}");
    // A path from the command line is relative to the current directory only.
    let mut c = Config::load(&file).unwrap();
    c.set_data_path(std::path::Path::new("my_data"));
    let e = format!("{:#}", c.data_path().unwrap_err());
    assert!(e.contains("current directory") && !e.contains("config file's folder"), "{e}");
    let c = Config::load(&file).unwrap().with_overrides(&["data.path=my_data".into()]).unwrap();
    assert!(c.data_path().is_err(), "--set data.path is relative to the current directory");
}

#[test]
fn data_path_expands_environment_variables() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("fashion")).unwrap();
    // Names no other test uses (tests of one binary share the environment).
    std::env::set_var("FLOWZOO_TEST_DATA_ROOT", d.path());
    std::env::remove_var("FLOWZOO_TEST_UNSET");
    let with = |path: &str| Config::from_toml_str(&format!("[data]\npath = \"{path}\"\n"), "c.toml").unwrap();
    assert_eq!(with("${FLOWZOO_TEST_DATA_ROOT}/fashion").data_path().unwrap(), d.path().join("fashion"));
    let fallback = format!("${{FLOWZOO_TEST_UNSET:-{}}}", d.path().join("fashion").display());
    assert_eq!(with(&fallback).data_path().unwrap(), d.path().join("fashion"));
    let e = format!("{:#}", with("${FLOWZOO_TEST_UNSET}/fashion").data_path().unwrap_err());
    assert!(e.contains("environment variable FLOWZOO_TEST_UNSET is not set"), "{e}");
    let e = format!("{:#}", with("${FLOWZOO_TEST_DATA_ROOT}/nope").data_path().unwrap_err());
    assert!(e.contains(&d.path().join("nope").display().to_string()) && e.contains("does not exist"), "{e}");
}
