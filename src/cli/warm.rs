//! `minf warm`: compile kernels into the disk cache.

use super::config::load_config;
use super::current_gpu;
use super::output::{errln, outln};
use indicatif::{ProgressBar, ProgressStyle};
use minf_runtime::codegen::{render_any, AnyKernel, Arch, DType, IndexKernel, IndexKernelSpec, KernelSpec, Pattern};
use minf_runtime::config::known_model;
use minf_runtime::jit::{nvrtc_info, CacheOutcome, KernelCache};
use minf_runtime::MinfError;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

#[derive(clap::Args)]
pub struct WarmArgs {
    /// Target architectures, comma-separated (default: the current GPU's).
    #[arg(long, value_delimiter = ',')]
    arch: Vec<Arch>,
    /// Only these attention patterns (comma-separated).
    #[arg(long, value_delimiter = ',', conflicts_with = "config")]
    pattern: Vec<Pattern>,
    /// Only these head dimensions (comma-separated; with --config, default: the model's).
    #[arg(long, value_delimiter = ',')]
    head_dim: Vec<u32>,
    /// Only these element types (comma-separated).
    #[arg(long, value_delimiter = ',')]
    dtype: Vec<DType>,
    /// Parallel compile jobs, at least 1 (default: available cores).
    #[arg(long, value_parser = at_least_one)]
    jobs: Option<usize>,
    /// Compile exactly the attention kernels this per-head config needs (plus the index kernels).
    #[arg(long)]
    config: Option<PathBuf>,
    /// With --config: query heads per layer (default: from the file name, for the configs MInference ships).
    #[arg(long, requires = "config")]
    heads: Option<usize>,
    /// With --config: layers below this one run dense.
    #[arg(long, requires = "config", default_value_t = 0)]
    starting_layer: usize,
}

/// Parses a count that must be positive (`--jobs`).
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(count) => Ok(count),
        Err(e) => Err(format!("{e}; expected a positive integer")),
    }
}

/// Runs `minf warm`. Its product is the disk cache: a cache that cannot be written is an error
/// before anything is compiled, and kernels compiled but not saved make it fail.
pub fn warm(args: &WarmArgs) -> Result<ExitCode, Box<dyn Error>> {
    let arches = if args.arch.is_empty() {
        let gpu = current_gpu().map_err(|e| {
            format!("cannot pick a target architecture: {e}; pass --arch, e.g. `minf warm --arch sm_80,sm_90a`")
        })?;
        let arch = gpu.arch.ok_or_else(|| MinfError::UnsupportedDevice {
            name: gpu.name.clone(),
            major: gpu.compute_capability.0,
            minor: gpu.compute_capability.1,
        })?;
        vec![arch]
    } else {
        args.arch.clone()
    };
    if let Some(bad) = args.head_dim.iter().find(|d| !minf_runtime::codegen::spec::HEAD_DIMS.contains(d)) {
        return Err(format!("invalid --head-dim {bad}: allowed {:?}", minf_runtime::codegen::spec::HEAD_DIMS).into());
    }
    let attention: Vec<AnyKernel> = match &args.config {
        Some(path) => config_kernels(path, args, &arches)?,
        None => KernelSpec::default_set(&arches)
            .into_iter()
            .filter(|s| args.pattern.is_empty() || args.pattern.contains(&s.pattern))
            .filter(|s| args.head_dim.is_empty() || args.head_dim.contains(&s.head_dim))
            .filter(|s| args.dtype.is_empty() || args.dtype.contains(&s.dtype))
            .collect(),
    }
    .into_iter()
    .map(AnyKernel::Attention)
    .collect();
    if attention.is_empty() {
        return Err("no kernel in the default set matches these filters".into());
    }
    let attention_count = attention.len();
    // The index kernels do not depend on pattern, dtype or head dimension: always warmed.
    let index = arches.iter().flat_map(|&arch| {
        IndexKernel::ALL.iter().map(move |&kernel| AnyKernel::Index(IndexKernelSpec { kernel, arch }))
    });
    let specs: Vec<AnyKernel> = attention.into_iter().chain(index).collect();
    let cache = KernelCache::from_env()?;
    if !cache.jit_disabled() {
        cache.check_writable().map_err(|e| {
            format!("the kernel cache cannot be written ({e}): nothing was compiled or saved; set MINF_CACHE_DIR to a writable directory")
        })?;
        nvrtc_info()?;
    }
    let jobs =
        args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).clamp(1, specs.len());

    let start = Instant::now();
    let bar = ProgressBar::new(specs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::with_capacity(specs.len()));
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                while let Some(spec) = specs.get(next.fetch_add(1, Ordering::Relaxed)) {
                    bar.set_message(spec.readable_name());
                    let outcome = render_any(spec)
                        .map_err(|e| e.to_string())
                        .and_then(|kernel| cache.get_or_compile(&kernel).map_err(|e| e.to_string()))
                        .map(|cached| cached.outcome);
                    results.lock().unwrap_or_else(|e| e.into_inner()).push((spec.readable_name(), outcome));
                    bar.inc(1);
                }
            });
        }
    });
    bar.finish_and_clear();
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    let compiled = results.iter().filter(|(_, r)| matches!(r, Ok(CacheOutcome::Compiled { .. }))).count();
    let failed: Vec<_> = results.iter().filter_map(|(name, r)| r.as_ref().err().map(|e| (name, e))).collect();
    let cached = results.len() - compiled - failed.len();
    for (name, error) in &failed {
        errln!("failed: {name}: {error}");
    }
    let arches: Vec<&str> = arches.iter().map(|a| a.as_str()).collect();
    outln!(
        "warmed {} kernel(s) ({attention_count} attention, {} index) for {}: {compiled} compiled, {cached} cached, \
         {} failed in {:.3}s (cache: {})",
        results.len(),
        results.len() - attention_count,
        arches.join(", "),
        failed.len(),
        start.elapsed().as_secs_f64(),
        cache.root().display()
    )?;
    if cache.is_memory_only() {
        return Err(format!(
            "the kernel cache at {} could not be written (see the warning above): the {compiled} compiled kernel(s) \
             were not saved",
            cache.root().display()
        )
        .into());
    }
    Ok(if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The attention kernels a per-head config needs, for every target, dtype and head dimension asked.
fn config_kernels(path: &Path, args: &WarmArgs, arches: &[Arch]) -> Result<Vec<KernelSpec>, Box<dyn Error>> {
    let shape_known = match (known_model(path), args.heads) {
        (Some(model), Some(heads)) => model.shape.heads == heads,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if !shape_known {
        let missing: Vec<&str> = [(args.heads.is_none(), "--heads"), (args.head_dim.is_empty(), "--head-dim")]
            .into_iter()
            .filter_map(|(missing, flag)| missing.then_some(flag))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "{}: no known model shape for this file name, so its query heads and head dimension are unknown: \
                 pass {}",
                path.display(),
                missing.join(" and ")
            )
            .into());
        }
    }
    let config = load_config(path, args.heads, args.starting_layer)?;
    let head_dims = match (args.head_dim.as_slice(), config.shape()) {
        ([], Some(shape)) => vec![shape.head_dim],
        ([], None) => {
            return Err(format!("{}: the model's head dimension is unknown: pass --head-dim", path.display()).into())
        }
        (dims, _) => dims.to_vec(),
    };
    let dtypes = if args.dtype.is_empty() { DType::ALL.to_vec() } else { args.dtype.clone() };
    let mut specs = Vec::new();
    for &arch in arches {
        for &dtype in &dtypes {
            for &head_dim in &head_dims {
                specs.extend(config.kernel_specs(head_dim, dtype, arch));
            }
        }
    }
    let mut patterns: Vec<Pattern> = specs.iter().map(|s| s.pattern).collect();
    patterns.sort();
    patterns.dedup();
    let patterns: Vec<&str> = patterns.iter().map(|p| p.as_str()).collect();
    outln!("{} needs {} kernels (head_dim {head_dims:?})", path.display(), patterns.join(", "))?;
    Ok(specs)
}
