//! What the subcommands do once their flags are parsed, as library calls a Rust user can make
//! too: evaluate a run ([`eval`]), write samples ([`sample`]), read the tensors a user hands in
//! ([`inputs`]). They return values; printing is the CLI's business (`src/cli/`).
pub mod context;
pub mod eval;
pub mod inputs;
pub mod sample;
pub mod vae;
