//! Tabular data: CSV (header optional, a chosen subset of columns), `.npy` and `.npz`; a seeded
//! train / validation / test split; standardisation statistics from the training split.
use crate::config::{BadRows, DataConfig, Header};
use anyhow::{bail, Context, Result};
use std::path::Path;
use tch::{Kind, Tensor};

pub struct Table {
    /// `[N, D]` float64 on the CPU.
    pub rows: Tensor,
    pub columns: Vec<String>,
    /// Rows dropped as bad (`bad_rows = "drop"`).
    pub dropped: usize,
    /// CSV: the 1-based line of the file each row came from (so reports can name it after bad
    /// rows were dropped); `None` for `.npy`/`.npz`, whose rows are their 0-based index.
    pub lines: Option<Vec<u64>>,
    /// The conditioning columns (`data.context_columns`, or the `data.label_column`'s raw
    /// values), `[N, K]` float64 beside `rows`; `None` for an unconditional model.
    pub context: Option<Tensor>,
    /// Their names.
    pub context_columns: Vec<String>,
}

pub struct TabularSplit {
    pub train: Tensor,
    pub val: Tensor,
    pub test: Tensor,
    pub columns: Vec<String>,
    pub dropped: usize,
    /// The conditioning columns of each split (see [`Table::context`]): train, val, test.
    pub context: Option<[Tensor; 3]>,
}

/// Reads a table; errors name the file, line and column.
pub fn load_table(path: &Path, cfg: &DataConfig) -> Result<Table> {
    if !path.is_file() {
        bail!("data file {} does not exist", path.display());
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let table = match ext.as_str() {
        "csv" | "txt" | "tsv" => read_csv(path, cfg)?,
        "npy" => {
            let t = Tensor::read_npy(path).map_err(|e| anyhow::anyhow!("{}: not a readable .npy file: {e}", path.display()))?;
            from_array(path, t)?
        }
        "npz" => {
            let arrays = Tensor::read_npz(path).map_err(|e| anyhow::anyhow!("{}: not a readable .npz file: {e}", path.display()))?;
            let names: Vec<&str> = arrays.iter().map(|(n, _)| n.as_str()).collect();
            let pick = if cfg.npz_key.is_empty() {
                if arrays.len() != 1 {
                    bail!("{} holds several arrays ({}): set data.npz_key", path.display(), names.join(", "));
                }
                0
            } else {
                names.iter().position(|n| *n == cfg.npz_key).with_context(|| {
                    format!("{} has no array {:?} (it has: {})", path.display(), cfg.npz_key, names.join(", "))
                })?
            };
            from_array(path, arrays[pick].1.shallow_clone())?
        }
        _ => bail!("{}: unknown tabular format (use .csv, .npy or .npz)", path.display()),
    };
    select_columns(path, table, cfg)
}

fn from_array(path: &Path, t: Tensor) -> Result<Table> {
    let t = match t.dim() {
        1 => t.unsqueeze(1),
        2 => t,
        d => bail!("{}: expected a 1-d or 2-d array, got {d} dimensions {:?}", path.display(), t.size()),
    };
    let t = t.f_to_kind(Kind::Double)?;
    let finite = t.f_isfinite()?.f_all_dim(1, false)?;
    let n_bad = finite.f_logical_not()?.f_sum(Kind::Int64)?.int64_value(&[]);
    if n_bad > 0 {
        let first = Vec::<bool>::try_from(&finite)?.iter().position(|f| !f).unwrap_or(0);
        bail!("{}: {n_bad} rows hold NaN or Inf (first: row {first})", path.display());
    }
    let d = t.size()[1];
    Ok(Table { rows: t, columns: (0..d).map(|i| i.to_string()).collect(), dropped: 0, lines: None, context: None, context_columns: vec![] })
}

fn read_csv(path: &Path, cfg: &DataConfig) -> Result<Table> {
    let delim = if path.extension().is_some_and(|e| e == "tsv") { b'\t' } else { b',' };
    let mut rdr = csv::ReaderBuilder::new().has_headers(false).flexible(true).delimiter(delim).trim(csv::Trim::All).from_path(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut records = rdr.records();
    let Some(first) = records.next() else { bail!("{} is empty", path.display()) };
    let first = first.with_context(|| format!("{}: line 1", path.display()))?;
    let numeric = first.iter().all(|f| f.parse::<f64>().is_ok());
    let has_header = match cfg.header {
        Header::Present => true,
        Header::Absent => false,
        Header::Auto => !numeric,
    };
    let columns: Vec<String> =
        if has_header { first.iter().map(str::to_string).collect() } else { (0..first.len()).map(|i| i.to_string()).collect() };
    let d = columns.len();
    let mut values: Vec<f64> = vec![];
    let mut lines: Vec<u64> = vec![];
    let mut dropped = 0;
    let mut push = |rec: &csv::StringRecord, line: u64| -> Result<()> {
        let problem = if rec.len() != d {
            Some(format!("line {line}: {} fields, expected {d}", rec.len()))
        } else {
            rec.iter().enumerate().find_map(|(j, f)| match f.parse::<f64>() {
                Ok(v) if v.is_finite() => None,
                Ok(v) => Some(format!("line {line}, column {} ({:?}): {v} is not a finite number", j + 1, columns[j])),
                Err(_) => Some(format!("line {line}, column {} ({:?}): {f:?} is not a number", j + 1, columns[j])),
            })
        };
        match problem {
            None => {
                values.extend(rec.iter().map(|f| f.parse::<f64>().expect("checked")));
                lines.push(line);
                Ok(())
            }
            Some(p) if cfg.bad_rows == BadRows::Drop => {
                dropped += 1;
                let _ = p;
                Ok(())
            }
            Some(p) => bail!("{}: {p} (set data.bad_rows = \"drop\" to drop such rows)", path.display()),
        }
    };
    if !has_header {
        push(&first, 1)?;
    }
    for (i, rec) in records.enumerate() {
        let line = i as u64 + 2;
        let rec = rec.with_context(|| format!("{}: line {line}", path.display()))?;
        if rec.len() == 1 && rec[0].is_empty() {
            continue;
        }
        push(&rec, line)?;
    }
    let n = values.len() / d.max(1);
    if n == 0 {
        bail!("{}: no usable rows{}", path.display(), if dropped > 0 { format!(" ({dropped} dropped as bad)") } else { String::new() });
    }
    if dropped > 0 {
        eprintln!("warning: {}: dropped {dropped} bad rows", path.display());
    }
    let rows = Tensor::f_from_slice(&values)?.f_reshape([n as i64, d as i64])?;
    Ok(Table { rows, columns, dropped, lines: Some(lines), context: None, context_columns: vec![] })
}

/// The index of the column `wanted` names (a header name or a 0-based index); `key` is the
/// config key that names it, for the message.
fn column_index(path: &Path, columns: &[String], key: &str, wanted: &str) -> Result<usize> {
    if let Some(j) = columns.iter().position(|c| c == wanted) {
        return Ok(j);
    }
    match wanted.parse::<usize>() {
        Ok(j) if j < columns.len() => Ok(j),
        _ => bail!("{}: {key} names {wanted:?}, which is neither a column ({}) nor an index below {}", path.display(), columns.join(", "), columns.len()),
    }
}

/// The modelled columns (`data.columns`, or every column not conditioned on) as `rows`, and
/// the conditioning columns as `context`.
fn select_columns(path: &Path, t: Table, cfg: &DataConfig) -> Result<Table> {
    let cond = cfg.conditioning_columns();
    if cfg.columns.is_empty() && cond.is_empty() {
        return Ok(t);
    }
    let key = cfg.conditioning_key();
    let ctx: Vec<usize> = cond.iter().map(|w| column_index(path, &t.columns, key, w)).collect::<Result<_>>()?;
    let idx: Vec<usize> = if cfg.columns.is_empty() {
        (0..t.columns.len()).filter(|j| !ctx.contains(j)).collect()
    } else {
        cfg.columns.iter().map(|w| column_index(path, &t.columns, "data.columns", w)).collect::<Result<_>>()?
    };
    if let Some(j) = ctx.iter().find(|j| idx.contains(j)) {
        bail!("{}: column {:?} is both modelled (data.columns) and conditioned on ({key})", path.display(), t.columns[*j]);
    }
    for (i, j) in ctx.iter().enumerate() {
        if ctx[..i].contains(j) {
            bail!("{}: {key} names column {:?} twice", path.display(), t.columns[*j]);
        }
    }
    if idx.is_empty() {
        bail!("{}: no column is left to model ({key} takes all of {})", path.display(), t.columns.join(", "));
    }
    let pick = |cols: &[usize]| -> Result<Tensor> {
        let cols: Vec<i64> = cols.iter().map(|&j| j as i64).collect();
        Ok(t.rows.f_index_select(1, &Tensor::f_from_slice(&cols)?)?)
    };
    let context = if ctx.is_empty() { None } else { Some(pick(&ctx)?) };
    Ok(Table {
        rows: pick(&idx)?,
        columns: idx.iter().map(|&j| t.columns[j].clone()).collect(),
        dropped: t.dropped,
        lines: t.lines,
        context,
        context_columns: ctx.iter().map(|&j| t.columns[j].clone()).collect(),
    })
}

/// Seeded split: test first, then validation, the rest training.
pub fn split_table(t: &Table, cfg: &DataConfig, seed: u64) -> Result<TabularSplit> {
    let n = t.rows.size()[0];
    let n_test = ((n as f64) * cfg.test_fraction).round() as i64;
    let n_val = ((n as f64) * cfg.val_fraction).round() as i64;
    if n - n_test - n_val < 2 {
        bail!("{} rows leave fewer than 2 for training (test_fraction {}, val_fraction {})", n, cfg.test_fraction, cfg.val_fraction);
    }
    let perm = Tensor::f_from_slice(&crate::rng::seeded_permutation(n as usize, seed))?;
    let n_train = n - n_test - n_val;
    // The same rows of the conditioning columns.
    let parts = |of: &Tensor| -> Result<[Tensor; 3]> {
        let take = |start: i64, len: i64| of.f_index_select(0, &perm.narrow(0, start, len));
        Ok([take(n_test + n_val, n_train)?, take(n_test, n_val)?, take(0, n_test)?])
    };
    let [train, val, test] = parts(&t.rows)?;
    Ok(TabularSplit {
        test,
        val,
        train,
        columns: t.columns.clone(),
        dropped: t.dropped,
        context: t.context.as_ref().map(parts).transpose()?,
    })
}

/// Mean and std per column of the data the model sees: the rows plus `U(0, noise)` noise
/// (mean + noise/2, variance + noise²/12). The std of a column that is still constant is taken
/// as 1.
pub fn standardization(train: &Tensor, noise: f64) -> Result<(Tensor, Tensor)> {
    let mean = train.f_mean_dim(Some(&[0i64][..]), false, None)?.f_add_scalar(noise / 2.0)?;
    let var = train.f_var_dim(Some(&[0i64][..]), false, false)?.f_add_scalar(noise * noise / 12.0)?;
    let std = var.f_sqrt()?;
    let std = std.f_where_scalarother(&std.f_gt(1e-12)?, 1.0)?;
    Ok((mean, std))
}
