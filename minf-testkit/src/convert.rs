//! The CPU model of the vertical-slash converter
//! ([`convert_vertical_slash`](minf_runtime::convert_vertical_slash)): the index format's
//! semantics written plainly, which the GPU output is tested against byte for byte, and hostile raw
//! indices to feed both.

use crate::reference::TestRng;
use minf_runtime::vertical_slash::{HostVerticalSlashIndex, IndexShape, BLOCK};

/// `count` raw indices for a sequence of `length` tokens (padded to `context`), as hostile as
/// the converter must survive: mostly in range (many near 0, where slashes and sinks cluster),
/// with duplicates, negatives and values at or past the length. Test input for the converter.
pub fn hostile_raw_indices(rng: &mut TestRng, count: usize, length: i32, context: usize) -> Vec<i32> {
    let mut out: Vec<i32> = Vec::with_capacity(count);
    for _ in 0..count {
        let x = match rng.below(20) {
            0 if !out.is_empty() => out[rng.below(out.len())],
            1 => [-1, -64, i32::MIN, -(rng.below(5000) as i32) - 1][rng.below(4)],
            2 => [length, length + 1, context as i32, context as i32 + 64, i32::MAX][rng.below(5)],
            3 => rng.in_range(length as i64, length as i64 + 300) as i32,
            4..=7 => rng.in_range(0, (length as i64).clamp(1, 130)) as i32,
            _ => rng.in_range(0, length.max(1) as i64) as i32,
        };
        out.push(x);
    }
    out
}

/// The 64-wide key ranges `(start, end)` of a row block ending at `end_m`, from `slashes`
/// (ascending, unique, in range), merged as MInference merges them: largest slash below
/// `end_m` first, each giving the range ending at `max(end_m - s, 64)`; an end within 64 past
/// the current range extends it by 64, a later end starts a new range, an earlier one is
/// already covered.
pub fn row_ranges(slashes: &[i32], end_m: i32) -> Vec<(i32, i32)> {
    let block = BLOCK as i32;
    let below = slashes.partition_point(|&s| s < end_m);
    let mut ranges: Vec<(i32, i32)> = Vec::new();
    for &s in slashes[..below].iter().rev() {
        let end = (end_m - s).max(block);
        match ranges.last_mut() {
            Some((_, current_end)) if end <= *current_end => {}
            Some((_, current_end)) if end <= *current_end + block => *current_end += block,
            _ => ranges.push((end - block, end)),
        }
    }
    ranges
}

/// Whether `column` lies in one of `ranges` (ascending and disjoint, as [`row_ranges`] returns).
pub fn covered(ranges: &[(i32, i32)], column: i32) -> bool {
    let after = ranges.partition_point(|&(start, _)| start <= column);
    after > 0 && column < ranges[after - 1].1
}

/// Converts raw indices like the GPU converter: `vertical` is `[batch, heads, nnz_v]`,
/// `slash` is `[batch, heads, nnz_s]`, `seqlens` is `[batch]` (each clamped to
/// `[0, context]`), and the index has `ceil(context / 64)` row blocks.
///
/// # Panics
///
/// If a length does not match its shape.
#[allow(clippy::too_many_arguments)]
pub fn convert_cpu(
    seqlens: &[i32],
    vertical: &[i32],
    slash: &[i32],
    batch: usize,
    heads: usize,
    nnz_v: usize,
    nnz_s: usize,
    context: usize,
) -> HostVerticalSlashIndex {
    assert_eq!(seqlens.len(), batch, "seqlens length");
    assert_eq!(vertical.len(), batch * heads * nnz_v, "vertical length");
    assert_eq!(slash.len(), batch * heads * nnz_s, "slash length");
    let shape = IndexShape { batch, heads, rows: context.div_ceil(BLOCK), nnz_s, nnz_v };
    let mut index = HostVerticalSlashIndex::zeros(shape).unwrap_or_else(|| panic!("{shape:?} overflows"));
    for (b, &seqlen) in seqlens.iter().enumerate() {
        let length = seqlen.clamp(0, context as i32);
        for h in 0..heads {
            let bh = b * heads + h;
            let in_range = |raw: &[i32]| {
                let mut valid: Vec<i32> = raw.iter().copied().filter(|x| (0..length).contains(x)).collect();
                valid.sort_unstable();
                valid.dedup();
                valid
            };
            let verticals = in_range(&vertical[bh * nnz_v..(bh + 1) * nnz_v]);
            let slashes = in_range(&slash[bh * nnz_s..(bh + 1) * nnz_s]);
            for r in 0..shape.rows {
                let start_m = (r * BLOCK) as i32;
                if start_m >= length {
                    break;
                }
                let end_m = start_m + BLOCK as i32;
                let ranges = row_ranges(&slashes, end_m);
                let starts: Vec<i32> = ranges.iter().flat_map(|&(start, end)| (start..end).step_by(BLOCK)).collect();
                let columns: Vec<i32> = verticals[..verticals.partition_point(|&v| v < end_m)]
                    .iter()
                    .copied()
                    .filter(|&v| !covered(&ranges, v))
                    .collect();
                let row = shape.row(b, h, r);
                index.block_count[row] = starts.len() as i32;
                index.block_offset[row * nnz_s..row * nnz_s + starts.len()].copy_from_slice(&starts);
                index.column_count[row] = columns.len() as i32;
                index.column_index[row * nnz_v..row * nnz_v + columns.len()].copy_from_slice(&columns);
            }
        }
    }
    index
}
