//! Faster CPU formulations of the stride-1 "same" convolutions in Glow's coupling networks.
//! They compute the same function as `conv2d` (same products, summed in another order), on
//! activations kept in NHWC strides ("channels last"), where libtorch/oneDNN spends most of a
//! small Glow's time on per-call overhead, reorders and padding rather than on arithmetic:
//!
//! - 1×1 conv on a small image (`H·W <= GEMM_1X1_HW`): one GEMM of the `[B·H·W, C]` rows (a
//!   view in NHWC) with `Wᵀ`, bias fused;
//! - k×k conv on a tiny image (`H·W <= TINY_HW`, e.g. 2×2 after two squeezes): the conv is a
//!   linear map of the whole `[H·W·C]` image, so it is one GEMM with a `[H·W·C_out, H·W·C_in]`
//!   matrix gathered from the weight (entries that would read the zero padding are zero);
//! - otherwise oneDNN's conv, on the NHWC input.
//!
//! Outputs are NHWC-strided `[B, C, H, W]` tensors, so a chain of these convs and elementwise
//! ops never copies between layouts. Used on the CPU for float32/float64 only; any other
//! device or dtype gets the plain `conv2d`.
use anyhow::Result;
use std::cell::RefCell;
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// Largest `H·W` for which a k×k conv is done as one dense GEMM (measured on 2 cores: 2×2
/// images 1.8–3× faster than oneDNN, 4×4 images slower; see bench/NOTES.md).
pub const TINY_HW: i64 = 4;

/// Largest `H·W` for which a 1×1 conv is one GEMM (2.5× faster than oneDNN on 2×2 and 4×4
/// images at batch 64; no difference measured on 8×8 and 16×16 at batch 16, where oneDNN is kept).
pub const GEMM_1X1_HW: i64 = 16;

/// Whether the fast formulations apply to `x` (4-D, CPU, float32/float64).
pub fn applies(x: &Tensor) -> bool {
    x.dim() == 4 && x.device() == Device::Cpu && matches!(x.kind(), Kind::Float | Kind::Double)
}

/// The same values with NHWC strides ("channels last"); no copy when they already are.
pub fn to_channels_last(x: &Tensor) -> Result<Tensor> {
    let s = x.size();
    let st = x.stride();
    // NHWC strides: C fastest, then W, then H, then N.
    if st.len() == 4 && st[1] == 1 && st[3] == s[1] && st[2] == s[1] * s[3] {
        return Ok(x.shallow_clone());
    }
    Ok(x.f_permute([0, 2, 3, 1])?.f_contiguous()?.f_permute([0, 3, 1, 2])?)
}

thread_local! {
    /// Gather indices of the tiny-image conv matrices, by (C_in, C_out, H, W, k).
    static INDEX: RefCell<HashMap<(i64, i64, i64, i64, i64), Tensor>> = RefCell::new(HashMap::new());
}

/// Index into `[w.flatten(), 0]` for each entry of the `[H·W·C_out, H·W·C_in]` matrix of a k×k
/// same-padded conv on an H×W image, rows and columns in NHWC order (`(i, j, c)`).
fn tiny_index(c_in: i64, c_out: i64, h: i64, w: i64, k: i64) -> Result<Tensor> {
    let key = (c_in, c_out, h, w, k);
    if let Some(t) = INDEX.with(|m| m.borrow().get(&key).map(|t| t.shallow_clone())) {
        return Ok(t);
    }
    let pad = k / 2;
    let zero = c_out * c_in * k * k; // the appended 0
    let (rows, cols) = (h * w * c_out, h * w * c_in);
    let mut idx = vec![zero; (rows * cols) as usize];
    for i in 0..h {
        for j in 0..w {
            for di in 0..k {
                for dj in 0..k {
                    let (ii, jj) = (i + di - pad, j + dj - pad);
                    if ii < 0 || ii >= h || jj < 0 || jj >= w {
                        continue;
                    }
                    for co in 0..c_out {
                        let row = (i * w + j) * c_out + co;
                        for ci in 0..c_in {
                            let col = (ii * w + jj) * c_in + ci;
                            idx[(row * cols + col) as usize] = ((co * c_in + ci) * k + di) * k + dj;
                        }
                    }
                }
            }
        }
    }
    let t = Tensor::f_from_slice(&idx)?;
    INDEX.with(|m| m.borrow_mut().insert(key, t.shallow_clone()));
    Ok(t)
}

/// `conv2d(x, w, b)` with stride 1 and "same" padding `k / 2` (odd square kernels), through
/// the formulation this module picks for the shape; the output is NHWC-strided.
pub fn conv2d_same(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let ws = w.size();
    let (c_out, c_in, k) = (ws[0], ws[1], ws[2]);
    let pad = k / 2;
    if !applies(x) || ws[2] != ws[3] || k % 2 == 0 || x.kind() != w.kind() {
        return Ok(x.f_conv2d(w, b, [1, 1], [pad, pad], [1, 1], 1)?);
    }
    let s = x.size();
    let (n, h, wd) = (s[0], s[2], s[3]);
    let x = to_channels_last(x)?;
    let rows = |t: &Tensor, per_row: i64| -> Result<Tensor> { Ok(t.f_permute([0, 2, 3, 1])?.f_reshape([-1, per_row])?) };
    let out = if k == 1 && h * wd <= GEMM_1X1_HW {
        let wm = w.f_reshape([c_out, c_in])?.f_tr()?;
        let y = match b {
            Some(b) => Tensor::f_addmm(b, &rows(&x, c_in)?, &wm)?,
            None => rows(&x, c_in)?.f_mm(&wm)?,
        };
        y.f_view([n, h, wd, c_out])?
    } else if h * wd <= TINY_HW {
        let hw = h * wd;
        let idx = tiny_index(c_in, c_out, h, wd, k)?.f_to_device(x.device())?;
        let wf = Tensor::f_cat(&[w.f_reshape([-1])?, Tensor::f_zeros([1], (w.kind(), w.device()))?], 0)?;
        let m = wf.f_take(&idx)?.f_reshape([hw * c_out, hw * c_in])?;
        let xr = rows(&x, c_in)?.f_reshape([n, hw * c_in])?;
        let y = match b {
            Some(b) => Tensor::f_addmm(&b.f_repeat([hw])?, &xr, &m.f_tr()?)?,
            None => xr.f_mm(&m.f_tr()?)?,
        };
        y.f_view([n, h, wd, c_out])?
    } else {
        return Ok(x.f_conv2d(w, b, [1, 1], [pad, pad], [1, 1], 1)?);
    };
    Ok(out.f_permute([0, 3, 1, 2])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every formulation computes conv2d, values and gradients, in float64.
    #[test]
    fn fast_convs_match_conv2d() {
        tch::manual_seed(0);
        let o = (Kind::Double, Device::Cpu);
        for &(n, c_in, h, w, c_out, k, bias) in &[
            (3, 4, 2, 2, 6, 3, true),
            (3, 4, 2, 2, 6, 3, false),
            (2, 5, 1, 1, 3, 3, true),
            (2, 3, 1, 2, 4, 3, true),
            (3, 6, 2, 2, 6, 1, true),
            (3, 6, 4, 4, 5, 1, false),
            (2, 3, 4, 4, 5, 3, true),
            (2, 3, 3, 5, 4, 5, true),
        ] {
            let x = Tensor::randn([n, c_in, h, w], o).set_requires_grad(true);
            let wt = Tensor::randn([c_out, c_in, k, k], o).set_requires_grad(true);
            let b = Tensor::randn([c_out], o).set_requires_grad(true);
            let bias = bias.then(|| b.shallow_clone());
            let want = x.conv2d(&wt, bias.as_ref(), [1, 1], [k / 2, k / 2], [1, 1], 1);
            let got = conv2d_same(&x, &wt, bias.as_ref()).unwrap();
            assert_eq!(got.size(), want.size());
            let err = (&got - &want).abs().max().double_value(&[]);
            assert!(err < 1e-12, "{:?}: forward error {err}", (n, c_in, h, w, c_out, k));
            let g = Tensor::randn(want.size().as_slice(), o);
            let mut inputs = vec![x.shallow_clone(), wt.shallow_clone()];
            if let Some(b) = &bias {
                inputs.push(b.shallow_clone());
            }
            let gw = Tensor::run_backward(&[(&want * &g).sum(Kind::Double)], &inputs, false, false);
            let gg = Tensor::run_backward(&[(&got * &g).sum(Kind::Double)], &inputs, false, false);
            for (a, b) in gw.iter().zip(&gg) {
                let err = (a - b).abs().max().double_value(&[]);
                assert!(err < 1e-12, "{:?}: gradient error {err}", (n, c_in, h, w, c_out, k));
            }
        }
    }
}
