//! How much of dense attention MInference's vertical-slash estimate keeps on the structured inputs,
//! measured on the CPU in f64 (no GPU): for each length, a few query heads with the sizes the
//! shipped Llama-3-8B-262K config gives them (layer 16 by default), the index the kernels compute
//! (the estimate's columns and diagonals through the converter's CPU model), and on sampled query
//! rows (the last 64 and 64 spread over the rest): attention recall, the output's relative L2
//! against dense attention, the share of causal keys the index visits, and a planted needle (in
//! the last query's index? error of the last 64 rows). The GPU kernels compute exactly this mask
//! (their tests check them against the same reference under it), so this is the mask's accuracy.
//!
//! `cargo run --release --example accuracy_cpu -- [--seqs 32768,131072,524288] [--heads 4]
//!  [--layer 16] [--seed 1] [--config FILE]` prints a Markdown table.

use minf::vertical_slash::realised_mask_contains;
use minf::{HeadGroups, PatternConfig};
use minf_testkit::convert::convert_cpu;
use minf_testkit::estimate::{select_vertical_slash, vertical_slash_scores};
use minf_testkit::inputs::{InputSpec, Needle, StructuredInputs};
use minf_testkit::reference::{
    causal_attention_rows, masked_attention_rows, recall, relative_l2, sampled_rows, ReferenceShape,
};
use std::path::PathBuf;

const CONFIG: &str = "Llama_3_8B_Instruct_262k_kv_out_v32_fit_o_best_pattern.json";
const LAST_ROWS: usize = 64;
/// Rows spread over the rest of the sequence that the CPU reference also measures.
const SPREAD_ROWS: usize = 64;
const NEEDLE_LOGIT: f64 = 10.0;

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

/// Head `h` of a `[seq, all, d]` tensor as `[seq, 1, d]`.
fn one_head(x: &[f32], seq: usize, all: usize, d: usize, h: usize) -> Vec<f32> {
    (0..seq).flat_map(|t| x[(t * all + h) * d..][..d].iter().copied()).collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let seqs: Vec<usize> = flag(&args, "--seqs")
        .unwrap_or_else(|| "32768,131072,524288".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let measured: usize = flag(&args, "--heads").map_or(Ok(4), |v| v.parse())?;
    let layer: usize = flag(&args, "--layer").map_or(Ok(16), |v| v.parse())?;
    let seed: u64 = flag(&args, "--seed").map_or(Ok(1), |v| v.parse())?;
    let config_path = flag(&args, "--config")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/configs")).join(CONFIG));
    let config = PatternConfig::load_for_model(&config_path)?;
    let groups = HeadGroups::for_layer(&config, layer)?;
    // Heads spread over the layer's vertical-slash heads, with their config sizes.
    let pool = &groups.vertical_slash;
    if pool.is_empty() || measured == 0 {
        return Err(format!("layer {layer} of {} has no vertical-slash head to measure", config_path.display()).into());
    }
    let chosen: Vec<_> =
        (0..measured.min(pool.len())).map(|i| pool[i * pool.len() / measured.min(pool.len())]).collect();
    println!(
        "vertical-slash estimate accuracy on structured inputs (seed {seed}), CPU f64 reference; layer {layer} of {}, heads {:?}",
        config_path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        chosen.iter().map(|h| (h.head, h.vertical, h.slash)).collect::<Vec<_>>()
    );
    println!();
    println!(
        "| tokens | head (v, s) | keys visited | recall mean | recall worst | rel L2 vs dense | needle in index | needle rows rel L2 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for &seq in &seqs {
        let d = 128;
        let heads = chosen.len();
        let needle = seq / 2;
        let mut spec = InputSpec::new(seq, heads, 1, d, seed);
        spec.needle = Some(Needle { position: needle, queries: LAST_ROWS, logit: NEEDLE_LOGIT });
        let started = std::time::Instant::now();
        let qkv = StructuredInputs::generate(&spec)?;
        eprintln!("{seq} tokens: inputs in {:.1} s", started.elapsed().as_secs_f64());
        let shape = ReferenceShape { batch: 1, seq, heads: 1, kv_heads: 1, head_dim: d };
        let rows = sampled_rows(seq, LAST_ROWS, SPREAD_ROWS);
        let (k, v) = (qkv.k.clone(), qkv.v.clone());
        for (m, head) in chosen.iter().enumerate() {
            let started = std::time::Instant::now();
            let q = one_head(&qkv.q, seq, heads, d, m);
            let scores = vertical_slash_scores(&q, &k, shape, 0, 0)?;
            let pick = select_vertical_slash(&scores, head.vertical, head.slash);
            let vertical: Vec<i32> = pick.vertical.iter().map(|&x| x as i32).collect();
            let slash: Vec<i32> = pick.slash.iter().map(|&x| x as i32).collect();
            let index = convert_cpu(&[seq as i32], &vertical, &slash, 1, 1, vertical.len(), slash.len(), seq);
            let mask = |_b: usize, _h: usize, i: usize, j: usize| realised_mask_contains(&index, 0, 0, i, j);
            let kept = recall(&q, &k, shape, mask, &rows)?;
            let scale = 1.0 / (d as f64).sqrt();
            let dense = causal_attention_rows(shape, &q, &k, &v, scale, &rows);
            let sparse = masked_attention_rows(shape, &q, &k, &v, scale, &rows, mask);
            let error = |keep: &dyn Fn(usize) -> bool| {
                let (mut got, mut want) = (Vec::new(), Vec::new());
                for (t, &(_, i, _)) in dense.rows.iter().enumerate() {
                    if keep(i) {
                        got.extend_from_slice(&sparse.out[t * d..][..d]);
                        want.extend_from_slice(&dense.out[t * d..][..d]);
                    }
                }
                relative_l2(&got, &want)
            };
            // Keys the kernel visits per 64-row block (whole ranges plus columns) over the causal
            // keys of the block's average row (64 r + 32).
            let (mut visited, mut causal) = (0usize, 0usize);
            for r in 0..index.shape.rows {
                visited += 64 * index.ranges(0, 0, r).len() + index.columns(0, 0, r).len();
                causal += (64 * r + 32).min(seq);
            }
            println!(
                "| {}K | {} ({}, {}) | {:.1}% | {:.3} | {:.3} | {:.2e} | {} | {:.2e} |",
                seq / 1024,
                head.head,
                head.vertical,
                head.slash,
                100.0 * visited as f64 / causal as f64,
                kept.mean,
                kept.worst,
                error(&|_| true),
                if realised_mask_contains(&index, 0, 0, seq - 1, needle) { "yes" } else { "no" },
                error(&|i| i + LAST_ROWS >= seq)
            );
            eprintln!("  head {}: {:.1} s", head.head, started.elapsed().as_secs_f64());
        }
    }
    Ok(())
}
