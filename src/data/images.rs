//! Image folders, decoded once with the `image` crate into `[N, C, H, W]` uint8.
//!
//! Layout: any depth of folders; the first folder level below the root (or below `train/` and
//! `test/`) names the class. Symbolic links are followed, each folder and file read at most
//! once (`walk.rs`); resizing is said once on stderr. Bad files (zero-byte, truncated, corrupt, not an image) are reported
//! with their path and skipped with a count, or stop loading (`bad_images = "fail"`).
//! A folder of IDX files (MNIST, Fashion-MNIST) is recognised first and read by [`super::idx`].
use crate::config::{BadImages, DataConfig};
use super::walk::{LinkReport, Walker};
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

pub struct ImageSet {
    /// `[N, C, H, W]` uint8 on the CPU.
    pub images: Tensor,
    /// `[N]` int64 class index into `classes`.
    pub labels: Tensor,
    pub classes: Vec<String>,
}

impl ImageSet {
    pub fn len(&self) -> i64 {
        self.images.size()[0]
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn select(&self, idx: &Tensor) -> ImageSet {
        ImageSet { images: self.images.index_select(0, idx), labels: self.labels.index_select(0, idx), classes: self.classes.clone() }
    }
}

#[derive(Default, Debug)]
pub struct LoadReport {
    pub loaded: usize,
    /// `(path, reason)` of every skipped file.
    pub skipped: Vec<(PathBuf, String)>,
    /// Sizes `(width, height)` of the images that were resized, with how many had each.
    pub resized: BTreeMap<(u32, u32), usize>,
    /// Symbolic links not followed: loops, and second ways to what was already read.
    pub links: LinkReport,
}

impl LoadReport {
    fn merge(&mut self, other: LoadReport) {
        self.loaded += other.loaded;
        self.skipped.extend(other.skipped);
        for (k, v) in other.resized {
            *self.resized.entry(k).or_default() += v;
        }
        self.links.extend(other.links);
    }

    /// "data: resizing 28×28 images to 8×8 (data.image_size = 8)", when any image was resized.
    pub fn resize_notice(&self, size: i64) -> Option<String> {
        let crop = if self.resized.keys().any(|(w, h)| w != h) { ", shorter side, centre crop" } else { "" };
        match self.resized.len() {
            0 => None,
            1 => {
                let ((w, h), _) = self.resized.iter().next()?;
                Some(format!("data: resizing {w}×{h} images to {size}×{size} (data.image_size = {size}{crop})"))
            }
            k => {
                let mut sizes: Vec<String> = self.resized.iter().map(|((w, h), n)| format!("{w}×{h}: {n}")).take(5).collect();
                if k > 5 {
                    sizes.push("...".into());
                }
                Some(format!("data: resizing images of {k} sizes ({}) to {size}×{size} (data.image_size = {size}{crop})", sizes.join(", ")))
            }
        }
    }

    /// Tells the user, on stderr, what was resized and which links were not followed.
    fn announce(&self, size: i64) {
        for line in self.resize_notice(size).into_iter().chain(self.links.notices()) {
            eprintln!("{line}");
        }
    }
}

/// One decoded image and the size it had in its file.
pub struct Decoded {
    /// `C × size × size` bytes, channel-major.
    pub bytes: Vec<u8>,
    /// `(width, height)` before resizing.
    pub original: (u32, u32),
}

/// Decodes one file to `C × size × size` bytes (resize the shorter side, centre crop).
pub fn decode_image(path: &Path, channels: i64, size: i64) -> Result<Decoded> {
    let meta = std::fs::metadata(path)?;
    if meta.len() == 0 {
        bail!("empty file (0 bytes)");
    }
    let reader = image::ImageReader::open(path)?.with_guessed_format()?;
    if reader.format().is_none() {
        bail!("not an image in a supported format (PNG, JPEG, BMP, GIF, TIFF)");
    }
    let img = reader.decode().map_err(|e| anyhow::anyhow!("cannot decode: {e}"))?;
    let original = (img.width(), img.height());
    let bytes = fit_image(img, channels, size)?;
    Ok(Decoded { bytes, original })
}

/// A decoded image to `C × size × size` bytes (resize the shorter side, centre crop), CHW.
pub fn fit_image(img: image::DynamicImage, channels: i64, size: i64) -> Result<Vec<u8>> {
    let (w, h) = (img.width() as i64, img.height() as i64);
    if w == 0 || h == 0 {
        bail!("image has zero size");
    }
    let img = if w != size || h != size {
        let scale = size as f64 / w.min(h) as f64;
        let (nw, nh) = (((w as f64) * scale).round().max(size as f64) as u32, ((h as f64) * scale).round().max(size as f64) as u32);
        let r = img.resize_exact(nw, nh, image::imageops::FilterType::Triangle);
        let (x0, y0) = ((nw - size as u32) / 2, (nh - size as u32) / 2);
        r.crop_imm(x0, y0, size as u32, size as u32)
    } else {
        img
    };
    let bytes = if channels == 1 {
        img.to_luma8().into_raw()
    } else {
        // HWC -> CHW.
        let rgb = img.to_rgb8().into_raw();
        let n = (size * size) as usize;
        let mut chw = vec![0u8; 3 * n];
        for i in 0..n {
            for c in 0..3 {
                chw[c * n + i] = rgb[3 * i + c];
            }
        }
        chw
    };
    Ok(bytes)
}

/// Loads every image below `root` (labels from class folders named in `classes`, or
/// discovered), and says on stderr what was resized and which links were not followed. An IDX
/// folder (see [`super::idx`]) gives all its images, training part first.
pub fn load_image_folder(root: &Path, cfg: &DataConfig, classes: Option<&[String]>) -> Result<(ImageSet, LoadReport)> {
    let (set, report, _) = load_image_files(root, cfg, classes)?;
    Ok((set, report))
}

/// [`load_image_folder`], also saying where each loaded image came from, in the set's order:
/// its file's path, or `FILE#INDEX` for an image of an IDX file.
pub fn load_image_files(root: &Path, cfg: &DataConfig, classes: Option<&[String]>) -> Result<(ImageSet, LoadReport, Vec<String>)> {
    if let Some(idx) = super::idx::IdxFolder::find(root) {
        return idx.load_all(cfg, classes);
    }
    let (set, report, sources) = load_folder(&mut Walker::new(), root, cfg, classes)?;
    report.announce(cfg.image_size);
    Ok((set, report, sources))
}

/// [`load_image_files`] of an image folder without the notices, walking with `walker` (shared
/// by the folders of one data set so that nothing is read twice).
fn load_folder(walker: &mut Walker, root: &Path, cfg: &DataConfig, classes: Option<&[String]>) -> Result<(ImageSet, LoadReport, Vec<String>)> {
    if !root.exists() {
        bail!("data folder {} does not exist", root.display());
    }
    if !root.is_dir() {
        bail!("data path {} is not a folder", root.display());
    }
    let links_before = walker.report.clone();
    let files = walker.walk(root)?;
    let links = LinkReport {
        loops: walker.report.loops[links_before.loops.len()..].to_vec(),
        duplicates: walker.report.duplicates[links_before.duplicates.len()..].to_vec(),
    };
    if files.is_empty() {
        bail!("data folder {} is empty{}", root.display(), if links.duplicates.is_empty() { "" } else { " (every file in it was already read through another path)" });
    }
    let classes: Vec<String> = match classes {
        Some(c) => c.to_vec(),
        None => {
            let mut c: Vec<String> = files.iter().map(|(_, c)| c.clone().unwrap_or_default()).collect();
            c.sort();
            c.dedup();
            c
        }
    };
    let size = cfg.image_size;
    let per = (cfg.channels * size * size) as usize;
    // Decode in parallel; order stays that of the sorted file list.
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8);
    let chunk = files.len().div_ceil(threads);
    let decoded: Vec<Result<Decoded>> = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(|(p, _)| decode_image(p, cfg.channels, size)).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("decoder thread")).collect()
    });
    let mut bytes = Vec::with_capacity(files.len() * per);
    let mut labels = vec![];
    let mut report = LoadReport { links, ..LoadReport::default() };
    let mut sources = vec![];
    for ((path, class), res) in files.iter().zip(decoded) {
        match res {
            Ok(img) => {
                let cls = class.clone().unwrap_or_default();
                let Some(label) = classes.iter().position(|c| *c == cls) else {
                    bail!("{}: class folder {cls:?} is not among the training classes {classes:?}", path.display());
                };
                if img.original != (size as u32, size as u32) {
                    *report.resized.entry(img.original).or_default() += 1;
                }
                bytes.extend_from_slice(&img.bytes);
                labels.push(label as i64);
                sources.push(path.display().to_string());
                report.loaded += 1;
            }
            Err(e) => {
                if cfg.bad_images == BadImages::Fail {
                    bail!("bad image {}: {e} (set data.bad_images = \"skip\" to skip such files)", path.display());
                }
                eprintln!("warning: skipping {}: {e}", path.display());
                report.skipped.push((path.clone(), e.to_string()));
            }
        }
    }
    if report.loaded == 0 {
        bail!("no readable images in {} ({} files, all skipped)", root.display(), report.skipped.len());
    }
    let n = report.loaded as i64;
    let images = Tensor::f_from_slice(&bytes)?.f_reshape([n, cfg.channels, size, size])?;
    let labels = Tensor::f_from_slice(&labels)?.f_to_kind(Kind::Int64)?;
    Ok((ImageSet { images, labels, classes }, report, sources))
}

/// Train and test sets: `root/train` and `root/test` when both exist, else a seeded split of
/// the whole folder with `test_fraction` held out. The notices (resizing, links) are said once
/// for both. An IDX folder with both `train-*` and `t10k-*` files is split the same way.
pub fn load_split(root: &Path, cfg: &DataConfig, seed: u64) -> Result<(ImageSet, ImageSet, LoadReport)> {
    if let Some((train, test)) = super::idx::IdxFolder::find(root).as_ref().and_then(|f| f.split()) {
        return super::idx::load_train_test(train, test, cfg);
    }
    let (train_dir, test_dir) = (root.join("train"), root.join("test"));
    let mut walker = Walker::new();
    if train_dir.is_dir() && test_dir.is_dir() {
        let (train, mut report, _) = load_folder(&mut walker, &train_dir, cfg, None)?;
        let (test, r2, _) = load_folder(&mut walker, &test_dir, cfg, Some(&train.classes))?;
        report.merge(r2);
        report.announce(cfg.image_size);
        return Ok((train, test, report));
    }
    let (all, report) = match super::idx::IdxFolder::find(root) {
        // One IDX part: split like a folder without train/ and test/.
        Some(idx) => {
            let (set, report, _) = idx.load_all(cfg, None)?;
            (set, report)
        }
        None => {
            let (set, report, _) = load_folder(&mut walker, root, cfg, None)?;
            report.announce(cfg.image_size);
            (set, report)
        }
    };
    let n = all.len();
    let n_test = ((n as f64) * cfg.test_fraction).round() as i64;
    if n - n_test < 1 {
        bail!("{}: {n} images leave none for training with test_fraction = {}", root.display(), cfg.test_fraction);
    }
    let perm = crate::rng::seeded_permutation(n as usize, seed);
    let perm = Tensor::f_from_slice(&perm)?;
    let test = all.select(&perm.f_narrow(0, 0, n_test)?);
    let train = all.select(&perm.f_narrow(0, n_test, n - n_test)?);
    Ok((train, test, report))
}
