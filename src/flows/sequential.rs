//! Composition: a list of flows is a flow.
use super::{zero_logdet, Ctx, Flow};
use anyhow::Result;
use tch::Tensor;

#[derive(Default)]
pub struct Sequential {
    pub layers: Vec<Box<dyn Flow>>,
}

impl Sequential {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn push(&mut self, flow: impl Flow + 'static) {
        self.layers.push(Box::new(flow));
    }
    pub fn len(&self) -> usize {
        self.layers.len()
    }
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

impl Flow for Sequential {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        let mut h = x.shallow_clone();
        let mut total = zero_logdet(x)?;
        for layer in &self.layers {
            let (y, ld) = layer.forward(&h, ctx)?;
            total = total.f_add(&ld)?;
            h = y;
        }
        Ok((h, total))
    }

    fn inverse(&self, y: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        let mut h = y.shallow_clone();
        let mut total = zero_logdet(y)?;
        for layer in self.layers.iter().rev() {
            let (x, ld) = layer.inverse(&h, ctx)?;
            total = total.f_add(&ld)?;
            h = x;
        }
        Ok((h, total))
    }
}

/// `[B, C, H, W] <-> [B, C·H·W]` (row-major), the last step before the base distribution.
pub struct Flatten {
    pub shape: Vec<i64>,
}

impl Flow for Flatten {
    fn forward(&self, x: &Tensor, _ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        let s = x.size();
        if s[1..] != self.shape[..] {
            anyhow::bail!("Flatten: expected [B, {:?}], got {s:?}", self.shape);
        }
        Ok((x.f_reshape([s[0], -1])?, zero_logdet(x)?))
    }
    fn inverse(&self, y: &Tensor, _ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        let d: i64 = self.shape.iter().product();
        let s = y.size();
        if s.len() != 2 || s[1] != d {
            anyhow::bail!("Flatten: expected [B, {d}] to unflatten to {:?}, got {s:?}", self.shape);
        }
        let mut shape = vec![s[0]];
        shape.extend(&self.shape);
        Ok((y.f_reshape(&shape)?, zero_logdet(y)?))
    }
}
