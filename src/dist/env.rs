//! The rendezvous that torchrun (or a user) describes through environment variables.
use anyhow::{anyhow, bail, Result};

/// One process's place in a distributed run, as torchrun sets it: `MASTER_ADDR`,
/// `MASTER_PORT`, `RANK`, `WORLD_SIZE`, `LOCAL_RANK` (plus torchrun's own
/// `TORCHELASTIC_USE_AGENT_STORE` and `TORCHELASTIC_RESTART_COUNT`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistEnv {
    /// Where the rendezvous TCPStore listens (rank 0's host, or torchrun's agent).
    pub master_addr: String,
    pub master_port: u16,
    /// This process's rank in `0..world_size`.
    pub rank: usize,
    pub world_size: usize,
    /// This process's rank on its machine: picks the CUDA device (`cuda:LOCAL_RANK`).
    /// torchrun always sets it; when absent it is taken to be `rank` (one machine).
    pub local_rank: usize,
    /// True under torchrun (`TORCHELASTIC_USE_AGENT_STORE=True`): torchrun's agent already
    /// hosts the TCPStore at `master_addr:master_port`, so every rank, rank 0 included, joins
    /// it as a client. Otherwise rank 0 hosts it (a launch by hand, and the tests).
    pub agent_store: bool,
    /// torchrun's restart count (`TORCHELASTIC_RESTART_COUNT`, 0 when absent): part of our
    /// key prefix, so that a restarted attempt never meets a dead attempt's keys in the
    /// agent's store.
    pub restart_count: u64,
}

/// The variables that mark a distributed launch; all four must be set together.
pub const REQUIRED_VARS: [&str; 4] = ["MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE"];

impl DistEnv {
    /// From this process's environment: `Ok(None)` when none of [`REQUIRED_VARS`] is set
    /// (a single-process run), an error naming the variable when they are incomplete or
    /// malformed.
    pub fn from_env() -> Result<Option<DistEnv>> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// As [`DistEnv::from_env`], reading variables through `get` (for tests and launchers).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<DistEnv>> {
        let set: Vec<&str> = REQUIRED_VARS.iter().copied().filter(|k| get(k).is_some()).collect();
        if set.is_empty() {
            return Ok(None);
        }
        if set.len() < REQUIRED_VARS.len() {
            let missing: Vec<&str> = REQUIRED_VARS.iter().copied().filter(|k| get(k).is_none()).collect();
            bail!(
                "distributed launch: {} set but {} missing (torchrun sets all of MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE; unset them all to train in one process)",
                set.join(", "),
                missing.join(", ")
            );
        }
        let var = |k: &str| get(k).expect("checked above");
        let number = |k: &str, v: String| -> Result<u64> {
            v.trim().parse::<u64>().map_err(|_| anyhow!("distributed launch: {k}={v:?} is not a non-negative integer"))
        };
        let master_addr = var("MASTER_ADDR").trim().to_string();
        if master_addr.is_empty() {
            bail!("distributed launch: MASTER_ADDR is empty");
        }
        let port = number("MASTER_PORT", var("MASTER_PORT"))?;
        let master_port = u16::try_from(port)
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| anyhow!("distributed launch: MASTER_PORT={port} is not a port (1..65535)"))?;
        let rank = number("RANK", var("RANK"))? as usize;
        let world_size = number("WORLD_SIZE", var("WORLD_SIZE"))? as usize;
        if world_size == 0 {
            bail!("distributed launch: WORLD_SIZE=0; it must be at least 1");
        }
        if rank >= world_size {
            bail!("distributed launch: RANK={rank} is not below WORLD_SIZE={world_size}");
        }
        let local_rank = match get("LOCAL_RANK") {
            Some(v) => number("LOCAL_RANK", v)? as usize,
            None => rank,
        };
        let agent_store = get("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v == "True");
        let restart_count = match get("TORCHELASTIC_RESTART_COUNT") {
            Some(v) => number("TORCHELASTIC_RESTART_COUNT", v)?,
            None => 0,
        };
        Ok(Some(DistEnv { master_addr, master_port, rank, world_size, local_rank, agent_store, restart_count }))
    }

    /// Whether this process hosts the TCPStore (rank 0, unless torchrun's agent does).
    pub fn hosts_store(&self) -> bool {
        self.rank == 0 && !self.agent_store
    }

    /// The key prefix of this attempt's process group in the store.
    pub fn store_prefix(&self) -> String {
        format!("flowzoo/attempt_{}/", self.restart_count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Option<DistEnv>> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        DistEnv::from_lookup(|k| map.get(k).cloned())
    }

    const FULL: [(&str, &str); 4] = [("MASTER_ADDR", "10.0.0.1"), ("MASTER_PORT", "29500"), ("RANK", "1"), ("WORLD_SIZE", "4")];

    #[test]
    fn absent_means_single_process() {
        assert_eq!(env(&[("LOCAL_RANK", "0")]).unwrap(), None);
    }

    #[test]
    fn torchrun_variables_parse() {
        let mut pairs = FULL.to_vec();
        pairs.extend([("LOCAL_RANK", "1"), ("TORCHELASTIC_USE_AGENT_STORE", "True"), ("TORCHELASTIC_RESTART_COUNT", "2")]);
        let e = env(&pairs).unwrap().unwrap();
        assert_eq!((e.master_addr.as_str(), e.master_port, e.rank, e.world_size, e.local_rank), ("10.0.0.1", 29500, 1, 4, 1));
        assert!(e.agent_store && !e.hosts_store());
        assert_eq!(e.store_prefix(), "flowzoo/attempt_2/");
        let by_hand = env(&[("MASTER_ADDR", "h"), ("MASTER_PORT", "1"), ("RANK", "0"), ("WORLD_SIZE", "2")]).unwrap().unwrap();
        assert!(by_hand.hosts_store());
        assert_eq!(by_hand.local_rank, 0);
    }

    #[test]
    fn incomplete_or_bad_values_are_named() {
        let err = env(&FULL[..3]).unwrap_err().to_string();
        assert!(err.contains("WORLD_SIZE missing"), "{err}");
        let mut bad = FULL.to_vec();
        bad[2] = ("RANK", "4");
        let err = env(&bad).unwrap_err().to_string();
        assert!(err.contains("RANK=4 is not below WORLD_SIZE=4"), "{err}");
        bad[2] = ("RANK", "one");
        assert!(env(&bad).unwrap_err().to_string().contains("RANK=\"one\""));
        bad[2] = ("RANK", "0");
        bad[1] = ("MASTER_PORT", "70000");
        assert!(env(&bad).unwrap_err().to_string().contains("MASTER_PORT=70000"));
    }
}
