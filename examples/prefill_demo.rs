//! MInference's prefill of one Llama-3-8B-shaped layer (32 query heads, 8 key/value heads,
//! d = 128, bf16) on seeded structured inputs: dense minf against the sparse prefill under
//! MInference's shipped per-head config, with the time split (estimation, conversion, attention),
//! the density of the computed tiles, the speedup, and the accuracy against dense attention
//! (output relative L2 error and attention recall on sampled query rows, computed on the CPU in
//! f64), and a needle test.
//!
//! ```text
//! cargo run --release --example prefill_demo -- [--config FILE] [--seq 131072] [--layer 16]
//!     [--seed 1] [--reps 10] [--needle POS] [--threshold TOKENS]
//! cargo run --release --example prefill_demo -- --table [--seqs 32768,131072,524288] [...]
//! ```
//!
//! `--needle POS` plants one key at POS that the last 64 queries score strongly and reports
//! whether the estimated index includes it (per head) and the error of those rows. `--table`
//! prints the accuracy table at several lengths in Markdown (for `bench/RESULTS.md`), a needle in
//! the middle of each context (or at `--needle`); past 128K tokens the CPU reference measures 8 of
//! the 32 heads (one query head per KV head pair, said in the table).
//!
//! On a machine without a GPU it says so and points to what does work there.

use half::bf16;
use minf::timing::median_ms;
use minf::{
    dense_attention, AttentionOptions, Device, HeadGroups, MinfError, ModelShape, PatternConfig, Prefill,
    PrefillOptions, PrefillTiming, TensorMut, TensorRef,
};
use minf_testkit::inputs::{InputSpec, Needle, StructuredInputs};
use minf_testkit::reference::{
    causal_attention_rows, masked_attention_rows, recall, relative_l2, sampled_rows, RecallStats, ReferenceShape,
};
use std::path::PathBuf;
use std::process::ExitCode;

const CONFIG: &str = "Llama_3_8B_Instruct_262k_kv_out_v32_fit_o_best_pattern.json";
/// Query rows at the end of the prompt: those the vertical-slash estimate reads, and the needle's.
const LAST_ROWS: usize = 64;
/// Rows spread over the rest of the sequence that the CPU reference also measures.
const SPREAD_ROWS: usize = 64;
/// Scaled score of the needle against the last queries.
const NEEDLE_LOGIT: f64 = 10.0;
/// Beyond this length the CPU reference measures [`LONG_HEADS`] heads only.
const ALL_HEADS_UP_TO: usize = 131_072;
/// Heads the CPU reference measures past [`ALL_HEADS_UP_TO`]: one per pair of KV heads.
const LONG_HEADS: [usize; 8] = [0, 9, 2, 11, 4, 13, 6, 15];

struct Args {
    config: PathBuf,
    seq: usize,
    seqs: Vec<usize>,
    layer: usize,
    seed: u64,
    reps: usize,
    needle: Option<usize>,
    threshold: Option<usize>,
    table: bool,
    /// Also compare the sparse output with the f64 reference under the mask it realised.
    check_mask: bool,
}

/// The config shipped in `configs/`: found from the working directory (a bundle run from the
/// project root on another machine), else from where the project was built.
fn default_config() -> PathBuf {
    let relative = PathBuf::from("configs").join(CONFIG);
    if relative.exists() {
        relative
    } else {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/configs")).join(CONFIG)
    }
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        config: default_config(),
        seq: 131_072,
        seqs: vec![32_768, 131_072, 524_288],
        layer: 16,
        seed: 1,
        reps: 10,
        needle: None,
        threshold: None,
        table: false,
        check_mask: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| v.parse::<usize>().map_err(|_| format!("{flag}: {v:?} is not a non-negative integer"));
        match flag.as_str() {
            "--config" => args.config = PathBuf::from(value()?),
            "--seq" => args.seq = number(value()?)?,
            "--seqs" => {
                args.seqs = value()?
                    .split(',')
                    .map(|s| s.parse().map_err(|_| format!("--seqs: {s:?} is not a length")))
                    .collect::<Result<_, _>>()?
            }
            "--layer" => args.layer = number(value()?)?,
            "--seed" => args.seed = number(value()?)? as u64,
            "--reps" => args.reps = number(value()?)?.max(1),
            "--needle" => args.needle = Some(number(value()?)?),
            "--threshold" => args.threshold = Some(number(value()?)?),
            "--table" => args.table = true,
            "--check-mask" => args.check_mask = true,
            "--help" | "-h" => {
                return Err("usage: prefill_demo [--config FILE] [--seq N] [--layer L] [--seed S] [--reps R] \
                            [--needle POS] [--threshold TOKENS] [--check-mask] [--table [--seqs N,N,...]]"
                    .into())
            }
            other => return Err(format!("unknown flag {other:?} (see --help)")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("prefill_demo: {message}");
            return ExitCode::FAILURE;
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("prefill_demo: {error}");
            if matches!(
                error.downcast_ref::<MinfError>(),
                Some(MinfError::NoDriver | MinfError::NoDevice { .. } | MinfError::Driver { .. })
            ) {
                eprintln!(
                    "This machine cannot run kernels (no usable NVIDIA GPU). Without a GPU you can still compile every \
                     kernel:\n  cargo run --release -- warm --arch sm_80,sm_90a\nand see what minf finds:\n  \
                     cargo run --release -- doctor"
                );
            }
            ExitCode::FAILURE
        }
    }
}

/// What one run measured.
struct Measured {
    seq: usize,
    dense_ms: f64,
    sparse: PrefillTiming,
    density: f64,
    /// Heads the CPU reference measured.
    heads: Vec<usize>,
    recall: RecallStats,
    /// Relative L2 of the sparse and of the dense output against the f64 dense reference.
    sparse_error: f64,
    dense_error: f64,
    /// With `--check-mask`: relative L2 of the sparse output against the f64 reference under the
    /// mask the prefill realised (the kernels' exactness, apart from the estimate's choices).
    mask_error: Option<f64>,
    needle: Option<NeedleResult>,
}

struct NeedleResult {
    position: usize,
    /// Heads whose realised mask has the needle key for the last query.
    found: usize,
    heads: usize,
    /// Relative L2 of the sparse output on the last rows against the dense reference.
    error: f64,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `[seq, heads.len(), d]` copies of the listed heads of `q` (`[seq, all, d]`) and of their KV
/// heads in `k`/`v` (`[seq, kv_heads, d]`), so the reference runs on those heads only.
fn select_heads(x: &[f32], seq: usize, all: usize, d: usize, heads: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(seq * heads.len() * d);
    for t in 0..seq {
        for &h in heads {
            out.extend_from_slice(&x[(t * all + h) * d..][..d]);
        }
    }
    out
}

fn measure(
    device: &Device,
    config: &PatternConfig,
    shape: ModelShape,
    args: &Args,
    seq: usize,
    needle: Option<usize>,
) -> Result<Measured, Box<dyn std::error::Error>> {
    let ModelShape { heads, kv_heads, head_dim, .. } = shape;
    let d = head_dim as usize;
    let mut spec = InputSpec::new(seq, heads, kv_heads, d, args.seed);
    spec.needle = needle.map(|position| Needle { position, queries: LAST_ROWS, logit: NEEDLE_LOGIT });
    let started = std::time::Instant::now();
    let mut inputs = StructuredInputs::generate(&spec)?;
    // The reference sees exactly what the kernels see.
    for x in inputs.q.iter_mut().chain(&mut inputs.k).chain(&mut inputs.v) {
        *x = bf16::from_f32(*x).to_f32();
    }
    eprintln!("  inputs: {seq} tokens generated in {:.1} s", started.elapsed().as_secs_f64());
    let stream = device.stream().clone();
    let upload = |x: &[f32]| stream.clone_htod(&x.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>());
    let (q, k, v) = (upload(&inputs.q)?, upload(&inputs.k)?, upload(&inputs.v)?);
    let (q_shape, kv_shape) = ([1, seq, heads, d], [1, seq, kv_heads, d]);
    let mut dense_out = stream.alloc_zeros::<bf16>(seq * heads * d)?;
    let mut sparse_out = stream.alloc_zeros::<bf16>(seq * heads * d)?;

    let dense_ms = median_ms(&stream, 1, args.reps, || {
        dense_attention(
            device,
            TensorRef::bshd(&q, q_shape)?,
            TensorRef::bshd(&k, kv_shape)?,
            TensorRef::bshd(&v, kv_shape)?,
            TensorMut::bshd(&mut dense_out, q_shape)?,
            AttentionOptions::default(),
        )
    })?;
    let options = PrefillOptions {
        dense_below: args.threshold.unwrap_or(PrefillOptions::default().dense_below),
        ..Default::default()
    };
    let mut prefill = Prefill::new(device, config, shape, options)?;
    let mut timings = Vec::with_capacity(args.reps);
    for rep in 0..args.reps + 1 {
        let timing = prefill.prefill_timed(
            args.layer,
            TensorRef::bshd(&q, q_shape)?,
            TensorRef::bshd(&k, kv_shape)?,
            TensorRef::bshd(&v, kv_shape)?,
            TensorMut::bshd(&mut sparse_out, q_shape)?,
        )?;
        // The first run compiles or loads the kernels.
        if rep > 0 {
            timings.push(timing);
        }
    }
    let sparse = PrefillTiming {
        estimation_ms: median(timings.iter().map(|t| t.estimation_ms).collect()),
        conversion_ms: median(timings.iter().map(|t| t.conversion_ms).collect()),
        attention_ms: median(timings.iter().map(|t| t.attention_ms).collect()),
        total_ms: median(timings.iter().map(|t| t.total_ms).collect()),
    };
    let mask = prefill.realised_mask()?;
    let density = mask.density(&[]);

    // Accuracy on sampled rows of the measured heads, against f64 dense attention.
    let measured: Vec<usize> = if seq <= ALL_HEADS_UP_TO { (0..heads).collect() } else { LONG_HEADS.to_vec() };
    let kv_of: Vec<usize> = measured.iter().map(|h| h / (heads / kv_heads)).collect();
    let (q_sel, k_sel, v_sel) = (
        select_heads(&inputs.q, seq, heads, d, &measured),
        select_heads(&inputs.k, seq, kv_heads, d, &kv_of),
        select_heads(&inputs.v, seq, kv_heads, d, &kv_of),
    );
    drop(inputs);
    let n = measured.len();
    let sel_shape = ReferenceShape { batch: 1, seq, heads: n, kv_heads: n, head_dim: d };
    let rows = sampled_rows(seq, LAST_ROWS, SPREAD_ROWS);
    let started = std::time::Instant::now();
    let recall = recall(&q_sel, &k_sel, sel_shape, |b, h, i, j| mask.contains(b, measured[h], i, j), &rows)?;
    let reference = causal_attention_rows(sel_shape, &q_sel, &k_sel, &v_sel, 1.0 / (d as f64).sqrt(), &rows);
    eprintln!("  CPU reference: {} rows x {n} heads in {:.1} s", rows.len(), started.elapsed().as_secs_f64());
    let download = |x: &cudarc::driver::CudaSlice<bf16>| -> Result<Vec<f32>, MinfError> {
        Ok(stream
            .clone_dtoh(x)
            .map_err(MinfError::driver("downloading an output"))?
            .into_iter()
            .map(f32::from)
            .collect())
    };
    let (dense_host, sparse_host) = (download(&dense_out)?, download(&sparse_out)?);
    let pick = |out: &[f32], keep: &dyn Fn(usize) -> bool| -> (Vec<f64>, Vec<f64>) {
        let (mut got, mut want) = (Vec::new(), Vec::new());
        for (t, &(_, i, h)) in reference.rows.iter().enumerate() {
            if keep(i) {
                got.extend(out[(i * heads + measured[h]) * d..][..d].iter().map(|&x| x as f64));
                want.extend_from_slice(&reference.out[t * d..][..d]);
            }
        }
        (got, want)
    };
    let error = |out: &[f32], keep: &dyn Fn(usize) -> bool| {
        let (got, want) = pick(out, keep);
        relative_l2(&got, &want)
    };
    let sparse_error = error(&sparse_host, &|_| true);
    let mask_error = if args.check_mask {
        let started = std::time::Instant::now();
        let masked =
            masked_attention_rows(sel_shape, &q_sel, &k_sel, &v_sel, 1.0 / (d as f64).sqrt(), &rows, |b, h, i, j| {
                mask.contains(b, measured[h], i, j)
            });
        eprintln!("  CPU reference under the realised mask: {:.1} s", started.elapsed().as_secs_f64());
        let (mut got, mut want) = (Vec::new(), Vec::new());
        for (t, &(_, i, h)) in masked.rows.iter().enumerate() {
            got.extend(sparse_host[(i * heads + measured[h]) * d..][..d].iter().map(|&x| x as f64));
            want.extend_from_slice(&masked.out[t * d..][..d]);
        }
        Some(relative_l2(&got, &want))
    } else {
        None
    };
    let dense_error = error(&dense_host, &|_| true);
    let needle = needle.map(|position| NeedleResult {
        position,
        found: (0..heads).filter(|&h| mask.contains(0, h, seq - 1, position)).count(),
        heads,
        error: error(&sparse_host, &|i| i + LAST_ROWS >= seq),
    });
    Ok(Measured {
        seq,
        dense_ms,
        sparse,
        density,
        heads: measured,
        recall,
        sparse_error,
        dense_error,
        mask_error,
        needle,
    })
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let device = Device::new(0)?;
    let config = PatternConfig::load_for_model(&args.config)?;
    let shape = config.shape().ok_or("the config's model shape is unknown")?;
    if args.layer >= shape.layers {
        return Err(format!("--layer {}: the model has layers 0 to {}", args.layer, shape.layers - 1).into());
    }
    let groups = HeadGroups::for_layer(&config, args.layer)?;
    println!(
        "minf prefill demo on {} ({}): layer {} of {} ({} heads / {} KV heads, d {}, bf16), {} launches: {} dense, \
         {} A-shape groups, {} vertical-slash, {} block-sparse heads",
        device.name(),
        device.arch(),
        args.layer,
        args.config.display(),
        shape.heads,
        shape.kv_heads,
        shape.head_dim,
        groups.launches(),
        groups.dense.len(),
        groups.a_shape.len(),
        groups.vertical_slash.len(),
        groups.block_sparse.len()
    );
    if args.table {
        println!();
        println!(
            "| tokens | heads measured | density | mean recall | worst recall | rel L2 vs dense (sparse / dense minf) | \
             needle at | needle in index | needle rows rel L2 | dense ms | sparse ms | speedup |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
        for &seq in &args.seqs {
            eprintln!("seq {seq}:");
            let position = args.needle.unwrap_or(seq / 2).min(seq.saturating_sub(1));
            let m = measure(&device, &config, shape, args, seq, Some(position))?;
            let needle = m.needle.as_ref().ok_or("needle missing")?;
            let heads = if m.heads.len() == shape.heads {
                "all 32".to_string()
            } else {
                format!("{} of {}", m.heads.len(), shape.heads)
            };
            println!(
                "| {} | {heads} | {:.3} | {:.4} | {:.4} | {:.2e} / {:.2e} | {} | {}/{} heads | {:.2e} | {:.2} | {:.2} | {:.2}x |",
                m.seq,
                m.density,
                m.recall.mean,
                m.recall.worst,
                m.sparse_error,
                m.dense_error,
                needle.position,
                needle.found,
                needle.heads,
                needle.error,
                m.dense_ms,
                m.sparse.total_ms,
                m.dense_ms / m.sparse.total_ms
            );
        }
        return Ok(());
    }
    let m = measure(&device, &config, shape, args, args.seq, args.needle)?;
    let t = m.sparse;
    println!("seq {} (seed {}, medians of {} runs after warm-up):", m.seq, args.seed, args.reps);
    println!("  dense minf:     {:8.3} ms", m.dense_ms);
    println!(
        "  sparse prefill: {:8.3} ms  (estimation {:.3}, conversion {:.3}, attention {:.3})  speedup {:.2}x",
        t.total_ms,
        t.estimation_ms,
        t.conversion_ms,
        t.attention_ms,
        m.dense_ms / t.total_ms
    );
    println!("  density of computed tiles: {:.2}% of the causal keys", 100.0 * m.density);
    println!(
        "  accuracy on {} sampled rows x {} heads vs f64 dense: rel L2 {:.2e} (dense minf {:.2e}), recall mean {:.4}, \
         worst {:.4} at (batch, head, row) {:?}",
        sampled_rows(m.seq, LAST_ROWS, SPREAD_ROWS).len(),
        m.heads.len(),
        m.sparse_error,
        m.dense_error,
        m.recall.mean,
        m.recall.worst,
        (m.recall.worst_row.0, m.heads[m.recall.worst_row.1], m.recall.worst_row.2)
    );
    if let Some(mask_error) = m.mask_error {
        println!("  sparse output vs f64 attention under the realised mask: rel L2 {mask_error:.2e}");
    }
    if let Some(needle) = &m.needle {
        println!(
            "  needle at {}: in the index of {}/{} heads for the last query; last {LAST_ROWS} rows rel L2 vs dense {:.2e}",
            needle.position, needle.found, needle.heads, needle.error
        );
    }
    Ok(())
}
