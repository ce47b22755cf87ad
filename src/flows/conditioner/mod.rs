//! Conditioners: networks from the conditioning features and the context (`ctx.cond`) to the
//! raw parameters of an elementwise bijection. Every conditioner accepts a context: built with
//! `context_dim = K > 0` it requires `ctx.cond` of shape `[B, K]` and lets it shape the output
//! (concatenated to an MLP's input, added through a learned projection in a conv net); built
//! with `context_dim = 0` it ignores `ctx.cond` (a class-conditional Glow conditions only its
//! prior).
use super::Ctx;
use crate::script::{ScriptBuilder, ScriptFlow};
use anyhow::{bail, Result};
use tch::Tensor;

pub mod convnet;
pub mod made;
pub mod mlp;

pub use convnet::ConvNet;
pub use made::{HiddenDegrees, Made, MadeOptions, MadeOrder, MaskedLinear};
pub use mlp::{Activation, MlpNet};

pub trait Conditioner: Send {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor>;

    /// `(input features, output features)` along dim 1.
    fn features(&self) -> (i64, i64);

    /// Size of the context this network reads (0: none).
    fn context_dim(&self) -> i64 {
        0
    }

    /// Describes `forward(self, x: Tensor, cond: Optional[Tensor]) -> Tensor` (see
    /// [`crate::script`]).
    fn to_torchscript(&self, ts: &mut ScriptBuilder) -> Result<ScriptFlow> {
        let _ = ts;
        Err(crate::script::not_exportable(&crate::script::short_type_name(std::any::type_name::<Self>())))
    }
}

/// The context a network built with `dim` context features must use: `None` when `dim` is 0,
/// else `ctx.cond`, checked to be `[batch, dim]`.
pub fn context<'a>(layer: &str, ctx: &Ctx<'a>, dim: i64, batch: i64) -> Result<Option<&'a Tensor>> {
    if dim == 0 {
        return Ok(None);
    }
    match ctx.cond {
        None => bail!("{layer}: this network is conditional: pass a context of shape [B, {dim}]"),
        Some(c) if c.size() != [batch, dim] => bail!("{layer}: expected a context of shape [{batch}, {dim}], got {:?}", c.size()),
        Some(c) => Ok(Some(c)),
    }
}

/// TorchScript statements checking `cond` as [`context`] does; they bind `c` to it. The layer
/// must define the constant `context_dim`.
pub fn script_context(layer: &str, x: &str) -> String {
    format!(
        "assert cond is not None, \"{layer}: this network is conditional: pass a context of shape [B, \" + str($context_dim) + \"]\"\n\
         c = cond\n\
         assert c.dim() == 2 and c.size(0) == {x}.size(0) and c.size(1) == $context_dim, \"{layer}: expected a context of shape [\" + str({x}.size(0)) + \", \" + str($context_dim) + \"], got \" + str(c.size())\n"
    )
}
