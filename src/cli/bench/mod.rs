//! `minf bench`: latency of every pattern at several context lengths, as records (JSON), a
//! terminal table and a log-log plot, and the comparison with the peers' records
//! (`bench/peers.py` writes the same schema).
//!
//! - [`cases`]: patterns and cases from the command line;
//! - [`run`]: timing the cases on the GPU (through [`minf::Prefill`]);
//! - [`indices`]: the computed tiles (density, TFLOP/s) and the index files for the peers;
//! - [`record`]: the record schema and its file;
//! - [`plot`]: the SVG plot;
//! - [`compare`]: ratios, targets and the Markdown report.

mod cases;
mod compare;
mod indices;
mod plot;
mod record;
mod run;

use super::output::{errln, outln, write_stdout};
use cases::{
    default_long_heads, default_patterns, parse_chunk_tokens, parse_seqs, resolve_shape, CaseOptions, PatternSpec,
    ShapeArgs, DEFAULT_CONFIG, DEFAULT_CONFIG_DIRS, DEFAULT_CONFIG_LAYER, DEFAULT_LONG_FROM,
};
use compare::{markdown, targets, targets_json};
use indicatif::{ProgressBar, ProgressStyle};
use minf::codegen::Tile;
use minf_runtime::codegen::DType;
use plot::{tokens, write_latency_svg};
use record::{read_records, write_records, Record, MINF_METHOD};
use run::{GpuBench, InputSource, RunSettings};
use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// `minf bench [OPTIONS]` or `minf bench compare FILES...`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Subcommand)]
enum BenchCommand {
    /// Merge record files (minf's and the peers') into one table of ratios and one plot.
    Compare(CompareArgs),
}

#[derive(clap::Args)]
struct CompareArgs {
    /// Record files (JSON arrays or JSON Lines), e.g. minf.json peers.json.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Write the latency plot (SVG) here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Write the Markdown report here (default: print it).
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Write the targets checked (name, value, bound, met) here as JSON, e.g.
    /// bench/results/targets.json.
    #[arg(long)]
    targets: Option<PathBuf>,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Context lengths, comma-separated (tokens; 128K and 1M are accepted).
    #[arg(long, default_value = "32768,131072,262144,524288,1048576")]
    seqs: String,
    /// Query heads (default: a config pattern's model's, else 32).
    #[arg(long)]
    heads: Option<usize>,
    /// Key/value heads, dividing --heads (default: a config pattern's model's, else 8).
    #[arg(long)]
    kv_heads: Option<usize>,
    /// Head dimension (default: a config pattern's model's, else 128).
    #[arg(long)]
    head_dim: Option<usize>,
    /// Element type.
    #[arg(long, default_value = "bf16")]
    dtype: DType,
    /// Patterns, comma-separated: dense, a_shape:N_INIT,N_LOCAL, vertical_slash:VERTICAL,SLASH,
    /// block_sparse:TOP_K, config:PATH[:LAYER] (default: all of MInference's benchmark settings
    /// and the Llama-3-8B-262K config's layer 16 when the config is found).
    #[arg(long)]
    patterns: Option<String>,
    /// From this length on, cases run on --long-heads query heads and report per-head times.
    #[arg(long, default_value_t = DEFAULT_LONG_FROM)]
    long_from: usize,
    /// Query heads of the long cases (default: 4 when that fits the query heads per KV head,
    /// else one KV head's).
    #[arg(long)]
    long_heads: Option<usize>,
    /// Timed runs per case (median).
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// Timed runs per case from --long-from on.
    #[arg(long, default_value_t = 5)]
    long_reps: usize,
    /// Untimed runs per case before the timed ones.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Seed of the structured inputs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Generate the structured inputs without the long-range decay (`InputSpec::flat_tail`: far
    /// diagonals are flat noise, so estimated indices scatter), to compare against.
    #[arg(long, conflicts_with = "inputs")]
    flat_tail: bool,
    /// Take the inputs from this file (q, k, v; see `minf::load_safetensors`) instead of the
    /// generator; the cases then have its length and heads (a file with fewer query heads than a
    /// config pattern's layer is timed as those heads of it: head i runs config head
    /// i * layer heads / file heads, as in long cases).
    #[arg(long)]
    inputs: Option<PathBuf>,
    /// Tile and engine of the index-driven kernels (vertical-slash, block-sparse and their config
    /// heads) instead of the device default: BLOCK_M,BLOCK_N,WARPS,STAGES,MAINLOOP, e.g.
    /// 64,64,4,2,wgmma (64-row blocks suit scattered indices; docs/design.md).
    #[arg(long)]
    index_tile: Option<Tile>,
    /// Run the index-driven heads on the device default tile only, without the per-head choice
    /// between 128-row and 64-row blocks (minf::TileChoice) that runs otherwise.
    #[arg(long, conflicts_with = "index_tile")]
    no_tile_choice: bool,
    /// The fewest index rows (64-row query blocks) of a call for which the tile choice runs;
    /// calls over fewer (chunks of under 32K tokens by default) run on the default tile. 0: every call.
    #[arg(long, value_name = "ROWS", default_value_t = minf::tile_choice::CHOOSE_FROM_ROWS)]
    tile_choice_from_rows: usize,
    /// Also run every case chunk by chunk (`Prefill::prefill_chunked`, chunks of SIZE tokens: 64K,
    /// 8K, 65536, ...) and report its total and its ratio to the one-shot total.
    #[arg(long, value_name = "SIZE", value_parser = parse_chunk_tokens)]
    chunk: Option<usize>,
    /// Write the records here (a JSON array, rewritten after every case).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the records already in --json and add this run's (to split a run over several calls).
    #[arg(long, requires = "json")]
    append: bool,
    /// Draw latency per head against context length (log-log SVG) from every record of the run.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Write each sparse case's index (safetensors) into this folder, for bench/peers.py.
    #[arg(long)]
    save_indices: Option<PathBuf>,
    /// Print the cases and exit (no GPU needed).
    #[arg(long)]
    list: bool,
}

/// Runs `minf bench`.
pub fn bench(args: &BenchArgs) -> Result<ExitCode, Box<dyn Error>> {
    match &args.command {
        Some(BenchCommand::Compare(compare)) => compare_files(compare),
        None => run_cases(&args.run),
    }
}

fn compare_files(args: &CompareArgs) -> Result<ExitCode, Box<dyn Error>> {
    let mut records: Vec<Record> = Vec::new();
    for file in &args.files {
        records.extend(read_records(file)?);
    }
    check_comparable(&records)?;
    let report = markdown(&records);
    match &args.markdown {
        Some(path) => {
            std::fs::write(path, &report).map_err(|e| format!("{}: {e}", path.display()))?;
            outln!("wrote {} ({} records)", path.display(), records.len())?;
        }
        None => write_stdout(format_args!("{report}"))?,
    }
    if let Some(path) = &args.plot {
        write_latency_svg(&records, path)?;
        outln!("wrote {}", path.display())?;
    }
    if let Some(path) = &args.targets {
        let checked = targets(&records);
        let json = targets_json(&checked)?;
        std::fs::write(path, json + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
        let met = checked.iter().filter(|t| t.met() == Some(true)).count();
        let measured = checked.iter().filter(|t| t.met().is_some()).count();
        outln!("wrote {} ({met} of {measured} measured targets met, {} targets)", path.display(), checked.len())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Refuses an empty comparison, and records of different head dimensions or element types,
/// whose times the ratios and targets would set side by side.
fn check_comparable(records: &[Record]) -> Result<(), Box<dyn Error>> {
    let Some(first) = records.first() else {
        return Err("no records to compare: the files hold empty lists".into());
    };
    if let Some(other) = records.iter().find(|r| (r.head_dim, &r.dtype) != (first.head_dim, &first.dtype)) {
        return Err(format!(
            "the records mix shapes: {} {} at head_dim {} ({}) and {} {} at head_dim {} ({}); compare records of \
             one head dimension and element type",
            first.method,
            first.label(),
            first.head_dim,
            first.dtype,
            other.method,
            other.label(),
            other.head_dim,
            other.dtype
        )
        .into());
    }
    Ok(())
}

/// The patterns a run measures: `--patterns`, else the defaults, whose config case (the shipped
/// Llama-3-8B-262K layer) is left out, with a note, where it is not found from the current
/// directory.
fn run_patterns(args: &RunArgs) -> Result<Vec<PatternSpec>, Box<dyn Error>> {
    if let Some(list) = &args.patterns {
        return Ok(PatternSpec::parse_list(list)?);
    }
    let patterns = default_patterns(Path::new("."));
    if !patterns.iter().any(|p| matches!(p, PatternSpec::Config { .. })) {
        errln!(
            "note: {DEFAULT_CONFIG} is in neither {} below the current directory: the default cases leave out its \
             layer {DEFAULT_CONFIG_LAYER} (run from the repository root, or add --patterns config:PATH)",
            DEFAULT_CONFIG_DIRS.join(" nor ")
        );
    }
    Ok(patterns)
}

/// `patterns` for a run on a file of inputs: without `--patterns`, the default config case is left
/// out, with a note, where the file has another model's shape.
fn fit_to_inputs(args: &RunArgs, mut patterns: Vec<PatternSpec>, qkv: &minf::HostQkv) -> Vec<PatternSpec> {
    let is_config = |p: &PatternSpec| matches!(p, PatternSpec::Config { .. });
    if args.patterns.is_none() && patterns.iter().any(is_config) {
        let configs: Vec<PatternSpec> = patterns.iter().filter(|p| is_config(p)).cloned().collect();
        if file_shape(&configs, qkv).is_err() {
            patterns.retain(|p| !is_config(p));
            errln!(
                "note: the inputs ({}/{} heads, head_dim {}) are not of {DEFAULT_CONFIG}'s model: the default cases \
                 leave out its layer {DEFAULT_CONFIG_LAYER}",
                qkv.heads,
                qkv.kv_heads,
                qkv.head_dim
            );
        }
    }
    patterns
}

/// The shape of a run on a file of inputs, and the length from which its cases time a subset of a
/// config's layer (`usize::MAX`: none). The file's own shape where the configs agree with it;
/// else, for a file with fewer query heads than a config's layer of the same query/KV grouping (as
/// `search_inputs --heads 4` writes for the heads a long case times), that layer's shape, timed as
/// a subset: the file's head i runs the config's head i * layer_heads / file_heads, as in long
/// cases and `bench/peers.py --config-heads`.
fn file_shape(patterns: &[PatternSpec], qkv: &minf::HostQkv) -> Result<(usize, usize, usize, usize), Box<dyn Error>> {
    let own = ShapeArgs { heads: Some(qkv.heads), kv_heads: Some(qkv.kv_heads), head_dim: Some(qkv.head_dim) };
    let mismatch = match resolve_shape(patterns, own) {
        Ok((heads, kv_heads, head_dim)) => return Ok((heads, kv_heads, head_dim, usize::MAX)),
        Err(e) => e,
    };
    let layer = ShapeArgs { heads: None, kv_heads: None, head_dim: Some(qkv.head_dim) };
    if let Ok((heads, kv_heads, head_dim)) = resolve_shape(patterns, layer) {
        let same_grouping = qkv.kv_heads * heads == qkv.heads * kv_heads;
        if qkv.heads < heads && heads % qkv.heads == 0 && same_grouping {
            return Ok((heads, kv_heads, head_dim, 0));
        }
    }
    Err(format!(
        "the inputs hold {}/{} query/KV heads of head_dim {}, which no config measured here fits as a whole or as a \
         subset of its layer with the same grouping: {mismatch}",
        qkv.heads, qkv.kv_heads, qkv.head_dim
    )
    .into())
}

fn case_options(
    args: &RunArgs,
    patterns: Vec<PatternSpec>,
    inputs: Option<&minf::HostQkv>,
) -> Result<CaseOptions, Box<dyn Error>> {
    let Some(qkv) = inputs else {
        let asked = ShapeArgs { heads: args.heads, kv_heads: args.kv_heads, head_dim: args.head_dim };
        let (heads, kv_heads, head_dim) = resolve_shape(&patterns, asked)?;
        return Ok(CaseOptions {
            seqs: parse_seqs(&args.seqs)?,
            heads,
            kv_heads,
            head_dim,
            dtype: args.dtype,
            patterns,
            long_from: args.long_from,
            long_heads: args.long_heads.unwrap_or_else(|| default_long_heads(heads, kv_heads)),
        });
    };
    let (heads, kv_heads, head_dim, long_from) = file_shape(&patterns, qkv)?;
    Ok(CaseOptions {
        seqs: vec![qkv.seq],
        heads,
        kv_heads,
        head_dim,
        dtype: args.dtype,
        patterns,
        long_from,
        long_heads: qkv.heads,
    })
}

fn run_cases(args: &RunArgs) -> Result<ExitCode, Box<dyn Error>> {
    if args.list {
        // A file of inputs sets the cases' length and heads: read it for the list too.
        let patterns = run_patterns(args)?;
        let cases = match &args.inputs {
            Some(path) => {
                let qkv = minf::load_safetensors(path)?;
                case_options(args, fit_to_inputs(args, patterns, &qkv), Some(&qkv))?.cases()?
            }
            None => case_options(args, patterns, None)?.cases()?,
        };
        for case in &cases {
            let subset = if case.is_subset() { format!(" (of {})", case.layer_heads) } else { String::new() };
            let chunked = args.chunk.map_or_else(String::new, |c| format!(", and in chunks of {}", tokens(c as f64)));
            outln!(
                "{:>7}  {:<40} heads {}/{}{subset}{chunked}",
                tokens(case.seq as f64),
                case.pattern,
                case.heads,
                case.kv_heads
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Fast checks first: the case list (for a file of inputs, with the default shape until the file
    // is read), then the GPU, then anything slow.
    let patterns = run_patterns(args)?;
    let cases = case_options(args, patterns.clone(), None)?.cases()?;
    let mut bench = GpuBench::new()?;
    let cases = match &args.inputs {
        Some(path) => {
            let qkv = minf::load_safetensors(path)?;
            let cases = case_options(args, fit_to_inputs(args, patterns, &qkv), Some(&qkv))?.cases()?;
            let name =
                path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
            bench.use_inputs(InputSource::File(qkv, name));
            cases
        }
        None => {
            bench.use_inputs(InputSource::Structured { seed: args.seed, flat_tail: args.flat_tail });
            cases
        }
    };
    let mut records = match (&args.json, args.append) {
        (Some(path), true) if path.exists() => read_records(path)?,
        _ => Vec::new(),
    };
    for record in records.iter().filter(|r| r.method == MINF_METHOD && r.pattern == "dense") {
        bench.know_dense(record.seq, record.heads, record.total_ms);
    }
    let settings = RunSettings {
        reps: args.reps,
        long_reps: args.long_reps,
        long_from: args.long_from,
        warmup: args.warmup,
        save_indices: args.save_indices.clone(),
        index_tile: args.index_tile,
        tile_choice: !args.no_tile_choice,
        tile_choice_from_rows: args.tile_choice_from_rows,
        chunk: args.chunk,
    };

    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    if let Err(e) = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        errln!("\nstopping after the current case (Ctrl-C again to quit now)");
    }) {
        errln!("warning: Ctrl-C will not stop cleanly: {e}");
    }

    outln!(
        "minf bench on {} ({}), {} cases, medians of CUDA-event timed runs after warm-up",
        bench.card(),
        bench.driver(),
        cases.len()
    )?;
    if let Some(long) = cases.iter().find(|c| c.is_subset()) {
        outln!(
            "from {} tokens on: {} of {} query heads timed; ms/head compares across lengths",
            tokens(long.seq as f64),
            long.heads,
            long.layer_heads
        )?;
    }
    if let Some(chunk) = args.chunk {
        outln!(
            "chunked: every case again chunk by chunk ({} tokens per chunk, each chunk estimating its own indices); \
             ratio = chunked / one-shot total",
            tokens(chunk as f64)
        )?;
    }
    let chunked = args.chunk.is_some();
    outln!("{}", table_header(chunked))?;
    let bar = ProgressBar::new(cases.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    // Lines above the bar; `ProgressBar::println` drops them when the bar is hidden (output not a
    // terminal, e.g. a log file), so print through `suspend`, which always runs.
    let say = |line: String| bar.suspend(|| outln!("{line}"));
    let mut failed = 0;
    for case in &cases {
        if stop.load(Ordering::SeqCst) {
            say("stopped: the finished records are written".into())?;
            break;
        }
        bar.set_message(format!("{} at {}", case.pattern, tokens(case.seq as f64)));
        match bench.run_case(case, &settings, &|message| bar.set_message(message.to_string())) {
            Ok(record) => {
                say(table_row(&record, chunked))?;
                records.push(record);
                if let Some(path) = &args.json {
                    write_records(path, &records)?;
                }
            }
            Err(e) => {
                failed += 1;
                say(format!("failed: {} at {} tokens: {e}", case.pattern, case.seq))?;
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if let Some(path) = &args.json {
        outln!("records: {} ({} in the file)", path.display(), records.len())?;
    }
    if let Some(path) = &args.plot {
        match write_latency_svg(&records, path) {
            Ok(()) => outln!("plot: {}", path.display())?,
            Err(e) => errln!("plot not written: {e}"),
        }
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The header of the terminal table ([`table_row`]); `chunked` adds the chunked run's columns.
pub fn table_header(chunked: bool) -> String {
    let columns = format!(
        "{:<7} {:<34} {:>5} {:>10} {:>9} {:>9} {:>10} {:>10} {:>8} {:>7} {:>7} {:>9} {:>9}",
        "tokens",
        "pattern",
        "heads",
        "est ms",
        "conv ms",
        "attn ms",
        "total ms",
        "ms/head",
        "density",
        "recall",
        "TFLOP/s",
        "speedup",
        "compile s"
    );
    if chunked {
        format!("{columns} {:>11} {:>7} {:>22}", "chunked ms", "ratio", "chunks est+conv+attn")
    } else {
        columns
    }
}

/// One record as a row of the terminal table; `chunked` adds the chunked run's total, its ratio
/// and where its time went (estimation, conversion and attention summed over the chunks).
pub fn table_row(r: &Record, chunked: bool) -> String {
    let number = |v: Option<f64>, digits: usize| v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"));
    let mut label = r.label();
    let chars = label.chars().count();
    if chars > 34 {
        label = format!("...{}", label.chars().skip(chars - 31).collect::<String>());
    }
    let columns = format!(
        "{:<7} {:<34} {:>5} {:>10} {:>9} {:>9} {:>10.3} {:>10.3} {:>8} {:>7} {:>7} {:>9} {:>9}",
        tokens(r.seq as f64),
        label,
        r.heads,
        number(r.est_ms, 3),
        number(r.conv_ms, 3),
        number(r.attn_ms, 3),
        r.total_ms,
        r.per_head_ms,
        number(r.density, 4),
        number(r.recall, 4),
        number(r.tflops, 1),
        r.dense_speedup.map_or_else(|| "-".to_string(), |s| format!("{s:.2}x")),
        number(r.compile_s, 2)
    );
    if chunked {
        let ratio = r.chunked_ratio.map_or_else(|| "-".to_string(), |x| format!("{x:.3}x"));
        let split = match (r.chunked_est_ms, r.chunked_conv_ms, r.chunked_attn_ms) {
            (Some(est), Some(conv), Some(attn)) => format!("{est:.1}+{conv:.1}+{attn:.1}"),
            _ => "-".to_string(),
        };
        format!("{columns} {:>11} {:>7} {split:>22}", number(r.chunked_total_ms, 3), ratio)
    } else {
        columns
    }
}

#[cfg(test)]
mod tests;
