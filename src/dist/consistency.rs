//! The start-of-run check that every rank trains the same thing.
//!
//! Each rank describes itself as named items (`("model.width", "128")`, ...). Ranks
//! all-gather a 64-bit hash of each item, so the check costs two small collectives whatever
//! the config's size; when a hash differs, they all-gather that item's text too, so the error
//! shows every rank's value. Every rank reaches the same verdict (all see all hashes) and
//! returns the same error, so all stop together.
use super::group::ProcessGroup;
use anyhow::{bail, Result};

/// FNV-1a, 64 bit: stable across builds and platforms (std's hasher is not promised to be).
fn fnv1a(bytes: &[u8]) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h as i64
}

/// Longest value shown in a mismatch message (the rest is elided).
const SHOWN: usize = 200;

impl ProcessGroup {
    /// Checks that `items` (name, value) are the same on every rank; the error names each
    /// item that differs with every rank's value, or says that the ranks describe different
    /// sets of items. Every rank must call it at the same point with its own items.
    pub fn check_consistent(&self, items: &[(&str, String)]) -> Result<()> {
        let names: String = items.iter().map(|(n, _)| format!("{n}\n")).collect();
        let head = self.all_gather_i64(&[items.len() as i64, fnv1a(names.as_bytes())])?;
        if let Some(r) = (1..head.len()).find(|&r| head[r] != head[0]) {
            bail!(
                "config mismatch between ranks: rank 0 checks {} items and rank {r} {} (or their names differ): every rank must run the same flowzoo with the same config",
                head[0][0],
                head[r][0]
            );
        }
        let hashes: Vec<i64> = items.iter().map(|(_, v)| fnv1a(v.as_bytes())).collect();
        let all = self.all_gather_i64(&hashes)?;
        let differing: Vec<usize> = (0..items.len()).filter(|&i| all.iter().any(|h| h[i] != all[0][i])).collect();
        if differing.is_empty() {
            return Ok(());
        }
        let mut lines = Vec::new();
        for &i in &differing {
            let values = self.all_gather_text(&items[i].1)?;
            let shown: Vec<String> = values.iter().enumerate().map(|(r, v)| format!("rank {r}: {}", elide(v))).collect();
            lines.push(format!("  {} differs ({})", items[i].0, shown.join("; ")));
        }
        bail!("config mismatch between ranks (every rank must run the same config):\n{}", lines.join("\n"))
    }

    /// Every rank's `text`, in rank order (lengths first, then the bytes padded to the longest).
    fn all_gather_text(&self, text: &str) -> Result<Vec<String>> {
        let lens = self.all_gather_i64(&[text.len() as i64])?;
        let longest = lens.iter().map(|l| l[0]).max().unwrap_or(0) as usize;
        let mut padded: Vec<i64> = text.bytes().map(i64::from).collect();
        padded.resize(longest.max(1), 0);
        let gathered = self.all_gather_i64(&padded)?;
        Ok(gathered
            .iter()
            .zip(&lens)
            .map(|(bytes, len)| {
                let raw: Vec<u8> = bytes[..len[0] as usize].iter().map(|&b| b as u8).collect();
                String::from_utf8_lossy(&raw).into_owned()
            })
            .collect())
    }
}

fn elide(v: &str) -> String {
    if v.chars().count() <= SHOWN {
        format!("{v:?}")
    } else {
        let head: String = v.chars().take(SHOWN).collect();
        format!("{head:?}... ({} bytes)", v.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_known_values() {
        // Reference values of 64-bit FNV-1a.
        assert_eq!(fnv1a(b"") as u64, 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a") as u64, 0xaf63_dc4c_8601_ec8c);
        assert_ne!(fnv1a(b"width=128"), fnv1a(b"width=64"));
    }

    #[test]
    fn long_values_are_elided() {
        let long = "x".repeat(500);
        let shown = elide(&long);
        assert!(shown.ends_with("... (500 bytes)") && shown.len() < 220, "{shown}");
        assert_eq!(elide("128"), "\"128\"");
    }
}
