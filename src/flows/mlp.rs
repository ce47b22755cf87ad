//! MLP conditioner for couplings on vectors (RealNVP, NICE): `depth` hidden layers of `width`
//! with a chosen activation, and a zero-initialised output layer so the coupling starts as the
//! identity. Parameter names follow `nn.Sequential` indices: `0.weight`, `2.weight`, ...
use super::coupling::Conditioner;
use super::Ctx;
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
}

pub struct MlpNet {
    /// `(weight [out, in], bias [out])` per linear layer; the last is zero-initialised.
    pub layers: Vec<(Tensor, Tensor)>,
    pub activation: Activation,
}

impl MlpNet {
    pub fn new(p: nn::Path, d_in: i64, width: i64, depth: i64, d_out: i64, activation: Activation) -> Result<Self> {
        if depth < 1 || width < 1 {
            bail!("MLP conditioner: depth and width must be >= 1");
        }
        let mut layers = vec![];
        let mut d = d_in;
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
        Ok(MlpNet { layers, activation })
    }
}

impl Conditioner for MlpNet {
    fn to_torchscript(&self, ts: &mut crate::export::ScriptBuilder) -> Result<String> {
        let act = match self.activation {
            Activation::Relu => "torch.relu(h)",
            Activation::Tanh => "torch.tanh(h)",
            Activation::Elu => "torch.elu(h)",
            Activation::LeakyRelu => "torch.leaky_relu(h)",
            Activation::Gelu => "torch.gelu(h, approximate=\"none\")",
            Activation::Silu => "torch.silu(h)",
        };
        let mut body = "h = x\n".to_string();
        let last = self.layers.len() - 1;
        for (i, (w, b)) in self.layers.iter().enumerate() {
            body += &format!("h = torch.linear(h, {}, {})\n", ts.tensor(w)?, ts.tensor(b)?);
            if i < last {
                body += &format!("h = {act}\n");
            }
        }
        body += "return h";
        let tensors: Vec<&Tensor> = self.layers.iter().map(|(w, _)| w).collect();
        let stem = ts.stem("mlp", &tensors);
        ts.define_function(&stem, "net", "x: Tensor, cond: Optional[Tensor]", "Tensor", &body)
    }

    fn forward(&self, x: &Tensor, _ctx: &Ctx) -> Result<Tensor> {
        let mut h = x.shallow_clone();
        let last = self.layers.len() - 1;
        for (i, (w, b)) in self.layers.iter().enumerate() {
            h = h.f_linear(w, Some(b))?;
            if i < last {
                h = self.activation.apply(&h)?;
            }
        }
        Ok(h)
    }
}
