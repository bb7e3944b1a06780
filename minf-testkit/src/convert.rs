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
    let lengths: Vec<i32> = seqlens.iter().map(|&n| n.clamp(0, context as i32)).collect();
    convert_chunk_cpu(&lengths, seqlens, vertical, slash, (batch, heads, nnz_v, nnz_s), context, context)
}

/// Converts raw indices of chunks like the GPU converter
/// ([`convert_vertical_slash_chunk_into`](minf_runtime::convert_vertical_slash_chunk_into)):
/// sequence `b` has `kv_lens[b]` keys (clamped to `[0, max_kv_len]`) and its last `q_lens[b]`
/// tokens (clamped to `[0, kv_len]`) are the queries, at absolute positions from
/// `q_offset = kv_len - q_len`. `dims` is `(batch, heads, nnz_v, nnz_s)`; the index has
/// `ceil(max_q_len / 64)` row blocks; row `r` ends at absolute position `q_offset + 64r + 64`, and
/// every range start and column is an absolute key.
///
/// # Panics
///
/// If a length does not match its shape.
pub fn convert_chunk_cpu(
    q_lens: &[i32],
    kv_lens: &[i32],
    vertical: &[i32],
    slash: &[i32],
    (batch, heads, nnz_v, nnz_s): (usize, usize, usize, usize),
    max_q_len: usize,
    max_kv_len: usize,
) -> HostVerticalSlashIndex {
    assert_eq!(q_lens.len(), batch, "q_lens length");
    assert_eq!(kv_lens.len(), batch, "kv_lens length");
    assert_eq!(vertical.len(), batch * heads * nnz_v, "vertical length");
    assert_eq!(slash.len(), batch * heads * nnz_s, "slash length");
    let shape = IndexShape { batch, heads, rows: max_q_len.div_ceil(BLOCK), nnz_s, nnz_v };
    let mut index = HostVerticalSlashIndex::zeros(shape).unwrap_or_else(|| panic!("{shape:?} overflows"));
    for b in 0..batch {
        let length = kv_lens[b].clamp(0, max_kv_len as i32);
        let q_len = q_lens[b].clamp(0, length);
        let q_offset = length - q_len;
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
                if start_m >= q_len {
                    break;
                }
                let end_m = q_offset + start_m + BLOCK as i32;
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

/// The stores the converter's rows pass makes for one output row (`RowWriter` in
/// `templates/index/vs_convert.cu.tera`) whose first entry has flat index `first_index` in the
/// output: `entries` (at most `capacity` kept) grouped by 4-entry aligned groups of the flat index,
/// a full group inside the row as one 16-byte store, the entries of the row's first and last
/// groups one by one. Returns each store as (row index of its first entry, its values).
pub fn grouped_row_stores(first_index: usize, entries: &[i32], capacity: usize) -> Vec<(usize, Vec<i32>)> {
    let kept = &entries[..entries.len().min(capacity)];
    let lead = first_index % 4;
    let mut stores = Vec::new();
    let mut group: Vec<(usize, i32)> = Vec::new();
    for (i, &value) in kept.iter().enumerate() {
        group.push((i, value));
        if (lead + i) % 4 == 3 {
            let start = (i + 1).checked_sub(4);
            match start {
                // The whole group belongs to the row: one vector store.
                Some(start) => stores.push((start, group.iter().map(|e| e.1).collect())),
                None => stores.extend(group.iter().map(|&(i, v)| (i, vec![v]))),
            }
            group.clear();
        }
    }
    stores.extend(group.iter().map(|&(i, v)| (i, vec![v])));
    stores
}

#[cfg(test)]
mod tests {
    use super::*;
    use minf_runtime::vertical_slash::realised_chunk_mask_contains;

    /// Raw inputs of `batch` sequences of `kv_len` keys and `heads` heads.
    fn raw(rng: &mut TestRng, kv_len: i32, batch: usize, heads: usize, nnz: (usize, usize)) -> (Vec<i32>, Vec<i32>) {
        let count = |n| batch * heads * n;
        (
            hostile_raw_indices(rng, count(nnz.0), kv_len, kv_len as usize),
            hostile_raw_indices(rng, count(nnz.1), kv_len, kv_len as usize),
        )
    }

    #[test]
    fn a_whole_prompt_chunk_is_the_one_shot_conversion() {
        let mut rng = TestRng::new(15);
        for kv_len in [1, 63, 64, 65, 1000, 4097] {
            let (vertical, slash) = raw(&mut rng, kv_len, 2, 3, (40, 70));
            let lengths = [kv_len, kv_len - kv_len / 3];
            let one_shot = convert_cpu(&lengths, &vertical, &slash, 2, 3, 40, 70, kv_len as usize);
            let chunk = convert_chunk_cpu(
                &lengths,
                &lengths,
                &vertical,
                &slash,
                (2, 3, 40, 70),
                kv_len as usize,
                kv_len as usize,
            );
            assert_eq!(one_shot, chunk, "kv_len {kv_len}");
        }
    }

    #[test]
    fn a_chunk_at_a_block_boundary_is_the_one_shot_index_shifted() {
        let mut rng = TestRng::new(16);
        let kv_len = 1000;
        let (vertical, slash) = raw(&mut rng, kv_len, 1, 2, (35, 60));
        let full = convert_cpu(&[kv_len], &vertical, &slash, 1, 2, 35, 60, kv_len as usize);
        for q_len in [1000 - 640, 1000 - 64, 1000 - 960] {
            let chunk = convert_chunk_cpu(&[q_len], &[kv_len], &vertical, &slash, (1, 2, 35, 60), q_len as usize, 1000);
            let shift = ((kv_len - q_len) / 64) as usize;
            assert_eq!(chunk.shape.rows, (q_len as usize).div_ceil(64));
            for h in 0..2 {
                for r in 0..chunk.shape.rows {
                    assert_eq!(chunk.ranges(0, h, r), full.ranges(0, h, r + shift), "q_len {q_len} h {h} r {r}");
                    assert_eq!(chunk.columns(0, h, r), full.columns(0, h, r + shift), "q_len {q_len} h {h} r {r}");
                }
            }
        }
    }

    #[test]
    fn chunks_at_any_offset_cover_their_columns_and_diagonals() {
        let mut rng = TestRng::new(17);
        for (kv_len, q_len) in [(1000, 1), (1000, 63), (1000, 64), (1000, 65), (1100, 1000), (130, 67), (77, 77)] {
            let (vertical, slash) = raw(&mut rng, kv_len, 2, 2, (33, 57));
            let q_lens = [q_len, (q_len - 5).max(1)];
            let kv_lens = [kv_len, kv_len - 3];
            let index = convert_chunk_cpu(
                &q_lens,
                &kv_lens,
                &vertical,
                &slash,
                (2, 2, 33, 57),
                q_len as usize,
                kv_len as usize,
            );
            assert_eq!(index.shape.rows, (q_len as usize).div_ceil(64));
            for b in 0..2 {
                let (length, chunk) = (kv_lens[b] as usize, q_lens[b] as usize);
                let q_offset = length - chunk;
                for h in 0..2 {
                    let bh = b * 2 + h;
                    for r in 0..index.shape.rows {
                        let (ranges, columns) = (index.ranges(b, h, r), index.columns(b, h, r));
                        if r * 64 >= chunk {
                            assert!(ranges.is_empty() && columns.is_empty(), "rows past the chunk stay empty");
                            continue;
                        }
                        let end = q_offset + r * 64 + 64;
                        assert!(
                            columns.iter().all(|&c| (c as usize) < end.min(length)),
                            "columns below the block's end"
                        );
                        assert!(columns.windows(2).all(|w| w[0] < w[1]), "columns ascending");
                        assert!(ranges.windows(2).all(|w| w[0] < w[1]) && ranges.iter().all(|&s| s >= 0));
                    }
                    let chosen_v: Vec<usize> = vertical[bh * 33..][..33]
                        .iter()
                        .filter(|&&v| v >= 0 && (v as usize) < length)
                        .map(|&v| v as usize)
                        .collect();
                    let chosen_s: Vec<usize> = slash[bh * 57..][..57]
                        .iter()
                        .filter(|&&s| s >= 0 && (s as usize) < length)
                        .map(|&s| s as usize)
                        .collect();
                    for p in q_offset..length {
                        for &v in chosen_v.iter().filter(|&&v| v <= p) {
                            assert!(
                                realised_chunk_mask_contains(&index, q_offset, b, h, p, v),
                                "b {b} h {h}: ({p}, column {v})"
                            );
                        }
                        for &s in chosen_s.iter().filter(|&&s| s <= p) {
                            assert!(
                                realised_chunk_mask_contains(&index, q_offset, b, h, p, p - s),
                                "b {b} h {h}: ({p}, diagonal {s})"
                            );
                        }
                        assert!(!realised_chunk_mask_contains(&index, q_offset, b, h, p, p + 1), "above the diagonal");
                    }
                }
            }
        }
    }

    #[test]
    fn grouped_row_stores_write_every_entry_once_aligned() {
        for first_index in 0..12 {
            for len in 0..20 {
                for capacity in [0, 1, 3, 4, 5, 17, 40] {
                    let entries: Vec<i32> = (0..len).map(|i| 100 + i).collect();
                    let stores = grouped_row_stores(first_index, &entries, capacity);
                    let mut row = vec![None; len as usize];
                    for (at, values) in &stores {
                        if values.len() > 1 {
                            assert_eq!(values.len(), 4, "vector stores hold 4 entries");
                            assert_eq!((first_index + at) % 4, 0, "vector stores are 16-byte aligned");
                        }
                        for (i, &v) in values.iter().enumerate() {
                            assert!(row[at + i].replace(v).is_none(), "entry {} stored twice", at + i);
                        }
                    }
                    let kept = (len as usize).min(capacity);
                    let want: Vec<Option<i32>> = (0..len as usize).map(|i| (i < kept).then_some(entries[i])).collect();
                    assert_eq!(row, want, "first {first_index} len {len} capacity {capacity}");
                }
            }
        }
    }
}
