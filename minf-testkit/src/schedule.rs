//! The CPU model of the index-driven schedule: which key tiles the attention kernels compute for a
//! vertical-slash index ([`HostVerticalSlashIndex`]) or a block-sparse one
//! ([`HostBlockSparseIndex`], whose key blocks the schedule walks as 64-key ranges), batch 0.
//!
//! - **64-row blocks** ([`narrow_tiles`]): each 64-row block computes one 64-key tile per range of
//!   its index row and gathers its columns 64 at a time ([`narrow_gathered_tiles`]).
//! - **128-row blocks** ([`wide_block`], [`wide_tiles`]): a 128-row block runs the two 64-row index
//!   rows `r` and `r + 1` together, one half each. It walks the halves' range starts in ascending
//!   order; a start both halves list belongs to both, one only one half lists to that half. Any two
//!   starts with the same halves share a 128-key tile; a start left without a partner gets a 64-key
//!   tile. The columns of both rows are merged into one ascending stream (a column both list is
//!   loaded once), 128 per tile, always masked.
//!
//! `examples/index_tiles.rs` prints both counts for an index estimated from the structured inputs.

use minf_runtime::block_sparse::HostBlockSparseIndex;
use minf_runtime::vertical_slash::{HostVerticalSlashIndex, BLOCK};

/// What the 128-row schedule computes, in tiles (summed over the blocks it was given).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct WideTiles {
    /// 128-key range tiles both halves compute.
    pub both: usize,
    /// 128-key range tiles one half computes (the other half idles).
    pub one_half: usize,
    /// 64-key range tiles (a range left without a partner).
    pub narrow: usize,
    /// Range tiles that need the mask (narrow, past the sequence, or reaching the block's rows).
    pub masked: usize,
    /// Merged column tiles (always masked).
    pub columns: usize,
    /// One-half range tiles right after a one-half tile of the same half, in the walk's order (the
    /// other consumer idles through both).
    pub one_half_after_same: usize,
    /// One-half range tiles right after a one-half tile of the other half (each consumer has one
    /// of the two, so they can run side by side).
    pub one_half_after_other: usize,
    /// 64x64 units of work both halves share.
    pub shared_units: f64,
    /// 64x64 units of work only one half needs.
    pub single_units: f64,
}

impl WideTiles {
    /// The share of the listed keys both halves have in common, counted as the tile chooser
    /// ([`TileChoice`](minf_runtime::TileChoice)) counts it: a key both halves list counts once
    /// per half. 0 when nothing is listed.
    pub fn shared_share(&self) -> f64 {
        let listed = 2.0 * self.shared_units + self.single_units;
        if listed == 0.0 {
            0.0
        } else {
            2.0 * self.shared_units / listed
        }
    }
}

/// Adds to `out` what the 128-row block over index rows `r` and, if `second`, `r + 1` of head `h`
/// computes, for a sequence of `seq` tokens (the last block of an odd row count has one row).
pub fn wide_block(index: &HostVerticalSlashIndex, h: usize, r: usize, second: bool, seq: usize, out: &mut WideTiles) {
    let rows = if second { r..r + 2 } else { r..r + 1 };
    let halves: Vec<Vec<i64>> = rows.map(|row| index.ranges(0, h, row).iter().map(|&s| s as i64).collect()).collect();
    wide_ranges(&halves, r as i64 * BLOCK as i64, seq, out);
    let mut columns: Vec<i32> = index.columns(0, h, r).to_vec();
    if second {
        columns.extend_from_slice(index.columns(0, h, r + 1));
    }
    let listed = columns.len();
    columns.sort_unstable();
    columns.dedup();
    out.columns += columns.len().div_ceil(2 * BLOCK);
    let shared_columns = listed - columns.len();
    out.shared_units += shared_columns as f64 / BLOCK as f64;
    out.single_units += (columns.len() - shared_columns) as f64 / BLOCK as f64;
}

/// Adds to `out` the range tiles of a 128-row block whose first query row is `m_start`, over its
/// halves' ascending 64-key range starts (one list per half).
fn wide_ranges(halves: &[Vec<i64>], m_start: i64, seq: usize, out: &mut WideTiles) {
    let block = BLOCK as i64;
    let mut next = vec![0usize; halves.len()];
    // A start waiting for a partner, per membership (bit 0: the first half, bit 1: the second).
    let mut pending: [Option<i64>; 3] = [None; 3];
    // The halves of the previous tile if it was a one-half range tile.
    let mut previous_one_half: Option<usize> = None;
    let mut tile = |first: i64, last: i64, width: usize, members: usize| {
        let one_half = (width == 2 * BLOCK && members != 3).then_some(members);
        match (previous_one_half, one_half) {
            (Some(before), Some(now)) if before == now => out.one_half_after_same += 1,
            (Some(_), Some(_)) => out.one_half_after_other += 1,
            _ => {}
        }
        previous_one_half = one_half;
        let full = |s: i64| s >= 0 && s + block <= seq as i64;
        let masked = width != 2 * BLOCK || !full(first) || !full(last) || last + block - 1 > m_start;
        out.masked += usize::from(masked);
        let units = (width / BLOCK) as f64;
        if members == 3 {
            out.shared_units += units;
        } else {
            out.single_units += units;
        }
        match (width == 2 * BLOCK, members) {
            (true, 3) => out.both += 1,
            (true, _) => out.one_half += 1,
            _ => out.narrow += 1,
        }
    };
    loop {
        let mut best = i64::MAX;
        let mut members = 0;
        for (half, list) in halves.iter().enumerate() {
            if let Some(&start) = list.get(next[half]) {
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
            Some(first) => tile(first, best, 2 * BLOCK, members),
            None => pending[members - 1] = Some(best),
        }
    }
    for (slot, waiting) in pending.iter().enumerate() {
        if let Some(start) = waiting {
            tile(*start, *start, BLOCK, slot + 1);
        }
    }
}

/// What the 128-row schedule computes for head `h` of a block-sparse index over every 128-row
/// block, for a sequence of `seq` tokens: each listed key block is a 64-key range.
pub fn block_sparse_wide_tiles(index: &HostBlockSparseIndex, h: usize, seq: usize) -> WideTiles {
    let block = BLOCK as i64;
    let mut out = WideTiles::default();
    for r in (0..index.rows).step_by(2) {
        let rows = r..(r + 2).min(index.rows);
        let halves: Vec<Vec<i64>> =
            rows.map(|row| index.blocks(0, h, row).iter().map(|&b| b as i64 * block).collect()).collect();
        wide_ranges(&halves, r as i64 * block, seq, &mut out);
    }
    out
}

/// The tiles the 64-row schedule computes for head `h` of a block-sparse index: one per listed
/// key block.
pub fn block_sparse_narrow_tiles(index: &HostBlockSparseIndex, h: usize) -> usize {
    (0..index.rows).map(|r| index.blocks(0, h, r).len()).sum()
}

/// What the 128-row schedule computes for head `h` over every 128-row block of the index, for a
/// sequence of `seq` tokens.
pub fn wide_tiles(index: &HostVerticalSlashIndex, h: usize, seq: usize) -> WideTiles {
    let rows = index.shape.rows;
    let mut out = WideTiles::default();
    for r in (0..rows).step_by(2) {
        wide_block(index, h, r, r + 1 < rows, seq, &mut out);
    }
    out
}

/// The tiles the 64-row schedule computes for head `h`: one per range, and the columns gathered
/// 64 per tile ([`narrow_gathered_tiles`]), over every index row.
pub fn narrow_tiles(index: &HostVerticalSlashIndex, h: usize) -> usize {
    (0..index.shape.rows).map(|r| index.ranges(0, h, r).len()).sum::<usize>() + narrow_gathered_tiles(index, h)
}

/// Of [`narrow_tiles`], the tiles of gathered columns: each index row's columns, 64 per tile.
pub fn narrow_gathered_tiles(index: &HostVerticalSlashIndex, h: usize) -> usize {
    (0..index.shape.rows).map(|r| index.columns(0, h, r).len().div_ceil(BLOCK)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::convert_cpu;
    use crate::reference::TestRng;
    use minf_runtime::vertical_slash::IndexShape;
    use std::collections::BTreeSet;

    /// One head of `rows` index rows with the given ranges and columns per row.
    fn index(rows: &[(&[i32], &[i32])]) -> HostVerticalSlashIndex {
        let nnz = 8;
        let shape = IndexShape { batch: 1, heads: 1, rows: rows.len(), nnz_s: nnz, nnz_v: nnz };
        let mut index = HostVerticalSlashIndex::zeros(shape).expect("small index");
        for (r, (ranges, columns)) in rows.iter().enumerate() {
            index.block_count[r] = ranges.len() as i32;
            index.block_offset[r * nnz..][..ranges.len()].copy_from_slice(ranges);
            index.column_count[r] = columns.len() as i32;
            index.column_index[r * nnz..][..columns.len()].copy_from_slice(columns);
        }
        index
    }

    #[test]
    fn shared_starts_pair_into_128_key_tiles() {
        // Rows 2 and 3: both list 0 and 64 (one 128-key tile, unmasked: it ends before row 128),
        // only row 3 lists 128 (a 64-key tile). Column 5 is listed by both, 200 and 210 by one.
        let index = index(&[(&[], &[]), (&[], &[]), (&[0, 64], &[5, 200]), (&[0, 64, 128], &[5, 210]), (&[192], &[])]);
        let mut got = WideTiles::default();
        wide_block(&index, 0, 2, true, 320, &mut got);
        let want = WideTiles {
            both: 1,
            one_half: 0,
            narrow: 1,
            masked: 1,
            columns: 1,
            one_half_after_same: 0,
            one_half_after_other: 0,
            shared_units: 2.0 + 1.0 / 64.0,
            single_units: 1.0 + 2.0 / 64.0,
        };
        assert_eq!(got, want);
        // The last block of an odd row count has one row: its range waits for no partner.
        let mut last = WideTiles::default();
        wide_block(&index, 0, 4, false, 320, &mut last);
        assert_eq!((last.narrow, last.masked, last.single_units), (1, 1, 1.0));
        // Over the whole head, and the 64-row count: 5 ranges and two rows of columns.
        let all = wide_tiles(&index, 0, 320);
        assert_eq!((all.both, all.narrow, all.columns), (1, 2, 1));
        assert_eq!(narrow_tiles(&index, 0), 6 + 2);
        assert_eq!(narrow_gathered_tiles(&index, 0), 2);
    }

    #[test]
    fn ranges_with_different_halves_never_share_a_tile() {
        // Row 0 lists 0 alone, row 1 lists 0 and 64: the start 64 belongs to row 1 only, so each
        // start gets a 64-key tile.
        let index = index(&[(&[0], &[]), (&[0, 64], &[])]);
        let got = wide_tiles(&index, 0, 128);
        assert_eq!((got.both, got.one_half, got.narrow, got.masked), (0, 0, 2, 2));
        assert_eq!((got.shared_units, got.single_units), (1.0, 1.0));
        assert!((got.shared_share() - 2.0 / 3.0).abs() < 1e-12);
    }

    /// One head of `rows` query blocks, row `r` of `lists` listing its key blocks.
    fn block_sparse_index(rows: usize, lists: &[(usize, &[i32])]) -> HostBlockSparseIndex {
        let capacity = lists.iter().map(|(_, blocks)| blocks.len()).max().unwrap_or(1);
        let mut index = HostBlockSparseIndex {
            batch: 1,
            heads: 1,
            rows,
            capacity,
            kv_num_blocks: vec![0; rows],
            kv_indices: vec![0; rows * capacity],
        };
        for &(r, blocks) in lists {
            index.kv_num_blocks[r] = blocks.len() as i32;
            index.kv_indices[r * capacity..][..blocks.len()].copy_from_slice(blocks);
        }
        index
    }

    #[test]
    fn block_sparse_blocks_pair_as_64_key_ranges() {
        // Six query blocks; rows 4 and 5 list blocks {0, 1, 4} and {0, 2, 5}: block 0 is shared
        // (a 64-key tile, its partner never comes), 1 and 4 pair in the first half's 128-key tile,
        // 2 and 5 in the second's, right after it; each tile reaching row 256 or a narrow one is
        // masked.
        let index = block_sparse_index(6, &[(4, &[0, 1, 4]), (5, &[0, 2, 5])]);
        let got = block_sparse_wide_tiles(&index, 0, 384);
        let want = WideTiles {
            both: 0,
            one_half: 2,
            narrow: 1,
            masked: 3,
            columns: 0,
            one_half_after_same: 0,
            one_half_after_other: 1,
            shared_units: 1.0,
            single_units: 4.0,
        };
        assert_eq!(got, want);
        assert_eq!(block_sparse_narrow_tiles(&index, 0), 6);
    }

    #[test]
    fn one_half_tiles_count_the_half_before_them() {
        // Rows 4 and 5 list blocks {0, 1, 2, 3} and {4, 5}: the first half's tiles (0, 1) and
        // (2, 3), then the second half's (4, 5), in that order: one after the same half, one after
        // the other.
        let index = block_sparse_index(6, &[(4, &[0, 1, 2, 3]), (5, &[4, 5])]);
        let got = block_sparse_wide_tiles(&index, 0, 384);
        assert_eq!((got.one_half, got.one_half_after_same, got.one_half_after_other), (3, 1, 1));
    }

    #[test]
    fn every_listed_range_is_computed_once_per_half() {
        let mut rng = TestRng::new(17);
        for _ in 0..20 {
            let seq = 64 + rng.below(3000);
            let nnz_s = 1 + rng.below(40);
            let slash: Vec<i32> = (0..nnz_s).map(|_| rng.below(seq) as i32).collect();
            // Verticals outside the sequence: no columns, only ranges.
            let index = convert_cpu(&[seq as i32], &[-1], &slash, 1, 1, 1, nnz_s, seq);
            let rows = index.shape.rows;
            for r in (0..rows).step_by(2) {
                let second = r + 1 < rows;
                let mut got = WideTiles::default();
                wide_block(&index, 0, r, second, seq, &mut got);
                let halves: Vec<&[i32]> = if second {
                    vec![index.ranges(0, 0, r), index.ranges(0, 0, r + 1)]
                } else {
                    vec![index.ranges(0, 0, r)]
                };
                let listed: usize = halves.iter().map(|h| h.len()).sum();
                let distinct: BTreeSet<i32> = halves.iter().flat_map(|h| h.iter().copied()).collect();
                assert_eq!(2.0 * got.shared_units + got.single_units, listed as f64, "row {r} of {index:?}");
                assert_eq!(2 * (got.both + got.one_half) + got.narrow, distinct.len(), "row {r}");
                assert!(got.masked >= got.narrow && got.columns == 0);
            }
        }
    }
}
