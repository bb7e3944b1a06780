//! MInference's estimates on the GPU, every stage on `device.stream()` with no host sync:
//!
//! - [`estimate_vertical_slash_gpu`]: the vertical and slash scores on tensor cores
//!   (`templates/index/vs_scores.cu.tera`: row statistics, their merge, then the accumulation), the
//!   per-head top-k (`templates/index/est_select.cu.tera`: a radix select whose histograms are
//!   summed over 4096-score segments of each row, one block each, then an ordered compaction) and
//!   the conversion to MInference's index ([`convert_vertical_slash_chunk_into`]);
//! - [`estimate_block_sparse_gpu`]: 64-token mean pooling, the causal block score matrix of every
//!   listed head as f32 GEMM tiles, and the top-k key blocks of every query block
//!   (`templates/index/est_select.cu.tera`);
//! - [`vertical_slash_scores_gpu`]: the scores alone; [`select_vertical_slash_gpu`]: the top-k alone.
//!
//! Every entry point takes a whole prompt (`q` and `k` of `N` tokens) or a chunk of one: `q` holds
//! the chunk's `q_len` queries, `k` the `kv_len >= q_len` keys of the prefix and the chunk, and
//! query row `i` sits at absolute position `q_offset + i`, `q_offset = kv_len - q_len` (the
//! bottom-right causal alignment of the attention kernels). The rules are MInference's in absolute
//! positions ([module docs](super)); the index has `ceil(q_len / 64)` rows and lists absolute keys.

use super::{clamp_sizes, BLOCK, LAST_Q};
use crate::block_sparse::BlockSparseIndex;
use crate::device::{reserve_buffer, Device, KernelArgs, LoadedKernel};
use crate::error::MinfError;
use crate::tensor::{check_layout, AttentionElement, Layout, TensorRef};
use crate::vertical_slash::{convert_vertical_slash_chunk_into, ChunkLengths, ConvertWorkspace, VerticalSlashIndex};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{
    CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use minf_codegen::abi::{self, BlockParams, ConstPtr, MutPtr, ScoresParams, SelectParams};
use minf_codegen::spec::HEAD_DIMS;
use minf_codegen::{DType, IndexKernel, IndexKernelSpec};
use std::sync::Arc;

/// Keys each block of the score passes covers ([`abi::SCORE_CHUNK_KEYS`]).
pub const SCORE_CHUNK_KEYS: usize = abi::SCORE_CHUNK_KEYS as usize;
/// Query heads of one KV group that share a score block's K tiles.
const SCORE_HEADS_PER_BLOCK: usize = abi::SCORE_HEADS_PER_BLOCK as usize;
/// Largest batch and head count (launch grid dimensions).
pub const MAX_BATCH_OR_HEADS: usize = 65_535;
/// Largest sequence of the score passes: their grid's y dimension counts chunks.
pub const MAX_SCORE_SEQ: usize = 65_535 * SCORE_CHUNK_KEYS;
/// Most 64-row query blocks of a block-sparse estimate ([`abi::MAX_BLOCK_SPARSE_ROWS`]): a query
/// block's selection holds the key of every candidate block in registers (16384 blocks = 1M
/// tokens: 64 keys per thread).
pub const MAX_BLOCK_SPARSE_ROWS: usize = abi::MAX_BLOCK_SPARSE_ROWS as usize;
/// Longest prompt of a block-sparse estimate, in tokens: [`MAX_BLOCK_SPARSE_ROWS`] blocks of 64.
pub const MAX_BLOCK_SPARSE_SEQ: usize = MAX_BLOCK_SPARSE_ROWS * BLOCK;
/// Default cap on the block-sparse estimate's score matrices, in bytes (see
/// [`EstimateWorkspace::limit_block_scores`]): 1 GiB holds 32 heads' scores at 128K tokens
/// (8.4 MB each) in one pass, and one head's at 1M (537 MB).
pub const DEFAULT_BLOCK_SCORE_BYTES: usize = 1 << 30;

/// Checks, on the host, that a block-sparse estimate takes a prompt of `seq` tokens (at most
/// [`MAX_BLOCK_SPARSE_SEQ`]); `what` names the caller in the error.
pub fn check_block_sparse_seq(what: &str, seq: usize) -> Result<(), MinfError> {
    let rows = seq.div_ceil(BLOCK);
    if rows > MAX_BLOCK_SPARSE_ROWS {
        return Err(shape_error(format!(
            "{what}: {seq} tokens make {rows} query blocks of {BLOCK}, but the block-sparse estimate takes at most \
             {MAX_BLOCK_SPARSE_ROWS} blocks ({MAX_BLOCK_SPARSE_SEQ} tokens: a query block's selection holds the \
             keys of all its candidate blocks in registers); use prompts of at most {MAX_BLOCK_SPARSE_SEQ} tokens, or a config whose heads \
             are not block_sparse (e.g. vertical_and_slash)"
        )));
    }
    Ok(())
}

fn shape_error(message: String) -> MinfError {
    MinfError::Shape(message)
}

/// As [`reserve_buffer`], but the buffer has exactly `len` elements (for callees that check lengths).
fn exact<T: DeviceRepr + ValidAsZeroBits>(
    slot: &mut Option<CudaSlice<T>>,
    stream: &Arc<CudaStream>,
    len: usize,
    what: &str,
) -> Result<(), MinfError> {
    if slot.as_ref().is_some_and(|b| b.len() == len && Arc::ptr_eq(b.context(), stream.context())) {
        return Ok(());
    }
    *slot = None;
    let buffer =
        stream.alloc_zeros::<T>(len).map_err(MinfError::driver(format!("allocating the estimate's {what} ({len})")))?;
    *slot = Some(buffer);
    Ok(())
}

/// A small `i32` table mirrored on the device: uploaded (asynchronously, no device sync) only when
/// its contents change.
#[derive(Debug, Default)]
struct DeviceTable {
    buffer: Option<CudaSlice<i32>>,
    host: Vec<i32>,
}

impl DeviceTable {
    fn sync(&mut self, stream: &Arc<CudaStream>, values: &[i32], what: &str) -> Result<&CudaSlice<i32>, MinfError> {
        let current = self.buffer.as_ref().is_some_and(|b| Arc::ptr_eq(b.context(), stream.context()));
        if !current || self.host != values {
            exact(&mut self.buffer, stream, values.len().max(1), what)?;
            if let Some(buffer) = self.buffer.as_mut() {
                stream
                    .memcpy_htod(values, &mut buffer.slice_mut(..values.len()))
                    .map_err(MinfError::driver(format!("uploading the estimate's {what}")))?;
            }
            self.host = values.to_vec();
        }
        self.buffer.as_ref().ok_or_else(|| shape_error(format!("the estimate's {what} was not allocated")))
    }

    fn device_bytes(&self) -> usize {
        self.buffer.as_ref().map_or(0, |b| b.num_bytes())
    }
}

/// Reusable device scratch of [`vertical_slash_scores_gpu`]: per (batch, head) the softmax
/// partials of every key chunk and the combined row statistics. It grows on demand and keeps its
/// memory (used with another device, it reallocates there). The `&mut` borrow and the single
/// stream keep uses in order.
#[derive(Debug, Default)]
pub struct ScoresWorkspace {
    buffer: Option<CudaSlice<f32>>,
}

impl ScoresWorkspace {
    /// An empty workspace; the first call allocates what it needs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of device memory held.
    pub fn device_bytes(&self) -> usize {
        self.buffer.as_ref().map_or(0, |b| b.num_bytes())
    }
}

/// Reusable device scratch of the estimates (scores, top-k, conversion, block pooling); grows on
/// demand and keeps its memory.
#[derive(Debug, Default)]
pub struct EstimateWorkspace {
    scores: ScoresWorkspace,
    vertical_scores: Option<CudaSlice<f32>>,
    slash_scores: Option<CudaSlice<f32>>,
    raw_vertical: Option<CudaSlice<i32>>,
    raw_slash: Option<CudaSlice<i32>>,
    select_scratch: Option<CudaSlice<i32>>,
    head_sizes: DeviceTable,
    seqlens: DeviceTable,
    q_lens: DeviceTable,
    convert: ConvertWorkspace,
    block_tables: DeviceTable,
    pooled: Option<CudaSlice<f32>>,
    block_scores: Option<CudaSlice<u32>>,
    block_score_limit: Option<usize>,
    /// The (batch, listed head) pairs whose score matrices the block scores hold after the last
    /// block-sparse estimate (its last group): first pair, pair count, keys per pair.
    block_scores_held: Option<(usize, usize, usize)>,
}

impl EstimateWorkspace {
    /// An empty workspace; the first estimate allocates what it needs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of device memory held.
    pub fn device_bytes(&self) -> usize {
        let bytes = |b: &Option<CudaSlice<f32>>| b.as_ref().map_or(0, |b| b.num_bytes());
        let int_bytes = |b: &Option<CudaSlice<i32>>| b.as_ref().map_or(0, |b| b.num_bytes());
        self.scores.device_bytes()
            + bytes(&self.vertical_scores)
            + bytes(&self.slash_scores)
            + bytes(&self.pooled)
            + self.block_scores.as_ref().map_or(0, |b| b.num_bytes())
            + int_bytes(&self.raw_vertical)
            + int_bytes(&self.raw_slash)
            + int_bytes(&self.select_scratch)
            + self.head_sizes.device_bytes()
            + self.seqlens.device_bytes()
            + self.q_lens.device_bytes()
            + self.block_tables.device_bytes()
            + self.convert.device_bytes()
    }

    /// Caps the block-sparse estimate's score scratch at `bytes`: the (batch, head) pairs' score
    /// matrices (4 bytes per causal (query block, key block) pair: `rows * (rows + 1) / 2` keys
    /// for a whole prompt of `rows` 64-token blocks) are computed and selected in groups that fit,
    /// at least one pair per group (so at most 537 MB at 1M tokens). The default is
    /// [`DEFAULT_BLOCK_SCORE_BYTES`]. Results do not depend on it.
    pub fn limit_block_scores(&mut self, bytes: usize) {
        self.block_score_limit = Some(bytes);
    }

    /// The vertical and slash scores of the last vertical-slash estimate, `[batch, heads, seq]`
    /// each (only the listed heads are meaningful); for tests and inspection (synchronises).
    pub fn scores_to_host(&self, len: usize) -> Result<(Vec<f32>, Vec<f32>), MinfError> {
        Ok((
            download(&self.vertical_scores, len, "vertical scores")?,
            download(&self.slash_scores, len, "slash scores")?,
        ))
    }

    /// The first `len` pooled values of the last block-sparse estimate, `[jobs, batch, kv_rows,
    /// head_dim]` f32: the listed query heads in their order, then the KV heads they read in
    /// ascending order (only a chunk's first `ceil(q_len / 64)` rows of a query head are
    /// meaningful); for tests and inspection (synchronises).
    pub fn pooled_to_host(&self, len: usize) -> Result<Vec<f32>, MinfError> {
        download(&self.pooled, len, "pooled blocks")
    }

    /// The block score matrices of the last block-sparse estimate's last group of pairs: the
    /// first pair (`b * listed + entry`, the listed heads in their order), the keys per pair
    /// (`abi::block_score_keys`) and the pairs' keys (order-preserving images of the f32 scores,
    /// laid out by `abi::block_score_offset`); for tests and inspection (synchronises).
    pub fn block_scores_to_host(&self) -> Result<Option<(usize, usize, Vec<u32>)>, MinfError> {
        let Some((first, pairs, keys)) = self.block_scores_held else { return Ok(None) };
        let held = download(&self.block_scores, pairs * keys, "block scores")?;
        Ok(Some((first, keys, held)))
    }

    /// The selections of the last vertical-slash estimate before conversion: columns
    /// `[batch, heads, nnz_v]` ascending and diagonals `[batch, heads, nnz_s]` descending, each row
    /// padded with -1 (all -1 for heads not listed); for tests and inspection (synchronises).
    pub fn selections_to_host(&self) -> Result<(Vec<i32>, Vec<i32>), MinfError> {
        let len = |b: &Option<CudaSlice<i32>>| b.as_ref().map_or(0, |b| b.len());
        Ok((
            download(&self.raw_vertical, len(&self.raw_vertical), "selected columns")?,
            download(&self.raw_slash, len(&self.raw_slash), "selected diagonals")?,
        ))
    }
}

/// The first `len` elements of a workspace buffer (empty when there is none).
fn download<T: DeviceRepr + Default + Clone>(
    buffer: &Option<CudaSlice<T>>,
    len: usize,
    what: &str,
) -> Result<Vec<T>, MinfError> {
    let Some(buffer) = buffer else { return Ok(Vec::new()) };
    if len > buffer.len() {
        return Err(shape_error(format!("{what}: {len} elements asked, the workspace holds {}", buffer.len())));
    }
    let mut host = vec![T::default(); len];
    buffer
        .stream()
        .memcpy_dtoh(&buffer.slice(..len), &mut host)
        .map_err(MinfError::driver(format!("downloading the {what}")))?;
    buffer.stream().synchronize().map_err(MinfError::driver(format!("waiting for the {what}")))?;
    Ok(host)
}

/// One vertical-slash head to estimate: query head index and its requested sizes (clamped like
/// MInference, see [`clamp_sizes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerticalSlashHead {
    /// Query head index.
    pub head: usize,
    /// Requested key columns.
    pub vertical: usize,
    /// Requested diagonals.
    pub slash: usize,
}

fn strides(layout: &Layout) -> Result<[i64; 3], MinfError> {
    let mut out = [0i64; 3];
    for (o, &s) in out.iter_mut().zip(&layout.strides[..3]) {
        *o = i64::try_from(s).map_err(|_| shape_error(format!("stride {s} does not fit i64")))?;
    }
    Ok(out)
}

/// The checked dimensions of a q/k pair: `q_seq` queries (a chunk), `seq` keys.
#[derive(Debug, Clone, Copy)]
struct QkDims {
    batch: usize,
    seq: usize,
    q_seq: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

fn check_qk<T: AttentionElement>(what: &str, q: &TensorRef<'_, T>, k: &TensorRef<'_, T>) -> Result<QkDims, MinfError> {
    check_layout("q", &q.layout, q.data.len())?;
    check_layout("k", &k.layout, k.data.len())?;
    let [batch, q_seq, heads, head_dim] = q.layout.shape;
    let [_, seq, kv_heads, _] = k.layout.shape;
    if k.layout.shape != [batch, seq, kv_heads, head_dim] {
        return Err(shape_error(format!(
            "{what}: k shape {:?} does not match q shape {:?} (same batch and head_dim expected)",
            k.layout.shape, q.layout.shape
        )));
    }
    if q_seq > seq {
        return Err(shape_error(format!(
            "{what}: q has {q_seq} tokens but k only {seq}; a chunk's queries are the last q_len of the kv_len keys \
             (q_len <= kv_len)"
        )));
    }
    if kv_heads == 0 || heads % kv_heads != 0 {
        return Err(shape_error(format!(
            "{what}: {heads} query heads is not a multiple of {kv_heads} key/value heads"
        )));
    }
    if !HEAD_DIMS.contains(&u32::try_from(head_dim).unwrap_or(0)) {
        return Err(shape_error(format!("{what}: head_dim {head_dim}, allowed {HEAD_DIMS:?}")));
    }
    if batch > MAX_BATCH_OR_HEADS || heads > MAX_BATCH_OR_HEADS {
        return Err(shape_error(format!(
            "{what}: batch {batch} and heads {heads} must each be at most {MAX_BATCH_OR_HEADS}"
        )));
    }
    if seq > MAX_SCORE_SEQ {
        return Err(shape_error(format!("{what}: seq {seq} is longer than the {MAX_SCORE_SEQ} tokens allowed")));
    }
    Ok(QkDims { batch, seq, q_seq, heads, kv_heads, head_dim })
}

/// Loads entry point `entry` (the name after the module's prefix) of index kernel `kernel`.
fn load(device: &Device, kernel: IndexKernel, entry: &str) -> Result<LoadedKernel, MinfError> {
    let spec = IndexKernelSpec { kernel, arch: device.arch() };
    device.index_kernel(&spec, &spec.entry_name(entry))
}

/// Device addresses the score passes read and write.
#[derive(Debug, Clone, Copy)]
struct ScoreTargets {
    /// `[heads, 2]` sizes (heads with vertical size 0 are skipped), or null: every head.
    head_sizes: ConstPtr<i32>,
    /// `[batch, heads, seq]` f32.
    vertical: MutPtr<f32>,
    /// `[batch, heads, seq]` f32, zeroed by the caller.
    slash: MutPtr<f32>,
}

/// Launches the three score passes.
fn launch_scores<T: AttentionElement>(
    device: &Device,
    q: &TensorRef<'_, T>,
    k: &TensorRef<'_, T>,
    dims: QkDims,
    workspace: &mut ScoresWorkspace,
    targets: ScoreTargets,
) -> Result<(), MinfError> {
    let QkDims { batch, seq, q_seq, heads, kv_heads, head_dim } = dims;
    let ScoreTargets { head_sizes, vertical, slash } = targets;
    let spec = IndexKernelSpec { kernel: IndexKernel::VerticalSlashScores, arch: device.arch() };
    // check_qk admits only HEAD_DIMS, which fit u32.
    let head_dim_u32 = u32::try_from(head_dim).unwrap_or(0);
    let stats = device.index_kernel(&spec, &spec.score_entry_name("stats", T::DTYPE, head_dim_u32))?;
    let combine = device.index_kernel(&spec, &spec.entry_name("_combine"))?;
    let accumulate = device.index_kernel(&spec, &spec.score_entry_name("accumulate", T::DTYPE, head_dim_u32))?;
    let chunks = seq.div_ceil(SCORE_CHUNK_KEYS);
    let heads_total = batch * heads;
    // Per (batch, head): a (max, sum) pair per chunk and row, then one per row.
    let partial_len = heads_total * chunks * LAST_Q * 2;
    let stats_len = heads_total * LAST_Q * 2;
    let stream = device.stream();
    reserve_buffer(&mut workspace.buffer, stream, partial_len + stats_len, "the estimate's score statistics")?;
    let buffer =
        workspace.buffer.as_mut().ok_or_else(|| shape_error("the scores workspace was not allocated".into()))?;
    let (q_ptr, _q_sync) = q.data.device_ptr(stream);
    let (k_ptr, _k_sync) = k.data.device_ptr(stream);
    let (buffer_ptr, _buffer_sync) = buffer.device_ptr_mut(stream);
    let group = heads / kv_heads;
    let pairs = group.div_ceil(SCORE_HEADS_PER_BLOCK);
    // `seq` is at most MAX_SCORE_SEQ, so every count below fits i32.
    let params = KernelArgs(ScoresParams {
        q: q_ptr.into(),
        k: k_ptr.into(),
        vertical,
        slash,
        partial: buffer_ptr.into(),
        stats: MutPtr::new(buffer_ptr + (partial_len * std::mem::size_of::<f32>()) as u64),
        head_sizes,
        q_stride: strides(&q.layout)?,
        k_stride: strides(&k.layout)?,
        seq: seq as i32,
        q_seq: q_seq as i32,
        heads: heads as i32,
        group: group as i32,
        pairs: pairs as i32,
        last_q: LAST_Q.min(q_seq) as i32,
        chunks: chunks as i32,
        scale_log2: (std::f64::consts::LOG2_E / (head_dim as f64).sqrt()) as f32,
    });
    let chunked = ((kv_heads * pairs) as u32, chunks as u32, batch as u32);
    let per_head = (heads as u32, batch as u32, 1);
    for (kernel, config, pass) in [
        (&stats, stats.config(chunked), "stats"),
        (&combine, combine.config(per_head), "combine"),
        (&accumulate, accumulate.config(chunked), "accumulate"),
    ] {
        let mut launch = stream.launch_builder(&kernel.function);
        launch.arg(&params);
        // SAFETY: the parameter block matches the kernel's declaration; q and k spans were checked
        // against their buffers, the outputs hold batch * heads * seq floats, the workspace
        // partial_len + stats_len, head_sizes (when given) 2 * heads ints; the kernels bound every
        // key by seq, every row by last_q and every head by the group.
        unsafe { launch.launch(config) }.map_err(MinfError::driver(format!("launching vs_scores {pass}")))?;
    }
    Ok(())
}

/// The vertical and slash scores of every (batch, query head), as MInference defines them: the last
/// `min(64, q_len)` query rows score all `N` keys (scale `1/sqrt(head_dim)`, causal in absolute
/// positions), take a softmax per row in f32, and `out_vertical[b, h, j]` receives the mass on key
/// `j`, `out_slash[b, h, s]` the mass on keys `p - s` (`p` each query's absolute position).
///
/// - `q`: `[batch, q_len, heads, head_dim]`, `k`: `[batch, N, kv_heads, head_dim]` with
///   `q_len <= N` (`q_len = N`: a whole prompt; see the [module docs](self)); any strides with
///   contiguous rows; query head `h` reads key head `h / (heads / kv_heads)`; bf16 or f16;
///   head_dim 64, 96, 128 or 256;
/// - `out_vertical`, `out_slash`: `[batch, heads, N]` f32, fully overwritten.
///
/// Launches on `device.stream()` without synchronising; `workspace` is reused across calls.
pub fn vertical_slash_scores_gpu<T: AttentionElement>(
    device: &Device,
    q: TensorRef<'_, T>,
    k: TensorRef<'_, T>,
    workspace: &mut ScoresWorkspace,
    out_vertical: &mut CudaSlice<f32>,
    out_slash: &mut CudaSlice<f32>,
) -> Result<(), MinfError> {
    let dims = check_qk("vertical-slash scores", &q, &k)?;
    let out_len = dims.batch * dims.heads * dims.seq;
    if dims.q_seq == 0 && out_len > 0 {
        return Err(shape_error("vertical-slash scores: q has no tokens; the scores need at least one query".into()));
    }
    for (name, len) in [("out_vertical", out_vertical.len()), ("out_slash", out_slash.len())] {
        if len != out_len {
            return Err(shape_error(format!(
                "vertical-slash scores: {name} holds {len} floats but [batch, heads, seq] = [{}, {}, {}] needs \
                 {out_len}",
                dims.batch, dims.heads, dims.seq
            )));
        }
    }
    if out_len == 0 {
        return Ok(());
    }
    let stream = device.stream();
    stream.memset_zeros(out_slash).map_err(MinfError::driver("zeroing out_slash"))?;
    let (vertical_ptr, _vertical_sync) = out_vertical.device_ptr_mut(stream);
    let (slash_ptr, _slash_sync) = out_slash.device_ptr_mut(stream);
    let targets = ScoreTargets { head_sizes: ConstPtr::NULL, vertical: vertical_ptr.into(), slash: slash_ptr.into() };
    launch_scores(device, &q, &k, dims, workspace, targets)
}

/// The clamped `[heads, 2]` size table of a vertical-slash estimate, checked against the index's
/// capacities; heads not listed get `(0, 0)`.
fn size_table(
    heads: &[VerticalSlashHead],
    dims: (usize, usize),
    nnz_v: usize,
    nnz_s: usize,
) -> Result<Vec<i32>, MinfError> {
    let (heads_count, seq) = dims;
    let mut table = vec![0i32; 2 * heads_count];
    let mut seen = vec![false; heads_count];
    for entry in heads {
        if entry.head >= heads_count {
            return Err(shape_error(format!(
                "vertical-slash estimate: head {} is listed but there are {} query heads (allowed 0 to {})",
                entry.head,
                heads_count,
                heads_count.saturating_sub(1)
            )));
        }
        if std::mem::replace(&mut seen[entry.head], true) {
            return Err(shape_error(format!("vertical-slash estimate: head {} is listed twice", entry.head)));
        }
        let (v, s) = clamp_sizes(seq, entry.vertical, entry.slash);
        if v > nnz_v || s > nnz_s {
            return Err(shape_error(format!(
                "vertical-slash estimate: head {} keeps {v} columns and {s} diagonals (clamped from {} and {} at \
                 seq {}) but the index holds at most {nnz_v} columns and {nnz_s} range starts per row block",
                entry.head, entry.vertical, entry.slash, seq
            )));
        }
        // Both are at most seq, which fits i32.
        table[2 * entry.head] = v as i32;
        table[2 * entry.head + 1] = s as i32;
    }
    Ok(table)
}

/// The layout, in `i32`s, of the vertical-slash top-k scratch for `heads_total` = batch * heads
/// (two selections each, columns and diagonals) of `seq` scores: histograms, then states (both
/// zeroed before the first pass), then the segment counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SelectScratch {
    /// Blocks per selection: ceil(seq / SELECT_SEGMENT_KEYS).
    segments: usize,
    /// Start of the states.
    states: usize,
    /// Start of the segment counts: the launcher zeroes the ints before it.
    segment_counts: usize,
    /// Ints in all.
    len: usize,
}

impl SelectScratch {
    fn layout(heads_total: usize, seq: usize) -> Self {
        let selections = 2 * heads_total;
        let segments = seq.div_ceil(abi::SELECT_SEGMENT_KEYS as usize).max(1);
        let states = selections * abi::RADIX_BINS as usize;
        let segment_counts = states + selections * abi::SELECT_STATE_INTS as usize;
        Self { segments, states, segment_counts, len: segment_counts + selections * segments * 2 }
    }
}

/// Device addresses and row sizes of the vertical-slash top-k.
#[derive(Debug, Clone, Copy)]
struct TopKTargets {
    /// `[batch, heads, seq]` column scores.
    vertical: ConstPtr<f32>,
    /// `[batch, heads, seq]` diagonal scores.
    slash: ConstPtr<f32>,
    /// `[heads, 2]` clamped sizes, each at most its capacity and seq.
    head_sizes: ConstPtr<i32>,
    /// `[batch, heads, capacity_v]`.
    out_vertical: MutPtr<i32>,
    /// `[batch, heads, capacity_s]`.
    out_slash: MutPtr<i32>,
    /// Entries per (batch, head) of out_vertical, at most i32::MAX.
    capacity_v: usize,
    /// Entries per (batch, head) of out_slash, at most i32::MAX.
    capacity_s: usize,
}

/// Launches the five top-k passes over `[batch, heads, seq]` scores (batch and heads at most
/// [`MAX_BATCH_OR_HEADS`], seq at most [`MAX_SCORE_SEQ`]), with `scratch` grown to their layout.
fn launch_top_k(
    device: &Device,
    (batch, heads, seq): (usize, usize, usize),
    targets: TopKTargets,
    scratch: &mut Option<CudaSlice<i32>>,
) -> Result<(), MinfError> {
    let stream = device.stream();
    let layout = SelectScratch::layout(batch * heads, seq);
    reserve_buffer(scratch, stream, layout.len, "the estimate's top-k histograms")?;
    let scratch = scratch.as_mut().ok_or_else(|| shape_error("the top-k scratch was not allocated".into()))?;
    stream
        .memset_zeros(&mut scratch.slice_mut(..layout.segment_counts))
        .map_err(MinfError::driver("zeroing the top-k histograms"))?;
    let histogram = load(device, IndexKernel::EstimateSelect, "_vs_histogram")?;
    let count = load(device, IndexKernel::EstimateSelect, "_vs_count")?;
    let write = load(device, IndexKernel::EstimateSelect, "_vs_write")?;
    let (scratch_ptr, _scratch_sync) = scratch.device_ptr_mut(stream);
    let at = |ints: usize| MutPtr::new(scratch_ptr + (ints * std::mem::size_of::<i32>()) as u64);
    // The callers bound seq by MAX_SCORE_SEQ (so the segments fit i32), heads by
    // MAX_BATCH_OR_HEADS and the capacities by i32::MAX.
    let params = SelectParams {
        vertical: targets.vertical,
        slash: targets.slash,
        head_sizes: targets.head_sizes,
        out_vertical: targets.out_vertical,
        out_slash: targets.out_slash,
        histograms: at(0),
        states: at(layout.states),
        segment_counts: at(layout.segment_counts),
        seq: seq as i32,
        heads: heads as i32,
        capacity_v: targets.capacity_v as i32,
        capacity_s: targets.capacity_s as i32,
        segments: layout.segments as i32,
        pass: 0,
    };
    let passes = [(&histogram, 0), (&histogram, 1), (&histogram, 2), (&count, 0), (&write, 0)];
    for (kernel, pass) in passes {
        let config = kernel.config(((2 * layout.segments) as u32, heads as u32, batch as u32));
        let params = KernelArgs(SelectParams { pass, ..params });
        let mut launch = stream.launch_builder(&kernel.function);
        launch.arg(&params);
        // SAFETY: the parameter block matches the kernels' declaration; the scores hold
        // batch * heads * seq floats, the size table 2 * heads ints, the outputs
        // batch * heads * capacity ints, the scratch the histograms, states and segment counts of
        // batch * heads * 2 selections (SelectScratch); the kernels clamp every size to the
        // capacity and seq, read keys below seq and write positions below the size.
        unsafe { launch.launch(config) }.map_err(MinfError::driver("launching the vertical-slash top-k"))?;
    }
    Ok(())
}

/// The vertical-slash top-k alone: from `vertical` and `slash` scores (`[batch, heads, seq]` f32
/// each, as [`vertical_slash_scores_gpu`] writes them), the columns and diagonals that
/// [`estimate_vertical_slash_gpu`] keeps for every listed head (MInference's rules, sizes clamped by
/// [`clamp_sizes`] at `seq`), into `workspace`: read them with
/// [`EstimateWorkspace::selections_to_host`] (capacities the largest clamped sizes, at least 1).
/// Launches on `device.stream()` with no host sync.
pub fn select_vertical_slash_gpu(
    device: &Device,
    vertical: &CudaSlice<f32>,
    slash: &CudaSlice<f32>,
    [batch, heads_count, seq]: [usize; 3],
    heads: &[VerticalSlashHead],
    workspace: &mut EstimateWorkspace,
) -> Result<(), MinfError> {
    let what = "vertical-slash top-k";
    if batch == 0 || heads_count == 0 || seq == 0 || batch > MAX_BATCH_OR_HEADS || heads_count > MAX_BATCH_OR_HEADS {
        return Err(shape_error(format!(
            "{what}: batch {batch}, heads {heads_count} and seq {seq} must be positive, batch and heads at most \
             {MAX_BATCH_OR_HEADS}"
        )));
    }
    if seq > MAX_SCORE_SEQ {
        return Err(shape_error(format!("{what}: seq {seq} is longer than the {MAX_SCORE_SEQ} tokens allowed")));
    }
    let len = batch * heads_count * seq;
    for (name, held) in [("vertical", vertical.len()), ("slash", slash.len())] {
        if held != len {
            return Err(shape_error(format!(
                "{what}: {name} holds {held} floats but [batch, heads, seq] = [{batch}, {heads_count}, {seq}] needs {len}"
            )));
        }
    }
    let sizes: Vec<(usize, usize)> = heads.iter().map(|e| clamp_sizes(seq, e.vertical, e.slash)).collect();
    let nnz_v = sizes.iter().map(|s| s.0).max().unwrap_or(0).max(1);
    let nnz_s = sizes.iter().map(|s| s.1).max().unwrap_or(0).max(1);
    if nnz_v > i32::MAX as usize || nnz_s > i32::MAX as usize {
        return Err(shape_error(format!("{what}: sizes ({nnz_v}, {nnz_s}) do not fit i32")));
    }
    let table = size_table(heads, (heads_count, seq), nnz_v, nnz_s)?;
    let stream = device.stream();
    exact(&mut workspace.raw_vertical, stream, batch * heads_count * nnz_v, "selected columns")?;
    exact(&mut workspace.raw_slash, stream, batch * heads_count * nnz_s, "selected diagonals")?;
    let head_sizes = workspace.head_sizes.sync(stream, &table, "head sizes")?;
    let (Some(raw_vertical), Some(raw_slash)) = (workspace.raw_vertical.as_mut(), workspace.raw_slash.as_mut()) else {
        return Err(shape_error(format!("{what}: the workspace was not allocated")));
    };
    let (sizes_ptr, _sizes_sync) = head_sizes.device_ptr(stream);
    let (vertical_ptr, _vertical_sync) = vertical.device_ptr(stream);
    let (slash_ptr, _slash_sync) = slash.device_ptr(stream);
    let (out_vertical, _out_vertical_sync) = raw_vertical.device_ptr_mut(stream);
    let (out_slash, _out_slash_sync) = raw_slash.device_ptr_mut(stream);
    let targets = TopKTargets {
        vertical: vertical_ptr.into(),
        slash: slash_ptr.into(),
        head_sizes: sizes_ptr.into(),
        out_vertical: out_vertical.into(),
        out_slash: out_slash.into(),
        capacity_v: nnz_v,
        capacity_s: nnz_s,
    };
    launch_top_k(device, (batch, heads_count, seq), targets, &mut workspace.select_scratch)
}

/// What the stages of [`run_vertical_slash`] report to: called with 0 before the scores, then
/// after the scores (1), the top-k (2) and the conversion (3).
type StageMark<'a> = &'a mut dyn FnMut(usize) -> Result<(), MinfError>;

fn run_vertical_slash<T: AttentionElement>(
    device: &Device,
    q: TensorRef<'_, T>,
    k: TensorRef<'_, T>,
    heads: &[VerticalSlashHead],
    workspace: &mut EstimateWorkspace,
    index: &mut VerticalSlashIndex,
    mark: StageMark<'_>,
) -> Result<(), MinfError> {
    let what = "vertical-slash estimate";
    let dims = check_qk(what, &q, &k)?;
    let shape = index.shape();
    if dims.q_seq == 0 {
        return Err(shape_error(format!("{what}: q has no tokens; the index needs at least one query")));
    }
    let rows = dims.q_seq.div_ceil(BLOCK);
    if (shape.batch, shape.heads, shape.rows) != (dims.batch, dims.heads, rows) {
        return Err(shape_error(format!(
            "{what}: the index is [batch {}, heads {}, rows {}] but q gives [batch {}, heads {}, rows ceil({} / 64) = \
             {rows}]",
            shape.batch, shape.heads, shape.rows, dims.batch, dims.heads, dims.q_seq
        )));
    }
    let table = size_table(heads, (dims.heads, dims.seq), shape.nnz_v, shape.nnz_s)?;
    let stream = device.stream();
    let heads_total = dims.batch * dims.heads;
    let scores_len = heads_total * dims.seq;
    reserve_buffer(&mut workspace.vertical_scores, stream, scores_len, "the estimate's vertical scores")?;
    reserve_buffer(&mut workspace.slash_scores, stream, scores_len, "the estimate's slash scores")?;
    exact(&mut workspace.raw_vertical, stream, heads_total * shape.nnz_v, "selected columns")?;
    exact(&mut workspace.raw_slash, stream, heads_total * shape.nnz_s, "selected diagonals")?;
    // seq fits i32 (MAX_SCORE_SEQ), and q_seq <= seq.
    workspace.seqlens.sync(stream, &vec![dims.seq as i32; dims.batch], "sequence lengths")?;
    workspace.q_lens.sync(stream, &vec![dims.q_seq as i32; dims.batch], "chunk lengths")?;
    let head_sizes = workspace.head_sizes.sync(stream, &table, "head sizes")?;
    let (Some(vertical_scores), Some(slash_scores), Some(raw_vertical), Some(raw_slash), Some(seqlens), Some(q_lens)) = (
        workspace.vertical_scores.as_mut(),
        workspace.slash_scores.as_mut(),
        workspace.raw_vertical.as_mut(),
        workspace.raw_slash.as_mut(),
        workspace.seqlens.buffer.as_ref(),
        workspace.q_lens.buffer.as_ref(),
    ) else {
        return Err(shape_error(format!("{what}: the workspace was not allocated")));
    };

    mark(0)?;
    stream
        .memset_zeros(&mut slash_scores.slice_mut(..scores_len))
        .map_err(MinfError::driver("zeroing the slash scores"))?;
    let (sizes_ptr, _sizes_sync) = head_sizes.device_ptr(stream);
    {
        let (vertical_ptr, _vertical_sync) = vertical_scores.device_ptr_mut(stream);
        let (slash_ptr, _slash_sync) = slash_scores.device_ptr_mut(stream);
        let targets =
            ScoreTargets { head_sizes: sizes_ptr.into(), vertical: vertical_ptr.into(), slash: slash_ptr.into() };
        launch_scores(device, &q, &k, dims, &mut workspace.scores, targets)?;
    }
    mark(1)?;
    {
        let (vertical_ptr, _vertical_sync) = vertical_scores.device_ptr(stream);
        let (slash_ptr, _slash_sync) = slash_scores.device_ptr(stream);
        let (out_vertical, _out_vertical_sync) = raw_vertical.device_ptr_mut(stream);
        let (out_slash, _out_slash_sync) = raw_slash.device_ptr_mut(stream);
        let targets = TopKTargets {
            vertical: vertical_ptr.into(),
            slash: slash_ptr.into(),
            head_sizes: sizes_ptr.into(),
            out_vertical: out_vertical.into(),
            out_slash: out_slash.into(),
            capacity_v: shape.nnz_v,
            capacity_s: shape.nnz_s,
        };
        launch_top_k(device, (dims.batch, dims.heads, dims.seq), targets, &mut workspace.select_scratch)?;
    }
    mark(2)?;
    let lengths = ChunkLengths { q_lens, kv_lens: seqlens, max_q_len: dims.q_seq, max_kv_len: dims.seq };
    convert_vertical_slash_chunk_into(device, lengths, raw_vertical, raw_slash, &mut workspace.convert, index)?;
    mark(3)
}

/// Estimates the listed heads of `q` (`[batch, q_len, heads, head_dim]`) against `k`
/// (`[batch, kv_len, kv_heads, head_dim]`, `q_len <= kv_len`: a whole prompt when equal, else a
/// chunk whose queries are the last `q_len` of the `kv_len` tokens, see the [module docs](self);
/// any layout the kernels accept: contiguous 16-byte aligned rows; bf16 or f16; head_dim 64, 96,
/// 128 or 256) and writes their converted index into `index` (shape
/// `[batch, heads, ceil(q_len / 64)]`, capacities at least the largest clamped sizes; heads not
/// listed get `block_count = column_count = 0`). Each listed head keeps its own
/// [`clamp_sizes`]`(kv_len, vertical, slash)` columns and diagonals, chosen by MInference's rules
/// (the [module docs](super)) from the scores of the last `min(64, q_len)` queries; columns and
/// range starts are absolute keys. Launches on
/// `device.stream()` with no host sync; `workspace` is reused across calls.
pub fn estimate_vertical_slash_gpu<T: AttentionElement>(
    device: &Device,
    q: TensorRef<'_, T>,
    k: TensorRef<'_, T>,
    heads: &[VerticalSlashHead],
    workspace: &mut EstimateWorkspace,
    index: &mut VerticalSlashIndex,
) -> Result<(), MinfError> {
    run_vertical_slash(device, q, k, heads, workspace, index, &mut |_| Ok(()))
}

/// [`estimate_vertical_slash_gpu`] with its three stages timed by CUDA events: returns
/// `[scores, top-k, conversion]` in milliseconds (synchronises on the last event).
pub fn estimate_vertical_slash_gpu_timed<T: AttentionElement>(
    device: &Device,
    q: TensorRef<'_, T>,
    k: TensorRef<'_, T>,
    heads: &[VerticalSlashHead],
    workspace: &mut EstimateWorkspace,
    index: &mut VerticalSlashIndex,
) -> Result<[f32; 3], MinfError> {
    let stream = device.stream().clone();
    let mut events = Vec::with_capacity(4);
    run_vertical_slash(device, q, k, heads, workspace, index, &mut |_| {
        events.push(
            stream
                .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(MinfError::driver("recording a stage event"))?,
        );
        Ok(())
    })?;
    let [start, scores, topk, convert] = <[_; 4]>::try_from(events)
        .map_err(|_| shape_error("vertical-slash estimate: a stage event is missing".into()))?;
    convert.synchronize().map_err(MinfError::driver("waiting for the estimate"))?;
    let elapsed = |a: &cudarc::driver::CudaEvent, b: &cudarc::driver::CudaEvent| {
        a.elapsed_ms(b).map_err(MinfError::driver("reading a stage event"))
    };
    Ok([elapsed(&start, &scores)?, elapsed(&scores, &topk)?, elapsed(&topk, &convert)?])
}

/// Block-sparse: mean-pools Q over the chunk's 64-row blocks and K over absolute 64-key blocks
/// (dividing by 64 even for a partial last block, as MInference's zero padding does), scores
/// `pooled_q . pooled_k` causally at block level and keeps the `min(top_k, kv_blocks)` best key
/// blocks of every query block (all of them when it has fewer; MInference uses
/// [`BLOCK_SPARSE_TOP_K`](super::BLOCK_SPARSE_TOP_K)), ascending, for the listed query `heads`;
/// other heads get count 0. Query block `r` (absolute positions from `kv_len - q_len + 64r`) has
/// the candidates `0 ..= c`, `c` the block of its last absolute position; for a whole prompt
/// (`q_len = kv_len`) that is `0 ..= r`. `index` is `[batch, heads, ceil(q_len / 64)]` with a
/// capacity of at least `min(top_k, ceil(kv_len / 64))`; it is zeroed first. Layouts and chunks as
/// [`estimate_vertical_slash_gpu`]. The scores of each (batch, head) pair are computed as a matrix
/// in `workspace` (4 bytes per causal (query block, key block) pair, the pairs in groups under
/// [`EstimateWorkspace::limit_block_scores`]). Launches on `device.stream()` with no host sync.
pub fn estimate_block_sparse_gpu<T: AttentionElement>(
    device: &Device,
    q: TensorRef<'_, T>,
    k: TensorRef<'_, T>,
    heads: &[usize],
    top_k: usize,
    workspace: &mut EstimateWorkspace,
    index: &mut BlockSparseIndex,
) -> Result<(), MinfError> {
    run_block_sparse(device, q, k, (heads, top_k), workspace, index, &mut |_| Ok(()))
}

/// [`estimate_block_sparse_gpu`] with its stages timed by CUDA events: returns `[pooling (with the
/// index zeroing), scores, selection]` in milliseconds, each summed over the groups of heads
/// (synchronises on the last event; all zero when nothing was launched).
pub fn estimate_block_sparse_gpu_timed<T: AttentionElement>(
    device: &Device,
    q: TensorRef<'_, T>,
    k: TensorRef<'_, T>,
    heads: &[usize],
    top_k: usize,
    workspace: &mut EstimateWorkspace,
    index: &mut BlockSparseIndex,
) -> Result<[f32; 3], MinfError> {
    let stream = device.stream().clone();
    let mut events = Vec::new();
    run_block_sparse(device, q, k, (heads, top_k), workspace, index, &mut |stage| {
        let event = stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(MinfError::driver("recording a stage event"))?;
        events.push((stage, event));
        Ok(())
    })?;
    let mut stages = [0.0f32; 3];
    if let Some((_, last)) = events.last() {
        last.synchronize().map_err(MinfError::driver("waiting for the estimate"))?;
    }
    // Each interval counts for the stage whose mark opens it.
    for pair in events.windows(2) {
        let ((stage, start), (_, end)) = (&pair[0], &pair[1]);
        if let Some(total) = stages.get_mut(*stage) {
            *total += start.elapsed_ms(end).map_err(MinfError::driver("reading a stage event"))?;
        }
    }
    Ok(stages)
}

/// Stage marks of [`run_block_sparse`]: 0 before the zeroing and pooling, 1 before each group's
/// scores, 2 before its selection, 3 after the last launch.
fn run_block_sparse<T: AttentionElement>(
    device: &Device,
    q: TensorRef<'_, T>,
    k: TensorRef<'_, T>,
    (heads, top_k): (&[usize], usize),
    workspace: &mut EstimateWorkspace,
    index: &mut BlockSparseIndex,
    mark: StageMark<'_>,
) -> Result<(), MinfError> {
    let what = "block-sparse estimate";
    let dims = check_qk(what, &q, &k)?;
    check_block_sparse_seq(what, dims.seq)?;
    let rows = dims.seq.div_ceil(BLOCK);
    let q_rows = dims.q_seq.div_ceil(BLOCK);
    let (index_batch, index_heads, index_rows, capacity) = index.dims();
    if (index_batch, index_heads, index_rows) != (dims.batch, dims.heads, q_rows) {
        return Err(shape_error(format!(
            "{what}: the index is [batch {index_batch}, heads {index_heads}, rows {index_rows}] but q gives [batch {}, \
             heads {}, rows ceil({} / 64) = {q_rows}]",
            dims.batch, dims.heads, dims.q_seq
        )));
    }
    let kept = top_k.min(rows);
    if kept > capacity {
        return Err(shape_error(format!(
            "{what}: top_k {top_k} keeps up to {kept} of {rows} key blocks but the index holds {capacity} per list"
        )));
    }
    let mut seen = vec![false; dims.heads];
    for &h in heads {
        if h >= dims.heads {
            return Err(shape_error(format!(
                "{what}: head {h} is listed but there are {} query heads (allowed 0 to {})",
                dims.heads,
                dims.heads.saturating_sub(1)
            )));
        }
        if std::mem::replace(&mut seen[h], true) {
            return Err(shape_error(format!("{what}: head {h} is listed twice")));
        }
    }
    let stream = device.stream();
    let (kv_num_blocks, kv_indices) = index.buffers_mut();
    mark(0)?;
    stream.memset_zeros(kv_num_blocks).map_err(MinfError::driver("zeroing kv_num_blocks"))?;
    stream.memset_zeros(kv_indices).map_err(MinfError::driver("zeroing kv_indices"))?;
    workspace.block_scores_held = None;
    if heads.is_empty() || kept == 0 || q_rows == 0 {
        return Ok(());
    }

    // Pooling jobs: every listed query head, then every KV head they read (once each).
    let group = dims.heads / dims.kv_heads;
    let mut kv_used: Vec<usize> = heads.iter().map(|h| h / group).collect();
    kv_used.sort_unstable();
    kv_used.dedup();
    let jobs = heads.len() + kv_used.len();
    // Heads are below MAX_BATCH_OR_HEADS, so every entry fits i32.
    let mut table: Vec<i32> = Vec::with_capacity(2 * jobs + 3 * heads.len());
    table.extend(heads.iter().flat_map(|&h| [0, h as i32]));
    table.extend(kv_used.iter().flat_map(|&kv| [1, kv as i32]));
    for (job, &h) in heads.iter().enumerate() {
        let kv_job = heads.len() + kv_used.partition_point(|&kv| kv < h / group);
        table.extend([h as i32, job as i32, kv_job as i32]);
    }
    let pooled_len = jobs * dims.batch * rows * dims.head_dim;
    reserve_buffer(&mut workspace.pooled, stream, pooled_len, "the estimate's pooled blocks")?;
    // Every (batch, listed head) pair's score matrix takes slot_keys keys; the pairs go in groups
    // whose matrices fit the cap (at least one pair; a grid's y dimension at most).
    let slot_keys = usize::try_from(abi::block_score_keys(dims.seq as u64, dims.q_seq as u64))
        .map_err(|_| shape_error(format!("{what}: the block score matrix does not fit usize")))?;
    let pairs = dims.batch * heads.len();
    let limit = workspace.block_score_limit.unwrap_or(DEFAULT_BLOCK_SCORE_BYTES);
    let group = (limit / (4 * slot_keys).max(1)).clamp(1, pairs.min(MAX_BATCH_OR_HEADS));
    reserve_buffer(&mut workspace.block_scores, stream, group * slot_keys, "the estimate's block scores")?;
    let tables = workspace.block_tables.sync(stream, &table, "block-sparse jobs")?;
    let (Some(pooled), Some(block_scores)) = (workspace.pooled.as_mut(), workspace.block_scores.as_mut()) else {
        return Err(shape_error(format!("{what}: the workspace was not allocated")));
    };
    let pool = load(device, IndexKernel::EstimateSelect, "_block_pool")?;
    let scores = load(device, IndexKernel::EstimateSelect, "_block_scores")?;
    // Where its buffer holds k, a query block takes a warp of the streaming selection (a buffer of
    // the best so far, read from the causal edge back). Larger k: up to SELECT_SHORT_ROWS
    // candidates a warp of the short selection (its keys in registers, no shared memory), more a
    // whole block, with shared memory for the keys that share the threshold's prefix (rows <=
    // MAX_BLOCK_SPARSE_ROWS: the entry's launch shape allows this much).
    let short = rows <= abi::SELECT_SHORT_ROWS as usize;
    let streams = kept <= (abi::SELECT_STREAM_BUFFER - abi::SELECT_STREAM_CHUNK) as usize;
    let (select_entry, rows_per_block, select_shared) = if streams {
        ("_block_select_stream", abi::SELECT_THREADS / 32, 0)
    } else if short {
        ("_block_select_short", abi::SELECT_THREADS / 32, 0)
    } else {
        ("_block_select", 1, abi::block_select_shared_bytes(rows as u32))
    };
    let select = load(device, IndexKernel::EstimateSelect, select_entry)?;
    if select_shared > select.launch.shared_bytes {
        return Err(shape_error(format!(
            "{what}: {rows} key blocks need {select_shared} bytes of shared memory; the selection allows {}",
            select.launch.shared_bytes
        )));
    }
    // At most 16384 query blocks make 128 query tiles: 8256 tiles per pair for a whole prompt.
    let tiles = u32::try_from(abi::block_score_tiles(dims.seq as u64, dims.q_seq as u64))
        .map_err(|_| shape_error(format!("{what}: too many score tiles")))?;

    let (q_ptr, _q_sync) = q.data.device_ptr(stream);
    let (k_ptr, _k_sync) = k.data.device_ptr(stream);
    let (tables_ptr, _tables_sync) = tables.device_ptr(stream);
    let (pooled_ptr, _pooled_sync) = pooled.device_ptr_mut(stream);
    let scores_len = block_scores.len();
    let (scores_ptr, _scores_sync) = block_scores.device_ptr_mut(stream);
    let (counts_ptr, _counts_sync) = kv_num_blocks.device_ptr_mut(stream);
    let (indices_ptr, _indices_sync) = kv_indices.device_ptr_mut(stream);
    let (q_stride, k_stride) = (strides(&q.layout)?, strides(&k.layout)?);
    // rows <= MAX_BLOCK_SPARSE_ROWS, capacity fits i32 (BlockSparseIndex::zeros), batch and heads
    // are at most MAX_BATCH_OR_HEADS, pair indices below batch * heads, and so on.
    let params = |pair_begin: usize| {
        KernelArgs(BlockParams {
            q: q_ptr.into(),
            k: k_ptr.into(),
            jobs: tables_ptr.into(),
            entries: ConstPtr::new(tables_ptr + (2 * jobs * std::mem::size_of::<i32>()) as u64),
            pooled: pooled_ptr.into(),
            scores: scores_ptr.into(),
            scores_len: scores_len as i64,
            kv_num_blocks: counts_ptr.into(),
            kv_indices: indices_ptr.into(),
            q_stride,
            k_stride,
            seq: dims.seq as i32,
            q_seq: dims.q_seq as i32,
            heads: dims.heads as i32,
            kv_heads: dims.kv_heads as i32,
            head_dim: dims.head_dim as i32,
            rows: rows as i32,
            q_rows: q_rows as i32,
            jobs_count: jobs as i32,
            top_k: kept as i32,
            capacity: capacity as i32,
            is_f16: i32::from(T::DTYPE == DType::F16),
            batch: dims.batch as i32,
            entries_count: heads.len() as i32,
            pair_begin: pair_begin as i32,
        })
    };
    let launch = |kernel: &LoadedKernel, config: LaunchConfig, params: &KernelArgs<BlockParams>, pass: &str| {
        let mut launch = stream.launch_builder(&kernel.function);
        launch.arg(params);
        // SAFETY: the parameter block matches the kernels' declaration; q and k spans were checked,
        // the job table holds 2 * jobs + 3 * entries ints, pooled jobs * batch * rows * head_dim
        // floats, the scores scores_len keys (a launch's pairs take group * slot_keys of them), the
        // index batch * heads * rows (* capacity) ints; the kernels range-check every pair, head and
        // job they read, write scores only inside their pair's slot and at most min(top_k,
        // capacity) entries per list.
        unsafe { launch.launch(config) }.map_err(MinfError::driver(format!("launching the block-sparse {pass}")))
    };
    let pool_config = pool.config((rows as u32, jobs as u32, dims.batch as u32));
    launch(&pool, pool_config, &params(0), "pooling")?;
    for pair_begin in (0..pairs).step_by(group) {
        let pairs_here = group.min(pairs - pair_begin) as u32;
        workspace.block_scores_held = Some((pair_begin, pairs_here as usize, slot_keys));
        let group_params = params(pair_begin);
        let scores_config = scores.config((tiles, pairs_here, 1));
        let select_blocks = (q_rows as u32).div_ceil(rows_per_block);
        let select_config =
            LaunchConfig { shared_mem_bytes: select_shared, ..select.config((select_blocks, pairs_here, 1)) };
        mark(1)?;
        launch(&scores, scores_config, &group_params, "scores")?;
        mark(2)?;
        launch(&select, select_config, &group_params, "selection")?;
    }
    mark(3)?;
    Ok(())
}
