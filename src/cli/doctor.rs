//! `minf doctor`: what minf finds on this machine.

use super::output::outln;
use minf_runtime::doctor::DoctorReport;
use std::error::Error;
use std::process::ExitCode;

/// Runs `minf doctor`: the GPU, driver, NVRTC and cache minf would use; fails without NVRTC or
/// with a cache it cannot use (an invalid `MINF_DISABLE_JIT`, a cache directory it cannot read).
pub fn doctor() -> Result<ExitCode, Box<dyn Error>> {
    let report = DoctorReport::probe();
    outln!("{report}")?;
    Ok(if report.nvrtc.is_ok() && report.cache_usable() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
