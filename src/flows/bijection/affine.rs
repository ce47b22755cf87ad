//! Affine and additive elementwise maps (RealNVP, Glow, NICE).
use super::{check_params, ElementwiseBijection};
use crate::script::{ScriptBuilder, ScriptFlow};
use anyhow::Result;
use tch::Tensor;

/// How a raw network output becomes the affine scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleFn {
    /// `sigmoid(raw + 2)` (Glow): bounded in (0, 1), 0.88 at zero.
    Sigmoid2,
    /// `exp(c · tanh(raw / c))` with c = 3: the identity at zero (a zero-initialised network
    /// starts as the identity map) and bounded in (e^-3, e^3).
    ExpTanh,
}

/// How the two parameters of a feature sit in the raw channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamLayout {
    /// Per feature, (shift, scale) side by side: shift = even channels, scale = odd channels
    /// (OpenAI Glow, y0ast; also "grouped per feature", as a MADE writes them).
    Interleaved,
    /// scale = first half, shift = second half (rosinality).
    Contiguous,
}

/// `y = (x + shift) · s` with `s = scale_fn(raw)`: 2 parameters per feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Affine {
    pub scale: ScaleFn,
    pub layout: ParamLayout,
}

impl Affine {
    pub fn new(scale: ScaleFn, layout: ParamLayout) -> Self {
        Affine { scale, layout }
    }
    /// Glow's: `sigmoid(raw + 2)` scale, interleaved parameters.
    pub fn glow() -> Self {
        Affine::new(ScaleFn::Sigmoid2, ParamLayout::Interleaved)
    }
    /// RealNVP-style: `exp(3·tanh(raw / 3))` scale (the identity at zero), interleaved.
    pub fn exp_tanh() -> Self {
        Affine::new(ScaleFn::ExpTanh, ParamLayout::Interleaved)
    }

    /// `(shift, log_scale)` from the raw parameters.
    fn shift_log_scale(&self, h: &Tensor) -> Result<(Tensor, Tensor)> {
        let (shift, raw) = match self.layout {
            ParamLayout::Interleaved => (h.f_slice(1, 0, None, 2)?, h.f_slice(1, 1, None, 2)?),
            ParamLayout::Contiguous => {
                let c = h.size()[1] / 2;
                (h.f_narrow(1, c, c)?, h.f_narrow(1, 0, c)?)
            }
        };
        let log_s = match self.scale {
            // log(sigmoid(raw + 2)), computed stably.
            ScaleFn::Sigmoid2 => raw.f_add_scalar(2.0)?.f_log_sigmoid()?,
            ScaleFn::ExpTanh => raw.f_div_scalar(3.0)?.f_tanh()?.f_mul_scalar(3.0)?,
        };
        Ok((shift, log_s))
    }
}

impl ElementwiseBijection for Affine {
    fn params_per_feature(&self) -> i64 {
        2
    }

    fn forward(&self, x: &Tensor, h: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        check_params("Affine", x, h, 2)?;
        let (shift, ls) = self.shift_log_scale(h)?;
        Ok((x.f_add(&shift)?.f_mul(&ls.f_exp()?)?, Some(ls)))
    }

    fn inverse(&self, y: &Tensor, h: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        check_params("Affine", y, h, 2)?;
        let (shift, ls) = self.shift_log_scale(h)?;
        Ok((y.f_mul(&ls.f_neg()?.f_exp()?)?.f_sub(&shift)?, Some(ls)))
    }

    fn to_torchscript(&self, ts: &mut ScriptBuilder) -> Result<ScriptFlow> {
        let mut s = match self.layout {
            ParamLayout::Interleaved => "shift = h[:, 0::2]\nraw = h[:, 1::2]\n".to_string(),
            ParamLayout::Contiguous => "hc = h.size(1) // 2\nshift = h.narrow(1, hc, hc)\nraw = h.narrow(1, 0, hc)\n".to_string(),
        };
        s += match self.scale {
            ScaleFn::Sigmoid2 => "ld = torch.log_sigmoid(raw + 2.0)\n",
            ScaleFn::ExpTanh => "ld = torch.tanh(raw / 3.0) * 3.0\n",
        };
        let f = format!("{s}return (t + shift) * torch.exp(ld), ld");
        let i = format!("{s}return t * torch.exp(-ld) - shift, ld");
        let kind = format!(
            "Affine{}{}",
            if self.scale == ScaleFn::ExpTanh { "ExpTanh" } else { "" },
            if self.layout == ParamLayout::Contiguous { "Contiguous" } else { "" }
        );
        ts.add(super::script_methods(&kind, &f, &i))
    }

    fn name(&self) -> String {
        format!("Affine({:?}, {:?})", self.scale, self.layout)
    }
}

/// `y = x + shift` (NICE): 1 parameter per feature, volume preserving.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Additive;

impl ElementwiseBijection for Additive {
    fn params_per_feature(&self) -> i64 {
        1
    }
    fn forward(&self, x: &Tensor, h: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        check_params("Additive", x, h, 1)?;
        Ok((x.f_add(h)?, None))
    }
    fn inverse(&self, y: &Tensor, h: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        check_params("Additive", y, h, 1)?;
        Ok((y.f_sub(h)?, None))
    }
    fn to_torchscript(&self, ts: &mut ScriptBuilder) -> Result<ScriptFlow> {
        ts.add(super::script_methods("Additive", "return t + h, None", "return t - h, None"))
    }
    fn volume_preserving(&self) -> bool {
        true
    }
    fn name(&self) -> String {
        "Additive".into()
    }
}
