//! IDX files, the format of MNIST and Fashion-MNIST: `*-idx3-ubyte` images and `*-idx1-ubyte`
//! labels, plain or gzipped (told apart by the gzip magic bytes, not by the name).
//!
//! A folder is an IDX folder when it holds `train-images-idx3-ubyte` and/or
//! `t10k-images-idx3-ubyte` (each optionally `.gz`; `train-images.idx3-ubyte`, as some mirrors
//! spell it, works too). With both, they are the train/test split, as `train/` and `test/`
//! sub-folders are for image files; with one, [`load_split`](super::load_split) holds out
//! `data.test_fraction` of it. The label files (`train-labels-idx1-ubyte[.gz]`,
//! `t10k-labels-idx1-ubyte[.gz]`) give the classes; without them every image is of one class.
//! Other files in an IDX folder are ignored, and when a file exists both plain and gzipped the
//! plain one is read.
//!
//! Class names are the label values as decimal strings ("0".."9" for MNIST and Fashion-MNIST;
//! `data/README.md` lists Fashion-MNIST's names for them), in numeric order, so a label's class
//! index is the label itself when every value 0..K-1 occurs.
//!
//! Images are resized and centre-cropped to `data.image_size` exactly as image files are
//! ([`fit_image`](super::images::fit_image)), and grey images are replicated to RGB when
//! `data.channels = 3`. A damaged IDX file is not one bad image among many, so it is always an
//! error (whatever `data.bad_images` says), naming the file and what is wrong: the magic number,
//! the element type, the number of dimensions, a truncated or over-long body, a label count
//! that differs from the image count.
use super::images::{fit_image, ImageSet, LoadReport};
use crate::config::DataConfig;
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// One IDX array of unsigned bytes: its dimensions and its row-major body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Parses the bytes of an (already decompressed) IDX file; `origin` names it in errors.
pub fn parse_idx(bytes: &[u8], origin: &str) -> Result<IdxArray> {
    if bytes.len() < 4 {
        bail!("{origin}: truncated IDX file ({} bytes, shorter than the 4-byte magic number)", bytes.len());
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if bytes[0] != 0 || bytes[1] != 0 {
        bail!("{origin}: bad magic number 0x{magic:08x}: not an IDX file (IDX files start with 0x0000, then the element type and the number of dimensions, e.g. 0x00000803 for images)");
    }
    let type_name = match bytes[2] {
        0x08 => "unsigned byte",
        0x09 => "signed byte",
        0x0B => "16-bit integer",
        0x0C => "32-bit integer",
        0x0D => "32-bit float",
        0x0E => "64-bit float",
        _ => bail!("{origin}: bad magic number 0x{magic:08x}: unknown IDX element type 0x{:02x}", bytes[2]),
    };
    if bytes[2] != 0x08 {
        bail!("{origin}: IDX element type 0x{:02x} ({type_name}) is not supported: flowzoo reads unsigned-byte images and labels (type 0x08)", bytes[2]);
    }
    let ndims = bytes[3] as usize;
    if ndims == 0 {
        bail!("{origin}: bad magic number 0x{magic:08x}: an IDX file with 0 dimensions");
    }
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        bail!("{origin}: truncated IDX header: {ndims} dimensions need {header} bytes, the file has {}", bytes.len());
    }
    let dims: Vec<usize> =
        (0..ndims).map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize).collect();
    let shown = dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(" × ");
    let want = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).with_context(|| format!("{origin}: dimensions {shown} are too large"))?;
    let got = bytes.len() - header;
    if got < want {
        bail!("{origin}: truncated IDX file: its header says {shown} = {want} bytes of data, the file holds {got}");
    }
    if got > want {
        bail!("{origin}: IDX file longer than its header says: {shown} = {want} bytes of data, then {} more bytes", got - want);
    }
    Ok(IdxArray { dims, data: bytes[header..].to_vec() })
}

/// Reads an IDX file from disk, gunzipping it when it starts with the gzip magic bytes.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let raw = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("{}: cannot decompress (a truncated or damaged .gz file)", path.display()))?;
        out
    } else {
        raw
    };
    parse_idx(&bytes, &path.display().to_string())
}

/// An images file and, when there is one, its labels file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxPart {
    pub images: PathBuf,
    pub labels: Option<PathBuf>,
}

/// The IDX files of a folder: the training part (`train-*`) and the test part (`t10k-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxFolder {
    pub train: Option<IdxPart>,
    pub test: Option<IdxPart>,
}

/// `dir/prefix-kind-idxN-ubyte`, `dir/prefix-kind.idxN-ubyte`, or either with `.gz`: the first
/// that exists, plain before gzipped.
fn find_file(dir: &Path, prefix: &str, kind: &str, n: u32) -> Option<PathBuf> {
    ["", ".gz"]
        .iter()
        .flat_map(|gz| ["-", "."].map(|sep| format!("{prefix}-{kind}{sep}idx{n}-ubyte{gz}")))
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
}

impl IdxFolder {
    /// The IDX files in `dir`, or `None` when it is not an IDX folder (no images file).
    pub fn find(dir: &Path) -> Option<IdxFolder> {
        if !dir.is_dir() {
            return None;
        }
        let part = |prefix: &str| {
            find_file(dir, prefix, "images", 3).map(|images| IdxPart { images, labels: find_file(dir, prefix, "labels", 1) })
        };
        let folder = IdxFolder { train: part("train"), test: part("t10k") };
        (folder.train.is_some() || folder.test.is_some()).then_some(folder)
    }

    /// Both parts as (train, test), when the folder has both.
    pub fn split(&self) -> Option<(&IdxPart, &IdxPart)> {
        Some((self.train.as_ref()?, self.test.as_ref()?))
    }

    /// Every image of the folder, training part first, then the test part.
    pub fn load_all(&self, cfg: &DataConfig, classes: Option<&[String]>) -> Result<(ImageSet, LoadReport, Vec<String>)> {
        let parts: Vec<&IdxPart> = self.train.iter().chain(self.test.iter()).collect();
        let raw = parts.iter().map(|p| read_part(p)).collect::<Result<Vec<_>>>()?;
        let classes = match classes {
            Some(c) => c.to_vec(),
            None => class_names(raw.iter().flat_map(|r| r.labels.iter().copied())),
        };
        let mut sets = vec![];
        let mut sources = vec![];
        for (part, r) in parts.iter().zip(&raw) {
            sets.push(to_image_set(part, r, cfg, &classes)?);
            sources.extend(part_sources(part, r.count));
        }
        let n = sources.len();
        let images = Tensor::f_cat(&sets.iter().map(|s| s.images.shallow_clone()).collect::<Vec<_>>(), 0)?;
        let labels = Tensor::f_cat(&sets.iter().map(|s| s.labels.shallow_clone()).collect::<Vec<_>>(), 0)?;
        Ok((ImageSet { images, labels, classes }, LoadReport { loaded: n as usize, ..LoadReport::default() }, sources))
    }
}

/// Loads one part (an images file with its labels) with the given classes, or with the classes
/// its own labels name.
pub fn load_part(part: &IdxPart, cfg: &DataConfig, classes: Option<&[String]>) -> Result<(ImageSet, Vec<String>)> {
    let raw = read_part(part)?;
    let classes = match classes {
        Some(c) => c.to_vec(),
        None => class_names(raw.labels.iter().copied()),
    };
    let set = to_image_set(part, &raw, cfg, &classes)?;
    Ok((set, part_sources(part, raw.count)))
}

/// Train and test sets of an IDX folder with both parts; the classes are the training labels'.
pub fn load_train_test(train: &IdxPart, test: &IdxPart, cfg: &DataConfig) -> Result<(ImageSet, ImageSet, LoadReport)> {
    let (train_set, _) = load_part(train, cfg, None)?;
    let (test_set, _) = load_part(test, cfg, Some(&train_set.classes))?;
    let loaded = (train_set.len() + test_set.len()) as usize;
    Ok((train_set, test_set, LoadReport { loaded, ..LoadReport::default() }))
}

/// `FILE#INDEX` for each image of a part: where each came from, for per-image reports.
fn part_sources(part: &IdxPart, count: usize) -> Vec<String> {
    let file = part.images.display().to_string();
    (0..count).map(|i| format!("{file}#{i}")).collect()
}

struct RawPart {
    count: usize,
    rows: usize,
    cols: usize,
    pixels: Vec<u8>,
    /// One label value per image; empty when the part has no labels file.
    labels: Vec<u8>,
}

fn read_part(part: &IdxPart) -> Result<RawPart> {
    let img = read_idx(&part.images)?;
    let name = part.images.display();
    let &[count, rows, cols] = &img.dims[..] else {
        bail!("{name}: expected 3 dimensions (images × rows × columns, magic 0x00000803), the header gives {} ({:?})", img.dims.len(), img.dims);
    };
    if count == 0 || rows == 0 || cols == 0 {
        bail!("{name}: no images (dimensions {count} × {rows} × {cols})");
    }
    let labels = match &part.labels {
        None => vec![],
        Some(path) => {
            let lab = read_idx(path)?;
            let &[n] = &lab.dims[..] else {
                bail!("{}: expected 1 dimension (labels, magic 0x00000801), the header gives {} ({:?})", path.display(), lab.dims.len(), lab.dims);
            };
            if n != count {
                bail!("{}: {n} labels for the {count} images of {name}", path.display());
            }
            lab.data
        }
    };
    Ok(RawPart { count, rows, cols, pixels: img.data, labels })
}

/// Distinct label values in numeric order, as decimal strings; one unnamed class when there are
/// no labels (as image files outside class folders).
fn class_names(labels: impl Iterator<Item = u8>) -> Vec<String> {
    let mut seen = [false; 256];
    let mut any = false;
    for l in labels {
        seen[l as usize] = true;
        any = true;
    }
    if !any {
        return vec![String::new()];
    }
    (0..256).filter(|&v| seen[v]).map(|v| v.to_string()).collect()
}

fn to_image_set(part: &IdxPart, raw: &RawPart, cfg: &DataConfig, classes: &[String]) -> Result<ImageSet> {
    let (n, size, ch) = (raw.count as i64, cfg.image_size, cfg.channels);
    let label_idx: Vec<i64> = if raw.labels.is_empty() {
        let Some(i) = classes.iter().position(|c| c.is_empty()) else {
            bail!("{}: has no labels file, but the training classes are {classes:?}", part.images.display());
        };
        vec![i as i64; raw.count]
    } else {
        let index: Vec<Option<i64>> =
            (0..256).map(|v| classes.iter().position(|c| *c == v.to_string()).map(|i| i as i64)).collect();
        let mut out = Vec::with_capacity(raw.count);
        for (i, &l) in raw.labels.iter().enumerate() {
            let Some(c) = index[l as usize] else {
                bail!("{}: image {i} has label {l}, which is not among the training classes {classes:?}", part.labels.as_ref().expect("labels").display());
            };
            out.push(c);
        }
        out
    };
    let images = if raw.rows as i64 == size && raw.cols as i64 == size {
        let t = Tensor::f_from_slice(&raw.pixels)?.f_reshape([n, 1, size, size])?;
        if ch == 1 { t } else { t.f_repeat([1, ch, 1, 1])? }
    } else {
        eprintln!("note: {}: resizing its {}×{} images to {size}×{size} (data.image_size)", part.images.display(), raw.rows, raw.cols);
        Tensor::f_from_slice(&resize_all(raw, ch, size)?)?.f_reshape([n, ch, size, size])?
    };
    Ok(ImageSet { images, labels: Tensor::f_from_slice(&label_idx)?.f_to_kind(Kind::Int64)?, classes: classes.to_vec() })
}

/// Every image through [`fit_image`], on up to 8 threads; output in input order, CHW bytes.
fn resize_all(raw: &RawPart, channels: i64, size: i64) -> Result<Vec<u8>> {
    let per_in = raw.rows * raw.cols;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8);
    let chunk = raw.count.div_ceil(threads) * per_in;
    let parts: Vec<Result<Vec<u8>>> = std::thread::scope(|s| {
        let handles: Vec<_> = raw
            .pixels
            .chunks(chunk)
            .map(|block| {
                s.spawn(move || {
                    let mut out = vec![];
                    for px in block.chunks(per_in) {
                        let img = image::GrayImage::from_raw(raw.cols as u32, raw.rows as u32, px.to_vec()).expect("sized buffer");
                        out.extend(fit_image(image::DynamicImage::ImageLuma8(img), channels, size)?);
                    }
                    Ok(out)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("resize thread")).collect()
    });
    Ok(parts.into_iter().collect::<Result<Vec<_>>>()?.concat())
}
