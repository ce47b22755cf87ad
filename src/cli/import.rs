//! `flowzoo import`: PyTorch Glow checkpoints (y0ast, rosinality) and flowzoo state dicts into
//! run directories. The sub-commands' names and options are a contract: keep them.
use super::DEVICE_HELP;
use anyhow::Result;
use flowzoo::import::{import_state_dict, rosinality, y0ast, Imported};
use std::path::PathBuf;

/// Bring a PyTorch Glow checkpoint (y0ast, rosinality) or flowzoo weights saved from Python
/// into a run directory.
#[derive(clap::Args)]
pub struct ImportArgs {
    #[command(subcommand)]
    from: ImportCmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum ImportCmd {
    /// A y0ast/Glow-PyTorch checkpoint and the hparams.json its train.py wrote beside it.
    Y0ast {
        /// The state_dict: a torch.save .pt (e.g. glow_affine_coupling.pt) or .safetensors.
        #[arg(long)]
        weights: PathBuf,
        /// hparams.json (K, L, hidden_channels, flow_coupling, flow_permutation, LU_decomposed,
        /// learn_top, actnorm_scale, y_condition, dataset).
        #[arg(long)]
        hparams: PathBuf,
        /// Image size (default: from "dataset", cifar10/svhn = 32, else from the checkpoint).
        #[arg(long)]
        image_size: Option<i64>,
        /// Image channels (default: from "dataset", cifar10/svhn = 3, else from the checkpoint).
        #[arg(long)]
        channels: Option<i64>,
        /// The run directory to create (must not exist, or be empty).
        #[arg(short = 'o', long = "out", value_name = "RUN_DIR")]
        out: PathBuf,
        #[arg(long, default_value = "auto", help = DEVICE_HELP)]
        device: String,
    },
    /// A rosinality/glow-pytorch checkpoint (its model_*.pt).
    Rosinality {
        /// The checkpoint: a torch.save .pt (model_*.pt) or .safetensors.
        #[arg(long)]
        weights: PathBuf,
        /// Flows per block (train.py's --n_flow).
        #[arg(long)]
        n_flow: i64,
        /// Blocks (train.py's --n_block).
        #[arg(long)]
        n_block: i64,
        /// Affine couplings (train.py's --affine; additive without it).
        #[arg(long)]
        affine: bool,
        /// Plain 1x1 convs instead of LU ones (train.py's --no_lu; the last block is LU anyway).
        #[arg(long)]
        no_lu: bool,
        /// Image size the model was trained at (train.py's --img_size).
        #[arg(long)]
        image_size: i64,
        /// Bits per pixel the model was trained with (train.py's --n_bits).
        #[arg(long, default_value_t = 5)]
        n_bits: i64,
        /// The run directory to create (must not exist, or be empty).
        #[arg(short = 'o', long = "out", value_name = "RUN_DIR")]
        out: PathBuf,
        #[arg(long, default_value = "auto", help = DEVICE_HELP)]
        device: String,
    },
    /// flowzoo weights saved from Python (torch.save(m.state_dict()) of a module `flowzoo export`
    /// wrote, or its torch.jit.save file), into the architecture of an existing run.
    StateDict {
        /// The weights: a torch.save .pt, a torch.jit.save module or a .safetensors file.
        #[arg(long)]
        weights: PathBuf,
        /// The run whose architecture (config) the weights belong to.
        #[arg(long, value_name = "RUN_DIR")]
        like: PathBuf,
        /// The run directory to create (must not exist, or be empty).
        #[arg(short = 'o', long = "out", value_name = "RUN_DIR")]
        out: PathBuf,
        #[arg(long, default_value = "auto", help = DEVICE_HELP)]
        device: String,
    },
}

/// Runs one `flowzoo import` command and prints what it made.
pub fn run(a: ImportArgs) -> Result<()> {
    let cmd = a.from;
    let out = match &cmd {
        ImportCmd::Y0ast { out, .. } | ImportCmd::Rosinality { out, .. } | ImportCmd::StateDict { out, .. } => out.clone(),
    };
    let result: Result<(Imported, String, &str)> = (|| {
        Ok(match &cmd {
            ImportCmd::Y0ast { weights, hparams, image_size, channels, out, device } => {
                let device = flowzoo::runtime::parse_device(device)?;
                let args = y0ast::Args { weights, hparams, image_size: *image_size, channels: *channels, out, device };
                let (i, w) = y0ast::import(&args)?;
                (i, w, "y0ast/Glow-PyTorch")
            }
            ImportCmd::Rosinality { weights, n_flow, n_block, affine, no_lu, image_size, n_bits, out, device } => {
                let args = rosinality::Args {
                    weights,
                    n_flow: *n_flow,
                    n_block: *n_block,
                    affine: *affine,
                    no_lu: *no_lu,
                    image_size: *image_size,
                    n_bits: *n_bits,
                    out,
                    device: flowzoo::runtime::parse_device(device)?,
                };
                let (i, w) = rosinality::import(&args)?;
                (i, w, "rosinality/glow-pytorch")
            }
            ImportCmd::StateDict { weights, like, out, device } => {
                let (i, w) = import_state_dict(weights, like, out, flowzoo::runtime::parse_device(device)?)?;
                (i, w, "flowzoo state_dict")
            }
        })
    })();
    let (imp, what, kind) = result.map_err(|e| {
        if format!("{e:#}").contains("nothing was written") {
            e
        } else {
            e.context(format!("nothing was written to {}", out.display()))
        }
    })?;
    println!("imported a {kind} model ({what}) into {}", imp.out.display());
    println!("{}", imp.description);
    println!("parameters: {}", imp.parameters);
    println!("check: a mid-grey image scores {:.4} bits/dim", imp.check_bpd);
    println!("next: flowzoo eval --model {} --data DIR   (or sample / train --resume --out {} --data DIR / export)", imp.out.display(), imp.out.display());
    Ok(())
}
