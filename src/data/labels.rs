//! Class labels read from a tabular column (`data.label_column`): every distinct value is a
//! class, named by the value as written (`3`, `0.5`), the classes in ascending order of value.
use anyhow::{bail, Result};
use tch::{Kind, Tensor};

/// The most classes a label column may hold (more is a continuous variable: condition on it
/// with `data.context_columns`).
pub const MAX_CLASSES: usize = 1000;

/// A class's name: the label value, without a fractional part when it has none.
pub fn class_name(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn values_of(values: &Tensor) -> Result<Vec<f64>> {
    Ok(Vec::<f64>::try_from(&values.f_reshape([-1])?.f_to_kind(Kind::Double)?.f_to_device(tch::Device::Cpu)?)?)
}

/// The classes of a label column's values (`[N]` or `[N, 1]`), in ascending order.
pub fn label_classes(values: &Tensor, column: &str) -> Result<Vec<String>> {
    let mut v = values_of(values)?;
    v.sort_by(|a, b| a.total_cmp(b));
    v.dedup();
    if v.len() > MAX_CLASSES {
        bail!("data.label_column {column:?} holds {} distinct values; a class label has at most {MAX_CLASSES} (condition on a continuous column with data.context_columns)", v.len());
    }
    Ok(v.into_iter().map(class_name).collect())
}

/// The class index (int64 `[N]`) of each label value; a value that is no class is an error
/// naming it, its row (`rows` says what the rows are, e.g. "--csv x.csv") and the classes.
pub fn label_indices(values: &Tensor, classes: &[String], rows: &str) -> Result<Tensor> {
    let mut idx = Vec::new();
    for (i, v) in values_of(values)?.into_iter().enumerate() {
        let name = class_name(v);
        match classes.iter().position(|c| *c == name) {
            Some(k) => idx.push(k as i64),
            None => bail!("{rows}: row {} has the label {name}, which is not one of the model's classes ({})", i + 1, classes.join(", ")),
        }
    }
    Ok(Tensor::f_from_slice(&idx)?)
}
