//! rosinality/glow-pytorch checkpoints (`flowzoo import rosinality`).
//!
//! The model becomes flowzoo's Glow with `model.style = "rosinality"` (linear ActNorm; hidden
//! convs with bias and no ActNorm; zero-convs padded with ones; contiguous (log-scale, shift)
//! and (mean, log-std) halves; top prior `ZeroConv2d(C -> 2C)` on zeros; LU 1×1 convs in the
//! last block). The hidden width (512 in rosinality's code) is read from the checkpoint.
//!
//! | rosinality                                        | flowzoo                                   |
//! |---------------------------------------------------|-------------------------------------------|
//! | `blocks.{i}.flows.{k}.actnorm.{loc,scale,initialized}` | `levels.{i}.steps.{k}.actnorm.*`     |
//! | `.invconv.{w_p,w_l,w_u,w_s,s_sign}`               | `.invconv.{p,lower,upper,log_s,sign_s}`   |
//! | `.invconv.{u_mask,l_mask,l_eye}`                  | checked to be the standard masks          |
//! | `.invconv.weight [C,C,1,1]` (`--no-lu`)           | `.invconv.weight [C,C]`                   |
//! | `.coupling.net.{0,2}.{weight,bias}`               | `.coupling.net.{0,2}.{weight,bias}`       |
//! | `.coupling.net.4.{conv.*, scale [1,C,1,1]}`       | `.coupling.net.4.{conv.*, logs [C,1,1]}`  |
//! | `blocks.{i}.prior.*` (i < n_block-1)              | `levels.{i}.split.*`                      |
//! | `blocks.{n_block-1}.prior.*`                      | `prior.learn_top.*`                       |
use super::{convert, indices, model_variables, parse_level, write_run_on, Fixed, Imported, KeyMap, LevelPart, Source};
use crate::config::{Config, CouplingChoice, GlowStyle, PermutationChoice};
use crate::session::Session;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

pub struct Args<'a> {
    pub weights: &'a Path,
    pub n_flow: i64,
    pub n_block: i64,
    pub affine: bool,
    pub no_lu: bool,
    pub image_size: i64,
    pub n_bits: i64,
    pub out: &'a Path,
    /// Where the finished run is reopened and checked.
    pub device: Device,
}

/// What the checkpoint's keys and shapes say.
#[derive(Debug, Default)]
struct Seen {
    n_block: Option<i64>,
    n_flow: Option<i64>,
    affine: Option<bool>,
    lu: Option<bool>,
    width: Option<i64>,
    channels: Option<i64>,
}

fn inspect(t: &BTreeMap<String, Tensor>) -> Seen {
    let blocks = indices(t, "blocks.");
    let mut s = Seen::default();
    if blocks.is_empty() {
        return s;
    }
    s.n_block = Some(blocks.len() as i64);
    s.n_flow = Some(indices(t, "blocks.0.flows.").len() as i64);
    let f = "blocks.0.flows.0.";
    let c = t.get(&format!("{f}actnorm.loc")).map(|x| x.size()).filter(|s| s.len() == 4).map(|s| s[1]);
    s.channels = c.map(|c| c / 4);
    // `first()`: a checkpoint may hold a scalar where a weight should be (then convert() names it).
    s.width = t.get(&format!("{f}coupling.net.0.weight")).and_then(|w| w.size().first().copied());
    if let (Some(c), Some(w)) = (c, t.get(&format!("{f}coupling.net.4.conv.weight"))) {
        s.affine = w.size().first().map(|&o| o == c);
    }
    if s.n_block.unwrap_or(0) > 1 {
        s.lu = Some(t.contains_key(&format!("{f}invconv.w_l")));
    }
    s
}

fn hint(a: &Args, seen: &Seen) -> Option<String> {
    let mut fix = vec![];
    if let Some(n) = seen.n_flow.filter(|&n| n != a.n_flow) {
        fix.push(format!("--n-flow {n}"));
    }
    if let Some(n) = seen.n_block.filter(|&n| n != a.n_block) {
        fix.push(format!("--n-block {n}"));
    }
    match seen.affine {
        Some(true) if !a.affine => fix.push("--affine".into()),
        Some(false) if a.affine => fix.push("no --affine (additive couplings)".into()),
        _ => {}
    }
    match seen.lu {
        Some(false) if !a.no_lu => fix.push("--no-lu".into()),
        Some(true) if a.no_lu => fix.push("no --no-lu (LU 1x1 convs)".into()),
        _ => {}
    }
    if let Some(c) = seen.channels.filter(|&c| c != 3 && c != 1) {
        fix.push(format!("(images with {c} channels, which flowzoo does not support)"));
    }
    (!fix.is_empty()).then(|| format!("the checkpoint's tensors call for {}", fix.join(" ")))
}

/// The flowzoo config of a rosinality model.
pub fn config(a: &Args, channels: i64, width: i64) -> Config {
    let mut cfg = Config::default();
    cfg.data.path = "data/images".to_string();
    cfg.data.image_size = a.image_size;
    cfg.data.channels = channels;
    cfg.data.n_bits = a.n_bits;
    cfg.model.levels = a.n_block;
    cfg.model.steps = a.n_flow;
    cfg.model.width = width;
    cfg.model.coupling = if a.affine { CouplingChoice::Affine } else { CouplingChoice::Additive };
    cfg.model.permutation = if a.no_lu { PermutationChoice::Invconv } else { PermutationChoice::InvconvLu };
    cfg.model.learn_top = true;
    cfg.model.conditional = false;
    cfg.model.actnorm_scale = 1.0;
    cfg.model.style = GlowStyle::Rosinality;
    cfg.train.lr = 1e-4;
    cfg
}

/// The rosinality key of each flowzoo variable.
pub fn key_map(cfg: &Config, vars: &BTreeMap<String, Tensor>) -> Result<KeyMap> {
    let last = cfg.model.levels - 1;
    let mut sources = BTreeMap::new();
    let mut fixed = vec![];
    // `logs [C,1,1]` is stored as `scale [1,C,1,1]`.
    let scale_shape = |s: &[i64]| -> Vec<i64> {
        let mut v = vec![1];
        v.extend_from_slice(s);
        v
    };
    for (name, var) in vars {
        let shape = var.size();
        let src = match parse_level(name) {
            Some((i, LevelPart::Step(k, rest))) => {
                let f = format!("blocks.{i}.flows.{k}.");
                let renamed = match rest {
                    "invconv.lower" => Some("invconv.w_l"),
                    "invconv.upper" => Some("invconv.w_u"),
                    "invconv.log_s" => Some("invconv.w_s"),
                    "invconv.p" => Some("invconv.w_p"),
                    "invconv.sign_s" => Some("invconv.s_sign"),
                    _ => None,
                };
                if rest == "invconv.lower" {
                    let c = shape[0];
                    let u_mask = Tensor::ones([c, c], (Kind::Float, Device::Cpu)).triu(1);
                    let what = "the standard LU masks (u_mask = triu(ones, 1), l_mask = its transpose, l_eye = I)";
                    fixed.push(Fixed { key: format!("{f}invconv.l_mask"), value: u_mask.tr().contiguous(), what });
                    fixed.push(Fixed { key: format!("{f}invconv.u_mask"), value: u_mask, what });
                    fixed.push(Fixed { key: format!("{f}invconv.l_eye"), value: Tensor::eye(c, (Kind::Float, Device::Cpu)), what });
                }
                match (renamed, rest) {
                    (Some(r), _) => Source::key(format!("{f}{r}"), &shape),
                    (None, "invconv.weight") => Source::key(format!("{f}invconv.weight"), &[shape[0], shape[1], 1, 1]),
                    (None, "coupling.net.4.logs") => Source::key(format!("{f}coupling.net.4.scale"), &scale_shape(&shape)),
                    (None, r) if r.ends_with("permutation.perm") => bail!("internal error: rosinality models have no fixed permutation"),
                    (None, r) => Source::key(format!("{f}{r}"), &shape),
                }
            }
            Some((i, LevelPart::Split(rest))) => prior_source(&format!("blocks.{i}.prior."), rest, &shape, scale_shape(&shape)),
            None => match name.strip_prefix("prior.learn_top.") {
                Some(rest) => prior_source(&format!("blocks.{last}.prior."), rest, &shape, scale_shape(&shape)),
                None => bail!("internal error: flowzoo variable {name} has no rosinality counterpart"),
            },
        };
        sources.insert(name.clone(), src);
    }
    Ok(KeyMap { sources, fixed })
}

fn prior_source(prefix: &str, rest: &str, shape: &[i64], scale_shape: Vec<i64>) -> Source {
    if rest == "logs" {
        Source::key(format!("{prefix}scale"), &scale_shape)
    } else {
        Source::key(format!("{prefix}{rest}"), shape)
    }
}

/// `flowzoo import rosinality`.
pub fn import(a: &Args) -> Result<(Imported, String)> {
    if a.n_flow < 1 || a.n_block < 1 {
        bail!("--n-flow and --n-block must be >= 1");
    }
    if !(1..=8).contains(&a.n_bits) {
        bail!("--n-bits {} must be between 1 and 8", a.n_bits);
    }
    let file = super::read_checkpoint(a.weights)?;
    let seen = inspect(&file.tensors);
    let channels = match seen.channels {
        Some(c) if c == 1 || c == 3 => c,
        _ => 3,
    };
    let width = seen.width.unwrap_or(512);
    let cfg = config(a, channels, width);
    cfg.validate().context("the rosinality model as a flowzoo config")?;
    let sess = Session::new(&cfg, vec![], Device::Cpu)?;
    let vars = model_variables(&sess);
    let map = key_map(&cfg, &vars)?;
    let origin = format!("{} ({})", a.weights.display(), file.what);
    let weights = convert(&vars, &map, &file.tensors, &origin, hint(a, &seen))?;
    drop(sess);
    let imp = write_run_on(a.out, &cfg, super::unlabelled(), &weights, &format!("rosinality:{}", a.weights.display()), a.device)?;
    Ok((imp, file.what))
}
