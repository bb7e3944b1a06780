//! CPU reference attention in f64, used by the GPU tests and examples to check kernels; the
//! attention recall of a sparse mask; and the seeded random numbers (`TestRng`, `random_normal`)
//! the tests, examples and benchmarks draw their inputs from.

use minf_runtime::{HostQkv, MinfError};

/// Shape of a reference problem; tensors are contiguous `[batch, seq, heads, head_dim]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReferenceShape {
    /// Sequences in the batch.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
}

impl ReferenceShape {
    /// The shape of `qkv` (batch 1).
    pub fn of(qkv: &HostQkv) -> ReferenceShape {
        ReferenceShape { batch: 1, seq: qkv.seq, heads: qkv.heads, kv_heads: qkv.kv_heads, head_dim: qkv.head_dim }
    }

    /// Checks that `q` is `[batch, seq, heads, head_dim]` and `k` `[batch, seq, kv_heads, head_dim]`
    /// and that `kv_heads` is positive and divides `heads`.
    pub fn check_qk(&self, q: &[f32], k: &[f32]) -> Result<(), MinfError> {
        let ReferenceShape { batch, seq, heads, kv_heads, head_dim } = *self;
        let len = |heads: usize| batch.checked_mul(seq)?.checked_mul(heads)?.checked_mul(head_dim);
        if kv_heads == 0 || heads % kv_heads != 0 {
            return Err(MinfError::Shape(format!("kv_heads {kv_heads} must be positive and divide heads {heads}")));
        }
        if len(heads) != Some(q.len()) || len(kv_heads) != Some(k.len()) {
            return Err(MinfError::Shape(format!(
                "{self:?} needs q of {:?} and k of {:?} elements, got {} and {}",
                len(heads),
                len(kv_heads),
                q.len(),
                k.len()
            )));
        }
        Ok(())
    }
}

/// Maps `f` over `tasks` on all cores, keeping the order.
pub fn parallel_map<T: Sync, R: Send>(tasks: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let chunk = tasks.len().div_ceil(threads).max(1);
    let f = &f;
    let mut parts: Vec<Vec<R>> = tasks.chunks(chunk).map(|_| Vec::new()).collect();
    std::thread::scope(|scope| {
        for (part, out) in tasks.chunks(chunk).zip(parts.iter_mut()) {
            scope.spawn(move || out.extend(part.iter().map(f)));
        }
    });
    parts.into_iter().flatten().collect()
}

/// Reference result for selected rows.
#[derive(Debug, Clone)]
pub struct ReferenceRows {
    /// `(batch, row, head)` of each computed row, in order.
    pub rows: Vec<(usize, usize, usize)>,
    /// `head_dim` outputs per computed row.
    pub out: Vec<f64>,
    /// Natural-log log-sum-exp of the scaled scores per computed row.
    pub lse: Vec<f64>,
}

/// Causal attention for query rows `rows` (every head of every batch entry), computed in f64 on
/// all cores. `scale` multiplies the scores before the softmax.
pub fn causal_attention_rows(
    shape: ReferenceShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scale: f64,
    rows: &[usize],
) -> ReferenceRows {
    masked_attention_rows(shape, q, k, v, scale, rows, |_, _, i, j| j <= i)
}

/// Attention under an arbitrary mask: query `i` of (batch `b`, head `h`) attends to key `j`
/// (`j < seq`) iff `visible(b, h, i, j)`. A row that sees no key has output 0 and lse -inf.
pub fn masked_attention_rows(
    shape: ReferenceShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scale: f64,
    rows: &[usize],
    visible: impl Fn(usize, usize, usize, usize) -> bool + Sync,
) -> ReferenceRows {
    chunk_attention_rows(ChunkShape::whole(shape), q, k, v, scale, rows, visible)
}

/// Shape of a chunk problem: `q_len` queries against `kv_len >= q_len` keys, query row `i` at
/// absolute position `q_offset() + i`; tensors are contiguous, q `[batch, q_len, heads, head_dim]`,
/// k and v `[batch, kv_len, kv_heads, head_dim]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkShape {
    /// Sequences in the batch.
    pub batch: usize,
    /// Queries per sequence.
    pub q_len: usize,
    /// Keys per sequence (the prefix and the chunk).
    pub kv_len: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
}

impl ChunkShape {
    /// A whole prompt: `q_len = kv_len = shape.seq`.
    pub fn whole(shape: ReferenceShape) -> ChunkShape {
        let ReferenceShape { batch, seq, heads, kv_heads, head_dim } = shape;
        ChunkShape { batch, q_len: seq, kv_len: seq, heads, kv_heads, head_dim }
    }

    /// The absolute position of query row 0: `kv_len - q_len` (the causal diagonal aligned
    /// bottom-right); 0 when there are more queries than keys, a shape only non-causal parts have
    /// (their mask does not depend on positions).
    pub fn q_offset(&self) -> usize {
        self.kv_len.saturating_sub(self.q_len)
    }
}

/// Attention of a chunk under an arbitrary mask: query row `i` (of `rows`, chunk-local) of (batch
/// `b`, head `h`) attends to key `j < kv_len` iff `visible(b, h, i, j)` (the masks of
/// [`crate::masks`] take absolute positions, `q_offset + i`). A row that sees no key has output 0
/// and lse -inf. Computed in f64 on all cores.
pub fn chunk_attention_rows(
    shape: ChunkShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scale: f64,
    rows: &[usize],
    visible: impl Fn(usize, usize, usize, usize) -> bool + Sync,
) -> ReferenceRows {
    let ChunkShape { batch, q_len, kv_len, heads, kv_heads, head_dim: d } = shape;
    let group = heads / kv_heads;
    let mut tasks = Vec::new();
    for b in 0..batch {
        for &i in rows {
            for h in 0..heads {
                tasks.push((b, i, h));
            }
        }
    }
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let chunk = tasks.len().div_ceil(threads).max(1);
    let mut out = vec![0.0f64; tasks.len() * d];
    let mut lse = vec![0.0f64; tasks.len()];
    std::thread::scope(|scope| {
        for ((task_chunk, out_chunk), lse_chunk) in
            tasks.chunks(chunk).zip(out.chunks_mut(chunk * d)).zip(lse.chunks_mut(chunk))
        {
            let visible = &visible;
            scope.spawn(move || {
                let mut scores = vec![0.0f64; kv_len];
                for (t, &(b, i, h)) in task_chunk.iter().enumerate() {
                    let kh = h / group;
                    let q_row = &q[((b * q_len + i) * heads + h) * d..][..d];
                    let mut max = f64::NEG_INFINITY;
                    for (j, score) in scores.iter_mut().enumerate() {
                        if !visible(b, h, i, j) {
                            *score = f64::NEG_INFINITY;
                            continue;
                        }
                        let k_row = &k[((b * kv_len + j) * kv_heads + kh) * d..][..d];
                        let dot: f64 = q_row.iter().zip(k_row).map(|(a, b)| *a as f64 * *b as f64).sum();
                        *score = dot * scale;
                        max = max.max(*score);
                    }
                    let mut sum = 0.0;
                    let o = &mut out_chunk[t * d..][..d];
                    o.fill(0.0);
                    if max == f64::NEG_INFINITY {
                        lse_chunk[t] = f64::NEG_INFINITY;
                        continue;
                    }
                    for (j, score) in scores.iter().enumerate() {
                        if *score == f64::NEG_INFINITY {
                            continue;
                        }
                        let p = (score - max).exp();
                        sum += p;
                        let v_row = &v[((b * kv_len + j) * kv_heads + kh) * d..][..d];
                        for (acc, x) in o.iter_mut().zip(v_row) {
                            *acc += p * *x as f64;
                        }
                    }
                    for acc in o.iter_mut() {
                        *acc /= sum;
                    }
                    lse_chunk[t] = max + sum.ln();
                }
            });
        }
    });
    ReferenceRows { rows: tasks, out, lse }
}

/// Merges two partial results over disjoint key sets by their log-sum-exp, in f64: what
/// `minf_runtime::merge` computes (`out`: `head_dim` values per row, rows in the same order).
pub fn merge_rows(a: &ReferenceRows, b: &ReferenceRows) -> ReferenceRows {
    let d = if a.lse.is_empty() { 0 } else { a.out.len() / a.lse.len() };
    let mut out = Vec::with_capacity(a.out.len());
    let mut lse = Vec::with_capacity(a.lse.len());
    for (t, (&la, &lb)) in a.lse.iter().zip(&b.lse).enumerate() {
        let m = la.max(lb);
        if m == f64::NEG_INFINITY {
            out.extend(std::iter::repeat_n(0.0, d));
            lse.push(f64::NEG_INFINITY);
            continue;
        }
        let (wa, wb) = ((la - m).exp(), (lb - m).exp());
        let sum = wa + wb;
        out.extend((0..d).map(|e| (wa * a.out[t * d + e] + wb * b.out[t * d + e]) / sum));
        lse.push(m + sum.ln());
    }
    ReferenceRows { rows: a.rows.clone(), out, lse }
}

/// Relative L2 error `‖got − want‖ / ‖want‖`; NaN in `got` gives infinity.
pub fn relative_l2(got: &[f64], want: &[f64]) -> f64 {
    let mut diff = 0.0;
    let mut norm = 0.0;
    for (g, w) in got.iter().zip(want) {
        if !g.is_finite() {
            return f64::INFINITY;
        }
        diff += (g - w) * (g - w);
        norm += w * w;
    }
    (diff / norm.max(f64::MIN_POSITIVE)).sqrt()
}

/// How much of the dense attention a sparse mask keeps, over the rows [`recall`] looked at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecallStats {
    /// Mean over rows (every batch entry, head and listed query row) of the share of the row's
    /// causal softmax mass that falls inside the mask.
    pub mean: f64,
    /// The smallest share of any row.
    pub worst: f64,
    /// `(batch, head, row)` of that row.
    pub worst_row: (usize, usize, usize),
}

/// Query rows to measure on a long sequence: the last `last` rows and `spread` rows evenly spread
/// over the rest, ascending and distinct.
pub fn sampled_rows(seq: usize, last: usize, spread: usize) -> Vec<usize> {
    let tail = seq.saturating_sub(last);
    let mut rows: Vec<usize> =
        (0..spread).map(|i| i * tail / spread.max(1)).chain(tail..seq).filter(|&r| r < seq).collect();
    rows.sort_unstable();
    rows.dedup();
    rows
}

/// Attention recall of `mask`: for query row `i` of (batch `b`, head `h`), the dense causal
/// softmax (scale `1/sqrt(head_dim)`, computed in f64) puts weight `p_j` on key `j <= i`; the row's
/// recall is the sum of `p_j` over the keys with `mask(b, h, i, j)` (keys above the diagonal do not
/// count even if the mask lists them). Every batch entry and head is measured at the query rows
/// `rows`. `q`, `k` are contiguous `[batch, seq, heads | kv_heads, head_dim]`.
pub fn recall(
    q: &[f32],
    k: &[f32],
    shape: ReferenceShape,
    mask: impl Fn(usize, usize, usize, usize) -> bool + Sync,
    rows: &[usize],
) -> Result<RecallStats, MinfError> {
    shape.check_qk(q, k)?;
    let ReferenceShape { batch, seq, heads, kv_heads, head_dim: d } = shape;
    if let Some(bad) = rows.iter().find(|&&i| i >= seq) {
        return Err(MinfError::Shape(format!("recall: row {bad} is outside the sequence of {seq}")));
    }
    if batch * heads * rows.len() == 0 {
        return Err(MinfError::Shape("recall: no rows to measure".into()));
    }
    let group = heads / kv_heads;
    let scale = 1.0 / (d as f64).sqrt();
    let tasks: Vec<(usize, usize, usize)> =
        (0..batch).flat_map(|b| (0..heads).flat_map(move |h| rows.iter().map(move |&i| (b, h, i)))).collect();
    let shares = parallel_map(&tasks, |&(b, h, i)| {
        let q_row = &q[((b * seq + i) * heads + h) * d..][..d];
        let scores: Vec<f64> = (0..=i)
            .map(|j| {
                let k_row = &k[((b * seq + j) * kv_heads + h / group) * d..][..d];
                q_row.iter().zip(k_row).map(|(x, y)| *x as f64 * *y as f64).sum::<f64>() * scale
            })
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (mut inside, mut total) = (0.0, 0.0);
        for (j, score) in scores.iter().enumerate() {
            let p = (score - max).exp();
            total += p;
            if mask(b, h, i, j) {
                inside += p;
            }
        }
        inside / total
    });
    let mut stats = RecallStats { mean: 0.0, worst: f64::INFINITY, worst_row: tasks[0] };
    for (share, &task) in shares.iter().zip(&tasks) {
        stats.mean += share;
        // A NaN share (non-finite inputs) is reported as the worst.
        if *share < stats.worst || (share.is_nan() && !stats.worst.is_nan()) {
            stats.worst = *share;
            stats.worst_row = task;
        }
    }
    stats.mean /= shares.len() as f64;
    Ok(stats)
}

/// A small deterministic generator (SplitMix64) for test and benchmark inputs and indices.
#[derive(Debug, Clone)]
pub struct TestRng(u64);

impl TestRng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> TestRng {
        TestRng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`; 0 when `n` is 0.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Uniform in `lo..hi` (`lo` when the range is empty).
    pub fn in_range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % (hi - lo).max(1) as u64) as i64
    }
}

/// Deterministic standard-normal samples (SplitMix64 + Box–Muller) for test and benchmark inputs.
/// Chunks of 2^20 samples are drawn in parallel, each from its own stream (the values depend only on
/// `len` and `seed`, not on the number of threads): a 128K x 32 x 128 tensor takes seconds, not a minute.
pub fn random_normal(len: usize, seed: u64) -> Vec<f32> {
    const CHUNK: usize = 1 << 20;
    let mut out = vec![0f32; len];
    let fill = |index: usize, chunk: &mut [f32]| {
        let mut rng = TestRng::new(seed ^ (index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        let mut next_unit = move || ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        for x in chunk {
            let (u, v) = (next_unit(), next_unit());
            *x = ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32;
        }
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(len.div_ceil(CHUNK)).max(1);
    if threads == 1 {
        out.chunks_mut(CHUNK).enumerate().for_each(|(i, c)| fill(i, c));
        return out;
    }
    let chunks: Vec<(usize, &mut [f32])> = out.chunks_mut(CHUNK).enumerate().collect();
    let per_thread = chunks.len().div_ceil(threads);
    let mut chunks = chunks.into_iter();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let mine: Vec<_> = chunks.by_ref().take(per_thread).collect();
            scope.spawn(move || mine.into_iter().for_each(|(i, c)| fill(i, c)));
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampled_rows_cover_the_tail_and_spread_over_the_rest() {
        let rows = sampled_rows(1000, 10, 4);
        assert_eq!(rows, vec![0, 247, 495, 742, 990, 991, 992, 993, 994, 995, 996, 997, 998, 999]);
        assert_eq!(sampled_rows(5, 10, 4), vec![0, 1, 2, 3, 4]);
        assert!(sampled_rows(0, 10, 4).is_empty());
    }

    #[test]
    fn first_row_attends_only_to_itself_and_rows_sum_to_one() {
        let shape = ReferenceShape { batch: 1, seq: 3, heads: 2, kv_heads: 1, head_dim: 2 };
        let q: Vec<f32> = (0..12).map(|x| (x as f32 * 0.37).sin()).collect();
        let k: Vec<f32> = (0..6).map(|x| (x as f32 * 0.91).cos()).collect();
        let v: Vec<f32> = (0..6).map(|x| x as f32 + 1.0).collect();
        let r = causal_attention_rows(shape, &q, &k, &v, 1.0, &[0, 2]);
        assert_eq!(r.rows.len(), 4);
        // Row 0 sees only key 0: output equals v[0] exactly, lse equals its score.
        assert_eq!(&r.out[..2], &[1.0, 2.0]);
        let s00 = q[0] as f64 * k[0] as f64 + q[1] as f64 * k[1] as f64;
        assert!((r.lse[0] - s00).abs() < 1e-12);
        // Row 2 is a convex combination of v rows: each output lies within their range.
        let o = &r.out[2 * 2..][..2];
        assert!(o[0] > 1.0 && o[0] < 5.0 && o[1] > 2.0 && o[1] < 6.0, "{o:?}");
        assert!(relative_l2(&[1.0, f64::NAN], &[1.0, 1.0]).is_infinite());
    }

    #[test]
    fn chunk_rows_equal_the_last_rows_of_the_whole_sequence() {
        // A chunk of the last 5 of 12 rows, causal in absolute positions, equals rows 7..12 of the
        // one-shot computation; a non-causal split of the keys merges back into it.
        let (seq, heads, kv_heads, d) = (12, 2, 1, 4);
        let q = random_normal(seq * heads * d, 1);
        let k = random_normal(seq * kv_heads * d, 2);
        let v = random_normal(seq * kv_heads * d, 3);
        let whole = ReferenceShape { batch: 1, seq, heads, kv_heads, head_dim: d };
        let want = causal_attention_rows(whole, &q, &k, &v, 0.5, &[7, 8, 9, 10, 11]);
        let chunk = ChunkShape { batch: 1, q_len: 5, kv_len: seq, heads, kv_heads, head_dim: d };
        let offset = chunk.q_offset();
        let q_chunk = &q[offset * heads * d..];
        let rows = [0, 1, 2, 3, 4];
        let got =
            chunk_attention_rows(chunk, q_chunk, &k, &v, 0.5, &rows, |_, _, i, j| crate::masks::causal(offset, i, j));
        assert!(relative_l2(&got.out, &want.out) < 1e-12 && relative_l2(&got.lse, &want.lse) < 1e-12);
        // Split: keys [0, 4) for every row (non-causal prefix) and the causal rest.
        let prefix = chunk_attention_rows(chunk, q_chunk, &k, &v, 0.5, &rows, |_, _, _, j| j < 4);
        let rest = chunk_attention_rows(chunk, q_chunk, &k, &v, 0.5, &rows, |_, _, i, j| j >= 4 && j <= offset + i);
        let merged = merge_rows(&prefix, &rest);
        assert!(relative_l2(&merged.out, &want.out) < 1e-12 && relative_l2(&merged.lse, &want.lse) < 1e-12);
        // A part that sees nothing has weight 0; two such parts give 0 and -inf.
        let nothing = chunk_attention_rows(chunk, q_chunk, &k, &v, 0.5, &rows, |_, _, _, _| false);
        assert!(nothing.lse.iter().all(|&l| l == f64::NEG_INFINITY) && nothing.out.iter().all(|&x| x == 0.0));
        let same = merge_rows(&got, &nothing);
        assert!(relative_l2(&same.out, &want.out) < 1e-12 && relative_l2(&same.lse, &want.lse) < 1e-12);
        let empty = merge_rows(&nothing, &nothing);
        assert!(empty.lse.iter().all(|&l| l == f64::NEG_INFINITY) && empty.out.iter().all(|&x| x == 0.0));
    }

    #[test]
    fn recall_by_hand() {
        // q = 0: row i spreads 1 / (i + 1) over keys 0..=i, in every head.
        let shape = ReferenceShape { batch: 2, seq: 8, heads: 2, kv_heads: 1, head_dim: 4 };
        let (q, k) = (vec![0.0f32; 2 * 8 * 2 * 4], vec![0.0f32; 2 * 8 * 4]);
        let full = recall(&q, &k, shape, |_, _, _, _| true, &[0, 3, 7]).unwrap();
        assert!((full.mean - 1.0).abs() < 1e-12 && (full.worst - 1.0).abs() < 1e-12);
        // Keys above the diagonal never count.
        let future = recall(&q, &k, shape, |_, _, i, j| j > i, &[0, 7]).unwrap();
        assert_eq!((future.mean, future.worst), (0.0, 0.0));
        // Only the sink: 1 / (i + 1), worst at the last row listed, of the first (b, h) reaching it.
        let sink = recall(&q, &k, shape, |_, _, _, j| j == 0, &[0, 3]).unwrap();
        assert!((sink.mean - (1.0 + 0.25) / 2.0).abs() < 1e-12 && (sink.worst - 0.25).abs() < 1e-12, "{sink:?}");
        assert_eq!(sink.worst_row, (0, 0, 3));
        // The mask sees (batch, head): only batch 1, head 1 misses everything.
        let one = recall(&q, &k, shape, |b, h, _, _| (b, h) != (1, 1), &[5]).unwrap();
        assert!((one.mean - 0.75).abs() < 1e-12 && one.worst == 0.0 && one.worst_row == (1, 1, 5));
    }

    #[test]
    fn recall_weights_by_softmax_mass() {
        // One head, d = 1: q_i = 1, k_j = ln(3) * sqrt(d) for j = 1, else 0. Row 2: weights 1, 3, 1.
        let shape = ReferenceShape { batch: 1, seq: 3, heads: 1, kv_heads: 1, head_dim: 1 };
        let k = [0.0, 3.0f32.ln(), 0.0];
        let got = recall(&[1.0; 3], &k, shape, |_, _, _, j| j == 1, &[2]).unwrap();
        assert!((got.mean - 0.6).abs() < 1e-6, "{got:?}");
        assert!(recall(&[1.0; 3], &k, shape, |_, _, _, _| true, &[3]).is_err());
        assert!(recall(&[1.0; 3], &k, shape, |_, _, _, _| true, &[]).is_err());
        assert!(recall(&[1.0; 2], &k, shape, |_, _, _, _| true, &[0]).is_err());
    }

    #[test]
    fn random_normal_has_unit_moments_and_depends_on_seed() {
        let x = random_normal(100_000, 7);
        let mean = x.iter().map(|v| *v as f64).sum::<f64>() / x.len() as f64;
        let var = x.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / x.len() as f64;
        assert!(mean.abs() < 0.02 && (var - 1.0).abs() < 0.03, "mean {mean} var {var}");
        assert_ne!(random_normal(4, 1), random_normal(4, 2));
        // Parallel chunks draw from different streams, and the prefix does not depend on the length.
        let long = random_normal(3 << 20, 7);
        assert_ne!(long[..16], long[1 << 20..(1 << 20) + 16]);
        assert_eq!(long[..100_000], x[..]);
    }
}
