//! The training data and the order in which a run visits it.
use super::streams;
use crate::config::{Config, DataKind};
use crate::data::labels::{label_classes, label_indices};
use crate::data::tabular::{load_table, split_table, standardization, TabularSplit, Table};
use crate::data::{dequantize, load_split, to_model_space, ImageSet};
use crate::rng::{derive_seed, seeded_permutation};
use anyhow::Result;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The training data and how a batch of it becomes model-space input.
pub(super) enum TrainData {
    Images { train: ImageSet, test: ImageSet, n_bits: i64 },
    Tabular { train: Tensor, val: Tensor, noise: f64, context: Option<TabularContext> },
}

/// The conditioning input of a conditional tabular model's rows (see
/// [`crate::session::Session::cond_for`]): class indices (int64 `[N]`) of a `data.label_column`,
/// or the raw `data.context_columns` (`[N, K]` float64).
pub(crate) struct TabularContext {
    pub train: Tensor,
    pub val: Tensor,
    /// The label's classes, in index order (empty for context columns).
    pub classes: Vec<String>,
    /// Training-set mean and std of the context columns (for their standardisation).
    pub stats: Option<(Tensor, Tensor)>,
}

impl TrainData {
    pub(super) fn len(&self) -> i64 {
        match self {
            TrainData::Images { train, .. } => train.len(),
            TrainData::Tabular { train, .. } => train.size()[0],
        }
    }
    pub(super) fn classes(&self) -> Vec<String> {
        match self {
            TrainData::Images { train, .. } => train.classes.clone(),
            TrainData::Tabular { context, .. } => context.as_ref().map_or(vec![], |c| c.classes.clone()),
        }
    }
    /// What identifies this data across processes (a distributed run checks that every rank
    /// holds the same): the split sizes, the classes and a checksum of the training rows. The
    /// checksum is integer arithmetic (pixel values, or the bit patterns of table values;
    /// per-row sums weighted by the row's position, wrapping), so it is the same on any CPU.
    pub(super) fn fingerprint(&self) -> Result<Vec<(String, String)>> {
        let (rows, held_out) = match self {
            TrainData::Images { train, test, .. } => (train.images.shallow_clone(), test.len()),
            TrainData::Tabular { train, val, .. } => {
                let bits = if train.kind() == Kind::Double { Kind::Int64 } else { Kind::Int };
                (train.f_contiguous()?.f_view_dtype(bits)?, val.size()[0])
            }
        };
        let n = rows.size()[0];
        let dims: Vec<i64> = (1..rows.dim() as i64).collect();
        let per_row = rows.f_sum_dim_intlist(Some(dims.as_slice()), false, Kind::Int64)?.f_to_device(Device::Cpu)?;
        let weights = Tensor::f_arange(n, (Kind::Int64, Device::Cpu))?.f_add_scalar(1)?;
        let checksum = per_row.f_mul(&weights)?.f_sum(Kind::Int64)?.f_int64_value(&[])?;
        Ok(vec![
            ("data.train_rows".into(), n.to_string()),
            ("data.held_out_rows".into(), held_out.to_string()),
            ("data.classes".into(), self.classes().join(",")),
            ("data.train_checksum".into(), format!("{checksum:016x}")),
        ])
    }

    /// Model-space input and labels for the given rows (noise drawn from the global generator).
    pub(super) fn batch(&self, idx: &Tensor, device: Device) -> Result<(Tensor, Tensor)> {
        match self {
            TrainData::Images { train, n_bits, .. } => {
                let idx_here = idx.f_to_device(train.images.device())?;
                let px = train.images.f_index_select(0, &idx_here)?.f_to_device(device)?;
                let x = dequantize(&to_model_space(&px, *n_bits, Kind::Float)?, *n_bits)?;
                Ok((x, train.labels.f_index_select(0, idx)?))
            }
            TrainData::Tabular { train, noise, context, .. } => {
                let mut x = train.f_index_select(0, &idx.f_to_device(train.device())?)?.f_to_device(device)?.f_to_kind(Kind::Float)?;
                if *noise > 0.0 {
                    x = x.f_add(&x.f_rand_like()?.f_mul_scalar(*noise)?)?;
                }
                let cond = match context {
                    Some(c) => c.train.f_index_select(0, idx)?,
                    None => Tensor::f_zeros([idx.size()[0]], (Kind::Int64, Device::Cpu))?,
                };
                Ok((x, cond))
            }
        }
    }
}

/// The training data of `cfg` (its `data.path` already resolved), the tabular columns and, for
/// tabular data, the standardisation statistics of the training split.
pub(super) fn load_train_data(cfg: &Config, verbose: bool) -> Result<(TrainData, Vec<String>, Option<(Tensor, Tensor)>)> {
    let seed = cfg.train.seed;
    match cfg.data.kind {
        DataKind::Images => {
            let (train_set, test_set, report) = load_split(Path::new(&cfg.data.path), &cfg.data, seed)?;
            if verbose {
                eprintln!(
                    "data: {} train / {} test images from {} ({} classes){}",
                    train_set.len(),
                    test_set.len(),
                    cfg.data.path,
                    train_set.classes.len(),
                    if report.skipped.is_empty() { String::new() } else { format!(", {} bad files skipped", report.skipped.len()) }
                );
            }
            Ok((TrainData::Images { train: train_set, test: test_set, n_bits: cfg.data.n_bits }, vec![], None))
        }
        DataKind::Tabular => {
            let table = load_table(Path::new(&cfg.data.path), &cfg.data)?;
            let split = split_table(&table, &cfg.data, seed)?;
            if verbose {
                eprintln!(
                    "data: {} train / {} validation / {} test rows of {} columns from {}{}",
                    split.train.size()[0],
                    split.val.size()[0],
                    split.test.size()[0],
                    split.columns.len(),
                    cfg.data.path,
                    if split.dropped > 0 { format!(", {} bad rows dropped", split.dropped) } else { String::new() }
                );
            }
            let (mean, std) = standardization(&split.train, cfg.data.uniform_noise)?;
            let columns = split.columns.clone();
            let context = tabular_context(cfg, &table, &split)?;
            Ok((TrainData::Tabular { train: split.train, val: split.val, noise: cfg.data.uniform_noise, context }, columns, Some((mean, std))))
        }
    }
}

/// The conditioning input of the training and validation rows: a label column's classes (every
/// distinct value in the file) and class indices, or the raw context columns and their
/// statistics.
fn tabular_context(cfg: &Config, table: &Table, split: &TabularSplit) -> Result<Option<TabularContext>> {
    let (Some(all), Some([train, val, _])) = (&table.context, &split.context) else { return Ok(None) };
    let label = &cfg.data.label_column;
    if label.is_empty() {
        let stats = Some(standardization(train, 0.0)?);
        return Ok(Some(TabularContext { train: train.shallow_clone(), val: val.shallow_clone(), classes: vec![], stats }));
    }
    let classes = label_classes(all, label)?;
    let what = format!("{} (data.label_column {label:?})", cfg.data.path);
    Ok(Some(TabularContext { train: label_indices(train, &classes, &what)?, val: label_indices(val, &classes, &what)?, classes, stats: None }))
}

/// The row indices of every step: a seeded permutation per epoch, cut in order.
pub(super) struct Batches {

    pub seed: u64,
    pub batch: i64,
    pub n: i64,
    pub epoch: i64,
    pub perm: Vec<i64>,
}

impl Batches {
    fn steps_per_epoch(&self) -> i64 {
        (self.n / self.batch).max(1)
    }
    /// Row indices of a given step: a seeded per-epoch permutation, cut in order.
    pub fn at(&mut self, step: i64) -> Result<Tensor> {
        let spe = self.steps_per_epoch();
        let epoch = step / spe;
        if epoch != self.epoch || self.perm.is_empty() {
            self.perm = seeded_permutation(self.n as usize, derive_seed(self.seed, streams::EPOCH_ORDER, epoch) as u64);
            self.epoch = epoch;
        }
        let b = self.batch.min(self.n);
        let start = ((step % spe) * b) as usize;
        Ok(Tensor::f_from_slice(&self.perm[start..start + b as usize])?)
    }
}
