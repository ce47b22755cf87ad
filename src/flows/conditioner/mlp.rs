//! MLP conditioner for couplings on vectors (RealNVP, NICE): `depth` hidden layers of `width`
//! with a chosen activation, and a zero-initialised output layer so the coupling starts as the
//! identity. A context is concatenated to the input. Parameter names follow `nn.Sequential`
//! indices: `0.weight`, `2.weight`, ...
use super::{context, script_context, Conditioner};
use crate::flows::Ctx;
use crate::script::{Layer, ScriptBuilder, ScriptFlow};
use anyhow::{bail, Result};
use tch::{nn, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Relu,
    Tanh,
    Elu,
    LeakyRelu,
    Gelu,
    Silu,
}

impl Activation {
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Relu => x.f_relu()?,
            Activation::Tanh => x.f_tanh()?,
            Activation::Elu => x.f_elu()?,
            Activation::LeakyRelu => x.f_leaky_relu()?,
            Activation::Gelu => x.f_gelu("none")?,
            Activation::Silu => x.f_silu()?,
        })
    }

    /// TorchScript of [`apply`](Self::apply) on the variable `h`.
    pub fn script(self, h: &str) -> String {
        match self {
            Activation::Relu => format!("torch.relu({h})"),
            Activation::Tanh => format!("torch.tanh({h})"),
            Activation::Elu => format!("torch.elu({h})"),
            Activation::LeakyRelu => format!("torch.leaky_relu({h})"),
            Activation::Gelu => format!("torch.gelu({h}, approximate=\"none\")"),
            Activation::Silu => format!("torch.silu({h})"),
        }
    }
}

pub struct MlpNet {
    /// `(weight [out, in], bias [out])` per linear layer; the last is zero-initialised.
    pub layers: Vec<(Tensor, Tensor)>,
    pub activation: Activation,
    /// Context features appended to the input (0: none).
    pub context_dim: i64,
}

impl MlpNet {
    pub fn new(p: nn::Path, d_in: i64, width: i64, depth: i64, d_out: i64, activation: Activation) -> Result<Self> {
        Self::with_context(p, d_in, 0, width, depth, d_out, activation)
    }

    /// An MLP reading `d_in` features and a `context_dim` context.
    pub fn with_context(p: nn::Path, d_in: i64, context_dim: i64, width: i64, depth: i64, d_out: i64, activation: Activation) -> Result<Self> {
        if depth < 1 || width < 1 {
            bail!("MLP conditioner: depth and width must be >= 1");
        }
        if d_in < 0 || context_dim < 0 || d_in + context_dim < 1 || d_out < 1 {
            bail!("MLP conditioner: needs at least one input and one output (got {d_in} inputs, {context_dim} context, {d_out} outputs)");
        }
        let mut layers = vec![];
        let mut d = d_in + context_dim;
        for i in 0..depth {
            let q = &p / (2 * i);
            let bound = 1.0 / (d as f64).sqrt();
            let w = q.var("weight", &[width, d], nn::Init::Uniform { lo: -bound, up: bound });
            let b = q.var("bias", &[width], nn::Init::Uniform { lo: -bound, up: bound });
            layers.push((w, b));
            d = width;
        }
        let q = &p / (2 * depth);
        layers.push((q.zeros("weight", &[d_out, d]), q.zeros("bias", &[d_out])));
        Ok(MlpNet { layers, activation, context_dim })
    }
}

impl Conditioner for MlpNet {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let mut h = match context("MlpNet", ctx, self.context_dim, x.size()[0])? {
            Some(c) => Tensor::f_cat(&[x, &c.f_to_kind(x.kind())?], 1)?,
            None => x.shallow_clone(),
        };
        let last = self.layers.len() - 1;
        for (i, (w, b)) in self.layers.iter().enumerate() {
            h = h.f_linear(w, Some(b))?;
            if i < last {
                h = self.activation.apply(&h)?;
            }
        }
        Ok(h)
    }

    fn features(&self) -> (i64, i64) {
        (self.layers[0].0.size()[1] - self.context_dim, self.layers[self.layers.len() - 1].0.size()[0])
    }

    fn context_dim(&self) -> i64 {
        self.context_dim
    }

    fn to_torchscript(&self, ts: &mut ScriptBuilder) -> Result<ScriptFlow> {
        let mut layer = Layer::new("MlpNet");
        let mut body = if self.context_dim > 0 {
            layer = layer.int("context_dim", self.context_dim);
            format!("{}h = torch.cat([x, c.to(x.dtype)], 1)\n", script_context("MlpNet", "x"))
        } else {
            "h = x\n".to_string()
        };
        let last = self.layers.len() - 1;
        for (i, (w, b)) in self.layers.iter().enumerate() {
            layer = layer.tensor(ts, &format!("w{i}"), w)?.tensor(ts, &format!("b{i}"), b)?;
            body += &format!("h = torch.linear(h, $w{i}, $b{i})\n");
            if i < last {
                body += &format!("h = {}\n", self.activation.script("h"));
            }
        }
        body += "return h";
        ts.add(layer.method("forward", "x: Tensor, cond: Optional[Tensor]", "Tensor", &body))
    }
}
