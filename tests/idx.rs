//! IDX files (MNIST's format): plain and gzipped, as a train/test folder, resized, and every
//! kind of damage named with its file.
use flowzoo::config::DataConfig;
use flowzoo::data::idx::{parse_idx, read_idx};
use flowzoo::data::{load_image_files, load_image_folder, load_split};
use std::io::Write;
use std::path::Path;

fn cfg(size: i64, channels: i64) -> DataConfig {
    DataConfig { image_size: size, channels, ..DataConfig::default() }
}

/// The bytes of an unsigned-byte IDX file with these dimensions and body.
fn idx_bytes(dims: &[u32], body: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(body);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(vec![], flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// `n` images of `rows × cols`, image `i` filled with the value `10 * i + 1` except pixel 0,
/// which holds `i`; labels `i % 3`.
fn write_part(dir: &Path, prefix: &str, n: u32, rows: u32, cols: u32, gz: bool) {
    let mut body = vec![];
    for i in 0..n {
        let mut img = vec![(10 * i + 1) as u8; (rows * cols) as usize];
        img[0] = i as u8;
        body.extend(img);
    }
    let labels: Vec<u8> = (0..n).map(|i| (i % 3) as u8).collect();
    let (images, labels) = (idx_bytes(&[n, rows, cols], &body), idx_bytes(&[n], &labels));
    let ext = if gz { ".gz" } else { "" };
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte{ext}")), if gz { gzip(&images) } else { images }).unwrap();
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte{ext}")), if gz { gzip(&labels) } else { labels }).unwrap();
}

fn err_of<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn train_and_test_parts_plain_and_gzipped() {
    for gz in [false, true] {
        let d = tempfile::tempdir().unwrap();
        write_part(d.path(), "train", 6, 4, 4, gz);
        write_part(d.path(), "t10k", 3, 4, 4, !gz);
        let (train, test, rep) = load_split(d.path(), &cfg(4, 1), 0).unwrap();
        assert_eq!((train.len(), test.len(), rep.loaded), (6, 3, 9));
        assert_eq!(train.classes, vec!["0", "1", "2"]);
        assert_eq!(train.images.size(), vec![6, 1, 4, 4]);
        assert_eq!(Vec::<i64>::try_from(&train.labels).unwrap(), vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(Vec::<i64>::try_from(&test.labels).unwrap(), vec![0, 1, 2]);
        // Row-major pixels in file order: image 5 has pixel (0, 0) = 5 and the rest 51.
        assert_eq!(train.images.int64_value(&[5, 0, 0, 0]), 5);
        assert_eq!(train.images.int64_value(&[5, 0, 3, 3]), 51);
        assert_eq!(test.images.int64_value(&[2, 0, 1, 0]), 21);
    }
}

#[test]
fn whole_folder_sources_channels_and_resize() {
    let d = tempfile::tempdir().unwrap();
    write_part(d.path(), "train", 4, 4, 4, true);
    write_part(d.path(), "t10k", 2, 4, 4, false);
    let (set, rep, sources) = load_image_files(d.path(), &cfg(4, 3), None).unwrap();
    assert_eq!((set.len(), rep.loaded), (6, 6));
    assert_eq!(set.images.size(), vec![6, 3, 4, 4], "grey replicated to RGB");
    assert_eq!(set.images.int64_value(&[3, 2, 1, 1]), 31);
    let train_file = d.path().join("train-images-idx3-ubyte.gz").display().to_string();
    assert_eq!(sources[3], format!("{train_file}#3"));
    assert!(sources[4].ends_with("t10k-images-idx3-ubyte#0"), "{}", sources[4]);
    // 4×4 -> 8×8 through the same resize as image files: a constant image stays constant.
    let (big, _) = load_image_folder(d.path(), &cfg(8, 1), None).unwrap();
    assert_eq!(big.images.size(), vec![6, 1, 8, 8]);
    assert_eq!(big.images.int64_value(&[2, 0, 7, 7]), 21);
}

#[test]
fn one_part_is_split_by_test_fraction_and_labels_are_optional() {
    let d = tempfile::tempdir().unwrap();
    write_part(d.path(), "train", 20, 2, 2, false);
    std::fs::remove_file(d.path().join("train-labels-idx1-ubyte")).unwrap();
    let c = DataConfig { test_fraction: 0.25, ..cfg(2, 1) };
    let (train, test, _) = load_split(d.path(), &c, 1).unwrap();
    assert_eq!((train.len(), test.len()), (15, 5));
    assert_eq!(train.classes, vec![""], "no labels file: one unnamed class");
}

#[test]
fn damaged_files_are_named_with_what_is_wrong() {
    let good = idx_bytes(&[2, 2, 2], &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(parse_idx(&good, "x").unwrap().dims, vec![2, 2, 2]);
    let mut bad_magic = good.clone();
    bad_magic[0] = 0x50;
    let e = err_of(parse_idx(&bad_magic, "f.idx"));
    assert!(e.contains("f.idx") && e.contains("bad magic number 0x50000803"), "{e}");
    let mut float = good.clone();
    float[2] = 0x0D;
    let e = err_of(parse_idx(&float, "f.idx"));
    assert!(e.contains("element type 0x0d") && e.contains("32-bit float"), "{e}");
    let e = err_of(parse_idx(&good[..9], "f.idx"));
    assert!(e.contains("truncated IDX header"), "{e}");
    let e = err_of(parse_idx(&good[..good.len() - 3], "f.idx"));
    assert!(e.contains("truncated IDX file") && e.contains("2 × 2 × 2 = 8 bytes") && e.contains("holds 5"), "{e}");
    let mut long = good.clone();
    long.push(0);
    let e = err_of(parse_idx(&long, "f.idx"));
    assert!(e.contains("longer than its header says") && e.contains("1 more bytes"), "{e}");

    // On disk: a truncated .gz, labels that do not match, a labels file where images belong.
    let d = tempfile::tempdir().unwrap();
    write_part(d.path(), "train", 3, 2, 2, true);
    let gz = d.path().join("train-images-idx3-ubyte.gz");
    let bytes = std::fs::read(&gz).unwrap();
    std::fs::write(&gz, &bytes[..bytes.len() - 6]).unwrap();
    let e = err_of(read_idx(&gz));
    assert!(e.contains("train-images-idx3-ubyte.gz") && e.contains("cannot decompress"), "{e}");
    let e = err_of(load_split(d.path(), &cfg(2, 1), 0));
    assert!(e.contains("train-images-idx3-ubyte.gz"), "{e}");

    let d = tempfile::tempdir().unwrap();
    write_part(d.path(), "train", 3, 2, 2, false);
    std::fs::write(d.path().join("train-labels-idx1-ubyte"), idx_bytes(&[2], &[0, 1])).unwrap();
    let e = err_of(load_image_folder(d.path(), &cfg(2, 1), None));
    assert!(e.contains("train-labels-idx1-ubyte") && e.contains("2 labels for the 3 images"), "{e}");
    std::fs::write(d.path().join("train-images-idx3-ubyte"), idx_bytes(&[3], &[0, 1, 2])).unwrap();
    let e = err_of(load_image_folder(d.path(), &cfg(2, 1), None));
    assert!(e.contains("train-images-idx3-ubyte") && e.contains("expected 3 dimensions"), "{e}");
}

#[test]
fn test_labels_outside_the_training_classes_are_an_error() {
    let d = tempfile::tempdir().unwrap();
    write_part(d.path(), "train", 2, 2, 2, false);
    write_part(d.path(), "t10k", 3, 2, 2, false);
    let e = err_of(load_split(d.path(), &cfg(2, 1), 0));
    assert!(e.contains("t10k-labels-idx1-ubyte") && e.contains("label 2") && e.contains("image 2"), "{e}");
}

#[test]
fn fashion_mnist_config_parses_and_reads_the_installed_data() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/glow_fashion_mnist.toml");
    let c = flowzoo::config::Config::load(&p).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
    assert_eq!((c.data.image_size, c.data.channels, c.model.levels), (28, 1, 2));
    // The suite never needs the data set; where it is installed, the config's settings read it.
    let dir = std::env::var("FASHION_MNIST").unwrap_or_else(|_| "/usr/share/datasets/fashion-mnist".into());
    if !Path::new(&dir).is_dir() {
        eprintln!("Fashion-MNIST not installed at {dir}: only the config was checked");
        return;
    }
    let (train, test, rep) = load_split(Path::new(&dir), &c.data, c.train.seed).unwrap();
    assert_eq!((train.len(), test.len(), rep.loaded), (60_000, 10_000, 70_000));
    assert_eq!(train.classes, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
    assert_eq!(train.images.size(), vec![60_000, 1, 28, 28]);
    // Balanced classes: 1,000 test images each.
    let counts = test.labels.bincount::<tch::Tensor>(None, 10);
    assert_eq!(Vec::<i64>::try_from(&counts).unwrap(), vec![1000; 10]);
}

#[test]
fn what_eval_score_and_ood_read_at_a_path() {
    use flowzoo::data::load_evaluation_images;
    let d = tempfile::tempdir().unwrap();
    write_part(d.path(), "train", 6, 4, 4, true);
    write_part(d.path(), "t10k", 3, 4, 4, false);
    // An IDX folder with both parts: its test part only.
    let (set, _, sources, what) = load_evaluation_images(d.path(), &cfg(4, 1), None).unwrap();
    assert_eq!(set.len(), 3);
    assert!(sources[2].ends_with("t10k-images-idx3-ubyte#2") && what.ends_with("(its test part)"), "{sources:?} {what}");
    // One IDX file: all of it, with the labels file beside it (gzipped like it).
    let file = d.path().join("train-images-idx3-ubyte.gz");
    let (set, _, sources, _) = load_evaluation_images(&file, &cfg(4, 1), None).unwrap();
    assert_eq!((set.len(), sources[5].clone()), (6, format!("{}#5", file.display())));
    assert_eq!(Vec::<i64>::try_from(&set.labels).unwrap(), vec![0, 1, 2, 0, 1, 2]);
    // An IDX folder with one part: that part.
    let one = tempfile::tempdir().unwrap();
    write_part(one.path(), "train", 5, 4, 4, false);
    assert_eq!(load_evaluation_images(one.path(), &cfg(4, 1), None).unwrap().0.len(), 5);
    // A folder with train/ and test/: test/; one image file: that image, resized.
    let f = tempfile::tempdir().unwrap();
    for (split, n) in [("train", 3), ("test", 2)] {
        std::fs::create_dir_all(f.path().join(split)).unwrap();
        for i in 0..n {
            image::GrayImage::from_pixel(4, 4, image::Luma([i as u8 * 50])).save(f.path().join(split).join(format!("{i}.png"))).unwrap();
        }
    }
    assert_eq!(load_evaluation_images(f.path(), &cfg(4, 1), None).unwrap().0.len(), 2);
    let png = f.path().join("test").join("1.png");
    let (set, _, sources, _) = load_evaluation_images(&png, &cfg(8, 1), None).unwrap();
    assert_eq!((set.images.size(), set.images.int64_value(&[0, 0, 7, 7])), (vec![1, 1, 8, 8], 50));
    assert_eq!(sources, vec![png.display().to_string()]);
    let e = err_of(load_evaluation_images(&f.path().join("nope"), &cfg(4, 1), None));
    assert!(e.contains("nope") && e.contains("does not exist"), "{e}");
}
