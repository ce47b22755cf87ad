//! What a model measures of each input (its negative log-likelihood, and for images the input
//! complexity), from which every score kind is derived without another pass through the model.
use super::{png_complexity, ScoreKind};
use crate::data::nats_to_bpd;
use crate::session::Session;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// The unit of a negative log-likelihood.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NllUnit {
    /// Images: bits per dimension of the discrete image (as `flowzoo eval` reports them).
    #[serde(rename = "bits/dim")]
    BitsPerDim,
    /// Rows: `−log p(x)` in nats, in the data's own units.
    #[serde(rename = "nats")]
    Nats,
}

impl NllUnit {
    pub fn as_str(self) -> &'static str {
        match self {
            NllUnit::BitsPerDim => "bits/dim",
            NllUnit::Nats => "nats",
        }
    }
}

/// Per-input measurements, in input order.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurements {
    pub unit: NllUnit,
    /// Negative log-likelihood: bits/dim (images) or nats (rows).
    pub nll: Vec<f64>,
    /// Log-density in nats: of the dequantised image in model space (images), of the row in
    /// data units (rows).
    pub log_prob: Vec<f64>,
    /// Input complexity `L(x)` in bits/dim; images only.
    pub complexity: Option<Vec<f64>>,
}

/// How inputs are measured. The same options must be used for the training statistics and for
/// the inputs scored against them (`draws` changes the spread of the scores, not their mean).
#[derive(Clone, Debug, PartialEq)]
pub struct MeasureOptions {
    /// Dequantisation (images) or `data.uniform_noise` (rows) draws averaged per input.
    pub draws: i64,
    /// Inputs per forward pass (and per progress report).
    pub batch: i64,
    /// Seeds the noise; each batch of inputs gets its own stream derived from it.
    pub seed: i64,
}

impl Default for MeasureOptions {
    fn default() -> Self {
        MeasureOptions { draws: 1, batch: 256, seed: 0 }
    }
}

impl Measurements {
    pub fn len(&self) -> usize {
        self.nll.len()
    }
    pub fn is_empty(&self) -> bool {
        self.nll.is_empty()
    }

    /// One score per input, higher = more anomalous. `train_nll_mean` is the training set's
    /// mean negative log-likelihood (`ScoreStats::train_nll_mean`), used by `typicality`.
    /// - `nll`: the negative log-likelihood itself.
    /// - `typicality`: `|nll − train_nll_mean|`, Nalisnick et al. 2019's typicality test with a
    ///   batch of one (see [`batch_typicality`] for larger batches).
    /// - `complexity`: `nll − L(x)` in bits/dim (Serrà et al. 2020's `S(x)`); images only.
    pub fn score(&self, kind: ScoreKind, train_nll_mean: f64) -> Result<Vec<f64>> {
        Ok(match kind {
            ScoreKind::Nll => self.nll.clone(),
            ScoreKind::Typicality => self.nll.iter().map(|v| (v - train_nll_mean).abs()).collect(),
            ScoreKind::Complexity => match &self.complexity {
                Some(l) => self.nll.iter().zip(l).map(|(b, l)| b - l).collect(),
                None => bail!("the complexity score is defined for images only (a row's bytes have no meaningful compressed length); use nll or typicality"),
            },
        })
    }
}

/// Nalisnick et al. 2019's typicality statistic per batch: consecutive groups of `batch` inputs
/// (the last may be smaller), each scored `|mean nll of the group − train_nll_mean|`.
pub fn batch_typicality(nll: &[f64], train_nll_mean: f64, batch: usize) -> Result<Vec<f64>> {
    if batch == 0 {
        bail!("the typicality batch size must be >= 1");
    }
    Ok(nll.chunks(batch).map(|g| (g.iter().sum::<f64>() / g.len() as f64 - train_nll_mean).abs()).collect())
}

/// A seed for batch `i` of a measurement seeded with `seed` (splitmix64's finaliser).
fn batch_seed(seed: i64, i: i64) -> i64 {
    let mut z = (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i as u64).wrapping_add(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}

fn check_options(opts: &MeasureOptions) -> Result<()> {
    if opts.draws < 1 || opts.batch < 1 {
        bail!("draws and batch must be >= 1 (got draws {}, batch {})", opts.draws, opts.batch);
    }
    Ok(())
}

/// Measures uint8 images `[N, C, H, W]` (as the data loaders give them) with an image model:
/// bits/dim and log-density averaged over `draws` dequantisations, and `L(x)`.
///
/// A class-conditional model scores the marginal `log p(x) = log Σ_y p(x | y) − log K` under a
/// uniform class prior (K passes), since an input to be judged has no trusted label.
/// `progress(done, total)` is called after each batch.
pub fn measure_pixels(sess: &Session, pixels: &Tensor, opts: &MeasureOptions, progress: &mut dyn FnMut(usize, usize)) -> Result<Measurements> {
    check_options(opts)?;
    if sess.is_tabular() {
        bail!("this is a tabular model: measure rows (measure_rows), not images");
    }
    sess.model.check_input(pixels).map_err(|e| anyhow::anyhow!("images to score: {e} (data.image_size and data.channels of the run)"))?;
    if pixels.kind() != Kind::Uint8 {
        bail!("images to score must be uint8 pixels, got {:?}", pixels.kind());
    }
    let n = pixels.size()[0];
    let (dims, n_bits) = (sess.model.dim(), sess.cfg.data.n_bits);
    let classes = sess.model.n_classes();
    let mut log_prob = Vec::with_capacity(n as usize);
    let mut start = 0;
    while start < n {
        let len = opts.batch.min(n - start);
        let px = pixels.f_narrow(0, start, len)?;
        let seed = batch_seed(opts.seed, start / opts.batch);
        let lp = match classes {
            None => {
                let labels = Tensor::f_zeros([len], (Kind::Int64, Device::Cpu))?;
                Tensor::f_from_slice(&sess.score_pixels(&px, &labels, opts.draws, opts.batch, seed)?.log_prob)?
            }
            Some(k) => {
                let per_class = (0..k)
                    .map(|y| {
                        let labels = Tensor::f_full([len], y, (Kind::Int64, Device::Cpu))?;
                        Ok(Tensor::f_from_slice(&sess.score_pixels(&px, &labels, opts.draws, opts.batch, seed)?.log_prob)?)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Tensor::f_stack(&per_class, 0)?.f_logsumexp(&[0i64][..], false)?.f_sub_scalar((k as f64).ln())?
            }
        };
        log_prob.extend(Vec::<f64>::try_from(&lp)?);
        start += len;
        progress(start as usize, n as usize);
    }
    let nll = log_prob.iter().map(|&lp| nats_to_bpd(lp, dims, n_bits)).collect();
    let complexity = Some(png_complexity(pixels, n_bits)?);
    Ok(Measurements { unit: NllUnit::BitsPerDim, nll, log_prob, complexity })
}

/// Measures rows `[N, D]` (data units) with a tabular model: `−log p` in nats, averaged over
/// `draws` draws of `U(0, noise)` added to every value (the run's `data.uniform_noise`, so the
/// scores match its training statistics). Rows have no complexity score.
pub fn measure_rows(sess: &Session, rows: &Tensor, noise: f64, opts: &MeasureOptions, progress: &mut dyn FnMut(usize, usize)) -> Result<Measurements> {
    check_options(opts)?;
    if !sess.is_tabular() {
        bail!("this is an image model: measure images (measure_pixels), not rows");
    }
    sess.model.check_input(rows).map_err(|e| anyhow::anyhow!("rows to score: {e} (the run's columns: {})", sess.columns.join(", ")))?;
    let n = rows.size()[0];
    let mut log_prob = Vec::with_capacity(n as usize);
    let mut start = 0;
    while start < n {
        let len = opts.batch.min(n - start);
        let part = rows.f_narrow(0, start, len)?;
        log_prob.extend(sess.score_rows(&part, noise, opts.draws, opts.batch, batch_seed(opts.seed, start / opts.batch))?);
        start += len;
        progress(start as usize, n as usize);
    }
    let nll = log_prob.iter().map(|lp| -lp).collect();
    Ok(Measurements { unit: NllUnit::Nats, nll, log_prob, complexity: None })
}
