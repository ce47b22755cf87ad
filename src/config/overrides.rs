//! `--set section.key=value`: overrides of single keys, each checked as it is applied (an
//! unknown key, a value of the wrong type or an unknown choice names the override), then the
//! whole config validated once (a range error names the override that set the key).
use super::Config;
use anyhow::{bail, Context, Result};

impl Config {
    /// Applies `key.path=value` overrides; the value is read as TOML (`1e-4`, `true`, `"x"`),
    /// or as a bare string when it is not valid TOML (`--set data.path=data/x`).
    pub fn with_overrides(&self, overrides: &[String]) -> Result<Config> {
        let mut root = toml::Value::try_from(self)?;
        let mut set_keys: Vec<(String, &str)> = vec![];
        for ov in overrides {
            let Some((key, raw)) = ov.split_once('=') else {
                bail!("--set {ov}: expected KEY=VALUE, e.g. --set train.lr=1e-4");
            };
            let key = key.trim();
            let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
                Ok(mut t) => t.remove("v").context("internal error: TOML table without its key")?,
                Err(_) => toml::Value::String(raw.to_string()),
            };
            let mut node = &mut root;
            let parts: Vec<&str> = key.split('.').collect();
            for (i, part) in parts.iter().enumerate() {
                let table = node.as_table_mut().with_context(|| format!("--set {key}: `{}` is not a section", parts[..i].join(".")))?;
                let Some(next) = table.get_mut(*part) else {
                    bail!("--set {key}: unknown config key `{key}`");
                };
                node = next;
            }
            if std::mem::discriminant(node) != std::mem::discriminant(&value) && !(node.is_float() && value.is_integer()) {
                bail!("--set {key}={raw}: expected a {}, got a {}", node.type_str(), value.type_str());
            }
            *node = match (node.is_float(), value) {
                (true, toml::Value::Integer(i)) => toml::Value::Float(i as f64),
                (_, v) => v,
            };
            // The value's own check (an unknown choice such as precision "fp8"), here where
            // the override is known.
            root.clone().try_into::<Config>().map_err(|e| anyhow::anyhow!("--set {key}={raw}: {e}"))?;
            set_keys.push((key.to_string(), raw));
        }
        let mut cfg: Config = root.try_into().map_err(|e| anyhow::anyhow!("--set: {e}"))?;
        // A path given on the command line is relative to the current directory only.
        cfg.file_dir = if set_keys.iter().any(|(k, _)| k == "data.path") { None } else { self.file_dir.clone() };
        if let Err(bad) = super::validate::check(&cfg) {
            match set_keys.iter().rev().find(|(k, _)| k == bad.key) {
                Some((k, raw)) => bail!("--set {k}={raw}: {bad}"),
                None => bail!("after --set overrides: {bad}"),
            }
        }
        Ok(cfg)
    }
}
