//! The test hook behind `flowzoo export --reference-in IN --reference-out OUT`: the Rust
//! model's outputs on given inputs, for comparing an exported module with the model it came
//! from.
use crate::io::{read_safetensors, write_safetensors};
use crate::session::Session;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Kind, Tensor};

fn scalar_input(inputs: &BTreeMap<String, Tensor>, key: &str) -> Result<Option<f64>> {
    match inputs.get(key) {
        None => Ok(None),
        Some(t) if t.numel() == 1 => Ok(Some(t.f_to_kind(Kind::Double)?.f_reshape([1])?.f_double_value(&[0])?)),
        Some(t) => bail!("{key}: expected one number, got shape {:?}", t.size()),
    }
}

/// Test hook behind `flowzoo export --reference-in IN --reference-out OUT`: runs the Rust model
/// on the tensors of `IN` (a safetensors file) and writes its outputs to `OUT`.
///
/// Inputs: `x` `[B, *event_shape]`, float32 or float64 (the model runs in that dtype; float64
/// converts its weights); optional `labels` (int64 `[B]`, class-conditional models), `eps`
/// (`[N, D]`, latents to invert), and `sample_n`, `sample_temperature`, `sample_seed` (one number
/// each; optional `sample_labels` `[sample_n]`). A model conditioned on context columns takes
/// its raw contexts (`[B, K]`) under the same three `*labels` keys.
///
/// Outputs: `z`, `logabsdet` (the flow's forward), `log_prob`, `bits_per_dim` (image models),
/// `x_rec` (inverse of `z`), `inverse_eps` and `inverse_eps_logabsdet` (the flow's inverse of
/// `eps`), `sample` (after seeding libtorch's generator with `sample_seed`, as
/// `torch.manual_seed(seed); m.sample(n, temperature)` does).
pub fn write_reference(sess: &mut Session, input: &Path, output: &Path) -> Result<()> {
    use crate::flows::Ctx;
    let (inputs, _) = read_safetensors(input)?;
    let x = inputs
        .get("x")
        .ok_or_else(|| anyhow!("{}: no tensor \"x\"", input.display()))?
        .shallow_clone();
    let kind = x.kind();
    match kind {
        Kind::Float => {}
        Kind::Double => sess.vs.double(),
        k => bail!("{}: x must be float32 or float64, got {k:?}", input.display()),
    }
    sess.model.check_input(&x).context("reference input x")?;
    let _g = tch::no_grad_guard();
    // Class labels, or the raw context of a model conditioned on context columns, for `n` rows.
    let cond_of = |key: &str, n: i64| -> Result<Option<Tensor>> {
        match (inputs.get(key), sess.is_conditional()) {
            (Some(l), true) => sess.cond_for(Some(l), n, key),
            (None, true) => bail!("{}: the model is conditional on {}: {key} is needed", input.display(), sess.conditioning_description()),
            (Some(_), false) => bail!("{}: {key} given but the model is not conditional", input.display()),
            (None, false) => Ok(None),
        }
    };
    let cond = cond_of("labels", x.size()[0])?;
    let ctx = Ctx::eval().with_cond(cond.as_ref());
    let model = sess.model.as_ref();
    let mut out: Vec<(String, Tensor)> = vec![];
    let (z, logdet) = model.to_noise(&x, &ctx)?;
    let lp = sess.model.log_prob(&x, &ctx)?;
    if sess.model.event_shape().len() == 3 {
        let bpd = crate::data::bits_per_dim(&lp, sess.model.dim(), sess.cfg.data.n_bits)?;
        out.push(("bits_per_dim".into(), bpd));
    }
    let (x_rec, _) = model.from_noise(&z, &ctx)?;
    out.push(("z".into(), z));
    out.push(("logabsdet".into(), logdet));
    out.push(("log_prob".into(), lp));
    out.push(("x_rec".into(), x_rec));
    if let Some(eps) = inputs.get("eps") {
        let eps = eps.f_to_kind(kind)?;
        let cond = cond_of("eps_labels", eps.size()[0])?;
        let (xe, lde) = model.from_noise(&eps, &Ctx::eval().with_cond(cond.as_ref()))?;
        out.push(("inverse_eps".into(), xe));
        out.push(("inverse_eps_logabsdet".into(), lde));
    }
    if let Some(n) = scalar_input(&inputs, "sample_n")? {
        let t = scalar_input(&inputs, "sample_temperature")?.unwrap_or(1.0);
        let seed = scalar_input(&inputs, "sample_seed")?.unwrap_or(0.0);
        let cond = cond_of("sample_labels", n as i64)?;
        tch::manual_seed(seed as i64);
        let s = sess.model.sample(n as i64, t, &Ctx::eval().with_cond(cond.as_ref()), (kind, sess.device()))?;
        out.push(("sample".into(), s));
    }
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "flowzoo-reference".to_string());
    write_safetensors(output, &out, &meta)
}
