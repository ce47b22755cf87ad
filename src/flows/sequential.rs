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

    /// Calls the layers' methods in order (reversed for the inverse), summing the log-dets
    /// from zero in the same order as above.
    fn to_torchscript(&self, ts: &mut crate::script::ScriptBuilder) -> Result<crate::script::ScriptFlow> {
        use crate::script::ts_zero_logdet;
        use anyhow::Context;
        let mut children = vec![];
        for (i, layer) in self.layers.iter().enumerate() {
            let c = layer
                .to_torchscript(ts)
                .with_context(|| format!("layer {i} ({}) of a Sequential", layer.layer_name()))?;
            children.push(c);
        }
        let mut f = format!("h = x\ntotal = {}\n", ts_zero_logdet("x"));
        for c in &children {
            f += &format!("h, ld = {}\ntotal = total + ld\n", c.call_forward("h", "cond"));
        }
        f += "return h, total";
        let mut i = format!("h = y\ntotal = {}\n", ts_zero_logdet("y"));
        for c in children.iter().rev() {
            i += &format!("h, ld = {}\ntotal = total + ld\n", c.call_inverse("h", "cond"));
        }
        i += "return h, total";
        ts.define_flow("sequential", &f, &i)
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

    fn to_torchscript(&self, ts: &mut crate::script::ScriptBuilder) -> Result<crate::script::ScriptFlow> {
        use crate::script::ts_zero_logdet;
        let dims: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        let d: i64 = self.shape.iter().product();
        let f = format!("return x.reshape([x.size(0), -1]), {}", ts_zero_logdet("x"));
        let i = format!(
            "assert y.dim() == 2 and y.size(1) == {d}, \"Flatten: expected [B, {d}] to unflatten to {:?}, got \" + str(y.size())\n\
             return y.reshape([y.size(0), {}]), {}",
            self.shape,
            dims.join(", "),
            ts_zero_logdet("y")
        );
        ts.define_flow("flatten", &f, &i)
    }
}
