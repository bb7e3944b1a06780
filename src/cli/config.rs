//! `minf config show`, and how the commands load a per-head config.

use super::output::outln;
use minf_runtime::codegen::Pattern;
use minf_runtime::config::{known_model, FilePattern, HeadPattern, PatternConfig, MINFERENCE_BLOCK_TOP_K};
use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ConfigShowArgs {
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

/// Loads a config with the shape from its file name, or with `--heads` for other files; a
/// `--heads` that contradicts the file's model is refused.
pub fn load_config(path: &Path, heads: Option<usize>, starting_layer: usize) -> Result<PatternConfig, Box<dyn Error>> {
    let config = match (heads, known_model(path)) {
        (Some(heads), Some(model)) if model.shape.heads != heads => {
            return Err(format!(
                "--heads {heads}: {} is a config of {}, which has {} query heads per layer; leave --heads out to \
                 take the model's",
                path.display(),
                model.model,
                model.shape.heads
            )
            .into())
        }
        (_, Some(model)) => PatternConfig::load_with_shape(path, model.shape),
        (Some(heads), None) => PatternConfig::load(path, heads),
        (None, None) => PatternConfig::load_for_model(path),
    }?;
    Ok(config.with_starting_layer(starting_layer))
}

/// Upper bounds (exclusive) of the size histogram's buckets; the last bucket is open.
const SIZE_BUCKETS: &[usize] = &[100, 500, 1000, 2000, 4000, 8000, 16000];

/// Runs `minf config show`.
pub fn config_show(args: &ConfigShowArgs) -> Result<ExitCode, Box<dyn Error>> {
    let mut config = load_config(&args.file, args.heads, args.starting_layer)?;
    if let Some(ratio) = args.ratio {
        config = config.with_ratio(ratio)?;
    }
    outln!("file:     {}", args.file.display())?;
    match (known_model(&args.file), config.shape()) {
        (Some(model), Some(shape)) if model.shape == shape => outln!(
            "model:    {} ({} layers, {} query heads, {} KV heads, head_dim {})",
            model.model,
            shape.layers,
            shape.heads,
            shape.kv_heads,
            shape.head_dim
        )?,
        _ => outln!("model:    unknown (shape not checked; --heads {})", config.heads())?,
    }
    let fallback = config.layers().iter().flatten().filter(|h| h.fallback).count();
    outln!(
        "layers:   {}, {} heads each ({fallback} missing from the file: vertical_and_slash 1000/6096)",
        config.layers().len(),
        config.heads()
    )?;
    let ratio = config.ratio().map_or_else(|| "none".to_string(), |r| r.to_string());
    outln!("options:  starting_layer {}, ratio {ratio}", config.starting_layer())?;

    outln!("per layer:")?;
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
        outln!("  {:<9} {}", range, per_layer[start])?;
        start = end + 1;
    }
    let overall: Vec<String> = config.pattern_counts().iter().map(|(p, n)| format!("{p} {n}")).collect();
    outln!("overall:  {} ({} heads)", overall.join(", "), config.layers().iter().map(Vec::len).sum::<usize>())?;

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
        histogram("vertical sizes (vertical_slash heads)", &vertical)?;
        histogram("slash sizes (vertical_slash heads)", &slash)?;
    }
    for ((n_init, n_local), count) in &a_shapes {
        outln!("a_shape:  n_init {n_init}, n_local {n_local}: {count} heads")?;
    }
    entries(&config)?;
    Ok(ExitCode::SUCCESS)
}

/// A score as written: counts (MInference's mismatches) whole, fractions (recall) to 4 places.
fn score(x: f64) -> String {
    if x.fract() == 0.0 || x.abs() >= 1e4 {
        format!("{x:.0}")
    } else {
        format!("{x:.4}")
    }
}

/// Entries listed at most, most frequent first.
const MAX_ENTRIES: usize = 20;

/// The distinct entries of the file (what a search chose), with their head counts and scores.
fn entries(config: &PatternConfig) -> std::io::Result<()> {
    let mut scores: BTreeMap<(FilePattern, usize, usize), Vec<f64>> = BTreeMap::new();
    for head in config.layers().iter().flatten().filter(|h| !h.fallback) {
        let sizes = match head.file_pattern {
            FilePattern::BlockSparse => (0, 0),
            _ => (head.vertical_size, head.slash_size),
        };
        scores.entry((head.file_pattern, sizes.0, sizes.1)).or_default().push(head.score);
    }
    let mut rows: Vec<_> = scores.into_iter().collect();
    rows.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
    outln!("entries (heads; score min / mean / max, the file's fourth field):")?;
    for ((pattern, a, b), scores) in rows.iter().take(MAX_ENTRIES) {
        let label = match pattern {
            FilePattern::BlockSparse => format!("{pattern} (top {MINFERENCE_BLOCK_TOP_K})"),
            _ => format!("{pattern} ({a}, {b})"),
        };
        let min = scores.iter().copied().fold(f64::INFINITY, f64::min);
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mean = scores.iter().sum::<f64>() / scores.len() as f64;
        let [min, mean, max] = [min, mean, max].map(score);
        outln!("  {label:<34} {:>6}   {min} / {mean} / {max}", scores.len())?;
    }
    if rows.len() > MAX_ENTRIES {
        outln!("  ... {} more", rows.len() - MAX_ENTRIES)?;
    }
    Ok(())
}

fn histogram(title: &str, sizes: &[usize]) -> std::io::Result<()> {
    let mut counts = vec![0usize; SIZE_BUCKETS.len() + 1];
    for &size in sizes {
        counts[SIZE_BUCKETS.iter().take_while(|&&upper| size >= upper).count()] += 1;
    }
    let max = counts.iter().copied().max().unwrap_or(0).max(1);
    outln!("{title}:")?;
    for (i, &count) in counts.iter().enumerate() {
        let low = if i == 0 { 0 } else { SIZE_BUCKETS[i - 1] };
        let label = match SIZE_BUCKETS.get(i) {
            Some(upper) => format!("{low}-{}", upper - 1),
            None => format!(">={low}"),
        };
        let line = format!("  {label:>11} {count:>6} {}", "#".repeat((count * 40).div_ceil(max)));
        outln!("{}", line.trim_end())?;
    }
    Ok(())
}
