//! The `minf` command line: warm the kernel cache, inspect it, check the machine's CUDA setup,
//! inspect per-head configs, search them, and benchmark.

mod bench;
mod cache;
mod config;
mod doctor;
mod output;
mod search;
mod warm;

use clap::{Parser, Subcommand};
use output::errln;
use std::io::IsTerminal;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "minf", version, about = "Dynamic sparse attention kernels: JIT cache, diagnostics and benchmark")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compile the default kernel set and the index kernels into the cache (no GPU needed with --arch).
    Warm(warm::WarmArgs),
    /// Inspect or clear the kernel cache.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// Show the GPU, driver, NVRTC and cache minf would use.
    Doctor,
    /// Inspect per-head pattern configs (MInference's JSON format).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Time every pattern at several context lengths (needs a GPU), or compare record files.
    Bench(Box<bench::BenchArgs>),
    /// Search each head's pattern offline from reference Q/K/V and write a per-head config (GPU).
    Search(Box<search::SearchArgs>),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Model shape, layers, heads, pattern counts per layer and overall, and a histogram of the sizes.
    Show(config::ConfigShowArgs),
}

#[derive(Subcommand)]
pub enum CacheCommand {
    /// List cache entries with their sizes.
    List,
    /// Show the cache directory, its size, and whether NVRTC and JIT are available.
    Status,
    /// Remove every cache entry.
    Clear,
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(colour_logs())
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Warm(args) => warm::warm(&args),
        Command::Cache { command } => cache::cache(&command),
        Command::Doctor => doctor::doctor(),
        Command::Config { command: ConfigCommand::Show(args) } => config::config_show(&args),
        Command::Bench(args) => bench::bench(&args),
        Command::Search(args) => search::search(&args),
    };
    match result {
        Ok(code) => code,
        // The reader of standard output went away (`minf cache list | head`): nothing is wrong.
        Err(error) if output::is_closed_pipe(error.as_ref()) => ExitCode::SUCCESS,
        Err(error) => {
            errln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Whether log lines get colour codes: only on a terminal, and not with `NO_COLOR` set.
fn colour_logs() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty())
}
