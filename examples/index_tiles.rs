//! Counts, on the CPU, the key tiles each index-driven engine computes for a vertical-slash index
//! estimated from the structured inputs (no GPU): where the 128-row blocks' tiles are shared by both
//! 64-row halves, where one half computes alone, which are masked, and what the 64-row blocks visit
//! instead. It runs MInference's estimate (the float64 CPU reference) and the converter's CPU model,
//! then walks each 128-row block's ranges the way `templates/indexed.cu.tera` does (ascending
//! starts; any two ranges with the same halves share a 128-key tile; a range left over gets a
//! 64-key tile), and its columns as one merged stream.
//!
//! `index_tiles [--seq 131072] [--heads 4] [--vertical 1000] [--slash 6096] [--seed 1] [--decay L]
//! [--flat-tail]` (`--decay` sets [`InputSpec::decay_logit`](minf_testkit::InputSpec::decay_logit);
//! `--flat-tail` takes [`InputSpec::flat_tail`](minf_testkit::InputSpec::flat_tail), the inputs
//! without the decay).
//!
//! The heads share one KV head (the estimate reads each query head with its KV head).

use minf::vertical_slash::HostVerticalSlashIndex;
use minf_testkit::convert::convert_cpu;
use minf_testkit::estimate::estimate_vertical_slash;
use minf_testkit::inputs::{InputSpec, StructuredInputs};
use minf_testkit::reference::ReferenceShape;

/// What the 128-row schedule visits for one head, in tiles.
#[derive(Debug, Default, Clone, Copy)]
struct WideTiles {
    /// 128-key range tiles both halves compute.
    both: usize,
    /// 128-key range tiles one half computes (the other warpgroup idles).
    one_half: usize,
    /// 64-key range tiles (a range left without a partner).
    narrow: usize,
    /// Range tiles that need the mask (narrow, past the sequence, or reaching the block's rows).
    masked: usize,
    /// Merged column tiles (always masked).
    columns: usize,
    /// 64x64 units of work both halves share, and units only one half needs.
    shared_units: f64,
    single_units: f64,
}

/// The 128-row schedule over rows `r` and, if `second`, `r + 1` (the last block may have one).
fn wide_block(index: &HostVerticalSlashIndex, (h, r, second): (usize, usize, bool), seq: usize, out: &mut WideTiles) {
    let halves: Vec<&[i32]> =
        if second { vec![index.ranges(0, h, r), index.ranges(0, h, r + 1)] } else { vec![index.ranges(0, h, r)] };
    let m_start = (r * 64) as i64;
    let mut next = vec![0usize; halves.len()];
    let mut pending: [Option<i64>; 3] = [None; 3];
    let tile = |first: i64, last: i64, width: usize, members: usize, out: &mut WideTiles| {
        let full = |s: i64| s >= 0 && s + 64 <= seq as i64;
        let masked = width != 128 || !full(first) || !full(last) || last + 63 > m_start;
        out.masked += usize::from(masked);
        let units = width as f64 / 64.0;
        if members == 3 {
            out.shared_units += units;
        } else {
            out.single_units += units;
        }
        match (width, members) {
            (128, 3) => out.both += 1,
            (128, _) => out.one_half += 1,
            _ => out.narrow += 1,
        }
    };
    loop {
        let mut best = i64::MAX;
        let mut members = 0;
        for (half, list) in halves.iter().enumerate() {
            if let Some(&start) = list.get(next[half]) {
                let start = start as i64;
                if start < best {
                    best = start;
                    members = 1 << half;
                } else if start == best {
                    members |= 1 << half;
                }
            }
        }
        if members == 0 {
            break;
        }
        for (half, cursor) in next.iter_mut().enumerate() {
            *cursor += (members >> half) & 1;
        }
        match pending[members - 1].take() {
            Some(first) => tile(first, best, 128, members, out),
            None => pending[members - 1] = Some(best),
        }
    }
    for (slot, waiting) in pending.iter().enumerate() {
        if let Some(start) = waiting {
            tile(*start, *start, 64, slot + 1, out);
        }
    }
    let mut columns: Vec<i32> = index.columns(0, h, r).to_vec();
    if second {
        columns.extend_from_slice(index.columns(0, h, r + 1));
    }
    let listed = columns.len();
    columns.sort_unstable();
    columns.dedup();
    out.columns += columns.len().div_ceil(128);
    let shared_columns = listed - columns.len();
    out.shared_units += shared_columns as f64 / 64.0;
    out.single_units += (columns.len() - shared_columns) as f64 / 64.0;
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: usize| -> Result<usize, Box<dyn std::error::Error>> {
        match args.iter().position(|a| a == name) {
            Some(i) => Ok(args.get(i + 1).ok_or(format!("{name} needs a value"))?.parse()?),
            None => Ok(default),
        }
    };
    let seq = flag("--seq", 131_072)?;
    let heads = flag("--heads", 4)?;
    let (vertical, slash) = (flag("--vertical", 1000)?, flag("--slash", 6096)?);
    let seed = flag("--seed", 1)? as u64;
    let mut spec = if args.iter().any(|a| a == "--flat-tail") {
        InputSpec::flat_tail(seq, heads, 1, 128, seed)
    } else {
        InputSpec::new(seq, heads, 1, 128, seed)
    };
    if let Some(i) = args.iter().position(|a| a == "--decay") {
        spec.decay_logit = args.get(i + 1).ok_or("--decay needs a value")?.parse()?;
    }
    let decay = spec.decay_logit;
    let started = std::time::Instant::now();
    let qkv = StructuredInputs::generate(&spec)?;
    let shape = ReferenceShape { batch: 1, seq, heads, kv_heads: 1, head_dim: 128 };
    let estimate = estimate_vertical_slash(&qkv.q, &qkv.k, shape, vertical, slash)?;
    let index =
        convert_cpu(&[seq as i32], &estimate.vertical, &estimate.slash, 1, heads, estimate.nnz_v, estimate.nnz_s, seq);
    println!(
        "vertical-slash ({vertical}, {slash}) estimated at {seq} tokens, {heads} heads, seed {seed}, decay logit {decay} ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    println!("head  density  128-row tiles: both  one-half  64-key  masked  columns  shared keys  64-row tiles");
    let rows = seq.div_ceil(64);
    let causal_tiles = rows * (rows + 1) / 2;
    for h in 0..heads {
        let mut wide = WideTiles::default();
        let mut square = 0usize;
        let mut index_tiles = 0usize;
        for r in (0..rows).step_by(2) {
            wide_block(&index, (h, r, r + 1 < rows), seq, &mut wide);
        }
        for r in 0..rows {
            let (ranges, columns) = (index.ranges(0, h, r).len(), index.columns(0, h, r).len());
            square += ranges + columns.div_ceil(64);
            index_tiles += ranges + columns.div_ceil(64);
        }
        // As the chooser counts: keys both halves list count once per half.
        let shared = 2.0 * wide.shared_units / (2.0 * wide.shared_units + wide.single_units);
        println!(
            "{h:>4}  {:>6.1}%  {:>19}  {:>8}  {:>6}  {:>6}  {:>7}  {:>10.1}%  {:>12}",
            100.0 * index_tiles as f64 / causal_tiles as f64,
            wide.both,
            wide.one_half,
            wide.narrow,
            wide.masked,
            wide.columns,
            100.0 * shared,
            square
        );
    }
    Ok(())
}
