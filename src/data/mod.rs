//! Data: image folders and IDX files decoded once into a uint8 tensor, and the dequantisation
//! that maps images to model space. Models never see pixels; they see `x = k / 2^n_bits - 0.5 + u`.
pub mod dequant;
pub mod evaluation_set;
pub mod idx;
pub mod labels;
pub mod images;

pub use dequant::{bits_per_dim, dequantize, nats_to_bpd, to_model_space, to_pixels};
pub use evaluation_set::load_evaluation_images;
pub use images::{load_image_files, load_image_folder, load_split, ImageSet, LoadReport};
pub mod tabular;
pub mod toys;
pub mod walk;
