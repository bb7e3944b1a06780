//! **PROVISIONAL** stand-ins for the GPU index estimation, with the exact public signatures of the
//! final versions (re-exported from [`estimate::gpu`](super::gpu)), so that callers such as
//! [`crate::prefill`] build and can be tested before the GPU estimation lands. This whole file is
//! replaced by the GPU implementations at merge; do not time it.
//!
//! - Vertical-slash: the GPU scores ([`vertical_slash_scores_gpu`]), copied to the host (a
//!   synchronisation), the CPU top-k ([`cpu::select_vertical_slash`]) per listed head, uploaded,
//!   then the GPU converter.
//! - Block-sparse: q and k copied to the host (a synchronisation), the CPU estimate
//!   ([`cpu::estimate_block_sparse`]) of the listed heads, uploaded.

use super::cpu::{self, BlockSparseEstimate, VerticalSlashScores};
use super::gpu::{vertical_slash_scores_gpu, ScoresWorkspace};
use super::{clamp_sizes, BLOCK};
use crate::attention::BlockSparseIndexRef;
use crate::device::Device;
use crate::error::MinfError;
use crate::reference::ReferenceShape;
use crate::tensor::{check_layout, AttentionElement, TensorRef};
use crate::vertical_slash::{convert_vertical_slash_into, ConvertWorkspace, VerticalSlashIndex};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaSlice, CudaStream};
use std::sync::Arc;

/// One vertical-slash head of an estimate: the query head and the sizes it keeps (before
/// MInference's clamp, [`clamp_sizes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerticalSlashHead {
    /// Query head index.
    pub head: usize,
    /// Key columns to keep.
    pub vertical: usize,
    /// Diagonals to keep.
    pub slash: usize,
}

/// Reusable device scratch of the estimation functions. It grows on demand and keeps its memory.
#[derive(Debug, Default)]
pub struct EstimateWorkspace {
    scores: ScoresWorkspace,
    convert: ConvertWorkspace,
    vertical_scores: Option<CudaSlice<f32>>,
    slash_scores: Option<CudaSlice<f32>>,
    raw_vertical: Option<CudaSlice<i32>>,
    raw_slash: Option<CudaSlice<i32>>,
    seqlens: Option<CudaSlice<i32>>,
}

impl EstimateWorkspace {
    /// An empty workspace; the first call allocates what it needs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of device memory held.
    pub fn device_bytes(&self) -> usize {
        fn bytes<T>(slot: &Option<CudaSlice<T>>) -> usize {
            slot.as_ref().map_or(0, |b| b.num_bytes())
        }
        self.scores.device_bytes()
            + self.convert.device_bytes()
            + bytes(&self.vertical_scores)
            + bytes(&self.slash_scores)
            + bytes(&self.raw_vertical)
            + bytes(&self.raw_slash)
            + bytes(&self.seqlens)
    }
}

/// A device buffer of exactly `len` elements in `slot`, reused when it already is one.
fn exact<'a, T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    slot: &'a mut Option<CudaSlice<T>>,
    stream: &Arc<CudaStream>,
    len: usize,
    what: &str,
) -> Result<&'a mut CudaSlice<T>, MinfError> {
    match slot.take() {
        Some(buffer) if buffer.len() == len && Arc::ptr_eq(buffer.context(), stream.context()) => {
            Ok(slot.insert(buffer))
        }
        _ => {
            let buffer = stream.alloc_zeros::<T>(len).map_err(MinfError::driver(format!("allocating {what}")))?;
            Ok(slot.insert(buffer))
        }
    }
}

fn shape_error(message: String) -> MinfError {
    MinfError::Shape(message)
}

/// Checks that `heads` are distinct query heads below `head_count`.
fn check_heads(what: &str, heads: impl Iterator<Item = usize>, head_count: usize) -> Result<(), MinfError> {
    let mut seen = vec![false; head_count];
    for head in heads {
        match seen.get_mut(head) {
            None => {
                return Err(shape_error(format!(
                    "{what}: head {head} is out of range; allowed 0 to {} ({head_count} query heads)",
                    head_count.saturating_sub(1)
                )))
            }
            Some(true) => return Err(shape_error(format!("{what}: head {head} is listed twice"))),
            Some(slot) => *slot = true,
        }
    }
    Ok(())
}

fn event(stream: &CudaStream) -> Result<CudaEvent, MinfError> {
    stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(MinfError::driver("recording a timing event"))
}

fn elapsed(start: &CudaEvent, end: &CudaEvent) -> Result<f32, MinfError> {
    start.elapsed_ms(end).map_err(MinfError::driver("reading a timing event"))
}

/// MInference's vertical-slash estimate of the listed heads of every sequence, converted into
/// `index` (shape `[batch, heads, ceil(seq / 64)]`, capacities at least the largest clamped sizes);
/// unlisted heads get counts 0. `q`: `[batch, seq, heads, head_dim]`, `k`:
/// `[batch, seq, kv_heads, head_dim]`.
///
/// Provisional: synchronises with the stream to select on the host.
pub fn estimate_vertical_slash_gpu<T: AttentionElement>(
    device: &Device,
    q: TensorRef<'_, T>,
    k: TensorRef<'_, T>,
    heads: &[VerticalSlashHead],
    workspace: &mut EstimateWorkspace,
    index: &mut VerticalSlashIndex,
) -> Result<(), MinfError> {
    estimate_vertical_slash_gpu_timed(device, q, k, heads, workspace, index).map(|_| ())
}

/// [`estimate_vertical_slash_gpu`], timed with CUDA events: milliseconds of the scores, the top-k
/// and the conversion. Synchronises with the stream.
pub fn estimate_vertical_slash_gpu_timed<T: AttentionElement>(
    device: &Device,
    q: TensorRef<'_, T>,
    k: TensorRef<'_, T>,
    heads: &[VerticalSlashHead],
    workspace: &mut EstimateWorkspace,
    index: &mut VerticalSlashIndex,
) -> Result<[f32; 3], MinfError> {
    let [batch, seq, head_count, _] = q.layout.shape;
    check_heads("vertical-slash estimate", heads.iter().map(|h| h.head), head_count)?;
    let shape = index.shape();
    if (shape.batch, shape.heads, shape.rows) != (batch, head_count, seq.div_ceil(BLOCK)) {
        return Err(shape_error(format!(
            "vertical-slash estimate: the index is [batch {}, heads {}, rows {}] but q needs [{batch}, {head_count}, {}]",
            shape.batch,
            shape.heads,
            shape.rows,
            seq.div_ceil(BLOCK)
        )));
    }
    for head in heads {
        let (v, s) = clamp_sizes(seq, head.vertical, head.slash);
        if v > shape.nnz_v || s > shape.nnz_s {
            return Err(shape_error(format!(
                "vertical-slash estimate: head {} keeps {v} columns and {s} diagonals at seq {seq} but the index holds \
                 {} and {}",
                head.head, shape.nnz_v, shape.nnz_s
            )));
        }
    }
    let stream = device.stream();
    let len = batch * head_count * seq;
    let start = event(stream)?;
    let vertical_scores = exact(&mut workspace.vertical_scores, stream, len, "vertical scores")?;
    let slash_scores = exact(&mut workspace.slash_scores, stream, len, "slash scores")?;
    vertical_slash_scores_gpu(device, q, k, &mut workspace.scores, vertical_scores, slash_scores)?;
    let scored = event(stream)?;
    let vertical = stream.clone_dtoh(&*vertical_scores).map_err(MinfError::driver("downloading vertical scores"))?;
    let slash = stream.clone_dtoh(&*slash_scores).map_err(MinfError::driver("downloading slash scores"))?;
    let mut raw_vertical = vec![-1i32; batch * head_count * shape.nnz_v];
    let mut raw_slash = vec![-1i32; batch * head_count * shape.nnz_s];
    for b in 0..batch {
        for head in heads {
            let at = (b * head_count + head.head) * seq;
            let widen = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<f64>>();
            let scores =
                VerticalSlashScores { vertical: widen(&vertical[at..at + seq]), slash: widen(&slash[at..at + seq]) };
            let selection = cpu::select_vertical_slash(&scores, head.vertical, head.slash);
            let row = b * head_count + head.head;
            // Columns and offsets are below seq, which the scores kernel checked fits i32.
            for (slot, &c) in raw_vertical[row * shape.nnz_v..].iter_mut().zip(&selection.vertical) {
                *slot = c as i32;
            }
            for (slot, &s) in raw_slash[row * shape.nnz_s..].iter_mut().zip(&selection.slash) {
                *slot = s as i32;
            }
        }
    }
    let upload = |slot: &mut Option<CudaSlice<i32>>, host: &[i32], what: &str| -> Result<(), MinfError> {
        let buffer = exact(slot, stream, host.len(), what)?;
        stream.memcpy_htod(host, buffer).map_err(MinfError::driver(format!("uploading {what}")))
    };
    upload(&mut workspace.raw_vertical, &raw_vertical, "raw verticals")?;
    upload(&mut workspace.raw_slash, &raw_slash, "raw slashes")?;
    let seq_i32 = i32::try_from(seq).map_err(|_| shape_error(format!("seq {seq} does not fit i32")))?;
    upload(&mut workspace.seqlens, &vec![seq_i32; batch], "sequence lengths")?;
    let selected = event(stream)?;
    let (Some(seqlens), Some(raw_vertical), Some(raw_slash)) =
        (&workspace.seqlens, &workspace.raw_vertical, &workspace.raw_slash)
    else {
        return Err(shape_error("vertical-slash estimate: workspace buffers missing after upload".into()));
    };
    convert_vertical_slash_into(device, seqlens, raw_vertical, raw_slash, seq, &mut workspace.convert, index)?;
    let converted = event(stream)?;
    converted.synchronize().map_err(MinfError::driver("waiting for the vertical-slash estimate"))?;
    Ok([elapsed(&start, &scored)?, elapsed(&scored, &selected)?, elapsed(&selected, &converted)?])
}

/// A block-sparse index on the device: per (batch, query head, 64-row block) a count and a list of
/// 64-key block ids, ascending (the layout of [`BlockSparseIndexRef`]).
#[derive(Debug)]
pub struct BlockSparseIndex {
    kv_num_blocks: CudaSlice<i32>,
    kv_indices: CudaSlice<i32>,
    batch: usize,
    heads: usize,
    rows: usize,
    capacity: usize,
}

impl BlockSparseIndex {
    /// A zeroed index (every count 0), allocated on the device's stream.
    pub fn zeros(
        device: &Device,
        batch: usize,
        heads: usize,
        rows: usize,
        capacity: usize,
    ) -> Result<BlockSparseIndex, MinfError> {
        let counts = batch
            .checked_mul(heads)
            .and_then(|n| n.checked_mul(rows))
            .ok_or_else(|| shape_error(format!("block-sparse index [{batch}, {heads}, {rows}] overflows usize")))?;
        let lists = counts
            .checked_mul(capacity)
            .ok_or_else(|| shape_error(format!("block-sparse index capacity {capacity} overflows usize")))?;
        let stream = device.stream();
        let alloc = |n: usize, what: &str| {
            stream.alloc_zeros::<i32>(n.max(1)).map_err(MinfError::driver(format!("allocating {what} ({n} x i32)")))
        };
        Ok(BlockSparseIndex {
            kv_num_blocks: alloc(counts, "kv_num_blocks")?,
            kv_indices: alloc(lists, "kv_indices")?,
            batch,
            heads,
            rows,
            capacity,
        })
    }

    /// A view for [`crate::block_sparse_attention`].
    pub fn as_ref(&self) -> BlockSparseIndexRef<'_> {
        BlockSparseIndexRef {
            kv_num_blocks: &self.kv_num_blocks,
            kv_indices: &self.kv_indices,
            batch: self.batch,
            heads: self.heads,
            rows: self.rows,
            capacity: self.capacity,
        }
    }

    /// Downloads the index (synchronises with the stream).
    pub fn to_host(&self) -> Result<BlockSparseEstimate, MinfError> {
        let download = |buffer: &CudaSlice<i32>, what: &str| {
            buffer.stream().clone_dtoh(buffer).map_err(MinfError::driver(format!("downloading {what}")))
        };
        Ok(BlockSparseEstimate {
            batch: self.batch,
            heads: self.heads,
            rows: self.rows,
            capacity: self.capacity,
            kv_num_blocks: download(&self.kv_num_blocks, "kv_num_blocks")?,
            kv_indices: download(&self.kv_indices, "kv_indices")?,
        })
    }
}

/// Copies the listed heads of a device tensor to the host as contiguous f32
/// `[batch, seq, heads.len(), head_dim]` (synchronises with the stream).
fn download_heads<T: AttentionElement>(
    device: &Device,
    tensor: &TensorRef<'_, T>,
    heads: &[usize],
) -> Result<Vec<f32>, MinfError> {
    let host = device.stream().clone_dtoh(tensor.data).map_err(MinfError::driver("downloading q or k"))?;
    let [batch, seq, _, d] = tensor.layout.shape;
    let [sb, ss, sh, _] = tensor.layout.strides;
    let mut out = Vec::with_capacity(batch * seq * heads.len() * d);
    for b in 0..batch {
        for t in 0..seq {
            for &h in heads {
                out.extend(host[b * sb + t * ss + h * sh..][..d].iter().map(|x| x.to_f32()));
            }
        }
    }
    Ok(out)
}

/// MInference's block-sparse estimate of the listed heads of every sequence: each 64-row query
/// block keeps its `top_k` best causal 64-key blocks by mean-pooled score, written into `index`
/// (`[batch, heads, ceil(seq / 64)]`, capacity at least `min(top_k, rows)`); unlisted heads get
/// counts 0.
///
/// Provisional: copies q and k to the host (a synchronisation) and estimates on the CPU.
pub fn estimate_block_sparse_gpu<T: AttentionElement>(
    device: &Device,
    q: TensorRef<'_, T>,
    k: TensorRef<'_, T>,
    heads: &[usize],
    top_k: usize,
    workspace: &mut EstimateWorkspace,
    index: &mut BlockSparseIndex,
) -> Result<(), MinfError> {
    // The workspace is part of the final signature; this stand-in needs no device scratch.
    let _ = workspace;
    check_layout("q", &q.layout, q.data.len())?;
    check_layout("k", &k.layout, k.data.len())?;
    let [batch, seq, head_count, d] = q.layout.shape;
    let kv_heads = k.layout.shape[2];
    if k.layout.shape != [batch, seq, kv_heads, d] || kv_heads == 0 || head_count % kv_heads != 0 {
        return Err(shape_error(format!(
            "block-sparse estimate: k shape {:?} does not fit q shape {:?} (same batch, seq, head_dim; kv heads \
             dividing query heads)",
            k.layout.shape, q.layout.shape
        )));
    }
    check_heads("block-sparse estimate", heads.iter().copied(), head_count)?;
    let rows = seq.div_ceil(BLOCK);
    if (index.batch, index.heads, index.rows) != (batch, head_count, rows) || index.capacity < top_k.min(rows) {
        return Err(shape_error(format!(
            "block-sparse estimate: the index is [batch {}, heads {}, rows {}] with capacity {} but q needs \
             [{batch}, {head_count}, {rows}] with capacity at least min(top_k {top_k}, rows {rows})",
            index.batch, index.heads, index.rows, index.capacity
        )));
    }
    let mut counts = vec![0i32; batch * head_count * rows];
    let mut lists = vec![0i32; batch * head_count * rows * index.capacity];
    if !heads.is_empty() && seq > 0 {
        let group = head_count / kv_heads;
        let kv_of: Vec<usize> = heads.iter().map(|h| h / group).collect();
        let q_host = download_heads(device, &q, heads)?;
        let k_host = download_heads(device, &k, &kv_of)?;
        let shape = ReferenceShape { batch, seq, heads: heads.len(), kv_heads: heads.len(), head_dim: d };
        let estimate = cpu::estimate_block_sparse(&q_host, &k_host, shape, top_k)?;
        for b in 0..batch {
            for (slot, &head) in heads.iter().enumerate() {
                for r in 0..rows {
                    let blocks = estimate.blocks(b, slot, r);
                    let row = (b * head_count + head) * rows + r;
                    counts[row] = blocks.len() as i32;
                    lists[row * index.capacity..][..blocks.len()].copy_from_slice(blocks);
                }
            }
        }
    }
    let stream = device.stream();
    stream.memcpy_htod(&counts, &mut index.kv_num_blocks).map_err(MinfError::driver("uploading kv_num_blocks"))?;
    stream.memcpy_htod(&lists, &mut index.kv_indices).map_err(MinfError::driver("uploading kv_indices"))?;
    Ok(())
}
