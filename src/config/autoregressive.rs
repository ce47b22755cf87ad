//! The `[model]` keys of the autoregressive and spline families (MAF, IAF, NSF): their choices
//! and range checks, each naming its key.
use super::validate::Invalid;
use super::{ModelConfig, ModelKind};
use serde::{Deserialize, Serialize};

/// `model.structure` (NSF): which features condition which.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StructureChoice {
    Autoregressive,
    Coupling,
}

/// `model.made_order`: each MADE's feature order.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MadeOrderChoice {
    Natural,
    Reversed,
    Random,
    Alternating,
}

/// `model.made_degrees`: the MADEs' hidden degrees.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DegreesChoice {
    Cyclic,
    Random,
}

/// `model.inverse`: how an autoregressive layer inverts.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum InverseChoice {
    Sequential,
    Jacobi,
}

/// The keys of the MAF / IAF / NSF families; checked for every kind, so a typo is caught even
/// where the key is unused.
pub(super) fn check(m: &ModelConfig) -> Result<(), Invalid> {
    if !(2..=256).contains(&m.bins) {
        return Err(Invalid { key: "model.bins", message: format!("model.bins = {}: must be between 2 and 256", m.bins) });
    }
    if !(m.tail_bound.is_finite() && m.tail_bound > 0.0) {
        return Err(Invalid { key: "model.tail_bound", message: format!("model.tail_bound = {}: must be a positive number", m.tail_bound) });
    }
    if !(m.jacobi_tol.is_finite() && m.jacobi_tol >= 0.0) {
        return Err(Invalid { key: "model.jacobi_tol", message: format!("model.jacobi_tol = {}: must be a number >= 0", m.jacobi_tol) });
    }
    if m.residual && m.made_degrees == DegreesChoice::Random {
        return Err(Invalid {
            key: "model.residual",
            message: "model.residual = true needs model.made_degrees = \"cyclic\": a residual block keeps its degrees, so random hidden degrees are not allowed".into(),
        });
    }
    if m.kind == ModelKind::Iaf && m.structure == StructureChoice::Coupling {
        return Err(Invalid {
            key: "model.structure",
            message: "model.structure = \"coupling\" is for model.kind = \"nsf\" (an IAF is autoregressive)".into(),
        });
    }
    Ok(())
}
