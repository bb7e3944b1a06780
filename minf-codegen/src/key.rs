//! Content-addressed cache keys for compiled kernels.
//!
//! A key hashes everything that can change the compiled binary: the rendered source, the NVRTC
//! version, the compile options, the target architecture and minf's own version. The readable name
//! (`dense-bf16-d128-m128n64-sm90a-0123456789abcdef`) makes cache directories easy to browse.

use crate::render::RenderedKernel;
use serde::{Deserialize, Serialize};

/// The inputs that make up a cache key, kept so they can be shown, stored and snapshot-tested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKeyInputs {
    /// blake3 of the rendered CUDA source, in hex.
    pub source_blake3: String,
    /// NVRTC version as `major.minor`.
    pub nvrtc_version: String,
    /// NVRTC options, in order.
    pub options: Vec<String>,
    /// Target architecture, e.g. `sm_90a`.
    pub arch: String,
    /// Version of minf-codegen that rendered the source.
    pub crate_version: String,
}

/// A computed cache key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CacheKey {
    /// Readable entry name: spec prefix plus 16 hex digits of the hash.
    pub name: String,
    /// The full blake3 hash of the key inputs, in hex.
    pub hash: String,
}

impl CacheKeyInputs {
    /// Collects the key inputs of a rendered kernel compiled by NVRTC `nvrtc_version` (major, minor).
    pub fn new(kernel: &RenderedKernel, nvrtc_version: (i32, i32)) -> Self {
        CacheKeyInputs {
            source_blake3: blake3::hash(kernel.source.as_bytes()).to_hex().to_string(),
            nvrtc_version: format!("{}.{}", nvrtc_version.0, nvrtc_version.1),
            options: kernel.options.clone(),
            arch: kernel.arch().as_str().to_string(),
            crate_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// Hashes the inputs into a key named after `readable_prefix`.
    pub fn key(&self, readable_prefix: &str) -> CacheKey {
        let mut hasher = blake3::Hasher::new();
        // Length-prefixed fields so no two different input lists hash the same byte stream.
        let mut field = |bytes: &[u8]| {
            hasher.update(&(bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        };
        field(self.source_blake3.as_bytes());
        field(self.nvrtc_version.as_bytes());
        field(&(self.options.len() as u64).to_le_bytes());
        for option in &self.options {
            field(option.as_bytes());
        }
        field(self.arch.as_bytes());
        field(self.crate_version.as_bytes());
        let hash = hasher.finalize().to_hex().to_string();
        CacheKey { name: format!("{readable_prefix}-{}", &hash[..16]), hash }
    }
}

impl RenderedKernel {
    /// The cache key of this kernel when compiled by NVRTC `nvrtc_version` (major, minor).
    pub fn cache_key(&self, nvrtc_version: (i32, i32)) -> CacheKey {
        CacheKeyInputs::new(self, nvrtc_version).key(&self.readable_name())
    }
}
