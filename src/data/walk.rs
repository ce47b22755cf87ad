//! The files of an image folder, found once each.
//!
//! Symbolic links are followed, but every folder and every file is read at most once: a link
//! to a folder above it (a loop) is not followed, and a second way to a folder or file already
//! found (a link to it, or a link to a link) is skipped. Both are reported, with the link and
//! what it leads to. Identity is the canonical path (every link resolved).
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One image file and its class folder (`None` at the top level).
pub type Found = (PathBuf, Option<String>);

/// Links that were not followed.
#[derive(Default, Debug, Clone)]
pub struct LinkReport {
    /// `(link, the folder above it that it leads back to)`.
    pub loops: Vec<(PathBuf, PathBuf)>,
    /// `(second path, the path it was first found under)`.
    pub duplicates: Vec<(PathBuf, PathBuf)>,
}

impl LinkReport {
    pub fn extend(&mut self, other: LinkReport) {
        self.loops.extend(other.loops);
        self.duplicates.extend(other.duplicates);
    }

    /// The lines to tell a user, if any (one per loop, one for all duplicates).
    pub fn notices(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .loops
            .iter()
            .map(|(link, to)| format!("data: not following {}: a symbolic link loop back to {}", link.display(), to.display()))
            .collect();
        if let Some((second, first)) = self.duplicates.first() {
            let n = self.duplicates.len();
            out.push(format!(
                "data: skipped {n} path{} leading to a file or folder already read (symbolic links), e.g. {} = {}",
                if n == 1 { "" } else { "s" },
                second.display(),
                first.display()
            ));
        }
        out
    }
}

fn is_hidden(p: &Path) -> bool {
    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
}

/// Walks folders, remembering across calls what it has read: the `train/` and `test/` of one
/// data set are walked by the same walker, so a link from one into the other is found too.
#[derive(Default)]
pub struct Walker {
    /// Canonical folder -> the path it was first read under.
    dirs: HashMap<PathBuf, PathBuf>,
    /// Canonical file -> the path it was first found under.
    files: HashMap<PathBuf, PathBuf>,
    pub report: LinkReport,
}

impl Walker {
    pub fn new() -> Walker {
        Walker::default()
    }

    /// Every non-hidden file below `root` not found before, sorted (depth first, names in
    /// order).
    pub fn walk(&mut self, root: &Path) -> Result<Vec<Found>> {
        let canonical = root.canonicalize().with_context(|| format!("cannot read folder {}", root.display()))?;
        if let Some(first) = self.dirs.get(&canonical) {
            self.report.duplicates.push((root.to_path_buf(), first.clone()));
            return Ok(vec![]);
        }
        self.dirs.insert(canonical.clone(), root.to_path_buf());
        let mut out = vec![];
        self.dir(root, None, &mut vec![canonical], &mut out)?;
        Ok(out)
    }

    fn dir(&mut self, dir: &Path, class: Option<&str>, ancestors: &mut Vec<PathBuf>, out: &mut Vec<Found>) -> Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read folder {}", dir.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("cannot list {}", dir.display()))?;
        entries.sort();
        for p in entries {
            if is_hidden(&p) {
                continue;
            }
            // A broken link has no canonical path: it goes to the decoder as a file, which
            // reports it as unreadable with its path.
            let canonical = p.canonicalize().ok();
            if p.is_dir() {
                let Some(canonical) = canonical else { continue };
                if ancestors.contains(&canonical) {
                    self.report.loops.push((p, canonical));
                    continue;
                }
                if let Some(first) = self.dirs.get(&canonical) {
                    self.report.duplicates.push((p, first.clone()));
                    continue;
                }
                self.dirs.insert(canonical.clone(), p.clone());
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
                ancestors.push(canonical);
                self.dir(&p, Some(class.unwrap_or(&name)), ancestors, out)?;
                ancestors.pop();
            } else {
                if let Some(c) = canonical {
                    if let Some(first) = self.files.get(&c) {
                        self.report.duplicates.push((p, first.clone()));
                        continue;
                    }
                    self.files.insert(c, p.clone());
                }
                out.push((p, class.map(str::to_string)));
            }
        }
        Ok(())
    }
}
