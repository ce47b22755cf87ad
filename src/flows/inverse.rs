//! The inverse of a flow as a flow: `forward` runs the inner flow's `inverse` and vice versa
//! (nflows' `InverseTransform`). IAF is `Inverse` of a MAF layer: sampling in one pass,
//! density in D passes, with no IAF-specific code.
use super::{Ctx, Flow};
use crate::script::{ScriptBuilder, ScriptFlow};
use anyhow::Result;
use tch::Tensor;

pub struct Inverse<F: Flow>(pub F);

impl<F: Flow> Inverse<F> {
    pub fn new(inner: F) -> Self {
        Inverse(inner)
    }
    pub fn inner(&self) -> &F {
        &self.0
    }
    pub fn into_inner(self) -> F {
        self.0
    }
}

impl<F: Flow> Flow for Inverse<F> {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        self.0.inverse(x, ctx)
    }
    fn inverse(&self, y: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        self.0.forward(y, ctx)
    }
    /// The inner layer's two methods, swapped.
    fn to_torchscript(&self, ts: &mut ScriptBuilder) -> Result<ScriptFlow> {
        let inner = self.0.to_torchscript(ts)?;
        let layer = crate::script::Layer::new("Inverse").child("inner", &inner);
        ts.add(layer.flow_methods("return $inner.inverse(x, cond)", "return $inner.forward(y, cond)"))
    }
    fn layer_name(&self) -> String {
        format!("Inverse({})", self.0.layer_name())
    }
}
