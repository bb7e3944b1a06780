//! `minf search`: the offline, kernel-aware pattern search (docs/search.md).

use super::output::outln;
use indicatif::{ProgressBar, ProgressStyle};
use minf_runtime::search::{run_search, Criterion, SearchInputs, SearchOptions, SearchShape, SearchSpace};
use minf_runtime::Device;
use std::collections::BTreeMap;
use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// The score candidates are compared by.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum CriterionArg {
    /// MInference's: output elements differing from dense by more than 5e-3 (lower is better).
    Mismatch,
    /// Attention recall: the share of the dense softmax mass on the keys the kernel visited.
    Recall,
}

#[derive(clap::Args)]
pub struct SearchArgs {
    /// Directory of per-layer Q/K/V files (`layer_<n>.safetensors`), or of one subdirectory per
    /// prompt holding them.
    #[arg(long, required_unless_present = "print_space")]
    inputs: Option<PathBuf>,
    /// Query heads per layer.
    #[arg(long, required_unless_present = "print_space")]
    heads: Option<usize>,
    /// Key/value heads per layer.
    #[arg(long, required_unless_present = "print_space")]
    kv_heads: Option<usize>,
    /// Head dimension.
    #[arg(long, required_unless_present = "print_space")]
    head_dim: Option<usize>,
    /// Search-space file (JSON; default: MInference's code set and its paper's equal-FLOPs set).
    #[arg(long)]
    space: Option<PathBuf>,
    /// The score candidates are compared by.
    #[arg(long, value_enum, default_value = "mismatch")]
    criterion: CriterionArg,
    /// 128-row blocks scored and costed per prompt, evenly spaced, the last included (0: all).
    #[arg(long, default_value_t = minf_runtime::search::DEFAULT_SAMPLE_BLOCKS)]
    sample_blocks: usize,
    /// The config to write (MInference's JSON format); progress goes to `<output>.progress`.
    #[arg(short = 'o', long, required_unless_present = "print_space")]
    output: Option<PathBuf>,
    /// Print the search space (the default, or `--space` with its defaults filled in) as a space
    /// file and exit.
    #[arg(long)]
    print_space: bool,
}

/// Runs `minf search`.
pub fn search(args: &SearchArgs) -> Result<ExitCode, Box<dyn Error>> {
    let space = match &args.space {
        Some(path) => SearchSpace::load(path)?,
        None => SearchSpace::default(),
    };
    if args.print_space {
        outln!("{}", space.to_json())?;
        return Ok(ExitCode::SUCCESS);
    }
    let (Some(dir), Some(heads), Some(kv_heads), Some(head_dim), Some(output)) =
        (&args.inputs, args.heads, args.kv_heads, args.head_dim, &args.output)
    else {
        return Err("--inputs, --heads, --kv-heads, --head-dim and -o are required".into());
    };
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(format!("--heads {heads} and --kv-heads {kv_heads}: both positive, kv heads dividing heads").into());
    }
    let head_dims = minf_runtime::codegen::spec::HEAD_DIMS;
    if !u32::try_from(head_dim).is_ok_and(|d| head_dims.contains(&d)) {
        return Err(format!("invalid --head-dim {head_dim}: allowed {head_dims:?}").into());
    }
    let inputs = SearchInputs::discover(dir)?;
    let criterion = match args.criterion {
        CriterionArg::Mismatch => Criterion::Mismatch,
        CriterionArg::Recall => Criterion::Recall,
    };
    let options = SearchOptions { criterion, sample_blocks: args.sample_blocks };
    let device = Device::new(0)?;
    outln!(
        "search: {} layer(s) x {} prompt(s) from {}, {} candidates, criterion {criterion}, budget {} keys per row \
         (+{:.0}%), on {}",
        inputs.layers(),
        inputs.prompts.len(),
        dir.display(),
        space.candidates.len(),
        space.budget_keys,
        space.tolerance * 100.0,
        device.arch()
    )?;
    let bar = ProgressBar::new(inputs.layers() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} layers {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let (mut load_seconds, mut evaluate_seconds, mut resumed) = (0.0, 0.0, 0);
    // The first failed write of a layer line (e.g. a closed pipe), returned once the search ends.
    let mut print_error = None;
    let shape = SearchShape { heads, kv_heads, head_dim };
    let choices = run_search(&device, &inputs, shape, &space, options, output, |report| {
        load_seconds += report.load_seconds;
        evaluate_seconds += report.evaluate_seconds;
        resumed += usize::from(report.resumed);
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for choice in report.choices {
            *counts.entry(choice.candidate.file_pattern().as_str()).or_insert(0) += 1;
        }
        let summary: Vec<String> = counts.iter().map(|(p, n)| format!("{p} {n}")).collect();
        let timing = if report.resumed {
            "from the progress file".to_string()
        } else {
            format!("read {:.1} s, evaluated {:.2} s", report.load_seconds, report.evaluate_seconds)
        };
        // Through `suspend`, not `ProgressBar::println`, which drops lines while the bar is hidden
        // (output not a terminal: a log file, `tee`, CI).
        let line = format!("layer {:>3}: {} ({timing})", report.layer, summary.join(", "));
        if let Err(error) = bar.suspend(|| outln!("{line}")) {
            print_error.get_or_insert(error);
        }
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    if let Some(error) = print_error {
        return Err(error.into());
    }
    let mut totals: BTreeMap<String, usize> = BTreeMap::new();
    for choice in choices.iter().flatten() {
        *totals.entry(choice.candidate.to_string()).or_insert(0) += 1;
    }
    outln!("chosen:")?;
    for (candidate, count) in &totals {
        outln!("  {candidate:<32} {count:>6} heads")?;
    }
    outln!(
        "wrote {} ({} layers; {resumed} resumed). Evaluation {evaluate_seconds:.1} s, reading {load_seconds:.1} s \
         (overlapped), wall {:.1} s",
        output.display(),
        choices.len(),
        started.elapsed().as_secs_f64()
    )?;
    Ok(ExitCode::SUCCESS)
}
