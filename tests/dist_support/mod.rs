//! Shared by the multi-process dist tests (tests/dist*.rs): a test re-runs its own test
//! binary as its ranks. The parent picks a free port and starts copies of itself filtered to
//! the same test, with torchrun's variables (`MASTER_ADDR`, `MASTER_PORT`, `RANK`,
//! `WORLD_SIZE`) and `FZ_DIST_CHILD=1`; inside a child, the test body runs as that rank and
//! panics on any failed check, which the parent sees as a failed exit status (and prints the
//! child's output).
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]
use flowzoo::dist::{self, DistEnv, DistOptions, GlooDevice, ProcessGroup};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

pub const CHILD: &str = "FZ_DIST_CHILD";

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().unwrap().port()
}

/// In a child: this rank's group (timeout from FZ_DIST_TIMEOUT_MS, default 20 s). In the
/// parent: None.
pub fn child_group() -> Option<ProcessGroup> {
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
pub fn run_ranks(test: &str, world: usize, spawn: usize, extra: &[(&str, &str)]) -> Vec<Output> {
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

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

pub fn assert_all_ok(outs: &[Output]) {
    for (rank, o) in outs.iter().enumerate() {
        assert!(o.status.success(), "rank {rank} failed ({}):\n{}", o.status, text(o));
    }
}

/// Without distributed support every multi-process test checks the message instead.
pub fn unsupported_build_says_so() -> bool {
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


pub fn child_timeout_env(ms: &str) -> [(&'static str, String); 1] {
    [("FZ_DIST_TIMEOUT_MS", ms.to_string())]
}

/// The number printed after `FZ-ERROR after ` by a child (seconds until it gave up).
pub fn seconds_to_error(out: &str) -> f64 {
    out.split("FZ-ERROR after ").nth(1).and_then(|s| s.split(' ').next()).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no timing in:\n{out}"))
}

/// A `flowzoo` process (the binary under test) with stdout and stderr in files of `dir`.
pub struct Proc {
    pub child: std::process::Child,
    pub log: std::path::PathBuf,
}

impl Proc {
    /// What it printed so far (stdout then stderr).
    pub fn output(&self) -> String {
        let out = std::fs::read_to_string(self.log.with_extension("out")).unwrap_or_default();
        let err = std::fs::read_to_string(self.log.with_extension("err")).unwrap_or_default();
        format!("{out}{err}")
    }
}

/// `flowzoo ARGS` as rank `rank` of `world` at `127.0.0.1:port` (rank 0 hosts the store, as
/// in a launch by hand), Gloo on loopback.
pub fn spawn_flowzoo_rank(dir: &std::path::Path, port: u16, rank: usize, world: usize, args: &[String]) -> Proc {
    let log = dir.join(format!("rank{rank}-{port}"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowzoo"));
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("GLOO_SOCKET_IFNAME", "lo")
        .env_remove("TORCHELASTIC_USE_AGENT_STORE")
        .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
        .stderr(std::fs::File::create(log.with_extension("err")).unwrap());
    Proc { child: cmd.spawn().expect("start flowzoo"), log }
}

/// Waits for every process (killing all of them and failing after `limit`); their exit
/// statuses and outputs.
pub fn wait_procs(mut procs: Vec<Proc>, limit: Duration) -> Vec<(std::process::ExitStatus, String)> {
    let t0 = std::time::Instant::now();
    let mut status: Vec<Option<std::process::ExitStatus>> = procs.iter().map(|_| None).collect();
    while status.iter().any(Option::is_none) {
        for (p, s) in procs.iter_mut().zip(status.iter_mut()) {
            if s.is_none() {
                *s = p.child.try_wait().unwrap();
            }
        }
        if t0.elapsed() > limit {
            let outs: Vec<String> = procs.iter().map(Proc::output).collect();
            for p in &mut procs {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
            panic!("ranks still running after {limit:?} (a hang):\n{}", outs.join("\n---\n"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    procs.iter().zip(status).map(|(p, s)| (s.unwrap(), p.output())).collect()
}

/// torchrun from the venv (first on PATH under `make test`), if there is one.
pub fn torchrun() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("torchrun")).find(|p| p.is_file())
}

/// In a build without distributed support, `flowzoo train` under torchrun's variables must say
/// so (and how to get it): true when that was checked (the caller's test has nothing else to do).
pub fn train_without_support_says_so() -> bool {
    if dist::AVAILABLE {
        return false;
    }
    let d = tempfile::tempdir().unwrap();
    let args: Vec<String> = ["train", "--config", "configs/glow_digits.toml", "--out"].iter().map(|s| s.to_string()).chain([d.path().join("run").display().to_string()]).collect();
    let outs = wait_procs(vec![spawn_flowzoo_rank(d.path(), free_port(), 0, 2, &args)], Duration::from_secs(60));
    let (status, out) = &outs[0];
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("launched as rank 0 of 2") && out.contains("no distributed support") && out.contains("libgloo-dev"), "{out}");
    true
}
