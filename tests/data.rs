//! The image loader: formats, resizing, labels, splits, and every kind of bad input.
use flowzoo::config::{BadImages, DataConfig};
use flowzoo::data::{load_image_folder, load_split, to_model_space, to_pixels};
use std::path::Path;
use tch::Kind;

fn cfg(size: i64, channels: i64) -> DataConfig {
    DataConfig { image_size: size, channels, ..DataConfig::default() }
}

fn gray(path: &Path, w: u32, h: u32, v: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_pixel(w, h, image::Luma([v])).save(path).unwrap();
}

fn rgb(path: &Path, w: u32, h: u32, px: [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(w, h, image::Rgb(px)).save(path).unwrap();
}

#[test]
fn formats_labels_and_channels() {
    let d = tempfile::tempdir().unwrap();
    gray(&d.path().join("cats/a.png"), 8, 8, 10);
    rgb(&d.path().join("cats/deep/b.bmp"), 8, 8, [200, 100, 50]);
    rgb(&d.path().join("dogs/c.jpg"), 8, 8, [255, 255, 255]);
    let (set, rep) = load_image_folder(d.path(), &cfg(8, 3), None).unwrap();
    assert_eq!(set.classes, vec!["cats", "dogs"]);
    assert_eq!(rep.loaded, 3);
    assert_eq!(set.images.size(), vec![3, 3, 8, 8]);
    assert_eq!(Vec::<i64>::try_from(&set.labels).unwrap(), vec![0, 0, 1]);
    // Grayscale replicated to RGB, RGB kept in CHW order.
    assert_eq!(set.images.int64_value(&[0, 2, 3, 3]), 10);
    assert_eq!(set.images.int64_value(&[1, 0, 0, 0]), 200);
    assert_eq!(set.images.int64_value(&[1, 2, 0, 0]), 50);
    let (g, _) = load_image_folder(d.path(), &cfg(8, 1), None).unwrap();
    assert_eq!(g.images.size(), vec![3, 1, 8, 8]);
}

#[test]
fn resize_and_centre_crop() {
    let d = tempfile::tempdir().unwrap();
    // 16×8: left half black, right half white; after resize to 8 high and crop 8×8 from the centre
    let mut img = image::GrayImage::new(16, 8);
    for y in 0..8 {
        for x in 0..16 {
            img.put_pixel(x, y, image::Luma([if x < 8 { 0 } else { 255 }]));
        }
    }
    img.save(d.path().join("wide.png")).unwrap();
    let (set, _) = load_image_folder(d.path(), &cfg(4, 1), None).unwrap();
    assert_eq!(set.images.size(), vec![1, 1, 4, 4]);
    assert!(set.images.int64_value(&[0, 0, 0, 0]) < 64, "left column dark");
    assert!(set.images.int64_value(&[0, 0, 0, 3]) > 192, "right column bright");
}

#[test]
fn bad_images_skipped_with_paths_or_fatal() {
    let d = tempfile::tempdir().unwrap();
    gray(&d.path().join("ok.png"), 4, 4, 1);
    std::fs::write(d.path().join("empty.png"), b"").unwrap();
    std::fs::write(d.path().join("corrupt.png"), b"\x89PNG\r\n\x1a\nthis is not png data").unwrap();
    let good = std::fs::read(d.path().join("ok.png")).unwrap();
    std::fs::write(d.path().join("truncated.png"), &good[..good.len() / 2]).unwrap();
    std::fs::write(d.path().join("notes.txt"), b"hello").unwrap();
    std::fs::write(d.path().join(".hidden"), b"ignored").unwrap();
    let c = cfg(4, 1);
    let (set, rep) = load_image_folder(d.path(), &c, None).unwrap();
    assert_eq!(set.len(), 1);
    let names: Vec<String> = rep.skipped.iter().map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, vec!["corrupt.png", "empty.png", "notes.txt", "truncated.png"]);
    assert!(rep.skipped.iter().find(|(p, _)| p.ends_with("empty.png")).unwrap().1.contains("0 bytes"));
    let fail = DataConfig { bad_images: BadImages::Fail, ..c };
    let err = format!("{:#}", load_image_folder(d.path(), &fail, None).err().unwrap());
    assert!(err.contains("corrupt.png") && err.contains("bad image"), "{err}");
}

#[test]
fn empty_missing_and_imageless_folders_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let err = format!("{:#}", load_image_folder(d.path(), &cfg(4, 1), None).err().unwrap());
    assert!(err.contains("is empty") && err.contains(&d.path().display().to_string()), "{err}");
    let err = format!("{:#}", load_image_folder(&d.path().join("nope"), &cfg(4, 1), None).err().unwrap());
    assert!(err.contains("does not exist"), "{err}");
    std::fs::write(d.path().join("a.txt"), b"x").unwrap();
    let err = format!("{:#}", load_image_folder(d.path(), &cfg(4, 1), None).err().unwrap());
    assert!(err.contains("no readable images"), "{err}");
}

#[test]
fn splits_from_folders_or_seeded_fraction() {
    let d = tempfile::tempdir().unwrap();
    for i in 0..10 {
        gray(&d.path().join(format!("train/a/{i}.png")), 4, 4, i as u8);
    }
    for i in 0..3 {
        gray(&d.path().join(format!("test/a/{i}.png")), 4, 4, 100 + i as u8);
    }
    let (tr, te, _) = load_split(d.path(), &cfg(4, 1), 0).unwrap();
    assert_eq!((tr.len(), te.len()), (10, 3));
    assert_eq!(te.images.int64_value(&[0, 0, 0, 0]), 100);

    let e = tempfile::tempdir().unwrap();
    for i in 0..20 {
        gray(&e.path().join(format!("{i:02}.png")), 4, 4, i as u8);
    }
    let c = DataConfig { test_fraction: 0.25, ..cfg(4, 1) };
    let (tr, te, _) = load_split(e.path(), &c, 3).unwrap();
    assert_eq!((tr.len(), te.len()), (15, 5));
    let (_, te2, _) = load_split(e.path(), &c, 3).unwrap();
    assert_eq!(te.images.f_sub(&te2.images).unwrap().abs().sum(Kind::Int64).int64_value(&[]), 0, "same seed, same split");
    let (_, te3, _) = load_split(e.path(), &c, 4).unwrap();
    assert!(te.images.f_sub(&te3.images).unwrap().abs().sum(Kind::Int64).int64_value(&[]) != 0, "another seed, another split");
}

#[test]
fn n_bit_mapping() {
    let px = tch::Tensor::from_slice(&[0u8, 8, 16, 255]);
    let x = to_model_space(&px, 4, Kind::Double).unwrap();
    assert_eq!(Vec::<f64>::try_from(&x).unwrap(), vec![-0.5, -0.5, -0.5 + 1.0 / 16.0, -0.5 + 15.0 / 16.0]);
    let x8 = to_model_space(&px, 8, Kind::Double).unwrap();
    assert_eq!(x8.double_value(&[3]), 255.0 / 256.0 - 0.5);
    let back = to_pixels(&x, 4).unwrap();
    assert_eq!(Vec::<u8>::try_from(&back).unwrap(), vec![0, 0, 17, 255]);
}

#[test]
fn bundled_digits_are_complete() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits");
    let (tr, te, rep) = load_split(&root, &cfg(8, 1), 0).unwrap();
    assert_eq!((tr.len(), te.len()), (1437, 360));
    assert!(rep.skipped.is_empty());
    assert_eq!(tr.classes.len(), 10);
}

#[cfg(unix)]
#[test]
fn symlink_loops_and_duplicates_are_read_once() {
    use std::os::unix::fs::symlink;
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("set");
    for i in 0..3 {
        gray(&root.join(format!("a/{i}.png")), 4, 4, 10 * i as u8);
        gray(&root.join(format!("b/{i}.png")), 4, 4, 100 + i as u8);
    }
    symlink(&root, root.join("a/loop")).unwrap(); // a folder above: a loop
    symlink(root.join("a/0.png"), root.join("b/dup.png")).unwrap(); // a second way to a file
    symlink(root.join("b"), root.join("c")).unwrap(); // a second way to a folder
    symlink(root.join("b/dup.png"), root.join("b/dup2.png")).unwrap(); // a link to a link
    let (set, rep) = load_image_folder(&root, &cfg(4, 1), None).unwrap();
    assert_eq!(set.len(), 6, "each image once");
    assert_eq!(set.classes, vec!["a", "b"], "the linked folder c is not a class of its own");
    assert_eq!(rep.links.loops, vec![(root.join("a/loop"), root.canonicalize().unwrap())]);
    let mut dups: Vec<_> = rep.links.duplicates.iter().map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    dups.sort();
    assert_eq!(dups, vec!["c", "dup.png", "dup2.png"]);
    let notices = rep.links.notices().join("\n");
    assert!(notices.contains("symbolic link loop") && notices.contains("a/loop"), "{notices}");
    assert!(notices.contains("skipped 3 paths") && notices.contains("dup.png"), "{notices}");
    // A file of train/ linked into test/ is not read twice either.
    let s = d.path().join("split");
    gray(&s.join("train/a/0.png"), 4, 4, 1);
    gray(&s.join("train/a/1.png"), 4, 4, 2);
    gray(&s.join("test/a/2.png"), 4, 4, 3);
    symlink(s.join("train/a/0.png"), s.join("test/a/leak.png")).unwrap();
    let (tr, te, rep) = load_split(&s, &cfg(4, 1), 0).unwrap();
    assert_eq!((tr.len(), te.len()), (2, 1));
    assert_eq!(rep.links.duplicates.len(), 1);
}

#[test]
fn resizing_is_reported_once_with_both_sizes() {
    let d = tempfile::tempdir().unwrap();
    for i in 0..3 {
        gray(&d.path().join(format!("train/{i}.png")), 28, 28, i as u8);
        gray(&d.path().join(format!("test/{i}.png")), 28, 28, i as u8);
    }
    let (_, _, rep) = load_split(d.path(), &cfg(8, 1), 0).unwrap();
    assert_eq!(rep.resized.get(&(28, 28)), Some(&6));
    assert_eq!(rep.resize_notice(8).unwrap(), "data: resizing 28×28 images to 8×8 (data.image_size = 8)");
    // Images already at the size are not resized; mixed sizes are listed.
    let e = tempfile::tempdir().unwrap();
    gray(&e.path().join("a.png"), 8, 8, 1);
    let (_, rep) = load_image_folder(e.path(), &cfg(8, 1), None).unwrap();
    assert!(rep.resize_notice(8).is_none());
    gray(&e.path().join("b.png"), 16, 8, 1);
    gray(&e.path().join("c.png"), 32, 32, 1);
    let (_, rep) = load_image_folder(e.path(), &cfg(8, 1), None).unwrap();
    let n = rep.resize_notice(8).unwrap();
    assert!(n.contains("2 sizes") && n.contains("16×8: 1") && n.contains("32×32: 1") && n.contains("centre crop"), "{n}");
}
