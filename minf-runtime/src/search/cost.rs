//! The kernel-aware cost of a candidate: the work the generated kernel does, counted in units of
//! 64 query rows × 64 keys of tile computation (masked or idle parts of a tile included), on the
//! sampled 128-row blocks of a prompt ([`RowSample`]).
//!
//! - **Index-driven patterns** (vertical-slash, block-sparse) on 64-row blocks: per index row,
//!   one unit per listed 64-key range (a diagonal costs a whole 64-key range however few of its
//!   keys are causal) and one per 64 gathered columns, rounded up ([`narrow_units`]).
//! - The same on **128-row blocks** (the default `wgmma` tile on sm_90a, 128-key tiles): the block
//!   runs index rows `2R` and `2R + 1` together and pairs the ranges listed by the same halves
//!   (both, the first only, the second only) into 128-key tiles, a range left without a partner
//!   taking a tile of its own (its idle half still computed); a range only one half lists leaves
//!   the other warpgroup idle. The merged columns cost 128 rows × 128 keys per 128 columns, rounded
//!   up ([`wide_units`]). Which of the two a head ran is what the per-head tile choice picked on
//!   the device.
//! - **A-shape**: per kernel block of `block_m` rows, the sink range and the window range, each
//!   walked in `block_n`-key tiles as the A-shape schedule does ([`a_shape_units`]).
//!
//! The budget a head is compared at is [`budget_units`]: `budget_keys` keys for every sampled query
//! row (at most its causal keys), in the same units.

use crate::attention::AShape;
use crate::vertical_slash::BLOCK;
use std::ops::Range;

/// Query rows of a sampled block: two index rows.
pub const SAMPLE_BLOCK_ROWS: usize = 2 * BLOCK;

/// The 128-row blocks of a prompt that are scored and costed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowSample {
    /// Tokens of the prompt.
    pub seq: usize,
    /// Sampled 128-row block ids (rows `128 B .. min(128 B + 128, seq)`), ascending.
    pub blocks: Vec<usize>,
}

impl RowSample {
    /// Every 128-row block when there are at most `max_blocks` (or `max_blocks` is 0); otherwise
    /// `max_blocks` blocks evenly spaced over the prompt, the last block always among them:
    /// block `(i + 1) * P / max_blocks - 1` for `i < max_blocks`, with `P = ceil(seq / 128)`.
    pub fn new(seq: usize, max_blocks: usize) -> RowSample {
        let pairs = seq.div_ceil(SAMPLE_BLOCK_ROWS);
        let blocks = if max_blocks == 0 || pairs <= max_blocks {
            (0..pairs).collect()
        } else {
            (0..max_blocks).map(|i| (i + 1) * pairs / max_blocks - 1).collect()
        };
        RowSample { seq, blocks }
    }

    /// The query rows of sampled block `block`.
    pub fn rows(&self, block: usize) -> Range<usize> {
        let start = block * SAMPLE_BLOCK_ROWS;
        start.min(self.seq)..(start + SAMPLE_BLOCK_ROWS).min(self.seq)
    }

    /// Query rows sampled in all.
    pub fn row_count(&self) -> usize {
        self.blocks.iter().map(|&b| self.rows(b).len()).sum()
    }

    /// The index rows (64-row blocks) of sampled block `block`: one or two.
    pub fn index_rows(&self, block: usize) -> Range<usize> {
        let rows = self.seq.div_ceil(BLOCK);
        (2 * block).min(rows)..(2 * block + 2).min(rows)
    }
}

/// What one index row lists: 64-key range starts (block ids times 64 for block-sparse) and
/// gathered columns.
#[derive(Debug, Clone, Copy, Default)]
pub struct IndexRow<'a> {
    /// Range starts (any order).
    pub starts: &'a [i32],
    /// Gathered columns (any order).
    pub columns: &'a [i32],
}

/// Units a 64-row block computes for one index row: one per range, one per 64 columns.
pub fn narrow_units(row: IndexRow<'_>) -> u64 {
    (row.starts.len() + row.columns.len().div_ceil(BLOCK)) as u64
}

/// Units a 128-row block with 128-key tiles computes for index rows `first` and `second` (absent
/// for a last block of one index row): four per tile, where the ranges listed by both halves, by
/// the first only and by the second only pair up into tiles separately (an odd one out takes a
/// tile of its own), and four per 128 distinct columns.
pub fn wide_units(first: IndexRow<'_>, second: Option<IndexRow<'_>>) -> u64 {
    let second = second.unwrap_or_default();
    let (first_starts, second_starts) = (sorted_distinct(first.starts), sorted_distinct(second.starts));
    let shared = common(&first_starts, &second_starts);
    let range_tiles =
        shared.div_ceil(2) + (first_starts.len() - shared).div_ceil(2) + (second_starts.len() - shared).div_ceil(2);
    let (first_columns, second_columns) = (sorted_distinct(first.columns), sorted_distinct(second.columns));
    let columns = first_columns.len() + second_columns.len() - common(&first_columns, &second_columns);
    (4 * range_tiles + 4 * columns.div_ceil(2 * BLOCK)) as u64
}

/// `values` ascending without repeats (the index's lists already are: no sort then).
fn sorted_distinct(values: &[i32]) -> Vec<i32> {
    let mut sorted = values.to_vec();
    if !sorted.windows(2).all(|w| w[0] <= w[1]) {
        sorted.sort_unstable();
    }
    sorted.dedup();
    sorted
}

/// How many values two ascending lists without repeats share.
fn common(a: &[i32], b: &[i32]) -> usize {
    let (mut i, mut j, mut shared) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                shared += 1;
                i += 1;
                j += 1;
            }
        }
    }
    shared
}

/// Units the A-shape kernel (blocks of `block_m` rows, `block_n`-key tiles) computes for the kernel
/// blocks that start in query rows `rows` of a `seq`-token prompt: per block, the sinks
/// `[0, min(n_init, window start))` and the window `[max(0, m - n_local + 1), last row]`, each in
/// `block_n`-key tiles.
pub fn a_shape_units(shape: AShape, seq: usize, rows: Range<usize>, block_m: usize, block_n: usize) -> f64 {
    let (block_m, block_n) = (block_m.max(1), block_n.max(1));
    let first = rows.start.div_ceil(block_m) * block_m;
    let tiles: usize = (first..rows.end.min(seq))
        .step_by(block_m)
        .map(|m| {
            let last_row = (m + block_m).min(seq) - 1;
            let local_start = (m + 1).saturating_sub(shape.n_local);
            let sink_end = shape.n_init.min(local_start);
            sink_end.div_ceil(block_n) + (last_row + 1 - local_start).div_ceil(block_n)
        })
        .sum();
    (tiles * block_m * block_n) as f64 / (BLOCK * BLOCK) as f64
}

/// The budget of the sampled rows in units: `min(budget_keys, causal keys)` keys per index row,
/// 64 rows each, over the sampled index rows.
pub fn budget_units(sample: &RowSample, budget_keys: usize) -> f64 {
    sample
        .blocks
        .iter()
        .flat_map(|&b| sample.index_rows(b))
        .map(|r| {
            let rows = ((r + 1) * BLOCK).min(sample.seq) - r * BLOCK;
            let causal = ((r + 1) * BLOCK).min(sample.seq);
            budget_keys.min(causal) as f64 / BLOCK as f64 * rows as f64 / BLOCK as f64
        })
        .sum()
}

/// Whether an index-driven head ran on 128-row blocks ([`wide_units`]) or 64-row blocks
/// ([`narrow_units`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowBlocks {
    /// 64-row blocks.
    Narrow,
    /// 128-row blocks.
    Wide,
}

/// Units of one head's index over the sampled blocks; `row(r)` gives index row `r`'s lists.
pub fn index_units<'a>(sample: &RowSample, blocks: RowBlocks, row: impl Fn(usize) -> IndexRow<'a>) -> u64 {
    sample
        .blocks
        .iter()
        .map(|&b| {
            let rows = sample.index_rows(b);
            match blocks {
                RowBlocks::Narrow => rows.map(|r| narrow_units(row(r))).sum(),
                RowBlocks::Wide if rows.len() == 2 => wide_units(row(rows.start), Some(row(rows.start + 1))),
                RowBlocks::Wide => rows.map(|r| wide_units(row(r), None)).sum(),
            }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_whole_blocks_spread_over_the_prompt() {
        let all = RowSample::new(1000, 32);
        assert_eq!(all.blocks, (0..8).collect::<Vec<_>>());
        assert_eq!(all.rows(7), 896..1000);
        assert_eq!(all.index_rows(7), 14..16);
        assert_eq!(all.row_count(), 1000);
        assert_eq!(RowSample::new(1000, 0).blocks.len(), 8);
        let odd = RowSample::new(130, 4);
        assert_eq!((odd.blocks.clone(), odd.index_rows(1), odd.rows(1)), (vec![0, 1], 2..3, 128..130));
        let spread = RowSample::new(128 * 100, 4);
        assert_eq!(spread.blocks, vec![24, 49, 74, 99]);
        assert_eq!(spread.row_count(), 512);
        let many = RowSample::new(131_072, 32);
        assert_eq!(many.blocks.len(), 32);
        assert_eq!(*many.blocks.last().unwrap(), 1023);
        assert!(many.blocks.windows(2).all(|w| w[1] - w[0] == 32));
    }

    #[test]
    fn index_rows_cost_their_ranges_and_column_tiles() {
        let row = |starts: &'static [i32], columns: &'static [i32]| IndexRow { starts, columns };
        assert_eq!(narrow_units(row(&[0, 100, 1000], &[])), 3);
        let columns: Vec<i32> = (0..65).collect();
        assert_eq!(narrow_units(IndexRow { starts: &[5], columns: &columns }), 3);
        // Halves sharing every start (a band) cost the starts once, for 128 rows, two per tile:
        // three shared starts take two tiles.
        assert_eq!(wide_units(row(&[0, 64, 128], &[]), Some(row(&[64, 128, 0], &[]))), 8);
        assert_eq!(wide_units(row(&[0, 64, 128, 192], &[]), Some(row(&[0, 64, 128, 192], &[]))), 8);
        // Scattered halves: each start costs 128 rows though only one half needs it; each half's
        // own starts pair up.
        assert_eq!(wide_units(row(&[0, 500], &[]), Some(row(&[64, 564], &[]))), 8);
        // One shared start and one of each half's own: three tiles, each alone.
        assert_eq!(wide_units(row(&[0, 128], &[]), Some(row(&[0, 256], &[]))), 12);
        assert_eq!(wide_units(row(&[0], &[]), None), 4);
        // Columns: merged, 128 per tile of 128 rows.
        assert_eq!(wide_units(row(&[], &[1, 2, 3]), Some(row(&[], &[3, 4]))), 4);
        let many: Vec<i32> = (0..129).collect();
        assert_eq!(wide_units(IndexRow { starts: &[], columns: &many }, None), 8);
        let sample = RowSample::new(256, 0);
        let lists = [row(&[0], &[]), row(&[0, 64], &[3]), row(&[64, 128], &[]), row(&[64, 128, 192], &[7])];
        assert_eq!(index_units(&sample, RowBlocks::Narrow, |r| lists[r]), 1 + 3 + 2 + 4);
        // Block 0: start 0 shared, 64 the second half's own; block 1: 64 and 128 shared (one tile),
        // 192 the second half's own.
        assert_eq!(index_units(&sample, RowBlocks::Wide, |r| lists[r]), (8 + 4) + (8 + 4));
    }

    #[test]
    fn a_shape_tiles_follow_the_schedule() {
        let shape = AShape { n_init: 100, n_local: 800 };
        // Rows 0..64: the window starts at 0, no sink range; one 64-key tile.
        assert_eq!(a_shape_units(shape, 10_000, 0..64, 64, 64), 1.0);
        // Rows 4096..4160: window [3297, 4159] = 863 keys = 14 tiles, sinks 100 keys = 2 tiles.
        assert_eq!(a_shape_units(shape, 10_000, 4096..4160, 64, 64), 16.0);
        // 128-row blocks with 128-key tiles: window [3297, 4223] = 927 keys = 8 tiles, sink 1;
        // each tile is 2 x 2 units.
        assert_eq!(a_shape_units(shape, 10_000, 4096..4224, 128, 128), 36.0);
        // The same rows in 64-row blocks: two blocks.
        assert_eq!(a_shape_units(shape, 10_000, 4096..4224, 64, 64), 32.0);
        // 128-row blocks with 32-key tiles (sm_8x): window 927 keys = 29 tiles, sinks 100 = 4 tiles,
        // each half a unit per 64 rows.
        assert_eq!(a_shape_units(shape, 10_000, 4096..4224, 128, 32), 33.0);
        // A window covering everything: causal keys only.
        let wide = AShape { n_init: 4, n_local: 1 << 20 };
        assert_eq!(a_shape_units(wide, 200, 128..200, 128, 128), 8.0);
    }

    #[test]
    fn budgets_give_each_row_its_keys_or_its_causal_keys() {
        let sample = RowSample::new(256, 0);
        // Index rows 0..4 have 64, 128, 192, 256 causal keys; a budget of 100 keys gives
        // 64 + 100 + 100 + 100 keys.
        assert!((budget_units(&sample, 100) - 364.0 / 64.0).abs() < 1e-12);
        // A partial last row counts its rows only.
        let short = RowSample::new(96, 0);
        assert!((budget_units(&short, 1000) - (1.0 + 96.0 / 64.0 * 0.5)).abs() < 1e-12);
    }
}
