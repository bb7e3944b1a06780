//! JIT compilation of rendered kernels with NVRTC and their disk + memory cache.
//!
//! - [`nvrtc`]: finds and loads NVRTC, compiles a kernel to CUBIN.
//! - [`cache`]: the on-disk cache (atomic publish, per-key locks, corruption checks) and the
//!   in-process memory cache in front of it.

pub mod cache;
pub mod nvrtc;

pub use cache::{CacheEntryInfo, EntryMeta, KernelCache};
pub use nvrtc::{nvrtc_info, NvrtcInfo};

use minf_codegen::CacheKey;
use std::path::PathBuf;
use std::sync::Arc;

/// Errors of NVRTC discovery, compilation and the cache.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JitError {
    /// NVRTC was not found anywhere minf looks.
    #[error("NVRTC (libnvrtc.so.13) not found; searched:\n  {}\n{}", searched.join("\n  "), nvrtc::INSTALL_HINT)]
    NvrtcNotFound {
        /// Every file name or path that was tried, in order.
        searched: Vec<String>,
    },
    /// A library was found but is not a usable NVRTC 13.
    #[error("cannot use NVRTC at {}: {reason}; {}", path.display(), nvrtc::INSTALL_HINT)]
    NvrtcLoad {
        /// The file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// An NVRTC call failed for a reason other than a compile error.
    #[error("{call} failed{}: {error}", kernel.as_ref().map(|k| format!(" for {k}")).unwrap_or_default())]
    Nvrtc {
        /// The NVRTC function.
        call: &'static str,
        /// The cache name of the kernel being compiled, if any.
        kernel: Option<String>,
        /// NVRTC's result code (and log, if any).
        error: String,
    },
    /// The kernel source or options cannot be passed to NVRTC.
    #[error("cannot compile {kernel}: {reason}")]
    InvalidInput {
        /// The cache name of the kernel.
        kernel: String,
        /// What is wrong.
        reason: String,
    },
    /// NVRTC rejected the source.
    #[error("NVRTC failed to compile {kernel}:\n{log}\n{}", match source_path {
        Some(p) => format!("the source is saved at {}", p.display()),
        None => "the source could not be saved to a file".to_string(),
    })]
    Compile {
        /// The cache name of the kernel.
        kernel: String,
        /// NVRTC's log.
        log: String,
        /// Where the failing source was written, for inspection.
        source_path: Option<PathBuf>,
    },
    /// The kernel is not cached and `MINF_DISABLE_JIT` forbids compiling it.
    #[error("kernel {name} is not in the cache at {} and JIT compilation is disabled (MINF_DISABLE_JIT); warm the cache with `minf warm` or unset MINF_DISABLE_JIT", cache_dir.display())]
    JitDisabled {
        /// The cache name of the kernel.
        name: String,
        /// The cache root that was searched.
        cache_dir: PathBuf,
    },
    /// No cache directory: `MINF_CACHE_DIR` is unset and the platform has no cache dir.
    #[error("no cache directory: set MINF_CACHE_DIR (the platform has no cache dir, e.g. HOME is unset)")]
    NoCacheDir,
    /// An environment variable has a value minf does not accept.
    #[error("invalid {var}={value}: allowed {allowed}")]
    InvalidEnv {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is allowed.
        allowed: &'static str,
    },
    /// A file operation on the cache failed.
    #[error("{context} {}: {source}", path.display())]
    Io {
        /// What minf was doing.
        context: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: Arc<std::io::Error>,
    },
}

impl JitError {
    /// Wraps an I/O error with what minf was doing and the path involved.
    pub(crate) fn io(context: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> JitError {
        let path = path.into();
        move |source| JitError::Io { context, path, source: Arc::new(source) }
    }
}

/// How a kernel was obtained.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CacheOutcome {
    /// Compiled now, taking this many seconds.
    Compiled {
        /// NVRTC wall time.
        seconds: f64,
    },
    /// Read from the disk cache.
    DiskHit,
    /// Already in this process's memory.
    MemoryHit,
}

/// A compiled kernel binary and where it came from.
#[derive(Debug, Clone)]
pub struct CachedKernel {
    /// Its cache key.
    pub key: CacheKey,
    /// The CUBIN image (or PTX text, NUL-terminated, when `is_ptx`).
    pub image: Arc<Vec<u8>>,
    /// Whether `image` is PTX (fallback) rather than CUBIN.
    pub is_ptx: bool,
    /// How it was obtained.
    pub outcome: CacheOutcome,
    /// ptxas's performance warnings from this process's compile of the kernel, such as `wgmma`
    /// instructions it serialised (C7514, C7518); empty for a kernel read from the disk cache.
    pub performance_warnings: Arc<[String]>,
}
