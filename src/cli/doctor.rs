//! `minf doctor`: what minf finds on this machine.

use super::cache::{human_bytes, nvrtc_line};
use super::current_gpu;
use super::output::outln;
use minf_runtime::device::GpuInfo;
use minf_runtime::jit::{nvrtc_info, KernelCache};
use std::error::Error;
use std::process::ExitCode;

/// Runs `minf doctor`: the GPU, driver, NVRTC and cache minf would use; fails without NVRTC.
pub fn doctor() -> Result<ExitCode, Box<dyn Error>> {
    let gpu = current_gpu();
    match &gpu {
        Ok(gpu) => {
            outln!("gpu:          {} (device {})", gpu.name, gpu.ordinal)?;
            outln!("compute cap.: {}.{}", gpu.compute_capability.0, gpu.compute_capability.1)?;
            outln!("driver:       CUDA {}.{}", gpu.driver_version.0, gpu.driver_version.1)?;
        }
        Err(e) => outln!("gpu:          none: {e}")?,
    }
    let target = match &gpu {
        Ok(GpuInfo { arch: Some(arch), .. }) => arch.as_str().to_string(),
        Ok(gpu) => format!(
            "none: compute capability {}.{} is not supported",
            gpu.compute_capability.0, gpu.compute_capability.1
        ),
        Err(_) => "none without a GPU; `minf warm --arch sm_80,sm_90a` still compiles every kernel".to_string(),
    };
    outln!("target arch:  {target}")?;
    let nvrtc = nvrtc_info();
    outln!("nvrtc:        {}", nvrtc_line())?;
    match KernelCache::from_env() {
        Ok(cache) => {
            let size = cache.total_size().map(human_bytes).unwrap_or_else(|e| format!("unreadable: {e}"));
            outln!("cache dir:    {} ({size})", cache.root().display())?;
            outln!("jit:          {}", if cache.jit_disabled() { "disabled (MINF_DISABLE_JIT)" } else { "enabled" })?;
        }
        Err(e) => outln!("cache dir:    {e}")?,
    }
    Ok(if nvrtc.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
