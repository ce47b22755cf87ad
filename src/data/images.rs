//! Image folders, decoded once with the `image` crate into `[N, C, H, W]` uint8.
//!
//! Layout: any depth of folders; the first folder level below the root (or below `train/` and
//! `test/`) names the class. Bad files (zero-byte, truncated, corrupt, not an image) are reported
//! with their path and skipped with a count, or stop loading (`bad_images = "fail"`).
//! A folder of IDX files (MNIST, Fashion-MNIST) is recognised first and read by [`super::idx`].
use crate::config::{BadImages, DataConfig};
use anyhow::{bail, Context, Result};
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
}

fn is_hidden(p: &Path) -> bool {
    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
}

/// Every non-hidden file below `root`, sorted, with its class folder (`None` at the top level).
fn walk(root: &Path) -> Result<Vec<(PathBuf, Option<String>)>> {
    fn rec(dir: &Path, class: Option<&str>, out: &mut Vec<(PathBuf, Option<String>)>) -> Result<()> {
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
            if p.is_dir() {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
                rec(&p, Some(class.unwrap_or(&name)), out)?;
            } else {
                out.push((p, class.map(str::to_string)));
            }
        }
        Ok(())
    }
    let mut out = vec![];
    rec(root, None, &mut out)?;
    Ok(out)
}

/// Decodes one file to `C × size × size` bytes (resize the shorter side, centre crop).
pub fn decode_image(path: &Path, channels: i64, size: i64) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path)?;
    if meta.len() == 0 {
        bail!("empty file (0 bytes)");
    }
    let reader = image::ImageReader::open(path)?.with_guessed_format()?;
    if reader.format().is_none() {
        bail!("not an image in a supported format (PNG, JPEG, BMP, GIF, TIFF)");
    }
    let img = reader.decode().map_err(|e| anyhow::anyhow!("cannot decode: {e}"))?;
    fit_image(img, channels, size)
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
    Ok(if channels == 1 {
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
    })
}

/// Loads every image below `root` (labels from class folders named in `classes`, or discovered).
/// An IDX folder (see [`super::idx`]) gives all its images, training part first.
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
    if !root.exists() {
        bail!("data folder {} does not exist", root.display());
    }
    if !root.is_dir() {
        bail!("data path {} is not a folder", root.display());
    }
    let files = walk(root)?;
    if files.is_empty() {
        bail!("data folder {} is empty", root.display());
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
    let decoded: Vec<Result<Vec<u8>>> = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(|(p, _)| decode_image(p, cfg.channels, size)).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("decoder thread")).collect()
    });
    let mut bytes = Vec::with_capacity(files.len() * per);
    let mut labels = vec![];
    let mut sources = vec![];
    let mut report = LoadReport::default();
    for ((path, class), res) in files.iter().zip(decoded) {
        match res {
            Ok(px) => {
                let cls = class.clone().unwrap_or_default();
                let Some(label) = classes.iter().position(|c| *c == cls) else {
                    bail!("{}: class folder {cls:?} is not among the training classes {classes:?}", path.display());
                };
                bytes.extend_from_slice(&px);
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
/// the whole folder with `test_fraction` held out.
/// An IDX folder with both `train-*` and `t10k-*` files is split the same way.
pub fn load_split(root: &Path, cfg: &DataConfig, seed: u64) -> Result<(ImageSet, ImageSet, LoadReport)> {
    if let Some((train, test)) = super::idx::IdxFolder::find(root).as_ref().and_then(|f| f.split()) {
        return super::idx::load_train_test(train, test, cfg);
    }
    let (train_dir, test_dir) = (root.join("train"), root.join("test"));
    if train_dir.is_dir() && test_dir.is_dir() {
        let (train, mut report) = load_image_folder(&train_dir, cfg, None)?;
        let (test, r2) = load_image_folder(&test_dir, cfg, Some(&train.classes))?;
        report.loaded += r2.loaded;
        report.skipped.extend(r2.skipped);
        return Ok((train, test, report));
    }
    let (all, report) = load_image_folder(root, cfg, None)?;
    let n = all.len();
    let n_test = ((n as f64) * cfg.test_fraction).round() as i64;
    if n - n_test < 1 {
        bail!("{}: {n} images leave none for training with test_fraction = {}", root.display(), cfg.test_fraction);
    }
    let perm = seeded_permutation(n as usize, seed);
    let perm = Tensor::from_slice(&perm);
    let test = all.select(&perm.narrow(0, 0, n_test));
    let train = all.select(&perm.narrow(0, n_test, n - n_test));
    Ok((train, test, report))
}

/// A permutation from a seed, independent of libtorch's generator (splitmix64 + Fisher–Yates).
pub fn seeded_permutation(n: usize, seed: u64) -> Vec<i64> {
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut p: Vec<i64> = (0..n as i64).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}
