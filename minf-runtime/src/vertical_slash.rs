//! The vertical-slash index: which keys each 64-row query block attends to, in the format of
//! MInference's `convert_vertical_slash_indexes`, and the GPU converter that builds it from raw
//! vertical (key column) and slash (diagonal offset) indices.
//!
//! For query head `h` of sequence `b` and row block `r` (query rows `64r .. 64r + 64`):
//!
//! - `block_count[b, h, r]` ranges of 64 keys start at `block_offset[b, h, r, 0 .. block_count]`
//!   (start columns, not necessarily multiples of 64);
//! - `column_count[b, h, r]` single key columns are listed, ascending, in
//!   `column_index[b, h, r, 0 .. column_count]`;
//! - slots past a row's counts are unspecified: the converter does not clear them (a reused index
//!   keeps what earlier conversions left there), and every reader stops at the counts.
//!
//! The converter accepts raw indices in any order, with duplicates and out-of-range values: only
//! verticals and slashes in `[0, seqlen)` count, each once. Its output is byte-identical to
//! MInference's on the inputs MInference expects (sorted, unique, in range, with the main diagonal
//! among the slashes). Where MInference would drop verticals at or past the end of its last range
//! (no slash near the diagonal), minf keeps them as columns, so the realised mask always covers
//! every causal `(i, j)` on a chosen column or diagonal.
//!
//! **Chunks.** A prompt prefilled in chunks has, per sequence, `kv_len` keys (the prefix and the
//! chunk) and `q_len <= kv_len` queries (the chunk), query row `i` at absolute position
//! `q_offset + i` with `q_offset = kv_len - q_len`. Its index has `ceil(q_len / 64)` rows: row `r`
//! holds the chunk's rows `64r .. 64r + 63`, and every key it lists (range starts and columns) is
//! absolute in `[0, kv_len)`; diagonal offsets count from each query's absolute position
//! (`j = p - s`). [`convert_vertical_slash_chunk_into`] builds it; `q_offset` need not be a
//! multiple of 64. With `q_len = kv_len` it is the whole-prompt index.

use crate::device::{reserve_buffer, Device, KernelArgs};
use crate::error::MinfError;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use minf_codegen::abi::{ConstPtr, ConvertParams, MutPtr, INDEX_BLOCK};
use minf_codegen::{IndexKernel, IndexKernelSpec};

/// Query rows per row block and keys per range step; fixed by the format
/// ([`minf_codegen::abi::INDEX_BLOCK`]).
pub const BLOCK: usize = INDEX_BLOCK as usize;

/// Largest `context` the converter accepts (row starts and range ends stay inside `i32`).
pub const MAX_CONTEXT: usize = 1 << 30;

/// Blocks of the converter's rows pass in one launch, over all (batch, head) pairs, where the rows
/// allow: about 16 per SM of an H100 or H200.
const ROW_BLOCKS_PER_LAUNCH: usize = 2048;

/// Threads the converter's rows pass aims for: about as many as an H100 or H200 holds at once
/// (2048 per SM). Few rows (a chunk) get up to a warp each; many rows (a whole long prompt) get
/// groups of 4, whose walks then run side by side.
const ROW_THREADS_PER_LAUNCH: usize = 1 << 18;

/// Threads converting one row block together when `rows` row blocks are converted in one launch:
/// the power of two that brings the launch nearest [`ROW_THREADS_PER_LAUNCH`] from below, between
/// 4 (whose 16-byte runs of entries keep the stores whole) and 32 (a warp).
fn row_lanes(rows: usize) -> usize {
    let wanted = (ROW_THREADS_PER_LAUNCH / rows.max(1)).max(1);
    (1 << wanted.ilog2()).clamp(4, 32)
}

/// Largest batch and head count (the converter's launch grid).
pub const MAX_BATCH_OR_HEADS: usize = 65_535;

/// The dimensions of a vertical-slash index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IndexShape {
    /// Sequences.
    pub batch: usize,
    /// Query heads.
    pub heads: usize,
    /// Row blocks per head, `ceil(context / 64)`.
    pub rows: usize,
    /// Slash capacity: `block_offset` slots per row block.
    pub nnz_s: usize,
    /// Vertical capacity: `column_index` slots per row block.
    pub nnz_v: usize,
}

impl IndexShape {
    /// Elements of `block_count` and of `column_count`: `batch * heads * rows`.
    pub fn count_len(&self) -> Option<usize> {
        self.batch.checked_mul(self.heads)?.checked_mul(self.rows)
    }

    /// Elements of `block_offset`: `batch * heads * rows * nnz_s`.
    pub fn offset_len(&self) -> Option<usize> {
        self.count_len()?.checked_mul(self.nnz_s)
    }

    /// Elements of `column_index`: `batch * heads * rows * nnz_v`.
    pub fn column_len(&self) -> Option<usize> {
        self.count_len()?.checked_mul(self.nnz_v)
    }

    /// Position of row block `(b, h, r)` in the count arrays.
    pub fn row(&self, b: usize, h: usize, r: usize) -> usize {
        (b * self.heads + h) * self.rows + r
    }

    /// The shape a conversion produces, after checking its arguments: `seqlens_len`, `vertical_len`
    /// and `slash_len` are the element counts of the three inputs. The error names what is wrong
    /// and what is allowed.
    pub fn for_conversion(
        seqlens_len: usize,
        vertical_len: usize,
        slash_len: usize,
        batch: usize,
        heads: usize,
        context: usize,
    ) -> Result<IndexShape, MinfError> {
        let shape_error = |message: String| Err(MinfError::Shape(message));
        if !(1..=MAX_BATCH_OR_HEADS).contains(&batch) || !(1..=MAX_BATCH_OR_HEADS).contains(&heads) {
            return shape_error(format!(
                "batch {batch} and heads {heads}: each must be between 1 and {MAX_BATCH_OR_HEADS}"
            ));
        }
        if !(1..=MAX_CONTEXT).contains(&context) {
            return shape_error(format!("context {context}: allowed 1 to {MAX_CONTEXT} tokens"));
        }
        if seqlens_len != batch {
            return shape_error(format!(
                "seqlens holds {seqlens_len} lengths but batch is {batch} (one length per sequence)"
            ));
        }
        let heads_total = batch * heads;
        let capacity = |name: &str, len: usize| -> Result<usize, MinfError> {
            if len == 0 || !len.is_multiple_of(heads_total) || len / heads_total > i32::MAX as usize {
                return Err(MinfError::Shape(format!(
                    "{name} holds {len} indices, which is not [batch, heads, nnz] = [{batch}, {heads}, nnz] for \
                     any nnz from 1 to {}: its length must be a non-zero multiple of batch * heads = {heads_total}",
                    i32::MAX
                )));
            }
            Ok(len / heads_total)
        };
        let nnz_v = capacity("vertical", vertical_len)?;
        let nnz_s = capacity("slash", slash_len)?;
        let shape = IndexShape { batch, heads, rows: context.div_ceil(BLOCK), nnz_s, nnz_v };
        shape.lengths()?;
        Ok(shape)
    }

    /// The shape a chunk conversion produces ([`convert_vertical_slash_chunk_into`]): as
    /// [`IndexShape::for_conversion`] with `context = max_kv_len`, `q_lens_len` lengths of the
    /// chunks and `rows = ceil(max_q_len / 64)`, `1 <= max_q_len <= max_kv_len`.
    #[allow(clippy::too_many_arguments)]
    pub fn for_chunk_conversion(
        q_lens_len: usize,
        kv_lens_len: usize,
        vertical_len: usize,
        slash_len: usize,
        batch: usize,
        heads: usize,
        max_q_len: usize,
        max_kv_len: usize,
    ) -> Result<IndexShape, MinfError> {
        let shape = IndexShape::for_conversion(kv_lens_len, vertical_len, slash_len, batch, heads, max_kv_len)?;
        if q_lens_len != batch {
            return Err(MinfError::Shape(format!(
                "q_lens holds {q_lens_len} lengths but batch is {batch} (one chunk length per sequence)"
            )));
        }
        if !(1..=max_kv_len).contains(&max_q_len) {
            return Err(MinfError::Shape(format!(
                "longest chunk {max_q_len} tokens: allowed 1 to the longest kv_len ({max_kv_len}); a chunk's queries \
                 are the last q_len of its kv_len tokens"
            )));
        }
        Ok(IndexShape { rows: max_q_len.div_ceil(BLOCK), ..shape })
    }

    fn lengths(&self) -> Result<(usize, usize, usize), MinfError> {
        match (self.count_len(), self.offset_len(), self.column_len()) {
            (Some(counts), Some(offsets), Some(columns)) => Ok((counts, offsets, columns)),
            _ => Err(MinfError::Shape(format!("index shape {self:?} overflows usize"))),
        }
    }
}

/// A vertical-slash index on the device: four `i32` buffers and their shape. Only each row's
/// counted entries are meaningful (see the [module docs](self)).
#[derive(Debug)]
pub struct VerticalSlashIndex {
    shape: IndexShape,
    block_count: CudaSlice<i32>,
    block_offset: CudaSlice<i32>,
    column_count: CudaSlice<i32>,
    column_index: CudaSlice<i32>,
}

/// A vertical-slash index in host memory (same layout as [`VerticalSlashIndex`]). Two indices are
/// equal when their shapes, all four counts and each row's counted entries are equal: the slots
/// past a row's counts are not compared (a downloaded index holds whatever the device buffers held
/// there).
#[derive(Debug, Clone)]
pub struct HostVerticalSlashIndex {
    /// The dimensions.
    pub shape: IndexShape,
    /// `[batch, heads, rows]`: ranges per row block.
    pub block_count: Vec<i32>,
    /// `[batch, heads, rows, nnz_s]`: start columns of the 64-wide ranges.
    pub block_offset: Vec<i32>,
    /// `[batch, heads, rows]`: single columns per row block.
    pub column_count: Vec<i32>,
    /// `[batch, heads, rows, nnz_v]`: the columns, ascending.
    pub column_index: Vec<i32>,
}

impl PartialEq for HostVerticalSlashIndex {
    fn eq(&self, other: &Self) -> bool {
        let shape = self.shape;
        if shape != other.shape || self.block_count != other.block_count || self.column_count != other.column_count {
            return false;
        }
        (0..self.block_count.len()).all(|row| {
            self.counted(row, true) == other.counted(row, true) && self.counted(row, false) == other.counted(row, false)
        })
    }
}

impl Eq for HostVerticalSlashIndex {}

impl HostVerticalSlashIndex {
    /// An all-zero index of this shape; `None` if its size overflows `usize`.
    pub fn zeros(shape: IndexShape) -> Option<Self> {
        Some(HostVerticalSlashIndex {
            shape,
            block_count: vec![0; shape.count_len()?],
            block_offset: vec![0; shape.offset_len()?],
            column_count: vec![0; shape.count_len()?],
            column_index: vec![0; shape.column_len()?],
        })
    }

    /// The used range starts of row block `(b, h, r)` (counts clamped to the capacity); empty
    /// outside the index.
    pub fn ranges(&self, b: usize, h: usize, r: usize) -> &[i32] {
        self.row_in_shape(b, h, r).and_then(|row| self.counted(row, true)).unwrap_or(&[])
    }

    /// The used columns of row block `(b, h, r)` (counts clamped to the capacity); empty outside
    /// the index.
    pub fn columns(&self, b: usize, h: usize, r: usize) -> &[i32] {
        self.row_in_shape(b, h, r).and_then(|row| self.counted(row, false)).unwrap_or(&[])
    }

    /// The row of `(b, h, r)` in the count arrays, if the shape has it.
    fn row_in_shape(&self, b: usize, h: usize, r: usize) -> Option<usize> {
        let IndexShape { batch, heads, rows, .. } = self.shape;
        (b < batch && h < heads && r < rows).then(|| self.shape.row(b, h, r))
    }

    /// The counted range starts (`ranges`) or columns of row `row` of the count arrays, counts
    /// clamped to the capacity; `None` where the buffers are shorter than the shape says.
    fn counted(&self, row: usize, ranges: bool) -> Option<&[i32]> {
        let (counts, list, capacity) = if ranges {
            (&self.block_count, &self.block_offset, self.shape.nnz_s)
        } else {
            (&self.column_count, &self.column_index, self.shape.nnz_v)
        };
        let n = usize::try_from(*counts.get(row)?).unwrap_or(0).min(capacity);
        list.get(row.checked_mul(capacity)?..)?.get(..n)
    }

    /// Sets every slot past its row's count to zero, as MInference's converter leaves them (for
    /// files other tools read); the counted entries are unchanged.
    pub fn zero_padding(&mut self) {
        let IndexShape { nnz_s, nnz_v, .. } = self.shape;
        for (counts, list, capacity) in
            [(&self.block_count, &mut self.block_offset, nnz_s), (&self.column_count, &mut self.column_index, nnz_v)]
        {
            if capacity == 0 {
                continue;
            }
            for (&count, row) in counts.iter().zip(list.chunks_mut(capacity)) {
                let n = (count.max(0) as usize).min(row.len());
                row[n..].fill(0);
            }
        }
    }
}

/// Whether the attention kernel computes score `(i, j)` of `(b, h)` under `index`: `j <= i` and
/// `j` lies in one of row block `i / 64`'s 64-wide ranges or in its column list.
pub fn realised_mask_contains(index: &HostVerticalSlashIndex, b: usize, h: usize, i: usize, j: usize) -> bool {
    realised_chunk_mask_contains(index, 0, b, h, i, j)
}

/// [`realised_mask_contains`] for the index of a chunk whose first query sits at absolute
/// position `q_offset`: whether the query at absolute position `p` (`q_offset <= p`) computes key
/// `j`: `j <= p` and `j` lies in a range or the column list of row block `(p - q_offset) / 64`.
pub fn realised_chunk_mask_contains(
    index: &HostVerticalSlashIndex,
    q_offset: usize,
    b: usize,
    h: usize,
    p: usize,
    j: usize,
) -> bool {
    if p < q_offset || j > p {
        return false;
    }
    let r = (p - q_offset) / BLOCK;
    if r >= index.shape.rows || b >= index.shape.batch || h >= index.shape.heads {
        return false;
    }
    let j = j as i64;
    index.ranges(b, h, r).iter().any(|&start| (start as i64..start as i64 + BLOCK as i64).contains(&j))
        || index.columns(b, h, r).iter().any(|&c| c as i64 == j)
}

impl VerticalSlashIndex {
    /// A view for [`crate::vertical_slash_attention`].
    pub fn as_ref(&self) -> crate::attention::VerticalSlashIndexRef<'_> {
        let shape = self.shape();
        crate::attention::VerticalSlashIndexRef {
            block_count: self.block_count(),
            block_offset: self.block_offset(),
            column_count: self.column_count(),
            column_index: self.column_index(),
            batch: shape.batch,
            heads: shape.heads,
            rows: shape.rows,
            nnz_s: shape.nnz_s,
            nnz_v: shape.nnz_v,
        }
    }

    /// Wraps index buffers computed elsewhere, checking their lengths against `shape`. Their
    /// contents are not checked (that would need a device sync).
    pub fn from_parts(
        shape: IndexShape,
        block_count: CudaSlice<i32>,
        block_offset: CudaSlice<i32>,
        column_count: CudaSlice<i32>,
        column_index: CudaSlice<i32>,
    ) -> Result<Self, MinfError> {
        let (counts, offsets, columns) = shape.lengths()?;
        for (name, len, want, dims) in [
            ("block_count", block_count.len(), counts, "batch * heads * rows"),
            ("block_offset", block_offset.len(), offsets, "batch * heads * rows * nnz_s"),
            ("column_count", column_count.len(), counts, "batch * heads * rows"),
            ("column_index", column_index.len(), columns, "batch * heads * rows * nnz_v"),
        ] {
            if len != want {
                return Err(MinfError::Shape(format!(
                    "{name} holds {len} elements but {dims} = {want} for index shape {shape:?}"
                )));
            }
        }
        Ok(VerticalSlashIndex { shape, block_count, block_offset, column_count, column_index })
    }

    /// A zeroed index of this shape (every count 0: an empty index), allocated on the device's
    /// stream. The zero fill happens once, here: conversions into the index rewrite every count and
    /// the counted entries, and leave the slots past the counts as they are.
    pub fn zeros(device: &Device, shape: IndexShape) -> Result<Self, MinfError> {
        let (counts, offsets, columns) = shape.lengths()?;
        let stream = device.stream();
        let alloc = |n: usize, what: &str| {
            stream.alloc_zeros::<i32>(n).map_err(MinfError::driver(format!("allocating {what} ({n} x i32)")))
        };
        Ok(VerticalSlashIndex {
            shape,
            block_count: alloc(counts, "block_count")?,
            block_offset: alloc(offsets, "block_offset")?,
            column_count: alloc(counts, "column_count")?,
            column_index: alloc(columns, "column_index")?,
        })
    }

    /// The dimensions.
    pub fn shape(&self) -> IndexShape {
        self.shape
    }

    /// `[batch, heads, rows]` range counts.
    pub fn block_count(&self) -> &CudaSlice<i32> {
        &self.block_count
    }

    /// `[batch, heads, rows, nnz_s]` range starts.
    pub fn block_offset(&self) -> &CudaSlice<i32> {
        &self.block_offset
    }

    /// `[batch, heads, rows]` column counts.
    pub fn column_count(&self) -> &CudaSlice<i32> {
        &self.column_count
    }

    /// `[batch, heads, rows, nnz_v]` columns.
    pub fn column_index(&self) -> &CudaSlice<i32> {
        &self.column_index
    }

    /// The four buffers, for callers that own the index.
    pub fn into_parts(self) -> (IndexShape, [CudaSlice<i32>; 4]) {
        (self.shape, [self.block_count, self.block_offset, self.column_count, self.column_index])
    }

    /// Downloads the index (synchronises with the stream the buffers belong to).
    pub fn to_host(&self) -> Result<HostVerticalSlashIndex, MinfError> {
        let download = |buffer: &CudaSlice<i32>, what: &str| {
            buffer.stream().clone_dtoh(buffer).map_err(MinfError::driver(format!("downloading {what}")))
        };
        Ok(HostVerticalSlashIndex {
            shape: self.shape,
            block_count: download(&self.block_count, "block_count")?,
            block_offset: download(&self.block_offset, "block_offset")?,
            column_count: download(&self.column_count, "column_count")?,
            column_index: download(&self.column_index, "column_index")?,
        })
    }
}

/// Reusable device scratch of the converter: per-(batch, head) bitmaps and compacted lists. It
/// grows on demand and keeps its memory, so repeated conversions of the same or smaller shapes do
/// not allocate (used with another device, it reallocates there). One conversion at a time: the
/// `&mut` borrow and the single stream keep uses in order.
#[derive(Debug, Default)]
pub struct ConvertWorkspace {
    bits: Option<CudaSlice<u32>>,
    lists: Option<CudaSlice<i32>>,
    lengths: Option<CudaSlice<i32>>,
}

/// Element counts of the workspace buffers for one conversion.
#[derive(Debug, Clone, Copy)]
struct WorkspaceSize {
    /// Bitmap words per (batch, head).
    words: usize,
    /// Two bitmaps per (batch, head).
    bits: usize,
    /// A vertical list, a slash list and the slashes' run starts per (batch, head).
    lists: usize,
    /// Two list lengths per (batch, head).
    lengths: usize,
}

impl WorkspaceSize {
    fn new(heads_total: usize, context: usize, nnz_v: usize, nnz_s: usize) -> Option<WorkspaceSize> {
        // Whole groups of four words, as the compaction reads them.
        let words = context.div_ceil(32).div_ceil(4) * 4;
        Some(WorkspaceSize {
            words,
            bits: heads_total.checked_mul(words)?.checked_mul(2)?,
            lists: heads_total.checked_mul(nnz_v.checked_add(nnz_s.checked_mul(2)?)?)?,
            lengths: heads_total.checked_mul(2)?,
        })
    }
}

impl ConvertWorkspace {
    /// An empty workspace; the first conversion allocates what it needs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of device memory held.
    pub fn device_bytes(&self) -> usize {
        self.bits.as_ref().map_or(0, |b| b.num_bytes())
            + self.lists.as_ref().map_or(0, |b| b.num_bytes())
            + self.lengths.as_ref().map_or(0, |b| b.num_bytes())
    }

    fn reserve(&mut self, device: &Device, size: WorkspaceSize) -> Result<(), MinfError> {
        let stream = device.stream();
        reserve_buffer(&mut self.bits, stream, size.bits, "the converter's bitmaps")?;
        reserve_buffer(&mut self.lists, stream, size.lists, "the converter's lists")?;
        reserve_buffer(&mut self.lengths, stream, size.lengths, "the converter's list lengths")?;
        Ok(())
    }
}

/// Converts raw vertical and slash indices into a new [`VerticalSlashIndex`].
///
/// - `seqlens`: `[batch]` valid lengths (clamped to `[0, context]`); row blocks at or past a
///   sequence's length get zero counts;
/// - `vertical`: `[batch, heads, nnz_v]` key columns; `slash`: `[batch, heads, nnz_s]` diagonal
///   offsets (`0` is the main diagonal). Any order, duplicates and out-of-range values allowed;
/// - `context`: the padded sequence length, giving `rows = ceil(context / 64)`.
///
/// Launches on `device.stream()` without synchronising. `workspace` is reused across calls.
#[allow(clippy::too_many_arguments)]
pub fn convert_vertical_slash(
    device: &Device,
    seqlens: &CudaSlice<i32>,
    vertical: &CudaSlice<i32>,
    slash: &CudaSlice<i32>,
    batch: usize,
    heads: usize,
    context: usize,
    workspace: &mut ConvertWorkspace,
) -> Result<VerticalSlashIndex, MinfError> {
    let shape = IndexShape::for_conversion(seqlens.len(), vertical.len(), slash.len(), batch, heads, context)?;
    let mut index = VerticalSlashIndex::zeros(device, shape)?;
    launch(device, seqlens, None, vertical, slash, context, workspace, &mut index)?;
    Ok(index)
}

/// [`convert_vertical_slash`] into an existing index, whose shape gives `batch`, `heads`, the row
/// count (which must be `ceil(context / 64)`) and the capacities (which must be those of `vertical`
/// and `slash`). Writes every count and each row's counted entries; the slots past the counts are
/// not cleared (see the [module docs](self)). Allocates nothing once `workspace` is large enough.
pub fn convert_vertical_slash_into(
    device: &Device,
    seqlens: &CudaSlice<i32>,
    vertical: &CudaSlice<i32>,
    slash: &CudaSlice<i32>,
    context: usize,
    workspace: &mut ConvertWorkspace,
    index: &mut VerticalSlashIndex,
) -> Result<(), MinfError> {
    let have = index.shape;
    let want = IndexShape::for_conversion(seqlens.len(), vertical.len(), slash.len(), have.batch, have.heads, context)?;
    if have != want {
        return Err(MinfError::Shape(format!(
            "the output index has shape {have:?} but these inputs and context {context} give {want:?}"
        )));
    }
    launch(device, seqlens, None, vertical, slash, context, workspace, index)
}

/// The per-sequence lengths of a chunk conversion ([`convert_vertical_slash_chunk_into`]).
#[derive(Debug, Clone, Copy)]
pub struct ChunkLengths<'a> {
    /// `[batch]` query rows of each sequence's chunk (clamped to `[0, kv_len]` on the device).
    pub q_lens: &'a CudaSlice<i32>,
    /// `[batch]` keys of each sequence, its prefix and its chunk (clamped to `[0, max_kv_len]`).
    pub kv_lens: &'a CudaSlice<i32>,
    /// The longest chunk: the index has `ceil(max_q_len / 64)` rows.
    pub max_q_len: usize,
    /// The longest kv_len (the padded key count).
    pub max_kv_len: usize,
}

/// [`convert_vertical_slash_into`] for chunks (see the [module docs](self)): sequence `b` has
/// `kv_lens[b]` keys and its last `q_lens[b]` tokens are the queries; `vertical` (absolute key
/// columns) and `slash` (offsets from each query's absolute position) count only within
/// `[0, kv_len)`. Row `r` of sequence `b` holds its chunk's rows `64r .. 64r + 63`; rows at or past
/// `q_lens[b]` get zero counts. The index shape must be
/// [`IndexShape::for_chunk_conversion`]'s. With `q_lens = kv_lens` the output equals
/// [`convert_vertical_slash_into`]'s.
pub fn convert_vertical_slash_chunk_into(
    device: &Device,
    lengths: ChunkLengths<'_>,
    vertical: &CudaSlice<i32>,
    slash: &CudaSlice<i32>,
    workspace: &mut ConvertWorkspace,
    index: &mut VerticalSlashIndex,
) -> Result<(), MinfError> {
    let have = index.shape;
    let want = IndexShape::for_chunk_conversion(
        lengths.q_lens.len(),
        lengths.kv_lens.len(),
        vertical.len(),
        slash.len(),
        have.batch,
        have.heads,
        lengths.max_q_len,
        lengths.max_kv_len,
    )?;
    if have != want {
        return Err(MinfError::Shape(format!(
            "the output index has shape {have:?} but these inputs, the longest chunk {} and the longest kv_len {} \
             give {want:?}",
            lengths.max_q_len, lengths.max_kv_len
        )));
    }
    launch(device, lengths.kv_lens, Some(lengths.q_lens), vertical, slash, lengths.max_kv_len, workspace, index)
}

/// Zeroes the bitmaps and launches both passes into `index` (whose contents need not be zero: the
/// rows pass writes every count); `q_lens` `None` converts whole prompts.
#[allow(clippy::too_many_arguments)]
fn launch(
    device: &Device,
    seqlens: &CudaSlice<i32>,
    q_lens: Option<&CudaSlice<i32>>,
    vertical: &CudaSlice<i32>,
    slash: &CudaSlice<i32>,
    context: usize,
    workspace: &mut ConvertWorkspace,
    index: &mut VerticalSlashIndex,
) -> Result<(), MinfError> {
    let shape = index.shape;
    let heads_total = shape.batch * shape.heads;
    let size = WorkspaceSize::new(heads_total, context, shape.nnz_v, shape.nnz_s)
        .ok_or_else(|| MinfError::Shape(format!("converter workspace for {shape:?} overflows usize")))?;
    workspace.reserve(device, size)?;
    let (Some(bits), Some(lists), Some(lengths)) =
        (workspace.bits.as_mut(), workspace.lists.as_mut(), workspace.lengths.as_mut())
    else {
        return Err(MinfError::Shape("converter workspace was not allocated".into()));
    };
    let spec = IndexKernelSpec { kernel: IndexKernel::VerticalSlashConvert, arch: device.arch() };
    let lists_kernel = device.index_kernel(&spec, &spec.entry_name("_lists"))?;
    let rows_kernel = device.index_kernel(&spec, &spec.entry_name("_rows"))?;
    let stream = device.stream();
    stream
        .memset_zeros(&mut bits.slice_mut(..size.bits))
        .map_err(MinfError::driver("zeroing the converter's bitmaps"))?;

    let (seqlens_ptr, _seqlens_sync) = seqlens.device_ptr(stream);
    let q_lens_ptr = q_lens.map(|lens| lens.device_ptr(stream));
    let (vertical_ptr, _vertical_sync) = vertical.device_ptr(stream);
    let (slash_ptr, _slash_sync) = slash.device_ptr(stream);
    let (bits_ptr, _bits_sync) = bits.device_ptr_mut(stream);
    let (lists_ptr, _lists_sync) = lists.device_ptr_mut(stream);
    let (lengths_ptr, _lengths_sync) = lengths.device_ptr_mut(stream);
    let (block_count, _bc_sync) = index.block_count.device_ptr_mut(stream);
    let (block_offset, _bo_sync) = index.block_offset.device_ptr_mut(stream);
    let (column_count, _cc_sync) = index.column_count.device_ptr_mut(stream);
    let (column_index, _ci_sync) = index.column_index.device_ptr_mut(stream);
    let i32_bytes = std::mem::size_of::<i32>() as u64;
    // The rows pass walks both lists of its head once per row block: from shared memory when they
    // fit the entry's dynamic shared memory.
    let staged_ints = shape.nnz_v + shape.nnz_s;
    let stage_lists = staged_ints * 4 <= rows_kernel.launch.shared_bytes as usize;
    // IndexShape::for_conversion bounds every value below by i32::MAX (context by MAX_CONTEXT, rows
    // by it too).
    let lanes = row_lanes(heads_total * shape.rows);
    let params = KernelArgs(ConvertParams {
        seqlens: seqlens_ptr.into(),
        q_lens: q_lens_ptr.as_ref().map_or(ConstPtr::NULL, |(ptr, _)| ConstPtr::new(*ptr)),
        vertical: vertical_ptr.into(),
        slash: slash_ptr.into(),
        block_count: block_count.into(),
        block_offset: block_offset.into(),
        column_count: column_count.into(),
        column_index: column_index.into(),
        v_bits: bits_ptr.into(),
        s_bits: MutPtr::new(bits_ptr + (heads_total * size.words) as u64 * i32_bytes),
        v_list: lists_ptr.into(),
        s_list: MutPtr::new(lists_ptr + (heads_total * shape.nnz_v) as u64 * i32_bytes),
        s_run: MutPtr::new(lists_ptr + (heads_total * (shape.nnz_v + shape.nnz_s)) as u64 * i32_bytes),
        list_len: lengths_ptr.into(),
        heads: shape.heads as i32,
        rows: shape.rows as i32,
        context: context as i32,
        words: size.words as i32,
        nnz_v: shape.nnz_v as i32,
        nnz_s: shape.nnz_s as i32,
        stage_lists: i32::from(stage_lists),
        row_lanes: lanes as i32,
    });
    let lists_config = lists_kernel.config((shape.heads as u32, shape.batch as u32, 1));
    let mut pass = stream.launch_builder(&lists_kernel.function);
    pass.arg(&params);
    // SAFETY: the parameter block matches the kernel's declaration; every buffer length was checked
    // against the shape (inputs by IndexShape::for_conversion, workspace by reserve, outputs by construction),
    // and the kernel range-checks every index it reads before using it as an address.
    unsafe { pass.launch(lists_config) }
        .map_err(MinfError::driver(format!("launching {}_lists", spec.kernel_name())))?;
    // A group of `lanes` threads per row block; a block's groups take every (grid x * groups)-th
    // row block, so that a long prompt stages each head's lists in few blocks and a short chunk
    // still spreads its rows.
    let groups = rows_kernel.launch.threads as usize / lanes;
    let row_groups = shape.rows.div_ceil(groups).min(ROW_BLOCKS_PER_LAUNCH / heads_total).max(1);
    let rows_config = LaunchConfig {
        shared_mem_bytes: if stage_lists { staged_ints as u32 * 4 } else { 0 },
        ..rows_kernel.config((row_groups as u32, shape.heads as u32, shape.batch as u32))
    };
    let mut pass = stream.launch_builder(&rows_kernel.function);
    pass.arg(&params);
    // SAFETY: as above; rows are bounded by `rows` and writes by the per-row capacities.
    unsafe { pass.launch(rows_config) }.map_err(MinfError::driver(format!("launching {}_rows", spec.kernel_name())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_lanes_spread_few_rows_over_warps_and_many_over_groups_of_four() {
        // A chunk of 8K queries over 32 heads (4096 row blocks): a warp per row block.
        assert_eq!(row_lanes(32 * 128), 32);
        // A whole 128K prompt over 32 heads (65536 row blocks): four threads per row block.
        assert_eq!(row_lanes(32 * 2048), 4);
        // In between, the power of two that stays at or below the thread target.
        assert_eq!(row_lanes(16_384), 16);
        assert_eq!(row_lanes(16_385), 8);
        assert_eq!(row_lanes(40_000), 4);
        for rows in [0, 1, 5, 1000, 8192, 1 << 20, 1 << 40] {
            let lanes = row_lanes(rows);
            assert!(lanes.is_power_of_two() && (4..=32).contains(&lanes), "{rows}: {lanes}");
            assert!(rows * lanes <= ROW_THREADS_PER_LAUNCH || lanes == 4, "{rows}: {lanes}");
        }
    }

    #[test]
    fn host_rows_outside_the_shape_are_empty() {
        let shape = IndexShape { batch: 1, heads: 2, rows: 2, nnz_s: 2, nnz_v: 2 };
        let mut index = HostVerticalSlashIndex::zeros(shape).expect("small index");
        // Head 1, row 0 lists a range and a column; a wrong (b, h, r) must not reach it.
        let row = shape.row(0, 1, 0);
        (index.block_count[row], index.block_offset[row * 2], index.column_count[row], index.column_index[row * 2]) =
            (1, 4096, 1, 7);
        assert_eq!((index.ranges(0, 1, 0), index.columns(0, 1, 0)), (&[4096][..], &[7][..]));
        for (b, h, r) in [(0, 0, 2), (0, 2, 0), (1, 0, 0)] {
            assert!(index.ranges(b, h, r).is_empty() && index.columns(b, h, r).is_empty(), "{:?}", (b, h, r));
        }
    }
}
