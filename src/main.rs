//! `minf`: warm the kernel cache, inspect it, check the machine's CUDA setup, and benchmark.

mod bench_cli;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use minf_runtime::codegen::{render_any, AnyKernel, Arch, DType, IndexKernel, IndexKernelSpec, KernelSpec, Pattern};
use minf_runtime::config::{known_model, ConfigError, HeadPattern, PatternConfig};
use minf_runtime::device::{driver_available, probe, GpuInfo};
use minf_runtime::jit::{nvrtc_info, CacheOutcome, KernelCache};
use minf_runtime::MinfError;
use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

#[derive(Parser)]
#[command(name = "minf", version, about = "Dynamic sparse attention kernels: JIT cache, diagnostics and benchmark")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compile the default kernel set and the index kernels into the cache (no GPU needed with --arch).
    Warm(WarmArgs),
    /// Inspect or clear the kernel cache.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// Show the GPU, driver, NVRTC and cache minf would use.
    Doctor,
    /// Inspect per-head pattern configs (MInference's JSON format).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Time every pattern at several context lengths (needs a GPU), or compare record files.
    Bench(Box<bench_cli::BenchArgs>),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Model shape, layers, heads, pattern counts per layer and overall, and a histogram of the sizes.
    Show(ConfigShowArgs),
}

#[derive(clap::Args)]
struct ConfigShowArgs {
    /// The config file (a JSON list with one object per layer).
    file: PathBuf,
    /// Query heads per layer (default: from the file name, for the configs MInference ships).
    #[arg(long)]
    heads: Option<usize>,
    /// Layers below this one run dense (MInference's `starting_layer`).
    #[arg(long, default_value_t = 0)]
    starting_layer: usize,
    /// Multiply vertical and slash sizes by this ratio, truncating (MInference's `minference_ratio`).
    #[arg(long)]
    ratio: Option<f64>,
}

#[derive(clap::Args)]
struct WarmArgs {
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
    /// Parallel compile jobs (default: available cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Compile exactly the attention kernels this per-head config needs (plus the index kernels).
    #[arg(long)]
    config: Option<PathBuf>,
    /// With --config: query heads per layer (default: from the file name).
    #[arg(long, requires = "config")]
    heads: Option<usize>,
    /// With --config: layers below this one run dense.
    #[arg(long, requires = "config", default_value_t = 0)]
    starting_layer: usize,
}

#[derive(Subcommand)]
enum CacheCommand {
    /// List cache entries with their sizes.
    List,
    /// Show the cache directory, its size, and whether NVRTC and JIT are available.
    Status,
    /// Remove every cache entry.
    Clear,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Warm(args) => warm(&args),
        Command::Cache { command } => cache(&command),
        Command::Doctor => doctor(),
        Command::Config { command: ConfigCommand::Show(args) } => config_show(&args),
        Command::Bench(args) => bench_cli::bench(&args),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })
}

/// The GPU minf would run on, as an error that says how to proceed when there is none.
fn current_gpu() -> Result<GpuInfo, MinfError> {
    if !driver_available() {
        return Err(MinfError::NoDriver);
    }
    probe(0)
}

fn warm(args: &WarmArgs) -> Result<ExitCode, Box<dyn Error>> {
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
        eprintln!("failed: {name}: {error}");
    }
    let arches: Vec<&str> = arches.iter().map(|a| a.as_str()).collect();
    println!(
        "warmed {} kernel(s) ({attention_count} attention, {} index) for {}: {compiled} compiled, {cached} cached, \
         {} failed in {:.3}s (cache: {})",
        results.len(),
        results.len() - attention_count,
        arches.join(", "),
        failed.len(),
        start.elapsed().as_secs_f64(),
        cache.root().display()
    );
    Ok(if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The attention kernels a per-head config needs, for every target, dtype and head dimension asked.
fn config_kernels(path: &Path, args: &WarmArgs, arches: &[Arch]) -> Result<Vec<KernelSpec>, Box<dyn Error>> {
    let config = load_config(path, args.heads, args.starting_layer)?;
    let head_dims = match (args.head_dim.as_slice(), config.shape()) {
        ([], Some(shape)) => vec![shape.head_dim],
        ([], None) => {
            return Err(format!("{}: unknown model, so its head_dim is unknown: pass --head-dim", path.display()).into())
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
    println!("{} needs {} kernels (head_dim {head_dims:?})", path.display(), patterns.join(", "));
    Ok(specs)
}

/// Loads a config with the shape from its file name, or with `--heads` for other files.
fn load_config(path: &Path, heads: Option<usize>, starting_layer: usize) -> Result<PatternConfig, ConfigError> {
    let config = match (heads, known_model(path)) {
        (Some(heads), Some(model)) if model.shape.heads == heads => PatternConfig::load_with_shape(path, model.shape),
        (Some(heads), _) => PatternConfig::load(path, heads),
        (None, _) => PatternConfig::load_for_model(path),
    }?;
    Ok(config.with_starting_layer(starting_layer))
}

/// Upper bounds (exclusive) of the size histogram's buckets; the last bucket is open.
const SIZE_BUCKETS: &[usize] = &[100, 500, 1000, 2000, 4000, 8000, 16000];

fn config_show(args: &ConfigShowArgs) -> Result<ExitCode, Box<dyn Error>> {
    let mut config = load_config(&args.file, args.heads, args.starting_layer)?;
    if let Some(ratio) = args.ratio {
        config = config.with_ratio(ratio)?;
    }
    println!("file:     {}", args.file.display());
    match (known_model(&args.file), config.shape()) {
        (Some(model), Some(shape)) if model.shape == shape => println!(
            "model:    {} ({} layers, {} query heads, {} KV heads, head_dim {})",
            model.model, shape.layers, shape.heads, shape.kv_heads, shape.head_dim
        ),
        _ => println!("model:    unknown (shape not checked; --heads {})", config.heads()),
    }
    let fallback = config.layers().iter().flatten().filter(|h| h.fallback).count();
    println!(
        "layers:   {}, {} heads each ({fallback} missing from the file: vertical_and_slash 1000/6096)",
        config.layers().len(),
        config.heads()
    );
    let ratio = config.ratio().map_or_else(|| "none".to_string(), |r| r.to_string());
    println!("options:  starting_layer {}, ratio {ratio}", config.starting_layer());

    println!("per layer:");
    let per_layer: Vec<String> = config
        .layers()
        .iter()
        .map(|heads| {
            let mut counts: BTreeMap<Pattern, usize> = BTreeMap::new();
            for head in heads {
                *counts.entry(head.pattern.kernel_pattern()).or_insert(0) += 1;
            }
            counts.iter().map(|(p, n)| format!("{p} {n}")).collect::<Vec<_>>().join(", ")
        })
        .collect();
    let mut start = 0;
    while start < per_layer.len() {
        let end = (start..per_layer.len()).take_while(|&i| per_layer[i] == per_layer[start]).last().unwrap_or(start);
        let range = if end == start { format!("{start}") } else { format!("{start}-{end}") };
        println!("  {:<9} {}", range, per_layer[start]);
        start = end + 1;
    }
    let overall: Vec<String> = config.pattern_counts().iter().map(|(p, n)| format!("{p} {n}")).collect();
    println!("overall:  {} ({} heads)", overall.join(", "), config.layers().iter().map(Vec::len).sum::<usize>());

    let mut vertical = Vec::new();
    let mut slash = Vec::new();
    let mut a_shapes: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    for head in config.layers().iter().flatten() {
        match head.pattern {
            HeadPattern::VerticalSlash { vertical: v, slash: s } => {
                vertical.push(v);
                slash.push(s);
            }
            HeadPattern::AShape { n_init, n_local } => *a_shapes.entry((n_init, n_local)).or_insert(0) += 1,
            HeadPattern::Dense | HeadPattern::BlockSparse { .. } => {}
        }
    }
    if !vertical.is_empty() {
        histogram("vertical sizes (vertical_slash heads)", &vertical);
        histogram("slash sizes (vertical_slash heads)", &slash);
    }
    for ((n_init, n_local), count) in &a_shapes {
        println!("a_shape:  n_init {n_init}, n_local {n_local}: {count} heads");
    }
    Ok(ExitCode::SUCCESS)
}

fn histogram(title: &str, sizes: &[usize]) {
    let mut counts = vec![0usize; SIZE_BUCKETS.len() + 1];
    for &size in sizes {
        counts[SIZE_BUCKETS.iter().take_while(|&&upper| size >= upper).count()] += 1;
    }
    let max = counts.iter().copied().max().unwrap_or(0).max(1);
    println!("{title}:");
    for (i, &count) in counts.iter().enumerate() {
        let low = if i == 0 { 0 } else { SIZE_BUCKETS[i - 1] };
        let label = match SIZE_BUCKETS.get(i) {
            Some(upper) => format!("{low}-{}", upper - 1),
            None => format!(">={low}"),
        };
        let line = format!("  {label:>11} {count:>6} {}", "#".repeat((count * 40).div_ceil(max)));
        println!("{}", line.trim_end());
    }
}

fn cache(command: &CacheCommand) -> Result<ExitCode, Box<dyn Error>> {
    let cache = KernelCache::from_env()?;
    match command {
        CacheCommand::List => {
            let entries = cache.entries()?;
            for entry in &entries {
                let note = if entry.meta.is_none() { "  (no valid meta.json: rebuilt on next use)" } else { "" };
                println!("{:<60} {:>10}{note}", entry.name, human_bytes(entry.size_bytes));
            }
            let total: u64 = entries.iter().map(|e| e.size_bytes).sum();
            println!("{} entries, {} in {}", entries.len(), human_bytes(total), cache.root().display());
        }
        CacheCommand::Status => {
            let entries = cache.entries()?;
            let total: u64 = entries.iter().map(|e| e.size_bytes).sum();
            println!("cache dir:    {}", cache.root().display());
            println!("entries:      {}", entries.len());
            println!("total size:   {}", human_bytes(total));
            println!("nvrtc:        {}", nvrtc_line());
            println!(
                "jit:          {}",
                if cache.jit_disabled() { "disabled (MINF_DISABLE_JIT): misses are errors" } else { "enabled" }
            );
        }
        CacheCommand::Clear => {
            let removed = cache.clear()?;
            println!("removed {removed} entries from {}", cache.root().display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn nvrtc_line() -> String {
    match nvrtc_info() {
        Ok(info) => format!("{}.{} at {}", info.version.0, info.version.1, info.path.display()),
        Err(e) => format!("not found: {e}"),
    }
}

fn doctor() -> Result<ExitCode, Box<dyn Error>> {
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

fn human_bytes(bytes: u64) -> String {
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
