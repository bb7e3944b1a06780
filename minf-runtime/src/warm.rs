//! Ahead-of-time compilation of kernel sets into the disk cache: the logic `minf warm` and the
//! Python package's `minf.warm` share. Nothing here prints.

use crate::config::PatternConfig;
use crate::error::MinfError;
use crate::jit::{nvrtc_info, CacheOutcome, KernelCache};
use minf_codegen::{render_any, AnyKernel, Arch, DType, IndexKernel, IndexKernelSpec, KernelSpec, Pattern};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Why a warm-up could not run or could not keep what it compiled.
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    /// The filters leave no kernel.
    #[error("no kernel in the default set matches these filters")]
    NoKernels,
    /// The cache directory cannot be written; nothing was compiled.
    #[error(
        "the kernel cache cannot be written ({0}): nothing was compiled or saved; set MINF_CACHE_DIR to a writable directory"
    )]
    Unwritable(crate::jit::JitError),
    /// NVRTC or the cache could not be loaded.
    #[error(transparent)]
    Minf(#[from] MinfError),
}

/// What a warm-up did: one entry per kernel.
#[derive(Debug, Default)]
pub struct WarmCounts {
    /// Kernels compiled now.
    pub compiled: usize,
    /// Kernels already in the disk or memory cache.
    pub cached: usize,
    /// Kernels that failed: their readable name and why.
    pub failed: Vec<(String, String)>,
    /// Wall-clock seconds of the whole warm-up.
    pub seconds: f64,
}

impl WarmCounts {
    /// Every kernel the warm-up went through.
    pub fn total(&self) -> usize {
        self.compiled + self.cached + self.failed.len()
    }
}

/// The default kernel set for `arches` ([`KernelSpec::default_set`]), keeping only the patterns,
/// head dimensions and dtypes given; an empty filter keeps everything.
pub fn default_kernels(arches: &[Arch], patterns: &[Pattern], head_dims: &[u32], dtypes: &[DType]) -> Vec<KernelSpec> {
    KernelSpec::default_set(arches)
        .into_iter()
        .filter(|s| patterns.is_empty() || patterns.contains(&s.pattern))
        .filter(|s| head_dims.is_empty() || head_dims.contains(&s.head_dim))
        .filter(|s| dtypes.is_empty() || dtypes.contains(&s.dtype))
        .collect()
}

/// `attention` followed by the index kernels for each of `arches` (they do not depend on pattern,
/// dtype or head dimension, so they are always warmed).
pub fn with_index_kernels(attention: Vec<KernelSpec>, arches: &[Arch]) -> Vec<AnyKernel> {
    let index = arches.iter().flat_map(|&arch| {
        IndexKernel::ALL.iter().map(move |&kernel| AnyKernel::Index(IndexKernelSpec { kernel, arch }))
    });
    attention.into_iter().map(AnyKernel::Attention).chain(index).collect()
}

/// Checks, before anything is compiled, that `cache` can be written and NVRTC loads (neither is
/// needed with JIT disabled).
pub fn check_ready(cache: &KernelCache) -> Result<(), WarmError> {
    if !cache.jit_disabled() {
        cache.check_writable().map_err(WarmError::Unwritable)?;
        nvrtc_info().map_err(MinfError::from)?;
    }
    Ok(())
}

/// Renders and compiles (or finds in `cache`) every kernel of `specs` on `jobs` threads (at least
/// one, at most one per kernel). `progress` is called with each kernel's readable name before it
/// starts and with `None` after it ends. Failures are collected rather than stopping the others.
pub fn warm_kernels(
    cache: &KernelCache,
    specs: &[AnyKernel],
    jobs: usize,
    progress: &(dyn Fn(Option<&str>) + Sync),
) -> WarmCounts {
    let start = Instant::now();
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::with_capacity(specs.len()));
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, specs.len().max(1)) {
            scope.spawn(|| {
                while let Some(spec) = specs.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let name = spec.readable_name();
                    progress(Some(&name));
                    let outcome = render_any(spec)
                        .map_err(|e| e.to_string())
                        .and_then(|kernel| cache.get_or_compile(&kernel).map_err(|e| e.to_string()))
                        .map(|cached| cached.outcome);
                    results.lock().unwrap_or_else(|e| e.into_inner()).push((name, outcome));
                    progress(None);
                }
            });
        }
    });
    let mut counts = WarmCounts::default();
    for (name, outcome) in results.into_inner().unwrap_or_else(|e| e.into_inner()) {
        match outcome {
            Ok(CacheOutcome::Compiled { .. }) => counts.compiled += 1,
            Ok(_) => counts.cached += 1,
            Err(error) => counts.failed.push((name, error)),
        }
    }
    counts.seconds = start.elapsed().as_secs_f64();
    counts
}

/// The attention kernels `config` needs, for every target, dtype (all when `dtypes` is empty) and
/// head dimension given.
pub fn config_kernels(config: &PatternConfig, head_dims: &[u32], dtypes: &[DType], arches: &[Arch]) -> Vec<KernelSpec> {
    let dtypes = if dtypes.is_empty() { DType::ALL } else { dtypes };
    let mut specs = Vec::new();
    for &arch in arches {
        for &dtype in dtypes {
            for &head_dim in head_dims {
                specs.extend(config.kernel_specs(head_dim, dtype, arch));
            }
        }
    }
    specs
}
