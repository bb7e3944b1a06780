//! Helpers shared by the tests that run the `minf` binary.

use std::process::{Command, Output};

/// `minf ARGS`, without the variables that would change its behaviour (JIT switch, NVRTC path,
/// log level) inherited from the environment.
pub fn minf(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_minf"));
    command.args(args).env_remove("MINF_DISABLE_JIT").env_remove("MINF_NVRTC").env_remove("RUST_LOG");
    command
}

/// The status and both output streams of a finished run, for assertion messages.
pub fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
