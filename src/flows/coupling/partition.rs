//! Partitions (a coupling's structure): which features condition which. A partition splits
//! an input into the conditioner's input and the part to transform, and puts the transformed
//! part back; it knows nothing about the map or the network.
use crate::script::{Layer, ScriptBuilder, ScriptFlow};
use anyhow::{bail, Result};
use tch::{Kind, Tensor};

fn script_methods(kind: &str, split: &str, merge: &str) -> Layer {
    Layer::new(kind)
        .method("split", "x: Tensor", "Tuple[Tensor, Tensor, Optional[Tensor]]", split)
        .method("merge", "x: Tensor, a: Tensor, out: Tensor, active: Optional[Tensor]", "Tensor", merge)
}

/// One input split by a [`Partition`].
pub struct Parts {
    /// What the conditioner reads.
    pub cond: Tensor,
    /// What the elementwise bijection transforms.
    pub part: Tensor,
    /// 1 where `part` is really transformed, 0 where it is only carried along (a checkerboard
    /// transforms the whole tensor and keeps half of the result); `None`: all of it.
    pub active: Option<Tensor>,
    /// The checkerboard's conditioning mask (1 where a position conditions).
    mask: Option<Tensor>,
}

pub trait Partition: Send {
    /// `(conditioning features, transformed features)` for an input with `channels` channels:
    /// the conditioner reads the first and writes parameters for the second.
    fn sizes(&self, channels: i64) -> (i64, i64);
    fn split(&self, x: &Tensor, channels: i64) -> Result<Parts>;
    /// `x` with `parts.part` replaced by `out`.
    fn merge(&self, x: &Tensor, parts: &Parts, out: &Tensor) -> Result<Tensor>;
    /// Describes `split(self, x) -> (cond, part, active)` and `merge(self, x, cond, out,
    /// active) -> Tensor`, as [`split`](Self::split) and [`merge`](Self::merge) compute them
    /// (see [`crate::script`]).
    fn to_torchscript(&self, ts: &mut ScriptBuilder, channels: i64) -> Result<ScriptFlow>;
    fn name(&self) -> String;
}

/// Channel halves: the first `C/2` channels condition the rest (`flip` swaps the roles).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelHalves {
    pub flip: bool,
}

impl ChannelHalves {
    pub fn new(flip: bool) -> Self {
        ChannelHalves { flip }
    }
}

impl Partition for ChannelHalves {
    fn sizes(&self, channels: i64) -> (i64, i64) {
        let (c1, c2) = (channels / 2, channels - channels / 2);
        if self.flip {
            (c2, c1)
        } else {
            (c1, c2)
        }
    }
    fn split(&self, x: &Tensor, channels: i64) -> Result<Parts> {
        let c1 = channels / 2;
        let (a, b) = (x.f_narrow(1, 0, c1)?, x.f_narrow(1, c1, channels - c1)?);
        let (cond, part) = if self.flip { (b, a) } else { (a, b) };
        Ok(Parts { cond, part, active: None, mask: None })
    }
    fn merge(&self, _x: &Tensor, parts: &Parts, out: &Tensor) -> Result<Tensor> {
        let pieces = if self.flip { [out, &parts.cond] } else { [&parts.cond, out] };
        Ok(Tensor::f_cat(&pieces, 1)?)
    }
    fn to_torchscript(&self, ts: &mut ScriptBuilder, channels: i64) -> Result<ScriptFlow> {
        let split = "p0 = x.narrow(1, 0, $c1)\np1 = x.narrow(1, $c1, $c2)\nif $flip:\n    return p1, p0, None\nreturn p0, p1, None";
        let merge = "if $flip:\n    return torch.cat([out, a], 1)\nreturn torch.cat([a, out], 1)";
        let c1 = channels / 2;
        ts.add(script_methods("ChannelHalves", split, merge).int("c1", c1).int("c2", channels - c1).bool("flip", self.flip))
    }
    fn name(&self) -> String {
        format!("ChannelHalves(flip={})", self.flip)
    }
}

/// Spatial checkerboard: positions with `(i + j) % 2 == parity` condition the others; on
/// vectors, features with `i % 2 == parity` (RealNVP's alternating binary mask, written as a
/// mask: the conditioner sees the whole masked input).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkerboard {
    pub parity: i64,
}

impl Checkerboard {
    pub fn new(parity: i64) -> Self {
        Checkerboard { parity }
    }

    /// 1 where a position conditions.
    fn mask(&self, x: &Tensor) -> Result<Tensor> {
        let s = x.size();
        let opts = (Kind::Int64, x.device());
        let (m, shape) = match s.len() {
            4 => {
                let i = Tensor::f_arange(s[2], opts)?.f_reshape([s[2], 1])?;
                let j = Tensor::f_arange(s[3], opts)?.f_reshape([1, s[3]])?;
                (i.f_add(&j)?, vec![1, 1, s[2], s[3]])
            }
            2 => (Tensor::f_arange(s[1], opts)?, vec![1, s[1]]),
            _ => bail!("checkerboard coupling: expected [B, C, H, W] or [B, D], got {s:?}"),
        };
        let m = m.f_remainder(2)?.f_eq(self.parity)?;
        Ok(m.f_to_kind(x.kind())?.f_reshape(shape)?)
    }
}

impl Partition for Checkerboard {
    fn sizes(&self, channels: i64) -> (i64, i64) {
        (channels, channels)
    }
    fn split(&self, x: &Tensor, _channels: i64) -> Result<Parts> {
        let b = self.mask(x)?;
        let keep = b.f_neg()?.f_add_scalar(1.0)?;
        Ok(Parts { cond: x.f_mul(&b)?, part: x.shallow_clone(), active: Some(keep), mask: Some(b) })
    }
    fn merge(&self, x: &Tensor, parts: &Parts, out: &Tensor) -> Result<Tensor> {
        let (Some(b), Some(keep)) = (&parts.mask, &parts.active) else { bail!("checkerboard merge: parts of another partition") };
        Ok(x.f_mul(b)?.f_add(&out.f_mul(keep)?)?)
    }
    fn to_torchscript(&self, ts: &mut ScriptBuilder, _channels: i64) -> Result<ScriptFlow> {
        let split = "if x.dim() == 4:\n    \
                 hh = x.size(2)\n    \
                 ww = x.size(3)\n    \
                 ii = torch.arange(hh, dtype=4, device=x.device).reshape([hh, 1])\n    \
                 jj = torch.arange(ww, dtype=4, device=x.device).reshape([1, ww])\n    \
                 bm = torch.remainder(ii + jj, 2).eq($parity).to(x.dtype).reshape([1, 1, hh, ww])\n\
             elif x.dim() == 2:\n    \
                 dd = x.size(1)\n    \
                 bm = torch.remainder(torch.arange(dd, dtype=4, device=x.device), 2).eq($parity).to(x.dtype).reshape([1, dd])\n\
             else:\n    \
                 assert False, \"checkerboard coupling: expected [B, C, H, W] or [B, D], got \" + str(x.size())\n    \
                 bm = x\n\
             active = (-bm) + 1.0\n\
             return x * bm, x, active";
        // `1 - active` is the mask itself (exact 0/1 values).
        let merge = "assert active is not None, \"checkerboard merge: parts of another partition\"\n\
             keep = active\n\
             return x * ((-keep) + 1.0) + out * keep";
        ts.add(script_methods("Checkerboard", split, merge).int("parity", self.parity))
    }
    fn name(&self) -> String {
        format!("Checkerboard(parity={})", self.parity)
    }
}

/// Vectors: features with `i % 2 == parity` condition the others (RealNVP's alternating
/// mask), gathered so the conditioner reads only them and writes only the parameters of the
/// transformed features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Alternating {
    pub parity: i64,
}

impl Alternating {
    pub fn new(parity: i64) -> Self {
        Alternating { parity }
    }
}

impl Partition for Alternating {
    fn sizes(&self, channels: i64) -> (i64, i64) {
        let n_cond = (channels - self.parity + 1) / 2;
        (n_cond, channels - n_cond)
    }
    fn split(&self, x: &Tensor, _channels: i64) -> Result<Parts> {
        if x.dim() != 2 {
            bail!("alternating coupling: expected [B, D], got {:?}", x.size());
        }
        let (cond, part) = (x.f_slice(1, self.parity, None, 2)?, x.f_slice(1, 1 - self.parity, None, 2)?);
        Ok(Parts { cond, part, active: None, mask: None })
    }
    fn merge(&self, x: &Tensor, _parts: &Parts, out: &Tensor) -> Result<Tensor> {
        let idx = Tensor::f_arange_start_step(1 - self.parity, x.size()[1], 2, (Kind::Int64, x.device()))?;
        Ok(x.f_index_copy(1, &idx, out)?)
    }
    fn to_torchscript(&self, ts: &mut ScriptBuilder, _channels: i64) -> Result<ScriptFlow> {
        let split = "assert x.dim() == 2, \"alternating coupling: expected [B, D], got \" + str(x.size())\n\
             return x[:, $parity::2], x[:, 1 - $parity::2], None";
        let merge = "return x.index_copy(1, torch.arange(1 - $parity, x.size(1), 2, dtype=4, device=x.device), out)";
        ts.add(script_methods("Alternating", split, merge).int("parity", self.parity))
    }
    fn name(&self) -> String {
        format!("Alternating(parity={})", self.parity)
    }
}
