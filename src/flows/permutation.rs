//! Fixed channel permutations: reversal, or a seeded random shuffle. The indices are a saved
//! buffer (`perm`), so a model reloads with the same order. Log-det 0.
use super::{check_channels, zero_logdet, Ctx, Flow};
use anyhow::Result;
use tch::{nn, Kind, Tensor};

pub struct Permutation {
    pub channels: i64,
    pub perm: Tensor,
}

impl Permutation {
    pub fn reverse(p: nn::Path, channels: i64) -> Self {
        let idx = Tensor::arange(channels, (Kind::Int64, p.device())).flip([0]);
        Permutation { channels, perm: p.add("perm", idx, false) }
    }
    /// Draws from libtorch's global generator: seed it (`tch::manual_seed`) before building.
    pub fn shuffle(p: nn::Path, channels: i64) -> Self {
        let idx = Tensor::randperm(channels, (Kind::Int64, tch::Device::Cpu)).to_device(p.device());
        Permutation { channels, perm: p.add("perm", idx, false) }
    }
    fn inverse_perm(&self) -> Result<Tensor> {
        Ok(self.perm.f_argsort(0, false)?)
    }
}

impl Flow for Permutation {
    fn forward(&self, x: &Tensor, _ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        check_channels("Permutation", x, self.channels)?;
        Ok((x.f_index_select(1, &self.perm)?, zero_logdet(x)?))
    }
    fn inverse(&self, y: &Tensor, _ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        check_channels("Permutation", y, self.channels)?;
        Ok((y.f_index_select(1, &self.inverse_perm()?)?, zero_logdet(y)?))
    }

    fn to_torchscript(&self, ts: &mut crate::script::ScriptBuilder) -> Result<crate::script::ScriptFlow> {
        use crate::script::ts_zero_logdet;
        let f = format!("return x.index_select(1, $perm), {}", ts_zero_logdet("x"));
        let i = format!("return y.index_select(1, torch.argsort($perm, 0, False)), {}", ts_zero_logdet("y"));
        ts.add(crate::script::Layer::new("Permutation").tensor(ts, "perm", &self.perm)?.flow_methods(&f, &i))
    }
}
