//! The images at a path a user hands to `flowzoo eval`, `score` or `ood`: which part of it is
//! scored, read by the same loaders (and the same `data.bad_images` rule) as training.
//!
//! - an IDX images file (`*-idx3-ubyte[.gz]`): all its images (labels from the matching
//!   `*-idx1-ubyte[.gz]` beside it, when there is one);
//! - another single file: that one image;
//! - an IDX folder with both parts: its test part (`t10k-*`), as a folder with `train/` and
//!   `test/` is scored on `test/`; an IDX folder with one part: that part;
//! - any other folder: all of it.
use super::idx::{load_part, IdxFolder, IdxPart};
use super::images::{decode_image, load_image_files, ImageSet, LoadReport};
use crate::config::DataConfig;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// The images to evaluate at `path` (see the module docs), where each came from (its file's
/// path, or `FILE#INDEX` in an IDX file), and a description of what was read. `classes`: the
/// labels to map class folders / IDX labels to (a class-conditional model's), or `None` to
/// take them from the data.
pub fn load_evaluation_images(path: &Path, cfg: &DataConfig, classes: Option<&[String]>) -> Result<(ImageSet, LoadReport, Vec<String>, String)> {
    if !path.exists() {
        bail!("{} does not exist", path.display());
    }
    if path.is_file() {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.contains("idx3-ubyte") {
            let labels = labels_beside(path, name);
            let part = IdxPart { images: path.to_path_buf(), labels };
            let (set, sources) = load_part(&part, cfg, classes)?;
            return Ok((set, loaded(sources.len()), sources, path.display().to_string()));
        }
        return single_image(path, cfg, classes);
    }
    if let Some(folder) = IdxFolder::find(path) {
        let (part, which) = match (folder.train.as_ref(), folder.test.as_ref()) {
            (Some(_), Some(test)) => (test, " (its test part)"),
            (Some(only), None) | (None, Some(only)) => (only, ""),
            (None, None) => bail!("{}: no IDX images file", path.display()),
        };
        let (set, sources) = load_part(part, cfg, classes)?;
        return Ok((set, loaded(sources.len()), sources, format!("{}{which}", part.images.display())));
    }
    let (train, test) = (path.join("train"), path.join("test"));
    let root = if train.is_dir() && test.is_dir() { test } else { path.to_path_buf() };
    let (set, report, sources) = load_image_files(&root, cfg, classes)?;
    Ok((set, report, sources, root.display().to_string()))
}

fn loaded(n: usize) -> LoadReport {
    LoadReport { loaded: n, ..LoadReport::default() }
}

/// `train-labels-idx1-ubyte[.gz]` beside `train-images-idx3-ubyte[.gz]`, when it exists.
fn labels_beside(images: &Path, name: &str) -> Option<PathBuf> {
    let base = name.replace("images", "labels").replace("idx3", "idx1");
    let stem = base.strip_suffix(".gz").unwrap_or(&base).to_string();
    [stem.clone(), format!("{stem}.gz")].into_iter().map(|n| images.with_file_name(n)).find(|p| p.is_file())
}

/// One image file; a bad one is an error whatever `data.bad_images` says (there is nothing
/// else to score).
fn single_image(path: &Path, cfg: &DataConfig, classes: Option<&[String]>) -> Result<(ImageSet, LoadReport, Vec<String>, String)> {
    let img = decode_image(path, cfg.channels, cfg.image_size).with_context(|| format!("bad image {}", path.display()))?;
    let size = cfg.image_size;
    let images = Tensor::f_from_slice(&img.bytes)?.f_reshape([1, cfg.channels, size, size])?;
    // A lone file has no class folder: the unnamed class when the classes have one, else the first.
    let classes = classes.map_or(vec![String::new()], |c| c.to_vec());
    let label = classes.iter().position(|c| c.is_empty()).unwrap_or(0) as i64;
    let labels = Tensor::f_from_slice(&[label])?.f_to_kind(Kind::Int64)?;
    let mut report = loaded(1);
    if img.original != (size as u32, size as u32) {
        report.resized.insert(img.original, 1);
    }
    Ok((ImageSet { images, labels, classes }, report, vec![path.display().to_string()], path.display().to_string()))
}
