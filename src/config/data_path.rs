//! Where `data.path` points.
//!
//! 1. `${VAR}` is replaced by the environment variable `VAR`, `${VAR:-default}` by `VAR` or,
//!    when it is unset or empty, by `default` (as in a POSIX shell). An unset variable without a
//!    default is an error naming it; `$$` is a literal `$`.
//! 2. An absolute path is used as it is. A relative path is looked up in the current
//!    directory, and then, when the config was read from a file, in that file's folder; the
//!    first that exists wins. A path given on the command line (`--data`, `--set data.path=`)
//!    is relative to the current directory only.
//! 3. When neither exists, the error lists every place it looked.
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// `raw` with every `${VAR}` / `${VAR:-default}` replaced using `lookup`.
pub fn expand_vars(raw: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
            continue;
        }
        let Some(body_and_rest) = after.strip_prefix('{') else {
            bail!("data.path = {raw:?}: a `$` must start `${{VAR}}` or `${{VAR:-default}}` (write `$$` for a literal `$`)");
        };
        let Some(end) = body_and_rest.find('}') else {
            bail!("data.path = {raw:?}: `${{` without its closing `}}`");
        };
        let body = &body_and_rest[..end];
        let (name, default) = match body.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (body, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || name.starts_with(|c: char| c.is_ascii_digit()) {
            bail!("data.path = {raw:?}: `{name}` is not an environment variable name (letters, digits and `_`)");
        }
        match (lookup(name).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => bail!(
                "data.path = {raw:?}: the environment variable {name} is not set (set it, or give a default: ${{{name}:-/some/path}})"
            ),
        }
        rest = &body_and_rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Checks the `${...}` syntax of `raw` without reading the environment.
pub fn check_syntax(raw: &str) -> Result<()> {
    expand_vars(raw, &|_| Some("x".to_string())).map(|_| ())
}

/// The existing path `raw` names: expanded, then looked up as the module docs say.
/// `file_dir` is the folder of the config file it was written in, if any.
pub fn resolve(raw: &str, file_dir: Option<&Path>) -> Result<PathBuf> {
    let expanded = expand_vars(raw, &|name| std::env::var(name).ok())?;
    let path = PathBuf::from(&expanded);
    let shown = if expanded == raw { format!("{raw:?}") } else { format!("{raw:?} (= {expanded:?})") };
    if path.is_absolute() {
        if path.exists() {
            return Ok(path);
        }
        bail!("data.path = {shown}: {} does not exist", path.display());
    }
    let cwd = std::env::current_dir().ok();
    let mut tried = vec![];
    let mut candidates = vec![(path.clone(), "the current directory", cwd.as_ref().map(|c| c.join(&path)))];
    if let Some(dir) = file_dir {
        let beside = dir.join(&path);
        let absolute = if beside.is_absolute() { Some(beside.clone()) } else { cwd.as_ref().map(|c| c.join(&beside)) };
        candidates.push((beside, "the config file's folder", absolute));
    }
    for (candidate, base, absolute) in candidates {
        if candidate.exists() {
            return Ok(candidate);
        }
        let shown_at = absolute.unwrap_or_else(|| candidate.clone());
        tried.push(format!("{} (relative to {base})", shown_at.display()));
    }
    bail!("data.path = {shown} does not exist; looked in:\n  {}", tried.join("\n  "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME_DATA" => Some("/srv/data".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn variables_defaults_and_errors() {
        assert_eq!(expand_vars("${HOME_DATA}/mnist", &env).unwrap(), "/srv/data/mnist");
        assert_eq!(expand_vars("${NOPE:-/usr/share/x}", &env).unwrap(), "/usr/share/x");
        assert_eq!(expand_vars("${EMPTY:-d}", &env).unwrap(), "d");
        assert_eq!(expand_vars("${HOME_DATA:-d}", &env).unwrap(), "/srv/data");
        assert_eq!(expand_vars("a$$b", &env).unwrap(), "a$b");
        assert_eq!(expand_vars("plain/path", &env).unwrap(), "plain/path");
        let e = expand_vars("${NOPE}/x", &env).unwrap_err().to_string();
        assert!(e.contains("NOPE is not set") && e.contains("${NOPE:-"), "{e}");
        assert!(expand_vars("${OPEN", &env).unwrap_err().to_string().contains("closing"));
        assert!(expand_vars("$HOME", &env).unwrap_err().to_string().contains("`$$`"));
        assert!(expand_vars("${A-B}", &env).unwrap_err().to_string().contains("not an environment variable name"));
    }
}
