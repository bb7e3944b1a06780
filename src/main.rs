//! `minf`: warm the kernel cache, inspect it, check the machine's CUDA setup, and benchmark.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
