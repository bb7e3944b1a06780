//! What minf finds on this machine: the GPU, NVRTC and the kernel cache. The report behind
//! `minf doctor` and the Python package's `minf.doctor()`.

use crate::device::{driver_available, probe, GpuInfo};
use crate::error::MinfError;
use crate::jit::{nvrtc_info, KernelCache, NvrtcInfo};
use std::fmt;
use std::path::PathBuf;

/// The GPU minf would run on (device 0), as an error that says why when there is none.
pub fn current_gpu() -> Result<GpuInfo, MinfError> {
    if !driver_available() {
        return Err(MinfError::NoDriver);
    }
    probe(0)
}

/// The kernel cache as the environment configures it.
#[derive(Debug, Clone)]
pub struct CacheReport {
    /// The cache directory.
    pub dir: PathBuf,
    /// Bytes in it, or why they could not be counted.
    pub size: Result<u64, String>,
    /// Whether JIT compilation is on (off with `MINF_DISABLE_JIT`).
    pub jit_enabled: bool,
}

/// Everything `minf doctor` reports. [`fmt::Display`] writes it as `minf doctor` prints it.
#[derive(Debug, Clone)]
pub struct DoctorReport {
    /// The GPU, or why there is none.
    pub gpu: Result<GpuInfo, String>,
    /// NVRTC's path and version, or why it was not found.
    pub nvrtc: Result<NvrtcInfo, String>,
    /// The cache, or why it cannot be opened.
    pub cache: Result<CacheReport, String>,
}

impl DoctorReport {
    /// Probes this machine; never fails (each part carries its own error).
    pub fn probe() -> DoctorReport {
        let cache = KernelCache::from_env().map_err(|e| e.to_string()).map(|cache| CacheReport {
            dir: cache.root().to_path_buf(),
            size: cache.total_size().map_err(|e| e.to_string()),
            jit_enabled: !cache.jit_disabled(),
        });
        DoctorReport {
            gpu: current_gpu().map_err(|e| e.to_string()),
            nvrtc: nvrtc_info().map_err(|e| e.to_string()),
            cache,
        }
    }

    /// The target architecture kernels are compiled for, or a sentence saying why there is none.
    pub fn target(&self) -> String {
        match &self.gpu {
            Ok(GpuInfo { arch: Some(arch), .. }) => arch.as_str().to_string(),
            Ok(gpu) => format!(
                "none: compute capability {}.{} is not supported",
                gpu.compute_capability.0, gpu.compute_capability.1
            ),
            Err(_) => "none without a GPU; `minf warm --arch sm_80,sm_90a` still compiles every kernel".to_string(),
        }
    }

    /// Whether the kernel cache can be used: its settings are valid and its directory, where it
    /// exists, can be read.
    pub fn cache_usable(&self) -> bool {
        matches!(&self.cache, Ok(cache) if cache.size.is_ok())
    }

    /// NVRTC's version and path, or why it was not found.
    pub fn nvrtc_line(&self) -> String {
        nvrtc_line(&self.nvrtc)
    }
}

/// NVRTC's version and path, or why it was not found (as [`nvrtc_info`] returns it).
pub fn nvrtc_line<E: fmt::Display>(nvrtc: &Result<NvrtcInfo, E>) -> String {
    match nvrtc {
        Ok(info) => format!("{}.{} at {}", info.version.0, info.version.1, info.path.display()),
        Err(e) => format!("not found: {e}"),
    }
}

/// A size in bytes, KiB, MiB or GiB.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

impl fmt::Display for DoctorReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.gpu {
            Ok(gpu) => {
                writeln!(f, "gpu:          {} (device {})", gpu.name, gpu.ordinal)?;
                writeln!(f, "compute cap.: {}.{}", gpu.compute_capability.0, gpu.compute_capability.1)?;
                writeln!(f, "driver:       CUDA {}.{}", gpu.driver_version.0, gpu.driver_version.1)?;
            }
            Err(e) => writeln!(f, "gpu:          none: {e}")?,
        }
        writeln!(f, "target arch:  {}", self.target())?;
        writeln!(f, "nvrtc:        {}", self.nvrtc_line())?;
        match &self.cache {
            Ok(cache) => {
                let size = cache.size.as_ref().map_or_else(|e| format!("unreadable: {e}"), |&b| human_bytes(b));
                writeln!(f, "cache dir:    {} ({size})", cache.dir.display())?;
                write!(f, "jit:          {}", if cache.jit_enabled { "enabled" } else { "disabled (MINF_DISABLE_JIT)" })
            }
            Err(e) => write!(f, "cache:        unusable: {e}"),
        }
    }
}
