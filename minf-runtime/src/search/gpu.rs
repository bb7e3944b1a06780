//! Evaluating a layer's candidates on the GPU with minf's own estimates and kernels, exactly as
//! [`Prefill`](crate::Prefill) runs them: every query head of the layer at once per candidate
//! (one launch, or the per-head tile choice's two), in bf16.
//!
//! Per prompt: dense attention with its log-sum-exp, then per candidate the estimate at the
//! candidate's sizes (vertical-slash: MInference's clamp and rules; block-sparse: the top 100 key
//! blocks), the sparse kernel with its log-sum-exp, and on the sampled rows
//! ([`RowSample`]) the mismatches against dense, the recall `exp(lse_sparse - lse_dense)` and the
//! realised cost of the index the kernel ran ([`crate::search::cost`]).

use super::choice::{Evaluation, MISMATCH_THRESHOLD};
use super::cost::{a_shape_units, budget_units, index_units, IndexRow, RowBlocks, RowSample};
use super::space::{Candidate, SearchSpace};
use crate::attention::{attention, launch_spec, AShape, AttentionOptions, PatternArgs};
use crate::block_sparse::BlockSparseIndex;
use crate::config::MINFERENCE_BLOCK_TOP_K;
use crate::device::{reserve_buffer, Device};
use crate::error::MinfError;
use crate::estimate::gpu::{
    check_block_sparse_seq, estimate_block_sparse_gpu, estimate_vertical_slash_gpu, EstimateWorkspace,
    VerticalSlashHead,
};
use crate::estimate::{clamp_sizes, BLOCK};
use crate::qkv::HostQkv;
use crate::tensor::{TensorMut, TensorRef};
use crate::tile_choice::TileChoice;
use crate::vertical_slash::{IndexShape, VerticalSlashIndex};
use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;
use minf_codegen::{DType, Pattern};
use std::sync::Arc;

/// What one prompt gave: per candidate and head, its [`Evaluation`], and the heads' budget.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptEvaluation {
    /// `evaluations[candidate][head]`.
    pub evaluations: Vec<Vec<Evaluation>>,
    /// Every head's budget on this prompt, in cost units.
    pub budget: f64,
    /// Sampled query rows.
    pub rows: usize,
}

/// Device buffers kept across prompts and layers (a warm evaluation allocates only when a prompt
/// is longer than any before).
#[derive(Debug, Default)]
struct Buffers {
    q: Option<CudaSlice<bf16>>,
    k: Option<CudaSlice<bf16>>,
    v: Option<CudaSlice<bf16>>,
    dense: Option<CudaSlice<bf16>>,
    out: Option<CudaSlice<bf16>>,
    dense_lse: Option<CudaSlice<f32>>,
    lse: Option<CudaSlice<f32>>,
    staging: Option<CudaSlice<i32>>,
    workspace: EstimateWorkspace,
    vertical_slash: Option<VerticalSlashIndex>,
    block_sparse: Option<BlockSparseIndex>,
    choice: Option<TileChoice>,
}

/// Evaluates the candidates of a [`SearchSpace`] on one device.
#[derive(Debug)]
pub struct Evaluator<'d> {
    device: &'d Device,
    space: SearchSpace,
    sample_blocks: usize,
    buffers: Buffers,
}

fn shape_error(message: String) -> MinfError {
    MinfError::Shape(message)
}

/// `values` rounded to bf16, converted on several threads.
fn to_bf16(values: &[f32]) -> Vec<bf16> {
    let mut out = vec![bf16::ZERO; values.len()];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 16);
    let chunk = values.len().div_ceil(threads).max(1 << 16);
    std::thread::scope(|scope| {
        for (source, target) in values.chunks(chunk).zip(out.chunks_mut(chunk)) {
            scope.spawn(move || {
                for (x, y) in source.iter().zip(target) {
                    *y = bf16::from_f32(*x);
                }
            });
        }
    });
    out
}

fn upload(
    slot: &mut Option<CudaSlice<bf16>>,
    stream: &Arc<CudaStream>,
    values: &[f32],
    what: &str,
) -> Result<(), MinfError> {
    reserve_buffer(slot, stream, values.len(), what)?;
    let buffer = slot.as_mut().ok_or_else(|| shape_error(format!("search: {what} was not allocated")))?;
    stream.memcpy_htod(&to_bf16(values), buffer).map_err(MinfError::driver(format!("uploading {what}")))
}

fn buffer<'a, T>(slot: &'a Option<CudaSlice<T>>, what: &str) -> Result<&'a CudaSlice<T>, MinfError> {
    slot.as_ref().ok_or_else(|| shape_error(format!("search: {what} was not allocated")))
}

fn buffer_mut<'a, T>(slot: &'a mut Option<CudaSlice<T>>, what: &str) -> Result<&'a mut CudaSlice<T>, MinfError> {
    slot.as_mut().ok_or_else(|| shape_error(format!("search: {what} was not allocated")))
}

/// The sampled query rows of a `[1, seq, heads, head_dim]` buffer (`row_len = heads * head_dim`),
/// concatenated in sample order.
fn download_rows(
    stream: &Arc<CudaStream>,
    source: &CudaSlice<bf16>,
    sample: &RowSample,
    row_len: usize,
) -> Result<Vec<bf16>, MinfError> {
    let mut host = vec![bf16::ZERO; sample.row_count() * row_len];
    let mut at = 0;
    for &block in &sample.blocks {
        let rows = sample.rows(block);
        let len = rows.len() * row_len;
        let view = source
            .try_slice(rows.start * row_len..rows.end * row_len)
            .ok_or_else(|| shape_error(format!("search: rows {rows:?} lie past the output buffer")))?;
        stream
            .memcpy_dtoh(&view, &mut host[at..at + len])
            .map_err(MinfError::driver("downloading the sampled output rows"))?;
        at += len;
    }
    stream.synchronize().map_err(MinfError::driver("waiting for the sampled output rows"))?;
    Ok(host)
}

/// The index lists of the sampled index rows of `[heads, rows, width]` buffer `source`, gathered
/// on the device into `staging` and downloaded at once: `[heads, sampled blocks, 2, width]`.
fn gather_lists(
    stream: &Arc<CudaStream>,
    source: &CudaSlice<i32>,
    (heads, rows, width): (usize, usize, usize),
    sample: &RowSample,
    staging: &mut Option<CudaSlice<i32>>,
) -> Result<Vec<i32>, MinfError> {
    let len = heads * sample.blocks.len() * 2 * width;
    reserve_buffer(staging, stream, len, "the search's index staging")?;
    let staging = buffer_mut(staging, "the index staging")?;
    for h in 0..heads {
        for (p, &block) in sample.blocks.iter().enumerate() {
            let index_rows = sample.index_rows(block);
            let from = (h * rows + index_rows.start) * width;
            let to = (h * rows + index_rows.end) * width;
            let at = (h * sample.blocks.len() + p) * 2 * width;
            let view = source
                .try_slice(from..to)
                .ok_or_else(|| shape_error(format!("search: index rows {index_rows:?} lie past the index")))?;
            let mut target = staging
                .try_slice_mut(at..at + (to - from))
                .ok_or_else(|| shape_error("search: the index staging is too small".into()))?;
            stream.memcpy_dtod(&view, &mut target).map_err(MinfError::driver("gathering the sampled index rows"))?;
        }
    }
    let mut host = vec![0i32; len];
    let view = staging.try_slice(..len).ok_or_else(|| shape_error("search: the index staging is too small".into()))?;
    stream.memcpy_dtoh(&view, &mut host).map_err(MinfError::driver("downloading the sampled index rows"))?;
    stream.synchronize().map_err(MinfError::driver("waiting for the sampled index rows"))?;
    Ok(host)
}

/// One head's lists of a sampled index row from [`gather_lists`]'s output: `counts` is the
/// downloaded `[heads, rows]` count array.
struct SampledLists<'a> {
    lists: &'a [i32],
    counts: &'a [i32],
    width: usize,
    rows: usize,
    sample: &'a RowSample,
}

impl<'a> SampledLists<'a> {
    fn row(&self, h: usize, r: usize) -> &'a [i32] {
        let Ok(p) = self.sample.blocks.binary_search(&(r / 2)) else { return &[] };
        let count = self.counts.get(h * self.rows + r).map_or(0, |&c| usize::try_from(c).unwrap_or(0).min(self.width));
        let at = ((h * self.sample.blocks.len() + p) * 2 + r % 2) * self.width;
        self.lists.get(at..at + count).unwrap_or(&[])
    }
}

/// Mismatches and summed recall of every head on the sampled rows: `rows` are `[n, heads, d]`
/// outputs, `lse` `[heads, seq]`.
fn score_heads(
    dense: (&[bf16], &[f32]),
    sparse: (&[bf16], &[f32]),
    sample: &RowSample,
    heads: usize,
    head_dim: usize,
) -> Result<Vec<(u64, f64)>, MinfError> {
    let row_len = heads * head_dim;
    let rows = dense.0.len() / row_len.max(1);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 16);
    let chunk = rows.div_ceil(threads).max(1);
    let mut mismatches = vec![0u64; heads];
    std::thread::scope(|scope| {
        let jobs: Vec<_> = (0..rows)
            .step_by(chunk)
            .map(|start| {
                let end = (start + chunk).min(rows);
                let (a, b) = (&dense.0[start * row_len..end * row_len], &sparse.0[start * row_len..end * row_len]);
                scope.spawn(move || {
                    let mut counts = vec![0u64; heads];
                    for (row_a, row_b) in a.chunks_exact(row_len).zip(b.chunks_exact(row_len)) {
                        for (h, count) in counts.iter_mut().enumerate() {
                            let span = h * head_dim..(h + 1) * head_dim;
                            *count += row_a[span.clone()]
                                .iter()
                                .zip(&row_b[span])
                                .filter(|(x, y)| {
                                    // A NaN output counts as a mismatch.
                                    let diff = (x.to_f32() - y.to_f32()).abs();
                                    diff > MISMATCH_THRESHOLD || diff.is_nan()
                                })
                                .count() as u64;
                        }
                    }
                    counts
                })
            })
            .collect();
        for job in jobs {
            let counts = job.join().map_err(|_| MinfError::Search("a scoring thread panicked".into()))?;
            for (total, count) in mismatches.iter_mut().zip(counts) {
                *total += count;
            }
        }
        Ok::<(), MinfError>(())
    })?;
    let seq = sample.seq;
    let scores = (0..heads)
        .map(|h| {
            let recall: f64 = sample
                .blocks
                .iter()
                .flat_map(|&b| sample.rows(b))
                .map(|i| {
                    let (d, s) = (dense.1[h * seq + i] as f64, sparse.1[h * seq + i] as f64);
                    let share = (s - d).exp();
                    if share.is_nan() {
                        0.0
                    } else {
                        share.min(1.0)
                    }
                })
                .sum();
            (mismatches[h], recall)
        })
        .collect();
    Ok(scores)
}

impl<'d> Evaluator<'d> {
    /// An evaluator of `space` on `device`, scoring at most `sample_blocks` 128-row blocks per
    /// prompt (0: every block; [`RowSample::new`]).
    pub fn new(device: &'d Device, space: SearchSpace, sample_blocks: usize) -> Evaluator<'d> {
        Evaluator { device, space, sample_blocks, buffers: Buffers::default() }
    }

    /// The space evaluated.
    pub fn space(&self) -> &SearchSpace {
        &self.space
    }

    /// Evaluates every candidate on every query head of one prompt's layer (waits for the device).
    pub fn evaluate(&mut self, qkv: &HostQkv) -> Result<PromptEvaluation, MinfError> {
        let HostQkv { seq, heads, kv_heads, head_dim, .. } = *qkv;
        if seq == 0 || heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
            return Err(shape_error(format!(
                "search: {seq} tokens, {heads} query heads and {kv_heads} key/value heads: all must be positive and \
                 kv_heads must divide heads"
            )));
        }
        let device = self.device;
        let stream = device.stream();
        let b = &mut self.buffers;
        upload(&mut b.q, stream, &qkv.q, "the queries")?;
        upload(&mut b.k, stream, &qkv.k, "the keys")?;
        upload(&mut b.v, stream, &qkv.v, "the values")?;
        let row_len = heads * head_dim;
        reserve_buffer(&mut b.dense, stream, seq * row_len, "the dense output")?;
        reserve_buffer(&mut b.out, stream, seq * row_len, "the candidate output")?;
        reserve_buffer(&mut b.dense_lse, stream, heads * seq, "the dense log-sum-exp")?;
        reserve_buffer(&mut b.lse, stream, heads * seq, "the candidate log-sum-exp")?;
        let q_shape = [1, seq, heads, head_dim];
        let kv_shape = [1, seq, kv_heads, head_dim];
        let q = TensorRef::bshd(buffer(&b.q, "q")?, q_shape)?;
        let k = TensorRef::bshd(buffer(&b.k, "k")?, kv_shape)?;
        let v = TensorRef::bshd(buffer(&b.v, "v")?, kv_shape)?;
        let sample = RowSample::new(seq, self.sample_blocks);

        {
            let out = TensorMut::bshd(buffer_mut(&mut b.dense, "the dense output")?, q_shape)?;
            let lse = buffer_mut(&mut b.dense_lse, "the dense log-sum-exp")?;
            attention(
                device,
                q,
                k,
                v,
                out,
                PatternArgs::Dense,
                AttentionOptions { lse: Some(lse), ..Default::default() },
            )?;
        }
        let dense_rows = download_rows(stream, buffer(&b.dense, "the dense output")?, &sample, row_len)?;
        let dense_lse = download_lse(stream, buffer(&b.dense_lse, "the dense log-sum-exp")?, heads * seq)?;

        let rows = seq.div_ceil(BLOCK);
        let all_heads: Vec<usize> = (0..heads).collect();
        let mut evaluations = Vec::with_capacity(self.space.candidates.len());
        for &candidate in &self.space.candidates {
            let started = std::time::Instant::now();
            let costs = match candidate {
                Candidate::StreamLlm { n_init, n_local } => {
                    let shape = AShape { n_init, n_local };
                    let out = TensorMut::bshd(buffer_mut(&mut b.out, "the candidate output")?, q_shape)?;
                    let lse = buffer_mut(&mut b.lse, "the candidate log-sum-exp")?;
                    let options = AttentionOptions { lse: Some(lse), ..Default::default() };
                    attention(device, q, k, v, out, PatternArgs::AShape(shape), options)?;
                    let spec = launch_spec(device, Pattern::AShape, DType::Bf16, head_dim, None, None);
                    let (block_m, block_n) = (spec.block_m as usize, spec.block_n as usize);
                    let units: f64 = sample
                        .blocks
                        .iter()
                        .map(|&s| a_shape_units(shape, seq, sample.rows(s), block_m, block_n))
                        .sum();
                    Some(vec![units; heads])
                }
                Candidate::VerticalSlash { vertical, slash } => {
                    let (nnz_v, nnz_s) = self
                        .space
                        .candidates
                        .iter()
                        .filter_map(|c| match *c {
                            Candidate::VerticalSlash { vertical, slash } => Some(clamp_sizes(seq, vertical, slash)),
                            _ => None,
                        })
                        .fold((1, 1), |a, c| (a.0.max(c.0), a.1.max(c.1)));
                    let shape = IndexShape { batch: 1, heads, rows, nnz_s, nnz_v };
                    if b.vertical_slash.as_ref().is_none_or(|index| index.shape() != shape) {
                        b.vertical_slash = None;
                        b.vertical_slash = Some(VerticalSlashIndex::zeros(device, shape)?);
                    }
                    let index = b
                        .vertical_slash
                        .as_mut()
                        .ok_or_else(|| shape_error("search: the vertical-slash index was not allocated".into()))?;
                    let list: Vec<VerticalSlashHead> =
                        all_heads.iter().map(|&head| VerticalSlashHead { head, vertical, slash }).collect();
                    estimate_vertical_slash_gpu(device, q, k, &list, &mut b.workspace, index)?;
                    let blocks = launch_indexed(
                        device,
                        &mut b.choice,
                        (q, k, v),
                        (buffer_mut(&mut b.out, "the candidate output")?, buffer_mut(&mut b.lse, "the lse")?),
                        PatternArgs::VerticalSlash(index.as_ref()),
                    )?;
                    let index_ref = index.as_ref();
                    let range_counts = download_i32(stream, index_ref.block_count, heads * rows)?;
                    let column_counts = download_i32(stream, index_ref.column_count, heads * rows)?;
                    let starts =
                        gather_lists(stream, index_ref.block_offset, (heads, rows, nnz_s), &sample, &mut b.staging)?;
                    let columns =
                        gather_lists(stream, index_ref.column_index, (heads, rows, nnz_v), &sample, &mut b.staging)?;
                    let ranges =
                        SampledLists { lists: &starts, counts: &range_counts, width: nnz_s, rows, sample: &sample };
                    let gathered =
                        SampledLists { lists: &columns, counts: &column_counts, width: nnz_v, rows, sample: &sample };
                    Some(
                        (0..heads)
                            .map(|h| {
                                index_units(&sample, blocks[h], |r| IndexRow {
                                    starts: ranges.row(h, r),
                                    columns: gathered.row(h, r),
                                }) as f64
                            })
                            .collect(),
                    )
                }
                Candidate::BlockSparse => {
                    if let Err(error) = check_block_sparse_seq("search", seq) {
                        tracing::warn!("{candidate} skipped: {error}");
                        None
                    } else {
                        let capacity = MINFERENCE_BLOCK_TOP_K.min(rows);
                        if b.block_sparse.as_ref().is_none_or(|index| index.dims() != (1, heads, rows, capacity)) {
                            b.block_sparse = None;
                            b.block_sparse = Some(BlockSparseIndex::zeros(device, 1, heads, rows, capacity)?);
                        }
                        let index = b
                            .block_sparse
                            .as_mut()
                            .ok_or_else(|| shape_error("search: the block-sparse index was not allocated".into()))?;
                        estimate_block_sparse_gpu(
                            device,
                            q,
                            k,
                            &all_heads,
                            MINFERENCE_BLOCK_TOP_K,
                            &mut b.workspace,
                            index,
                        )?;
                        let blocks = launch_indexed(
                            device,
                            &mut b.choice,
                            (q, k, v),
                            (buffer_mut(&mut b.out, "the candidate output")?, buffer_mut(&mut b.lse, "the lse")?),
                            PatternArgs::BlockSparse(index.as_ref()),
                        )?;
                        let index_ref = index.as_ref();
                        let counts = download_i32(stream, index_ref.kv_num_blocks, heads * rows)?;
                        let lists = gather_lists(
                            stream,
                            index_ref.kv_indices,
                            (heads, rows, capacity),
                            &sample,
                            &mut b.staging,
                        )?;
                        let listed =
                            SampledLists { lists: &lists, counts: &counts, width: capacity, rows, sample: &sample };
                        Some(
                            (0..heads)
                                .map(|h| {
                                    index_units(&sample, blocks[h], |r| IndexRow {
                                        starts: listed.row(h, r),
                                        columns: &[],
                                    }) as f64
                                })
                                .collect(),
                        )
                    }
                }
            };
            let per_head = match costs {
                Some(costs) => {
                    let out_rows = download_rows(stream, buffer(&b.out, "the candidate output")?, &sample, row_len)?;
                    let lse = download_lse(stream, buffer(&b.lse, "the candidate log-sum-exp")?, heads * seq)?;
                    let scores = score_heads((&dense_rows, &dense_lse), (&out_rows, &lse), &sample, heads, head_dim)?;
                    scores
                        .into_iter()
                        .zip(costs)
                        .map(|((mismatches, recall_sum), cost)| Evaluation {
                            mismatches,
                            recall_sum,
                            rows: sample.row_count() as u64,
                            cost,
                        })
                        .collect()
                }
                None => vec![
                    Evaluation {
                        mismatches: (sample.row_count() * head_dim) as u64,
                        recall_sum: 0.0,
                        rows: sample.row_count() as u64,
                        cost: f64::INFINITY,
                    };
                    heads
                ],
            };
            tracing::debug!("{candidate}: evaluated in {:.1} ms", started.elapsed().as_secs_f64() * 1e3);
            evaluations.push(per_head);
        }
        Ok(PromptEvaluation {
            evaluations,
            budget: budget_units(&sample, self.space.budget_keys),
            rows: sample.row_count(),
        })
    }
}

fn download_lse(stream: &Arc<CudaStream>, source: &CudaSlice<f32>, len: usize) -> Result<Vec<f32>, MinfError> {
    let view = source.try_slice(..len).ok_or_else(|| shape_error("search: the lse buffer is too small".into()))?;
    let mut host = vec![0f32; len];
    stream.memcpy_dtoh(&view, &mut host).map_err(MinfError::driver("downloading a log-sum-exp"))?;
    stream.synchronize().map_err(MinfError::driver("waiting for a log-sum-exp"))?;
    Ok(host)
}

fn download_i32(stream: &Arc<CudaStream>, source: &CudaSlice<i32>, len: usize) -> Result<Vec<i32>, MinfError> {
    let view =
        source.try_slice(..len).ok_or_else(|| shape_error("search: an index count array is too small".into()))?;
    let mut host = vec![0i32; len];
    stream.memcpy_dtoh(&view, &mut host).map_err(MinfError::driver("downloading index counts"))?;
    stream.synchronize().map_err(MinfError::driver("waiting for index counts"))?;
    Ok(host)
}

/// Launches an index-driven pattern over every head as `Prefill` does: through the per-head tile
/// choice where the device has two tiles, else one launch of the default spec. Returns the rows
/// per block each head ran on.
fn launch_indexed(
    device: &Device,
    choice: &mut Option<TileChoice>,
    (q, k, v): (TensorRef<'_, bf16>, TensorRef<'_, bf16>, TensorRef<'_, bf16>),
    (out, lse): (&mut CudaSlice<bf16>, &mut CudaSlice<f32>),
    args: PatternArgs<'_>,
) -> Result<Vec<RowBlocks>, MinfError> {
    let [_, _, heads, head_dim] = q.layout.shape;
    let out = TensorMut::bshd(out, q.layout.shape)?;
    let spec = launch_spec(device, args.pattern(), DType::Bf16, head_dim, None, None);
    let options = AttentionOptions { lse: Some(lse), spec: Some(spec), ..Default::default() };
    if spec.square_alternative().is_none() {
        attention(device, q, k, v, out, args, options)?;
        let blocks = if spec.block_m as usize >= 2 * BLOCK { RowBlocks::Wide } else { RowBlocks::Narrow };
        return Ok(vec![blocks; heads]);
    }
    if choice.as_ref().is_none_or(|c| c.heads().len() != heads) {
        let all: Vec<usize> = (0..heads).collect();
        *choice = Some(TileChoice::new(device, &all, heads)?);
    }
    let choice = choice.as_mut().ok_or_else(|| shape_error("search: the tile choice was not built".into()))?;
    choice.attention(device, q, k, v, out, args, options)?;
    let wide = choice.last_choice(device)?.unwrap_or_else(|| vec![spec.block_m as usize >= 2 * BLOCK; heads]);
    Ok(wide.into_iter().map(|w| if w { RowBlocks::Wide } else { RowBlocks::Narrow }).collect())
}
