//! CPU models of the selections of `templates/index/est_select.cu.tera`:
//!
//! - the vertical-slash top-k ([`segmented_top_k`]): a radix select whose digit histograms are
//!   summed over segments of the row (one GPU block each), then per segment the keys above and
//!   equal to the threshold, then the ordered writes, each segment placing its keys from the counts
//!   of the segments before it and per (step, warp) counts in index order;
//! - the block-sparse estimate: the error of its scores (TF32 tensor-core products of f32 values
//!   split in two, [`split_tf32`], within [`block_score_tolerance`] of the exact dot) and its top-k
//!   ([`block_top_k`]: the threshold one bit at a time, the low bits counted over the keys that
//!   share its prefix, then the selected candidates placed from 32-candidate words in index order),
//!   and its streaming form for k up to [`SELECT_STREAM_BUFFER`] - [`SELECT_STREAM_CHUNK`]
//!   ([`stream_top_k`]: chunks from the causal edge back into a buffer of the best so far).
//!
//! The tests check the selections against a plain sort (ties and forced keys included); the GPU
//! tests check the selection kernels against these models exactly, the block scores against the
//! f64 dots within the tolerance, and the estimates against the f64 references.

use minf_runtime::codegen::abi::{
    RADIX_BINS, SELECT_PREFIX_BITS, SELECT_SEGMENT_KEYS, SELECT_SEGMENT_THREADS, SELECT_STREAM_BUFFER,
    SELECT_STREAM_CHUNK,
};

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

/// The float whose [`order_key`] is `key` (every key but 0, the image of NaN).
pub fn key_value(key: u32) -> f32 {
    f32::from_bits(if key & 0x8000_0000 != 0 { key & 0x7fff_ffff } else { !key })
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

/// A finite f32 as the block score pass splits it for its TF32 products: `hi`, the value rounded
/// half up to its top 10 mantissa bits, and `lo`, the rest cut to 10 bits (both exact TF32 values).
pub fn split_tf32(x: f32) -> (f32, f32) {
    let hi = f32::from_bits(x.to_bits().wrapping_add(0x1000) & 0xffff_e000);
    let lo = f32::from_bits((x - hi).to_bits() & 0xffff_e000);
    (hi, lo)
}

/// How far a block score may lie from the exact dot, as a share of `sum |q_i k_i|`: 2^-19 for the
/// split products (the dropped `lo * lo`, the parts' rounding) and 4 units in the last place
/// (2^-21) for each of the `3 * head_dim / 8` tensor-core additions into the f32 accumulator.
pub fn block_score_tolerance(head_dim: usize) -> f64 {
    2f64.powi(-19) + (3 * head_dim.div_ceil(8)) as f64 * 2f64.powi(-21)
}

/// The `k`-th largest of `keys` (`1 <= k <= keys.len()`) and how many keys equal to it the top `k`
/// take, as the block selection finds it: bit by bit from the top, a bit set when at least `k` keys
/// lie at or above the prefix with it; the first [`SELECT_PREFIX_BITS`] bits counted over every
/// key, the rest over the keys that share those bits (the others are above or below whatever the
/// low bits turn out to be).
pub fn block_threshold(keys: &[u32], k: usize) -> (u32, usize) {
    let low_bits = 32 - SELECT_PREFIX_BITS;
    let at_least = |keys: &[u32], candidate: u32| keys.iter().filter(|&&v| v >= candidate).count();
    let mut threshold = 0u32;
    for bit in (low_bits..32).rev() {
        let candidate = threshold | 1 << bit;
        if at_least(keys, candidate) >= k {
            threshold = candidate;
        }
    }
    let prefix = threshold >> low_bits;
    let above_prefix = keys.iter().filter(|&&v| v >> low_bits > prefix).count();
    let survivors: Vec<u32> = keys.iter().copied().filter(|&v| v >> low_bits == prefix).collect();
    let need = k - above_prefix;
    for bit in (0..low_bits).rev() {
        let candidate = threshold | 1 << bit;
        if at_least(&survivors, candidate) >= need {
            threshold = candidate;
        }
    }
    let above = above_prefix + survivors.iter().filter(|&&v| v > threshold).count();
    (threshold, k - above)
}

/// The indices of the `k` largest `keys` (`k` clamped to the length) as the block selection finds
/// them: every candidate when `k` is the length; otherwise [`block_threshold`], then per word of 32
/// candidates in index order those above the threshold and the equal ones while fewer than
/// `remaining` equal ones came before; ascending.
pub fn block_top_k(keys: &[u32], k: usize) -> Vec<usize> {
    let k = k.min(keys.len());
    if k == keys.len() {
        return (0..k).collect();
    }
    let (threshold, remaining) = block_threshold(keys, k);
    let mut out = Vec::with_capacity(k);
    let mut equal_rank = 0;
    for (w, word) in keys.chunks(WARP).enumerate() {
        for (bit, &v) in word.iter().enumerate() {
            let taken = v > threshold || (v == threshold && equal_rank < remaining);
            equal_rank += usize::from(v == threshold);
            if taken && out.len() < k {
                out.push(WARP * w + bit);
            }
        }
    }
    out
}

/// The `k` best of `held` buffered (key, block) candidates as the streaming selection's compaction
/// keeps them: the k-th largest key found bit by bit from the top, every key above it, then the
/// equal ones with the smallest blocks (a 16-bit bound found the same way), in buffer order.
/// Returns the k-th largest key, the new bar.
fn stream_compact(buffer: &mut Vec<(u32, u32)>, k: usize) -> u32 {
    let mut threshold = 0u32;
    for bit in (0..32).rev() {
        let candidate = threshold | 1 << bit;
        if buffer.iter().filter(|&&(key, _)| key >= candidate).count() >= k {
            threshold = candidate;
        }
    }
    let remaining = k - buffer.iter().filter(|&&(key, _)| key > threshold).count();
    let mut last_block = u32::MAX;
    if buffer.iter().filter(|&&(key, _)| key == threshold).count() > remaining {
        last_block = 0;
        for bit in (0..16).rev() {
            let candidate = last_block | 1 << bit;
            let below = buffer.iter().filter(|&&(key, block)| key == threshold && block < candidate).count();
            if below < remaining {
                last_block = candidate;
            }
        }
    }
    buffer.retain(|&(key, block)| key > threshold || (key == threshold && block <= last_block));
    threshold
}

/// The indices of the `k` largest `keys` (`k` clamped to the length; `k` up to
/// [`SELECT_STREAM_BUFFER`] - [`SELECT_STREAM_CHUNK`], at most 65,536 keys) as the streaming block
/// selection finds them: chunks of [`SELECT_STREAM_CHUNK`] keys from the end back; a key joins the
/// buffer when it reaches the bar (0 until the first compaction); a chunk whose joining keys would
/// overflow [`SELECT_STREAM_BUFFER`] first compacts the buffer to its `k` best, which raises the
/// bar; at the end the buffer is compacted to `k` and its blocks come out ascending.
pub fn stream_top_k(keys: &[u32], k: usize) -> Vec<usize> {
    let (buffer_len, chunk) = (SELECT_STREAM_BUFFER as usize, SELECT_STREAM_CHUNK as usize);
    assert!(k <= buffer_len - chunk && keys.len() <= 1 << 16, "outside the streaming selection's range");
    let k = k.min(keys.len());
    if k == keys.len() {
        return (0..k).collect();
    }
    let mut buffer: Vec<(u32, u32)> = Vec::with_capacity(buffer_len);
    let mut bar = 0u32;
    let mut end = keys.len();
    while end > 0 {
        let start = end.saturating_sub(chunk);
        let joining = keys[start..end].iter().filter(|&&key| key >= bar).count();
        if buffer.len() + joining > buffer_len {
            bar = stream_compact(&mut buffer, k);
        }
        buffer.extend((start..end).filter(|&c| keys[c] >= bar).map(|c| (keys[c], c as u32)));
        end = start;
    }
    if buffer.len() > k {
        stream_compact(&mut buffer, k);
    }
    let mut out: Vec<usize> = buffer.iter().map(|&(_, block)| block as usize).collect();
    out.sort_unstable();
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

    #[test]
    fn split_products_are_within_the_block_score_tolerance() {
        for head_dim in [64, 96, 128, 256] {
            for seed in 0..20u64 {
                let q = crate::random_normal(head_dim, 1000 + seed);
                let k = crate::random_normal(head_dim, 2000 + seed);
                let exact: f64 = q.iter().zip(&k).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
                let magnitude: f64 = q.iter().zip(&k).map(|(&a, &b)| (f64::from(a) * f64::from(b)).abs()).sum();
                // The three products the kernel adds, summed exactly: the split alone.
                let split: f64 = q
                    .iter()
                    .zip(&k)
                    .map(|(&a, &b)| {
                        let ((ah, al), (bh, bl)) = (split_tf32(a), split_tf32(b));
                        let (ah, al, bh, bl) = (f64::from(ah), f64::from(al), f64::from(bh), f64::from(bl));
                        al * bh + ah * bl + ah * bh
                    })
                    .sum();
                assert!((split - exact).abs() <= 2f64.powi(-19) * magnitude, "d {head_dim} seed {seed}: split");
                for x in q.iter().chain(&k) {
                    let (hi, lo) = split_tf32(*x);
                    assert_eq!(hi.to_bits() & 0x1fff, 0, "{x}: hi is TF32");
                    assert_eq!(lo.to_bits() & 0x1fff, 0, "{x}: lo is TF32");
                    assert!(
                        (f64::from(hi) + f64::from(lo) - f64::from(*x)).abs() <= 2f64.powi(-21) * f64::from(x.abs())
                    );
                }
            }
        }
    }

    #[test]
    fn key_value_inverts_order_key() {
        for x in [0.0f32, -0.0, 1.5, -1.5, f32::MIN_POSITIVE, -3.25e-20, 7.0e30, f32::INFINITY, f32::NEG_INFINITY] {
            assert_eq!(key_value(order_key(x)).to_bits(), x.to_bits(), "{x}");
        }
    }

    #[test]
    fn the_block_threshold_is_the_kth_largest_key() {
        let mut rng = TestRng::new(5);
        // Keys spread over every prefix, keys sharing one prefix, and NaN images (0) with keys
        // below the first prefix bit, where the threshold can end at 0.
        let spreads: [fn(u64) -> u32; 3] =
            [|x| x as u32, |x| 0xbf80_0000 | (x as u32 & 0xfff), |x| (x % 5) as u32 * (x % 3) as u32];
        for spread in spreads {
            let keys: Vec<u32> = (0..5000).map(|_| spread(rng.next_u64())).collect();
            let mut sorted = keys.clone();
            sorted.sort_unstable_by(|a, b| b.cmp(a));
            for k in [1, 2, 100, 2500, 4999, 5000] {
                let (threshold, remaining) = block_threshold(&keys, k);
                assert_eq!(threshold, sorted[k - 1], "k {k}");
                let above = sorted.iter().filter(|&&v| v > threshold).count();
                assert!(remaining >= 1, "k {k}");
                assert_eq!(above + remaining, k, "k {k}");
            }
        }
    }

    #[test]
    fn streaming_selection_equals_a_sort() {
        let mut rng = TestRng::new(41);
        let most = (SELECT_STREAM_BUFFER - SELECT_STREAM_CHUNK) as usize;
        // Candidate counts below one chunk, across chunk and buffer edges, and of a 1M-token prompt.
        for len in [1, 5, 100, 255, 256, 257, 511, 512, 513, 1000, 2048, 16_384] {
            for distinct in [1u64, 3, 40, u64::from(u32::MAX)] {
                let keys: Vec<u32> = (0..len).map(|_| order_key((rng.next_u64() % distinct) as f32 - 7.0)).collect();
                for k in [1, 3, 100, most, len - 1, len] {
                    let k = k.clamp(1, most);
                    assert_eq!(stream_top_k(&keys, k), sorted_top_k(&keys, k), "len {len} distinct {distinct} k {k}");
                }
            }
        }
    }

    #[test]
    fn streaming_selection_keeps_the_smaller_blocks_of_equal_keys_when_the_bar_rises_late() {
        // Keys rising towards the row's start, the order the chunks are read in reversed: every
        // chunk joins whole and each overflow compacts; then steps of equal keys across chunks.
        let most = (SELECT_STREAM_BUFFER - SELECT_STREAM_CHUNK) as usize;
        let rising: Vec<u32> = (0..4000u32).map(|c| 4000 - c).collect();
        let steps: Vec<u32> = (0..4000u32).map(|c| 100 + (c / 300) % 4).collect();
        let zeros_then_ones: Vec<u32> = (0..3000u32).map(|c| u32::from(c % 700 == 0)).collect();
        for keys in [rising, steps, zeros_then_ones] {
            for k in [1, 7, 100, most] {
                assert_eq!(stream_top_k(&keys, k), sorted_top_k(&keys, k), "k {k}");
            }
        }
    }

    proptest::proptest! {
        /// Any row the streaming selection takes, any k it holds: the same blocks as a sort.
        #[test]
        fn streaming_selection_equals_a_sort_on_any_row(
            keys in proptest::collection::vec(proptest::prop_oneof![0u32..4, proptest::num::u32::ANY], 1..3000),
            k in 1usize..=(SELECT_STREAM_BUFFER - SELECT_STREAM_CHUNK) as usize,
        ) {
            proptest::prop_assert_eq!(stream_top_k(&keys, k), sorted_top_k(&keys, k));
        }
    }

    #[test]
    fn block_selection_equals_a_sort() {
        let mut rng = TestRng::new(29);
        // Candidate counts of a 1M-token prompt's query blocks and fewer than one per warp.
        for len in [1, 5, 8, 100, 255, 256, 1000, 2048, 16_384] {
            for distinct in [1u64, 3, 40, u64::from(u32::MAX)] {
                let keys: Vec<u32> = (0..len).map(|_| order_key((rng.next_u64() % distinct) as f32 - 7.0)).collect();
                for k in [1, 3, 100, len - 1, len] {
                    let k = k.max(1);
                    assert_eq!(block_top_k(&keys, k), sorted_top_k(&keys, k), "len {len} distinct {distinct} k {k}");
                }
            }
        }
    }
}
