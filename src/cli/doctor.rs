//! `minf doctor`: what minf finds on this machine.

use super::cache::{human_bytes, nvrtc_line};
use super::current_gpu;
use minf_runtime::device::GpuInfo;
use minf_runtime::jit::{nvrtc_info, KernelCache};
use std::error::Error;
use std::process::ExitCode;

pub fn doctor() -> Result<ExitCode, Box<dyn Error>> {
    let gpu = current_gpu();
    match &gpu {
        Ok(gpu) => {
            println!("gpu:          {} (device {})", gpu.name, gpu.ordinal);
            println!("compute cap.: {}.{}", gpu.compute_capability.0, gpu.compute_capability.1);
            println!("driver:       CUDA {}.{}", gpu.driver_version.0, gpu.driver_version.1);
        }
        Err(e) => println!("gpu:          none: {e}"),
    }
    let target = match &gpu {
        Ok(GpuInfo { arch: Some(arch), .. }) => arch.as_str().to_string(),
        Ok(gpu) => format!(
            "none: compute capability {}.{} is not supported",
            gpu.compute_capability.0, gpu.compute_capability.1
        ),
        Err(_) => "none without a GPU (pass --arch to `minf warm`)".to_string(),
    };
    println!("target arch:  {target}");
    let nvrtc = nvrtc_info();
    println!("nvrtc:        {}", nvrtc_line());
    match KernelCache::from_env() {
        Ok(cache) => {
            let size = cache.total_size().map(human_bytes).unwrap_or_else(|e| format!("unreadable: {e}"));
            println!("cache dir:    {} ({size})", cache.root().display());
            println!("jit:          {}", if cache.jit_disabled() { "disabled (MINF_DISABLE_JIT)" } else { "enabled" });
        }
        Err(e) => println!("cache dir:    {e}"),
    }
    Ok(if nvrtc.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
