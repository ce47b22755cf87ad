//! The house's layering, checked on the source: which module may use which (src/lib.rs lists
//! them lowest first), no dependency cycle between top-level modules, the zoo and the leaves
//! import only what they may, the CLI only in the binary, and files of one job each (~450
//! lines).
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(sources(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The `crate::MODULE` paths a file's code (not its comments) names.
fn uses(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = vec![];
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let name: String = rest[at + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            out.push(name);
            rest = &rest[at + 7..];
        }
    }
    out
}

fn assert_uses_none(dir: &str, forbidden: &[&str]) {
    let root = src().join(dir);
    let files = if root.is_dir() { sources(&root) } else { vec![src().join(format!("{dir}.rs"))] };
    for f in files {
        for u in uses(&f) {
            assert!(!forbidden.contains(&u.as_str()), "{} uses crate::{u}, which is above it", f.display());
        }
    }
}

#[test]
fn lower_modules_do_not_use_higher_ones() {
    // config: plain data, no runtime, trainer or bench code.
    assert_uses_none("config", &["runtime", "session", "train", "bench", "jobs", "import", "export", "io", "data", "models"]);
    assert_uses_none("rng", &["config", "runtime", "session", "train", "bench", "jobs", "import", "export", "io", "data", "models", "flows"]);
    // io and data build no session and know no trainer (io::import once did: a cycle).
    assert_uses_none("io", &["runtime", "session", "train", "bench", "jobs", "import", "export", "models"]);
    assert_uses_none("data", &["runtime", "session", "train", "bench", "jobs", "import", "export", "io", "models"]);
    assert_uses_none("runtime", &["session", "train", "bench", "jobs", "import", "export", "io", "data", "models"]);
    assert_uses_none("session", &["train", "bench", "jobs", "import", "export", "vi"]);
    // score sits below train: the trainer saves the run's score statistics when it ends.
    assert_uses_none("score", &["train", "bench", "jobs", "import", "export", "vi"]);
    assert_uses_none("train", &["bench", "jobs", "import", "export", "vi"]);
    assert_uses_none("models", &["session", "train", "bench", "jobs", "import", "export", "vi", "runtime", "io", "data"]);
    assert_uses_none("vi", &["bench", "jobs", "import", "export"]);
    assert_uses_none("import", &["train", "bench", "jobs", "export", "runtime"]);
    assert_uses_none("jobs", &["bench", "import", "export"]);
}

#[test]
fn the_cli_is_in_the_binary_only() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    assert!(!lib.lines().any(|l| l.trim_start().starts_with("pub mod cli") || l.trim_start().starts_with("mod cli")));
    for f in sources(&src()) {
        let text = std::fs::read_to_string(&f).unwrap();
        let in_binary = f.starts_with(src().join("cli")) || f == src().join("main.rs");
        if !in_binary {
            assert!(!text.contains("clap::"), "{} uses clap: flags belong to src/cli/", f.display());
        }
    }
    let main = std::fs::read_to_string(src().join("main.rs")).unwrap();
    assert!(main.lines().count() < 200, "src/main.rs only dispatches");
}

#[test]
fn files_stay_small() {
    for f in sources(&src()) {
        let n = std::fs::read_to_string(&f).unwrap().lines().count();
        assert!(n <= 450, "{} has {n} lines: split it by job", f.display());
    }
}

/// Top-level module -> the top-level modules its files name (`crate::X`), crate roots and the
/// binary's CLI left out.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in sources(&src()) {
        let rel = f.strip_prefix(src()).unwrap();
        let m = rel.components().next().unwrap().as_os_str().to_str().unwrap().trim_end_matches(".rs").to_string();
        if ["main", "lib", "cli"].contains(&m.as_str()) {
            continue;
        }
        let deps: BTreeSet<String> = uses(&f).into_iter().filter(|u| *u != m && !u.is_empty()).collect();
        g.entry(m).or_default().extend(deps);
    }
    g
}

#[test]
fn the_zoo_and_the_leaves_import_only_what_they_may() {
    let g = graph();
    for (m, ok) in [("ffi", &[][..]), ("script", &["ffi"][..]), ("flows", &["script", "ffi"][..]), ("rng", &[][..])] {
        let deps = g.get(m).cloned().unwrap_or_default();
        let bad: Vec<&String> = deps.iter().filter(|d| !ok.contains(&d.as_str())).collect();
        assert!(bad.is_empty(), "src/{m} may import only {ok:?}, but imports {bad:?}");
    }
}

#[test]
fn no_dependency_cycles_between_top_level_modules() {
    fn visit(n: &str, g: &BTreeMap<String, BTreeSet<String>>, stack: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if !done.insert(n.to_string()) {
            return None;
        }
        stack.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, g, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        None
    }
    let g = graph();
    let mut done = BTreeSet::new();
    for n in g.keys() {
        if let Some(c) = visit(n, &g, &mut vec![], &mut done) {
            panic!("dependency cycle: {}", c.join(" -> "));
        }
    }
    // The checker can fail: a planted cycle is found.
    let mut planted = g.clone();
    planted.entry("script".into()).or_default().insert("export".into());
    let mut done = BTreeSet::new();
    let found = planted.keys().any(|n| visit(n, &planted, &mut vec![], &mut done).is_some());
    assert!(found, "a planted cycle script -> export -> script was not found");
}

#[test]
fn the_ode_solvers_are_a_leaf_inside_the_zoo() {
    // src/flows/ode (the solvers of the continuous flows) uses nothing of the crate.
    for f in sources(&src().join("flows").join("ode")) {
        assert!(uses(&f).is_empty(), "{} uses {:?}: the ODE solvers are a leaf", f.display(), uses(&f));
    }
}
