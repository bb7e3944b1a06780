//! CPU model of the vertical-slash top-k of `templates/index/est_select.cu.tera`: a radix select
//! whose digit histograms are summed over segments of the row (one GPU block each), then per
//! segment the keys above and equal to the threshold, then the ordered writes, each segment
//! placing its keys from the counts of the segments before it and per (step, warp) counts in
//! index order. The tests check it against a plain sort, ties and forced keys included; the GPU
//! tests check the kernels against the f64 reference's ranking of the GPU's own scores.

use minf_runtime::codegen::abi::{RADIX_BINS, SELECT_SEGMENT_KEYS, SELECT_SEGMENT_THREADS};

/// Scores each block covers.
const SEGMENT: usize = SELECT_SEGMENT_KEYS as usize;
/// Threads per block.
const THREADS: usize = SELECT_SEGMENT_THREADS as usize;
/// Threads per warp.
const WARP: usize = 32;
/// Digits of the three histogram passes, most significant first: (shift, mask).
const DIGITS: [(u32, u32); 3] = [(21, 0x7ff), (10, 0x7ff), (0, 0x3ff)];

/// The order-preserving key of an `f32` (larger float, larger key; NaN lowest), as the kernels
/// compute it.
pub fn order_key(x: f32) -> u32 {
    if x.is_nan() {
        return 0;
    }
    let bits = x.to_bits();
    if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// The `k`-th largest of `keys` (`1 <= k <= keys.len()`) and how many keys equal to it the top `k`
/// take, found by the three histogram passes: per segment a histogram of the next digit of the
/// keys matching the prefix so far, summed over the segments, then the digit whose bin holds the
/// `k`-th largest, walking the bins from the largest digit.
pub fn segmented_threshold(keys: &[u32], k: usize) -> (u32, usize) {
    let mut prefix = 0u32;
    let mut need = k;
    let mut high_mask = 0u32;
    for (shift, mask) in DIGITS {
        let mut histogram = vec![0usize; RADIX_BINS as usize];
        for segment in keys.chunks(SEGMENT) {
            let mut local = vec![0usize; RADIX_BINS as usize];
            for &v in segment.iter().filter(|&&v| v & high_mask == prefix) {
                local[((v >> shift) & mask) as usize] += 1;
            }
            for (total, count) in histogram.iter_mut().zip(local) {
                *total += count;
            }
        }
        let mut above = 0;
        for digit in (0..RADIX_BINS as usize).rev() {
            if above + histogram[digit] >= need {
                prefix |= (digit as u32) << shift;
                need -= above;
                break;
            }
            above += histogram[digit];
        }
        high_mask = u32::MAX << shift;
    }
    (prefix, need)
}

/// The indices of the `k` largest `keys` (`k` clamped to the length), ties to the smaller index,
/// in ascending order, placed as the write pass places them.
pub fn segmented_top_k(keys: &[u32], k: usize) -> Vec<usize> {
    let k = k.min(keys.len());
    if k == 0 {
        return Vec::new();
    }
    let (threshold, remaining) = segmented_threshold(keys, k);
    // The count pass.
    let counts: Vec<(usize, usize)> = keys
        .chunks(SEGMENT)
        .map(|s| (s.iter().filter(|&&v| v > threshold).count(), s.iter().filter(|&&v| v == threshold).count()))
        .collect();
    let mut out = vec![usize::MAX; k];
    for (segment, chunk) in keys.chunks(SEGMENT).enumerate() {
        let above_before: usize = counts[..segment].iter().map(|c| c.0).sum();
        let equal_before: usize = counts[..segment].iter().map(|c| c.1).sum();
        let taken_before = above_before + equal_before.min(remaining);
        // Per (step, warp) in index order: the rank of its first equal key, the position of its
        // first selected key.
        let mut equal_rank = equal_before;
        let mut position = taken_before;
        for step in 0..SEGMENT / THREADS {
            for warp in 0..THREADS / WARP {
                let first = step * THREADS + warp * WARP;
                let lanes = (first..first + WARP).filter(|&i| i < chunk.len());
                let (mut rank, mut at) = (equal_rank, position);
                for i in lanes {
                    let (above, equal) = (chunk[i] > threshold, chunk[i] == threshold);
                    let selected = above || (equal && rank < remaining);
                    if selected {
                        if let Some(slot) = out.get_mut(at) {
                            *slot = segment * SEGMENT + i;
                        }
                        at += 1;
                    }
                    rank += usize::from(equal);
                }
                let equal_here = rank - equal_rank;
                let above_here = (first..first + WARP).filter(|&i| i < chunk.len() && chunk[i] > threshold).count();
                // The scan's arithmetic: selected = above + the equal keys whose rank is below remaining.
                let selected_here = above_here + remaining.saturating_sub(equal_rank).min(equal_here);
                assert_eq!(at - position, selected_here, "segment {segment} step {step} warp {warp}");
                equal_rank = rank;
                position = at;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestRng;

    /// The top `k` by a full sort: keys descending, ties to the smaller index; then ascending.
    fn sorted_top_k(keys: &[u32], k: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_by(|&a, &b| keys[b].cmp(&keys[a]).then(a.cmp(&b)));
        order.truncate(k.min(keys.len()));
        order.sort_unstable();
        order
    }

    #[test]
    fn order_keys_follow_float_order() {
        let values = [f32::NEG_INFINITY, -2.5, -1e-30, -0.0, 0.0, 1e-30, 0.25, 3.0, f32::INFINITY];
        for pair in values.windows(2) {
            assert!(order_key(pair[0]) <= order_key(pair[1]), "{pair:?}");
        }
        assert!(order_key(-1.0) < order_key(1.0));
        assert_eq!(order_key(f32::NAN), 0);
    }

    #[test]
    fn segmented_selection_equals_a_sort() {
        let mut rng = TestRng::new(17);
        // Lengths of one segment, several, and partial last segments.
        for len in [1, 31, 4096, 4097, 3 * 4096 + 17, 9 * 4096] {
            for (distinct, forced) in [(u32::MAX, 0), (5, 30), (1, 0), (1000, 100)] {
                // Probability-like scores (positive floats) with `distinct` values at most, the
                // first `forced` keys at the forced key (u32::MAX) as the kernels rank them.
                let keys: Vec<u32> = (0..len)
                    .map(|i| {
                        if i < forced {
                            u32::MAX
                        } else {
                            let draw = (rng.next_u64() % u64::from(distinct)) as f32;
                            order_key(draw / 1e6)
                        }
                    })
                    .collect();
                for k in [1, 2, 50, 1000, 6096, len - 1, len, len + 5] {
                    let k = k.max(1);
                    assert_eq!(
                        segmented_top_k(&keys, k),
                        sorted_top_k(&keys, k),
                        "len {len} distinct {distinct} forced {forced} k {k}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_threshold_is_the_kth_largest_key() {
        let mut rng = TestRng::new(3);
        let keys: Vec<u32> = (0..10_000).map(|_| order_key((rng.next_u64() % 64) as f32)).collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        for k in [1, 100, 157, 9_999, 10_000] {
            let (threshold, remaining) = segmented_threshold(&keys, k);
            assert_eq!(threshold, sorted[k - 1], "k {k}");
            let above = sorted.iter().filter(|&&v| v > threshold).count();
            assert_eq!(above + remaining, k, "k {k}");
        }
    }
}
