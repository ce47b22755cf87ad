//! The flowzoo command line: parse, dispatch to the subcommand's `run` (`src/cli/`, one file
//! each), and turn any error into one `error: ...` line on stderr with exit status 1, never a
//! panic.
use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(name = "flowzoo", version, about = "Normalizing flows with exact likelihoods, on libtorch")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Train(cli::train::TrainArgs),
    Fit(cli::fit::FitArgs),
    Eval(cli::eval::EvalArgs),
    Sample(cli::sample::SampleArgs),
    Import(cli::import::ImportArgs),
    Export(cli::export::ExportArgs),
    Toy(cli::toy::ToyArgs),
    Info(cli::info::InfoArgs),
    Bench(cli::bench::BenchArgs),
    Score(cli::score::ScoreArgs),
    Ood(cli::ood::OodArgs),
}

fn main() {
    // A closed pipe (`flowzoo eval --json | head`) ends the process quietly, as for any Unix
    // tool, instead of a panic in println!.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Freed tensor memory is kept for reuse rather than unmapped and faulted in again each step.
    flowzoo::runtime::keep_freed_memory();
    let result = match Cli::parse().cmd {
        Cmd::Train(a) => cli::train::run(a),
        Cmd::Fit(a) => cli::fit::run(a),
        Cmd::Eval(a) => cli::eval::run(a),
        Cmd::Sample(a) => cli::sample::run(a),
        Cmd::Import(a) => cli::import::run(a),
        Cmd::Export(a) => cli::export::run(a),
        Cmd::Toy(a) => cli::toy::run(a),
        Cmd::Info(a) => cli::info::run(a),
        Cmd::Bench(a) => cli::bench::run(a),
        Cmd::Score(a) => cli::score::run(a),
        Cmd::Ood(a) => cli::ood::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
