//! The CPU reference of index estimation: MInference 0.1.6's `vertical_and_slash_kernel` and
//! `_build_block_index` (`minference/modules/minference_forward.py`,
//! `minference/ops/block_sparse_flash_attention.py`) written plainly in f64, to test the GPU
//! estimate against and to measure what an estimate keeps.
//!
//! What MInference leaves implicit, and how it is read here:
//!
//! - **Diagonal offsets.** MInference sums diagonals with `sum_all_diagonal_matrix(qk)` over the
//!   `last_q × N` probabilities and keeps `[..., :-last_q + 1]`, N entries; entry `t` sums
//!   `p[r, r + t + 1 - last_q]`, i.e. the keys `j = i - (N - 1 - t)` of query rows `i`, and
//!   `(N - 1) - topk(...).indices` turns it into the offset `s = i - j` (`0` the main diagonal).
//!   So the slash score of offset `s` is the mass the last queries put on keys `i - s`, for
//!   `s` in `0..N`. (For `N = 1` MInference's slice `[:-0]` is empty and its top-k fails; here the
//!   single offset 0 is kept.)
//! - **Forced entries.** MInference sets the scores of columns `0..30` and of the last 100 diagonal
//!   entries (offsets `0..100`) to `+inf` before `torch.topk`, whose order among ties is
//!   unspecified. Here ties (forced or not) go to the smaller column and the nearer diagonal, so
//!   with `s < 100` the kept forced diagonals are offsets `0..s`.
//! - **Order.** `torch.topk` returns by score; MInference's own `vertical_slash_sparse_attention`
//!   sorts verticals ascending and slashes descending before converting, and so does this
//!   reference.
//! - **Precision.** MInference scores in the input dtype and takes the softmax in f32; here
//!   everything is f64 from f32 inputs, so near-ties may rank differently.
//! - **Block-sparse.** MInference pads the sequence with zero tokens to a multiple of 64 (a whole
//!   extra block when it already is one) and mean-pools over 64 rows, so the last partial block's
//!   pooled key is its sum divided by 64, not by its length; this reference does the same. Block
//!   scores are unscaled (a scale would not change the ranking); blocks above the diagonal are
//!   `-inf`; `k = min(top_k, blocks)`; and its kernel visits only the first `min(m + 1, k)` entries
//!   of query block `m`'s ascending list. So a query block with at most `k` causal candidates keeps
//!   all of them (the `-inf` ones sort after), and one with more keeps its `k` best-scoring blocks,
//!   the diagonal block only if it is among them. The index lists exactly the visited blocks
//!   (`kv_num_blocks = min(m + 1, k)`, zero padding after).
//!
//! **Chunks** ([`ChunkShape`]): MInference estimates whole prompts only; for a chunk of `q_len`
//! queries, the last of `kv_len` tokens (query row `i` at absolute position
//! `p = kv_len - q_len + i`), minf applies the same rules in absolute positions. Vertical-slash:
//! the chunk's last `min(64, q_len)` queries score all `kv_len` keys causally (`j <= p`), the slash
//! score of offset `s` is their mass on keys `p - s`, and the sizes clamp to `kv_len`. So a chunk of
//! at least 64 queries scores exactly the rows a one-shot estimate of its `kv_len` tokens would.
//! Block-sparse: the chunk's 64-row query blocks (local: block `r` is its rows `64r .. 64r + 63`)
//! are pooled against all absolute 64-key blocks; query block `r`'s candidates are the key blocks
//! `0 ..= c`, `c` the block of its last absolute position, and it keeps `min(top_k, c + 1)` of them
//! (`k = min(top_k, kv_blocks)` as above). With `q_len = kv_len` both are the one-shot rules.

pub use crate::reference::ChunkShape;
use crate::reference::{parallel_map, ReferenceShape};
use minf_runtime::estimate::{clamp_sizes, BLOCK, FORCED_COLUMNS, FORCED_DIAGONALS, LAST_Q};
use minf_runtime::{HostBlockSparseIndex, MinfError};

/// The vertical-slash scores of one head, before forcing and top-k.
#[derive(Debug, Clone, PartialEq)]
pub struct VerticalSlashScores {
    /// `vertical[j]`: softmax mass the last `min(64, N)` queries put on key `j` (length `N`).
    pub vertical: Vec<f64>,
    /// `slash[s]`: softmax mass they put on keys `i - s` (length `N`, offset `0` the main diagonal).
    pub slash: Vec<f64>,
}

/// The columns and diagonals one vertical-slash head keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadSelection {
    /// Key columns, ascending.
    pub vertical: Vec<usize>,
    /// Diagonal offsets `i - j`, descending.
    pub slash: Vec<usize>,
}

/// A vertical-slash estimate of every head, ready for
/// [`convert_vertical_slash`](minf_runtime::convert_vertical_slash) (or
/// [`convert_cpu`](crate::convert::convert_cpu)): `[batch, heads, nnz]`
/// arrays, every head keeping the same clamped number of columns and diagonals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerticalSlashEstimate {
    /// Sequences.
    pub batch: usize,
    /// Query heads.
    pub heads: usize,
    /// Columns per head.
    pub nnz_v: usize,
    /// Diagonals per head.
    pub nnz_s: usize,
    /// `[batch, heads, nnz_v]` key columns, ascending per head.
    pub vertical: Vec<i32>,
    /// `[batch, heads, nnz_s]` diagonal offsets, descending per head.
    pub slash: Vec<i32>,
}

impl VerticalSlashEstimate {
    /// Columns of (`b`, `h`); empty outside the estimate.
    pub fn columns(&self, b: usize, h: usize) -> &[i32] {
        let start = (b * self.heads + h) * self.nnz_v;
        self.vertical.get(start..start + self.nnz_v).filter(|_| b < self.batch && h < self.heads).unwrap_or(&[])
    }

    /// Diagonal offsets of (`b`, `h`); empty outside the estimate.
    pub fn diagonals(&self, b: usize, h: usize) -> &[i32] {
        let start = (b * self.heads + h) * self.nnz_s;
        self.slash.get(start..start + self.nnz_s).filter(|_| b < self.batch && h < self.heads).unwrap_or(&[])
    }

    /// Whether query `i` of (`b`, `h`) keeps key `j`: `j <= i` on a chosen column or diagonal.
    /// (The converted index may keep more: its ranges are whole 64-key blocks.)
    pub fn contains(&self, b: usize, h: usize, i: usize, j: usize) -> bool {
        let (Ok(column), Ok(offset)) = (i32::try_from(j), i32::try_from(i.wrapping_sub(j))) else {
            return false;
        };
        j <= i
            && (self.columns(b, h).binary_search(&column).is_ok()
                || self.diagonals(b, h).binary_search_by(|x| offset.cmp(x)).is_ok())
    }
}

/// Checks the buffers of a chunk's estimate against `shape`: `q` holds the chunk's queries
/// (`[batch, q_len, heads, head_dim]`, the last `q_len` of the `kv_len` tokens of `k`), `k` is
/// `[batch, kv_len, kv_heads, head_dim]`.
fn check_chunk(shape: &ChunkShape, q: &[f32], k: &[f32]) -> Result<(), MinfError> {
    let want_k = shape.batch * shape.kv_len * shape.kv_heads * shape.head_dim;
    let want_q = shape.batch * shape.q_len * shape.heads * shape.head_dim;
    if k.len() != want_k || q.len() != want_q {
        return Err(MinfError::Shape(format!(
            "estimate: q holds {} and k {} floats but {shape:?} needs {want_q} and {want_k}",
            q.len(),
            k.len()
        )));
    }
    if shape.kv_heads == 0 || !shape.heads.is_multiple_of(shape.kv_heads) {
        return Err(MinfError::Shape(format!("estimate: {shape:?}: kv_heads must divide heads")));
    }
    if shape.q_len > shape.kv_len {
        return Err(MinfError::Shape(format!(
            "estimate: q_len {} > kv_len {}: a chunk's queries are the last of its keys",
            shape.q_len, shape.kv_len
        )));
    }
    if i32::try_from(shape.kv_len).is_err() {
        return Err(MinfError::Shape(format!("estimate: kv_len {} does not fit the i32 index", shape.kv_len)));
    }
    Ok(())
}

fn check(q: &[f32], k: &[f32], shape: ReferenceShape) -> Result<(), MinfError> {
    shape.check_qk(q, k)?;
    check_chunk(&ChunkShape::whole(shape), q, k)
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// Scores of (`b`, `h`), shape already checked.
fn head_scores(q: &[f32], k: &[f32], shape: ChunkShape, b: usize, h: usize) -> VerticalSlashScores {
    let ChunkShape { q_len, kv_len: n, heads, kv_heads, head_dim: d, .. } = shape;
    let kh = h / (heads / kv_heads);
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = VerticalSlashScores { vertical: vec![0.0; n], slash: vec![0.0; n] };
    let mut row = vec![0.0f64; n];
    for row_in_chunk in q_len - LAST_Q.min(q_len)..q_len {
        // The query's absolute position.
        let i = shape.q_offset() + row_in_chunk;
        let q_row = &q[((b * q_len + row_in_chunk) * heads + h) * d..][..d];
        // Causal: keys after `i` (only inside the last `last_q` square) get no mass.
        for (j, score) in row[..=i].iter_mut().enumerate() {
            *score = dot(q_row, &k[((b * n + j) * kv_heads + kh) * d..][..d]) * scale;
        }
        let max = row[..=i].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut sum = 0.0;
        for score in &mut row[..=i] {
            *score = (*score - max).exp();
            sum += *score;
        }
        for (j, p) in row[..=i].iter().enumerate() {
            out.vertical[j] += p / sum;
            out.slash[i - j] += p / sum;
        }
    }
    out
}

/// The vertical and slash scores of query head `h` of sequence `b` (see [`VerticalSlashScores`]);
/// `q`, `k` are contiguous `[batch, seq, heads | kv_heads, head_dim]`, query head `h` reads KV head
/// `h / (heads / kv_heads)`, the scale is `1/sqrt(head_dim)`.
pub fn vertical_slash_scores(
    q: &[f32],
    k: &[f32],
    shape: ReferenceShape,
    b: usize,
    h: usize,
) -> Result<VerticalSlashScores, MinfError> {
    check(q, k, shape)?;
    chunk_vertical_slash_scores(q, k, ChunkShape::whole(shape), b, h)
}

/// [`vertical_slash_scores`] of a chunk (see the [module docs](self)): `vertical[j]` and `slash[s]`
/// (length `kv_len` each) are the mass the chunk's last `min(64, q_len)` queries put on key `j` and
/// on keys `p - s`, `p` each query's absolute position.
pub fn chunk_vertical_slash_scores(
    q: &[f32],
    k: &[f32],
    shape: ChunkShape,
    b: usize,
    h: usize,
) -> Result<VerticalSlashScores, MinfError> {
    check_chunk(&shape, q, k)?;
    if b >= shape.batch || h >= shape.heads {
        return Err(MinfError::Shape(format!("estimate: (batch {b}, head {h}) is outside {shape:?}")));
    }
    Ok(head_scores(q, k, shape, b, h))
}

/// The indices of the `k` largest scores (all if fewer), ties to the smaller index; `forced`
/// indices rank as `+inf`. Unordered.
fn best(scores: &[f64], forced: usize, k: usize) -> Vec<usize> {
    let key = |i: usize| if i < forced { f64::INFINITY } else { scores[i] };
    let mut indices: Vec<usize> = (0..scores.len()).collect();
    let k = k.min(indices.len());
    if k > 0 && k < indices.len() {
        indices.select_nth_unstable_by(k - 1, |&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
    }
    indices.truncate(k);
    indices
}

/// MInference's selection from one head's scores: sizes clamped by
/// [`clamp_sizes`], columns `0..30` and diagonals `0..100` forced, top-k.
pub fn select_vertical_slash(scores: &VerticalSlashScores, vertical_size: usize, slash_size: usize) -> HeadSelection {
    let (v, s) = clamp_sizes(scores.vertical.len(), vertical_size, slash_size);
    let mut vertical = best(&scores.vertical, FORCED_COLUMNS, v);
    vertical.sort_unstable();
    let mut slash = best(&scores.slash, FORCED_DIAGONALS, s);
    slash.sort_unstable_by(|a, b| b.cmp(a));
    HeadSelection { vertical, slash }
}

/// The vertical-slash estimate of every head, each keeping `vertical_size` columns and
/// `slash_size` diagonals (clamped as MInference does). Layout as [`vertical_slash_scores`].
pub fn estimate_vertical_slash(
    q: &[f32],
    k: &[f32],
    shape: ReferenceShape,
    vertical_size: usize,
    slash_size: usize,
) -> Result<VerticalSlashEstimate, MinfError> {
    check(q, k, shape)?;
    estimate_vertical_slash_chunk(q, k, ChunkShape::whole(shape), vertical_size, slash_size)
}

/// [`estimate_vertical_slash`] of a chunk (see the [module docs](self)): sizes clamped to
/// `kv_len`, columns absolute keys, diagonals offsets from each query's absolute position.
pub fn estimate_vertical_slash_chunk(
    q: &[f32],
    k: &[f32],
    shape: ChunkShape,
    vertical_size: usize,
    slash_size: usize,
) -> Result<VerticalSlashEstimate, MinfError> {
    check_chunk(&shape, q, k)?;
    let (nnz_v, nnz_s) = clamp_sizes(shape.kv_len, vertical_size, slash_size);
    let tasks: Vec<(usize, usize)> = (0..shape.batch).flat_map(|b| (0..shape.heads).map(move |h| (b, h))).collect();
    let heads = parallel_map(&tasks, |&(b, h)| {
        select_vertical_slash(&head_scores(q, k, shape, b, h), vertical_size, slash_size)
    });
    // `check` bounds every index by `seq`, which fits i32.
    let to_i32 = |x: &usize| *x as i32;
    Ok(VerticalSlashEstimate {
        batch: shape.batch,
        heads: shape.heads,
        nnz_v,
        nnz_s,
        vertical: heads.iter().flat_map(|s| s.vertical.iter().map(to_i32)).collect(),
        slash: heads.iter().flat_map(|s| s.slash.iter().map(to_i32)).collect(),
    })
}

/// Mean over 64-token blocks of one head's rows (`stride` floats apart), dividing by 64 even for
/// a partial last block, as MInference's zero padding does.
fn pool(x: &[f32], start: usize, stride: usize, n: usize, d: usize) -> Vec<f64> {
    let rows = n.div_ceil(BLOCK);
    let mut pooled = vec![0.0f64; rows * d];
    for t in 0..n {
        let src = &x[start + t * stride..][..d];
        for (acc, v) in pooled[t / BLOCK * d..][..d].iter_mut().zip(src) {
            *acc += *v as f64;
        }
    }
    for acc in &mut pooled {
        *acc /= BLOCK as f64;
    }
    pooled
}

/// The block-sparse estimate of every head: each 64-row query block keeps its `top_k` best causal
/// 64-key blocks by pooled score (all of them when it has at most `top_k`), ascending. Layout as
/// [`vertical_slash_scores`]; MInference uses `top_k = 100`
/// ([`BLOCK_SPARSE_TOP_K`](minf_runtime::estimate::BLOCK_SPARSE_TOP_K)).
pub fn estimate_block_sparse(
    q: &[f32],
    k: &[f32],
    shape: ReferenceShape,
    top_k: usize,
) -> Result<HostBlockSparseIndex, MinfError> {
    check(q, k, shape)?;
    estimate_block_sparse_chunk(q, k, ChunkShape::whole(shape), top_k)
}

/// [`estimate_block_sparse`] of a chunk (see the [module docs](self)): `ceil(q_len / 64)` index
/// rows of the chunk's query blocks, each listing absolute key blocks; capacity
/// `min(top_k, ceil(kv_len / 64))`.
pub fn estimate_block_sparse_chunk(
    q: &[f32],
    k: &[f32],
    shape: ChunkShape,
    top_k: usize,
) -> Result<HostBlockSparseIndex, MinfError> {
    check_chunk(&shape, q, k)?;
    let ChunkShape { batch, q_len, kv_len: n, heads, kv_heads, head_dim: d } = shape;
    let q_offset = shape.q_offset();
    let rows = q_len.div_ceil(BLOCK);
    let capacity = top_k.min(n.div_ceil(BLOCK));
    let tasks: Vec<(usize, usize)> = (0..batch).flat_map(|b| (0..heads).map(move |h| (b, h))).collect();
    let lists = parallel_map(&tasks, |&(b, h)| {
        let q_pool = pool(q, (b * q_len * heads + h) * d, heads * d, q_len, d);
        let k_pool = pool(k, (b * n * kv_heads + h / (heads / kv_heads)) * d, kv_heads * d, n, d);
        let mut counts = vec![0i32; rows];
        let mut indices = vec![0i32; rows * capacity];
        for (r, count) in counts.iter_mut().enumerate() {
            let qr = &q_pool[r * d..][..d];
            // The key block of the query block's last absolute position.
            let last = (q_offset + ((r + 1) * BLOCK).min(q_len) - 1) / BLOCK;
            let scores: Vec<f64> =
                (0..=last).map(|c| qr.iter().zip(&k_pool[c * d..][..d]).map(|(x, y)| x * y).sum()).collect();
            let mut kept = best(&scores, 0, capacity);
            kept.sort_unstable();
            // Block ids are below `rows <= seq`, which fits i32.
            *count = kept.len() as i32;
            for (slot, block) in indices[r * capacity..].iter_mut().zip(&kept) {
                *slot = *block as i32;
            }
        }
        (counts, indices)
    });
    Ok(HostBlockSparseIndex {
        batch,
        heads,
        rows,
        capacity,
        kv_num_blocks: lists.iter().flat_map(|(c, _)| c.iter().copied()).collect(),
        kv_indices: lists.iter().flat_map(|(_, i)| i.iter().copied()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::random_normal;

    fn shape(seq: usize, heads: usize, kv_heads: usize, head_dim: usize) -> ReferenceShape {
        ReferenceShape { batch: 1, seq, heads, kv_heads, head_dim }
    }

    #[test]
    fn uniform_attention_scores_by_hand() {
        // q = 0: row i spreads 1 / (i + 1) over keys 0..=i. With N = 3 all rows are read.
        let s = vertical_slash_scores(&[0.0; 3], &[0.0; 3], shape(3, 1, 1, 1), 0, 0).unwrap();
        let third = 1.0 / 3.0;
        let want = [1.0 + 0.5 + third, 0.5 + third, third];
        for (got, want) in s.vertical.iter().zip(want).chain(s.slash.iter().zip(want)) {
            assert!((got - want).abs() < 1e-12, "{s:?}");
        }
        // N = 100: the last 64 rows each give mass 1, spread over keys 0..=i.
        let s = vertical_slash_scores(&[0.0; 100], &[0.0; 100], shape(100, 1, 1, 1), 0, 0).unwrap();
        assert!((s.vertical.iter().sum::<f64>() - 64.0).abs() < 1e-9);
        assert!((s.slash.iter().sum::<f64>() - 64.0).abs() < 1e-9);
        let tail: f64 = (36..100).map(|i| 1.0 / (i as f64 + 1.0)).sum();
        assert!((s.vertical[0] - tail).abs() < 1e-12 && (s.slash[0] - tail).abs() < 1e-12);
        // Offset 99 is only reached by row 99 (key 0); key 99 only by row 99.
        assert!((s.slash[99] - 0.01).abs() < 1e-12 && (s.vertical[99] - 0.01).abs() < 1e-12);
    }

    /// `n` tokens, head_dim `d`, one head: random unit-ish queries and small random keys.
    fn noise(n: usize, d: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let q = random_normal(n * d, seed);
        let k: Vec<f32> = random_normal(n * d, seed + 1).iter().map(|x| x * 0.1).collect();
        (q, k)
    }

    #[test]
    fn a_column_every_last_query_attends_to_is_selected() {
        let (n, d) = (500, 16);
        let (q, mut k) = noise(n, d, 1);
        // Key 321 is the mean of the last 64 queries, scaled up: every one of them aligns with it.
        for e in 0..d {
            k[321 * d + e] = (n - 64..n).map(|i| q[i * d + e]).sum::<f32>() / 64.0 * 4.0;
        }
        let scores = vertical_slash_scores(&q, &k, shape(n, 1, 1, d), 0, 0).unwrap();
        let best = (30..n).max_by(|&a, &b| scores.vertical[a].total_cmp(&scores.vertical[b])).unwrap();
        assert_eq!(best, 321);
        // v = 31: the 30 forced columns and the planted one.
        let pick = select_vertical_slash(&scores, 31, 50);
        assert_eq!(pick.vertical, (0..30).chain([321]).collect::<Vec<_>>());
        // Without the plant, 321 is not chosen.
        let (q, k) = noise(n, d, 1);
        let plain = select_vertical_slash(&vertical_slash_scores(&q, &k, shape(n, 1, 1, d), 0, 0).unwrap(), 31, 50);
        assert!(!plain.vertical.contains(&321));
    }

    #[test]
    fn a_planted_diagonal_is_selected() {
        let (n, d) = (600, 16);
        let (q, mut k) = noise(n, d, 2);
        // Key j copies query j + 237: every query i attends to key i - 237.
        for j in 0..n - 237 {
            for e in 0..d {
                k[j * d + e] = q[(j + 237) * d + e];
            }
        }
        let scores = vertical_slash_scores(&q, &k, shape(n, 1, 1, d), 0, 0).unwrap();
        let best = (100..n).max_by(|&a, &b| scores.slash[a].total_cmp(&scores.slash[b])).unwrap();
        assert_eq!(best, 237);
        // s = 101: the 100 forced diagonals and the planted one, descending.
        let pick = select_vertical_slash(&scores, 30, 101);
        assert_eq!(pick.slash, [237].into_iter().chain((0..100).rev()).collect::<Vec<_>>());
    }

    #[test]
    fn selections_keep_their_invariants() {
        let d = 8;
        for (seed, n, v, s) in
            [(1, 1, 1000, 6096), (2, 7, 0, 0), (3, 29, 31, 60), (4, 64, 40, 55), (5, 300, 45, 70), (6, 777, 100, 300)]
        {
            let (q, k) = noise(n, d, seed);
            let est = estimate_vertical_slash(&q, &k, shape(n, 1, 1, d), v, s).unwrap();
            let (nv, ns) = clamp_sizes(n, v, s);
            assert_eq!((est.nnz_v, est.nnz_s), (nv, ns));
            assert_eq!((nv, ns), (v.max(30).min(n), s.max(50).min(n)));
            let (cols, diags) = (est.columns(0, 0), est.diagonals(0, 0));
            assert!(cols.windows(2).all(|w| w[0] < w[1]), "columns ascending and unique: {cols:?}");
            assert!(diags.windows(2).all(|w| w[0] > w[1]), "diagonals descending and unique: {diags:?}");
            assert!(cols.iter().chain(diags).all(|&x| (0..n as i32).contains(&x)));
            // Forced entries are present (all of them when the size allows, the nearest otherwise).
            assert!((0..30.min(n) as i32).all(|c| cols.contains(&c)));
            assert!((0..100.min(ns) as i32).all(|o| diags.contains(&o)), "n {n}: {diags:?}");
        }
    }

    #[test]
    fn gqa_heads_read_their_kv_head() {
        let (n, d) = (400, 8);
        let q: Vec<f32> = (0..n * 4 * d).map(|x| if x % d == 0 { 1.0 } else { 0.0 }).collect();
        // KV head 1 has a key on axis 0 at 250; KV head 0 has none.
        let mut k = vec![0.0f32; n * 2 * d];
        k[(250 * 2 + 1) * d] = 20.0;
        let est = estimate_vertical_slash(&q, &k, shape(n, 4, 2, d), 31, 50).unwrap();
        for h in 0..4 {
            assert_eq!(est.columns(0, h).contains(&250), h >= 2, "head {h}");
            assert!(
                est.contains(0, h, 399, 250) == (h >= 2) && est.contains(0, h, 399, 399) && !est.contains(0, h, 5, 6)
            );
        }
    }

    #[test]
    fn block_sparse_by_hand() {
        // 4 blocks, the last with one token; every pooled query is axis 0.
        let (n, d) = (3 * 64 + 1, 2);
        let q: Vec<f32> = (0..n * d).map(|x| if x % d == 0 { 1.0 } else { 0.0 }).collect();
        let mut k = vec![0.0f32; n * d];
        for j in 64..128 {
            k[j * d] = 1.0; // block 1: pooled 1
        }
        for j in 128..192 {
            k[j * d] = 0.75; // block 2: pooled 0.75
        }
        k[192 * d] = 32.0; // block 3: one token, pooled 32 / 64 = 0.5 (32 if divided by its length)
        let est = estimate_block_sparse(&q, &k, shape(n, 1, 1, d), 2).unwrap();
        assert_eq!((est.rows, est.capacity), (4, 2));
        assert_eq!(est.kv_num_blocks, [1, 2, 2, 2]);
        // Blocks with at most 2 candidates keep them all; then the best two by pooled score.
        assert_eq!(est.kv_indices, [0, 0, 0, 1, 1, 2, 1, 2]);
        assert!(est.contains(0, 0, 192, 70) && !est.contains(0, 0, 192, 192) && !est.contains(0, 0, 10, 11));
        assert!(est.blocks(0, 1, 0).is_empty() && est.blocks(1, 0, 0).is_empty() && est.blocks(0, 0, 4).is_empty());
        // top_k beyond the block count: dense.
        let dense = estimate_block_sparse(&q, &k, shape(n, 1, 1, d), 100).unwrap();
        assert_eq!(dense.capacity, 4);
        assert_eq!(dense.kv_num_blocks, [1, 2, 3, 4]);
        assert_eq!(dense.blocks(0, 0, 3), [0, 1, 2, 3]);
    }

    #[test]
    fn block_sparse_invariants() {
        let (n, d, heads) = (64 * 12 + 17, 8, 4);
        let q = random_normal(n * heads * d, 5);
        let k = random_normal(n * 2 * d, 6);
        let est =
            estimate_block_sparse(&q, &k, ReferenceShape { batch: 1, seq: n, heads, kv_heads: 2, head_dim: d }, 5)
                .unwrap();
        assert_eq!((est.rows, est.capacity), (13, 5));
        assert_eq!(est.kv_num_blocks.len(), heads * 13);
        assert_eq!(est.kv_indices.len(), heads * 13 * 5);
        for h in 0..heads {
            for r in 0..13 {
                let blocks = est.blocks(0, h, r);
                assert_eq!(blocks.len(), (r + 1).min(5));
                assert!(blocks.windows(2).all(|w| w[0] < w[1]) && blocks.iter().all(|&b| b <= r as i32));
                let row = (h * 13 + r) * 5;
                assert!(est.kv_indices[row + blocks.len()..row + 5].iter().all(|&x| x == 0));
            }
        }
    }

    /// The last `q_len` rows of `[1, n, heads, d]` queries: a chunk's queries.
    fn last_rows(q: &[f32], n: usize, q_len: usize, heads: usize, d: usize) -> Vec<f32> {
        q[(n - q_len) * heads * d..n * heads * d].to_vec()
    }

    fn chunk(q_len: usize, kv_len: usize, heads: usize, kv_heads: usize, head_dim: usize) -> ChunkShape {
        ChunkShape { batch: 1, q_len, kv_len, heads, kv_heads, head_dim }
    }

    #[test]
    fn a_chunk_of_64_queries_or_more_scores_like_its_whole_prompt() {
        let (n, d) = (1100, 8);
        let q = random_normal(n * 4 * d, 21);
        let k = random_normal(n * 2 * d, 22);
        let whole = estimate_vertical_slash(&q, &k, shape(n, 4, 2, d), 40, 120).unwrap();
        for q_len in [64, 65, 1000, n] {
            let q_chunk = last_rows(&q, n, q_len, 4, d);
            let shape = chunk(q_len, n, 4, 2, d);
            for h in 0..4 {
                let got = chunk_vertical_slash_scores(&q_chunk, &k, shape, 0, h).unwrap();
                let want = vertical_slash_scores(&q, &k, self::shape(n, 4, 2, d), 0, h).unwrap();
                assert_eq!(got, want, "q_len {q_len} head {h}");
            }
            assert_eq!(estimate_vertical_slash_chunk(&q_chunk, &k, shape, 40, 120).unwrap(), whole, "q_len {q_len}");
        }
    }

    #[test]
    fn a_short_chunk_scores_its_own_last_queries() {
        // q = 0: the query at absolute position p spreads 1 / (p + 1) over keys 0..=p.
        let (n, d) = (200, 2);
        for q_len in [1, 3, 63] {
            let s =
                chunk_vertical_slash_scores(&vec![0.0; q_len * d], &vec![0.0; n * d], chunk(q_len, n, 1, 1, d), 0, 0)
                    .unwrap();
            let positions = n - q_len..n;
            assert!((s.vertical.iter().sum::<f64>() - q_len as f64).abs() < 1e-9, "q_len {q_len}");
            let want0: f64 = positions.clone().map(|p| 1.0 / (p as f64 + 1.0)).sum();
            assert!((s.vertical[0] - want0).abs() < 1e-12 && (s.slash[0] - want0).abs() < 1e-12, "q_len {q_len}");
            // Key n - 1 is seen only by the last query; offset n - 1 (key 0) only by it too.
            assert!((s.vertical[n - 1] - 1.0 / n as f64).abs() < 1e-12);
            assert!((s.slash[n - 1] - 1.0 / n as f64).abs() < 1e-12);
            // Offset s is reached by the queries at p >= s only.
            let first = n - q_len;
            let from = |s: usize| (s.max(first)..n).map(|p| 1.0 / (p as f64 + 1.0)).sum::<f64>();
            for offset in [first, first + 1, n - 1].into_iter().filter(|&o| o < n) {
                assert!((s.slash[offset] - from(offset)).abs() < 1e-12, "q_len {q_len} offset {offset}");
            }
        }
        // A planted diagonal measured from each query's absolute position: key p - 237 copies q_p.
        let (n, d, q_len) = (900, 16, 5);
        let q = random_normal(q_len * d, 3);
        let mut k: Vec<f32> = random_normal(n * d, 4).iter().map(|x| x * 0.1).collect();
        for (row, p) in (n - q_len..n).enumerate() {
            for e in 0..d {
                k[(p - 237) * d + e] = q[row * d + e] * 3.0;
            }
        }
        let scores = chunk_vertical_slash_scores(&q, &k, chunk(q_len, n, 1, 1, d), 0, 0).unwrap();
        let best = (100..n).max_by(|&a, &b| scores.slash[a].total_cmp(&scores.slash[b])).unwrap();
        assert_eq!(best, 237);
        let est = estimate_vertical_slash_chunk(&q, &k, chunk(q_len, n, 1, 1, d), 30, 101).unwrap();
        assert!(est.contains(0, 0, n - 1, n - 1 - 237) && est.contains(0, 0, n - q_len, n - q_len - 237));
        assert_eq!((est.nnz_v, est.nnz_s), (30, 101), "sizes clamp to kv_len, not q_len");
    }

    #[test]
    fn block_sparse_chunks_pool_their_own_blocks_against_absolute_key_blocks() {
        let (n, d, heads) = (64 * 20 + 9, 8, 2);
        let q = random_normal(n * heads * d, 31);
        let k = random_normal(n * d, 32);
        let whole = estimate_block_sparse(&q, &k, shape(n, heads, 1, d), 6).unwrap();
        // At a block boundary the chunk's rows are the whole prompt's last rows.
        for q_len in [n - 64 * 7, n - 64 * 19, n] {
            let q_chunk = last_rows(&q, n, q_len, heads, d);
            let est = estimate_block_sparse_chunk(&q_chunk, &k, chunk(q_len, n, heads, 1, d), 6).unwrap();
            let shift = (n - q_len) / 64;
            assert_eq!((est.rows, est.capacity), (q_len.div_ceil(64), 6));
            for h in 0..heads {
                for r in 0..est.rows {
                    assert_eq!(est.blocks(0, h, r), whole.blocks(0, h, r + shift), "q_len {q_len} h {h} r {r}");
                }
            }
        }
        // Anywhere else: each query block keeps min(top_k, c + 1) blocks, c the block of its last
        // absolute position, ascending, none right of c.
        for q_len in [1, 63, 64, 65, 1000] {
            let q_chunk = last_rows(&q, n, q_len, heads, d);
            for top_k in [3, 100] {
                let est = estimate_block_sparse_chunk(&q_chunk, &k, chunk(q_len, n, heads, 1, d), top_k).unwrap();
                assert_eq!((est.rows, est.capacity), (q_len.div_ceil(64), top_k.min(n.div_ceil(64))));
                for h in 0..heads {
                    for r in 0..est.rows {
                        let last = (n - q_len + ((r + 1) * 64).min(q_len) - 1) / 64;
                        let blocks = est.blocks(0, h, r);
                        assert_eq!(blocks.len(), top_k.min(last + 1), "q_len {q_len} r {r}");
                        assert!(blocks.windows(2).all(|w| w[0] < w[1]) && blocks.iter().all(|&c| c as usize <= last));
                    }
                }
            }
        }
        assert!(estimate_block_sparse_chunk(&q[..heads * d * 2], &k, chunk(3, n, heads, 1, d), 4).is_err());
        assert!(
            estimate_vertical_slash_chunk(&q, &k[..d * 10], chunk(n, 10, heads, 1, d), 30, 50).is_err(),
            "q_len > kv_len"
        );
    }

    #[test]
    fn bad_arguments_are_errors() {
        let s = shape(4, 2, 1, 2);
        assert!(estimate_vertical_slash(&[0.0; 15], &[0.0; 8], s, 30, 50).is_err());
        assert!(estimate_block_sparse(&[0.0; 16], &[0.0; 9], s, 1).is_err());
        assert!(vertical_slash_scores(&[0.0; 16], &[0.0; 8], s, 0, 2).is_err());
        assert!(estimate_vertical_slash(&[0.0; 16], &[0.0; 8], ReferenceShape { kv_heads: 3, ..s }, 30, 50).is_err());
        let empty = estimate_vertical_slash(&[], &[], shape(0, 2, 1, 2), 30, 50).unwrap();
        assert_eq!((empty.nnz_v, empty.nnz_s, empty.vertical.len()), (0, 0, 0));
    }
}
