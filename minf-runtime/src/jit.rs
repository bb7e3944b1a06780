//! CONTRACT STUB (to be replaced by the JIT/cache implementation): NVRTC loading and compilation,
//! disk + memory cache of cubins.

use minf_codegen::{CacheKey, RenderedKernel};
use std::path::PathBuf;
use std::sync::Arc;

/// Errors of NVRTC discovery, compilation and the cache.
#[derive(Debug, thiserror::Error)]
pub enum JitError {
    /// Placeholder.
    #[error("not implemented")]
    NotImplemented,
}

/// How a kernel was obtained.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CacheOutcome {
    /// Compiled now, taking this many seconds.
    Compiled { seconds: f64 },
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
}

/// Disk + memory cache of compiled kernels.
#[derive(Debug)]
pub struct KernelCache {
    root: Option<PathBuf>,
}

impl KernelCache {
    /// Cache at `$MINF_CACHE_DIR`, else the platform cache dir (`~/.cache/minf`).
    pub fn from_env() -> Result<Self, JitError> {
        Ok(KernelCache { root: None })
    }
    /// Cache rooted at `root`.
    pub fn at(root: PathBuf) -> Self {
        KernelCache { root: Some(root) }
    }
    /// Returns the compiled kernel, compiling and publishing it on a miss.
    pub fn get_or_compile(&self, kernel: &RenderedKernel) -> Result<CachedKernel, JitError> {
        let _ = (&self.root, kernel);
        Err(JitError::NotImplemented)
    }
}
