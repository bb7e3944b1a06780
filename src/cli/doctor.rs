//! `minf doctor`: what minf finds on this machine.

use super::output::outln;
use minf_runtime::doctor::DoctorReport;
use std::error::Error;
use std::process::ExitCode;

/// Runs `minf doctor`: the GPU, driver, NVRTC and cache minf would use; fails without NVRTC or
/// with a cache it cannot use (such as an invalid `MINF_CACHE_DIR` or `MINF_DISABLE_JIT`).
pub fn doctor() -> Result<ExitCode, Box<dyn Error>> {
    let report = DoctorReport::probe();
    outln!("{report}")?;
    Ok(if report.nvrtc.is_ok() && report.cache.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
