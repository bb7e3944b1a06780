//! `minf warm`: compile kernels into the disk cache.

use super::config::load_config;
use super::output::{errln, outln};
use indicatif::{ProgressBar, ProgressStyle};
use minf_runtime::codegen::{Arch, DType, KernelSpec, Pattern};
use minf_runtime::config::known_model;
use minf_runtime::doctor::current_gpu;
use minf_runtime::jit::KernelCache;
use minf_runtime::warm::{
    check_ready, config_kernels as kernels_for_config, default_kernels, warm_kernels, with_index_kernels, WarmError,
};
use minf_runtime::MinfError;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

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
        let mut arches = args.arch.clone();
        arches.sort();
        arches.dedup();
        arches
    };
    if let Some(bad) = args.head_dim.iter().find(|d| !minf_runtime::codegen::spec::HEAD_DIMS.contains(d)) {
        return Err(format!("invalid --head-dim {bad}: allowed {:?}", minf_runtime::codegen::spec::HEAD_DIMS).into());
    }
    let attention = match &args.config {
        Some(path) => config_kernels(path, args, &arches)?,
        None => default_kernels(&arches, &args.pattern, &args.head_dim, &args.dtype),
    };
    if attention.is_empty() {
        return Err(WarmError::NoKernels.into());
    }
    let attention_count = attention.len();
    let specs = with_index_kernels(attention, &arches);
    let cache = KernelCache::from_env()?;
    check_ready(&cache)?;
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));

    let bar = ProgressBar::new(specs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let counts = warm_kernels(&cache, &specs, jobs, &|started| match started {
        Some(name) => bar.set_message(name.to_string()),
        None => bar.inc(1),
    });
    bar.finish_and_clear();
    for (name, error) in &counts.failed {
        errln!("failed: {name}: {error}");
    }
    let compiled = counts.compiled;
    let arches: Vec<&str> = arches.iter().map(|a| a.as_str()).collect();
    outln!(
        "warmed {} kernel(s) ({attention_count} attention, {} index) for {}: {compiled} compiled, {} cached, \
         {} failed in {:.3}s (cache: {})",
        counts.total(),
        counts.total() - attention_count,
        arches.join(", "),
        counts.cached,
        counts.failed.len(),
        counts.seconds,
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
    Ok(if counts.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The attention kernels a per-head config needs, for every target, dtype and head dimension asked.
fn config_kernels(path: &Path, args: &WarmArgs, arches: &[Arch]) -> Result<Vec<KernelSpec>, Box<dyn Error>> {
    if known_model(path).is_none() {
        // A file that cannot be read says so before its shape is asked for.
        minf_runtime::config::check_readable(path)?;
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
    let specs = kernels_for_config(&config, &head_dims, &args.dtype, arches);
    let mut patterns: Vec<Pattern> = specs.iter().map(|s| s.pattern).collect();
    patterns.sort();
    patterns.dedup();
    let patterns: Vec<&str> = patterns.iter().map(|p| p.as_str()).collect();
    outln!("{} needs {} kernels (head_dim {head_dims:?})", path.display(), patterns.join(", "))?;
    Ok(specs)
}
