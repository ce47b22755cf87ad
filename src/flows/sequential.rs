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
    /// from zero in the same order as above: unrolled in TorchScript, a loop over the list in
    /// Python.
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
        for i in 0..children.len() {
            f += &format!("h, ld = $layers{i}.forward(h, cond)\ntotal = total + ld\n");
        }
        f += "return h, total";
        let mut inv = format!("h = y\ntotal = {}\n", ts_zero_logdet("y"));
        for i in (0..children.len()).rev() {
            inv += &format!("h, ld = $layers{i}.inverse(h, cond)\ntotal = total + ld\n");
        }
        inv += "return h, total";
        let (p, r) = ("x: Tensor, cond: Optional[Tensor]", "Tuple[Tensor, Tensor]");
        let py_f = format!("h = x\ntotal = {}\nfor layer in self.layers:\n    h, ld = layer.forward(h, cond)\n    total = total + ld\nreturn h, total", ts_zero_logdet("x"));
        let py_i = format!("h = y\ntotal = {}\nfor layer in self.layers[::-1]:\n    h, ld = layer.inverse(h, cond)\n    total = total + ld\nreturn h, total", ts_zero_logdet("y"));
        let layer = crate::script::Layer::new("Sequential")
            .children("layers", &children)
            .flow_methods(&f, &inv)
            .python_method("forward", p, r, &py_f)
            .python_method("inverse", &p.replace("x:", "y:"), r, &py_i);
        ts.add(layer)
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
        let f = format!("return x.reshape([x.size(0), -1]), {}", ts_zero_logdet("x"));
        let i = format!(
            "assert y.dim() == 2 and y.size(1) == $dim, \"Flatten: expected [B, \" + str($dim) + \"] to unflatten to \" + str($shape) + \", got \" + str(y.size())\n\
             return y.reshape([y.size(0)] + $shape), {}",
            ts_zero_logdet("y")
        );
        let layer = crate::script::Layer::new("Flatten").int("dim", self.shape.iter().product()).ints("shape", &self.shape);
        ts.add(layer.flow_methods(&f, &i))
    }
}
