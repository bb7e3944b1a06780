//! Attention launchers: dense causal attention (the baseline and the fallback for short prompts)
//! and the sparse patterns, which share one mainloop and differ only in the key tiles they visit.
//!
//! Every call checks shapes, strides, index sizes and options on the host, then launches on the
//! device's stream without synchronising and without allocating.

use crate::device::{Device, KernelArgs};
use crate::error::MinfError;
use crate::tensor::{check_layout, AttentionElement, Layout, TensorMut, TensorRef};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, PushKernelArg};
use minf_codegen::abi::{AttentionParams, ConstPtr, MutPtr, TILE_LIST_RECORD_BYTES};
use minf_codegen::{DType, KernelSpec, Pattern, Tile};

/// A packed variable-length batch (`cu_seqlens`-style), checked and uploaded once: sequence `b` has
/// query rows `cu_seqlens_q[b]..cu_seqlens_q[b + 1]` of `[1, total_q_rows, heads, head_dim]`
/// tensors and key/value rows `cu_seqlens_k[b]..cu_seqlens_k[b + 1]` of
/// `[1, total_kv_rows, kv_heads, head_dim]` tensors. For causal calls each sequence has
/// `q_len <= kv_len`; its query row `i` sits at absolute position `kv_len - q_len + i` (its own
/// prefix length).
#[derive(Debug)]
pub struct Varlen {
    cu_seqlens_q: Vec<i32>,
    cu_seqlens_k: Vec<i32>,
    max_seqlen_q: usize,
    max_seqlen_k: usize,
    /// The first sequence with more queries than keys (only non-causal calls take one).
    longer_queries: Option<LongerQueries>,
    device_q: CudaSlice<i32>,
    device_k: CudaSlice<i32>,
}

impl Varlen {
    /// Checks the host offsets (`batch + 1` each, starting at 0, non-decreasing) and uploads them
    /// on the device's stream. Self-attention of packed sequences passes the same offsets twice.
    /// Causal calls need every sequence's `q_len <= kv_len`; a non-causal dense call (a split-KV
    /// part) also takes sequences with more queries than keys.
    pub fn new(device: &Device, cu_seqlens_q: &[i32], cu_seqlens_k: &[i32]) -> Result<Varlen, MinfError> {
        let VarlenLengths { max_q: max_seqlen_q, max_k: max_seqlen_k, longer_queries } =
            check_varlen(cu_seqlens_q, cu_seqlens_k)?;
        let upload = |offsets: &[i32], what: &str| {
            device.stream().clone_htod(offsets).map_err(MinfError::driver(format!("uploading {what}")))
        };
        Ok(Varlen {
            cu_seqlens_q: cu_seqlens_q.to_vec(),
            cu_seqlens_k: cu_seqlens_k.to_vec(),
            max_seqlen_q,
            max_seqlen_k,
            longer_queries,
            device_q: upload(cu_seqlens_q, "cu_seqlens_q")?,
            device_k: upload(cu_seqlens_k, "cu_seqlens_k")?,
        })
    }

    /// Sequences in the batch.
    pub fn batch(&self) -> usize {
        self.cu_seqlens_q.len() - 1
    }

    /// The query row offsets (`batch + 1`).
    pub fn cu_seqlens_q(&self) -> &[i32] {
        &self.cu_seqlens_q
    }

    /// The key/value row offsets (`batch + 1`).
    pub fn cu_seqlens_k(&self) -> &[i32] {
        &self.cu_seqlens_k
    }

    /// The longest query sequence.
    pub fn max_seqlen_q(&self) -> usize {
        self.max_seqlen_q
    }

    /// The longest key/value sequence.
    pub fn max_seqlen_k(&self) -> usize {
        self.max_seqlen_k
    }

    /// The query offsets as the kernels read them.
    pub fn device_cu_seqlens_q(&self) -> &CudaSlice<i32> {
        &self.device_q
    }

    /// The key/value offsets as the kernels read them.
    pub fn device_cu_seqlens_k(&self) -> &CudaSlice<i32> {
        &self.device_k
    }

    /// Total query rows (the last query offset).
    pub fn total_q(&self) -> usize {
        self.cu_seqlens_q.last().map_or(0, |&n| n as usize)
    }

    /// Total key/value rows (the last key/value offset).
    pub fn total_k(&self) -> usize {
        self.cu_seqlens_k.last().map_or(0, |&n| n as usize)
    }
}

/// What the shape checks need of a [`Varlen`]: the sequences, the rows they cover, the longest
/// query sequence.
#[derive(Debug, Clone, Copy)]
struct VarlenRows {
    batch: usize,
    total_q: usize,
    total_k: usize,
    max_q: usize,
    longer_queries: Option<LongerQueries>,
}

impl Varlen {
    fn rows(&self) -> VarlenRows {
        VarlenRows {
            batch: self.batch(),
            total_q: self.total_q(),
            total_k: self.total_k(),
            max_q: self.max_seqlen_q,
            longer_queries: self.longer_queries,
        }
    }
}

/// A sequence of a [`Varlen`] with more queries than keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LongerQueries {
    sequence: usize,
    q_len: usize,
    kv_len: usize,
}

/// What [`check_varlen`] finds in valid offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct VarlenLengths {
    max_q: usize,
    max_k: usize,
    longer_queries: Option<LongerQueries>,
}

/// Checks varlen offsets on the host: the longest query and key/value sequences, and the first
/// sequence with more queries than keys.
fn check_varlen(cu_q: &[i32], cu_k: &[i32]) -> Result<VarlenLengths, MinfError> {
    if cu_q.len() < 2 || cu_q.len() != cu_k.len() {
        return Err(shape_error(format!(
            "varlen: cu_seqlens_q and cu_seqlens_k need batch + 1 >= 2 offsets each; got {} and {}",
            cu_q.len(),
            cu_k.len()
        )));
    }
    if cu_q.len() - 1 > MAX_GRID_Y {
        return Err(shape_error(format!("varlen: {} sequences; allowed at most {MAX_GRID_Y}", cu_q.len() - 1)));
    }
    for (name, offsets) in [("cu_seqlens_q", cu_q), ("cu_seqlens_k", cu_k)] {
        if offsets[0] != 0 {
            return Err(shape_error(format!("varlen: {name} must start at 0; got {}", offsets[0])));
        }
        if let Some(b) = offsets.windows(2).position(|w| w[1] < w[0]) {
            return Err(shape_error(format!(
                "varlen: {name} decreases at sequence {b} ({} then {}); offsets must be non-decreasing",
                offsets[b],
                offsets[b + 1]
            )));
        }
    }
    let (mut max_q, mut max_k, mut longer_queries) = (0usize, 0usize, None);
    for b in 0..cu_q.len() - 1 {
        let q_len = (cu_q[b + 1] - cu_q[b]) as usize;
        let kv_len = (cu_k[b + 1] - cu_k[b]) as usize;
        if q_len > kv_len && longer_queries.is_none() {
            longer_queries = Some(LongerQueries { sequence: b, q_len, kv_len });
        }
        max_q = max_q.max(q_len);
        max_k = max_k.max(kv_len);
    }
    Ok(VarlenLengths { max_q, max_k, longer_queries })
}

/// Options of an attention call.
#[derive(Debug)]
pub struct AttentionOptions<'a> {
    /// Softmax scale; `None` means `1 / sqrt(head_dim)`.
    pub softmax_scale: Option<f32>,
    /// Optional log-sum-exp output (natural log of the scaled scores' sum of exponentials): f32
    /// `[batch, heads, q_len]`, or `[heads, total_q_rows]` with [`Varlen`] (`total_q_rows` being
    /// q's row count, which may run past the last query offset).
    pub lse: Option<&'a mut CudaSlice<f32>>,
    /// Tile configuration; `None` picks the default for the pattern, head dimension and device.
    pub spec: Option<KernelSpec>,
    /// Packed sequences of different lengths; `None` means every batch entry has the tensors'
    /// lengths (`q_len` query rows, `kv_len` key rows).
    pub varlen: Option<&'a Varlen>,
    /// Compute only these query heads (one launch over any subset of a layer's heads); `None`
    /// computes every head. The other heads' outputs (and lse) are left untouched; index tensors
    /// stay addressed by the real query head.
    pub heads: Option<&'a HeadSubset>,
    /// Causal (the default): the query at absolute position `p` sees keys `j <= p`. `false` (dense
    /// only) sees every key of `[0, kv_len)`: a part of a split-KV computation whose parts are
    /// merged by log-sum-exp ([`crate::merge`]). Such a part may hold fewer keys than queries (a
    /// piece of a short prefix); a sequence with no keys gets output 0 and log-sum-exp -inf.
    pub causal: bool,
    /// The grid of a kernel whose blocks walk the work items ([`KernelSpec::persistent`]): at most
    /// this many blocks; `None` launches as many as the device holds at once. Fewer leave SMs to
    /// kernels running beside it. Must be at least 1; other kernels ignore it.
    pub persistent_blocks: Option<u32>,
}

impl Default for AttentionOptions<'_> {
    fn default() -> Self {
        AttentionOptions {
            softmax_scale: None,
            lse: None,
            spec: None,
            varlen: None,
            heads: None,
            causal: true,
            persistent_blocks: None,
        }
    }
}

/// A subset of a layer's query heads, uploaded once, for [`AttentionOptions::heads`]: launch slot
/// `y` of the grid works on query head `heads()[y]`. Heads are checked on construction (in range,
/// no duplicates, at least one) and the kernel checks each again against the call's head count, so
/// an entry outside it does nothing.
#[derive(Debug)]
pub struct HeadSubset {
    heads: Vec<usize>,
    head_count: usize,
    device_heads: CudaSlice<i32>,
}

impl HeadSubset {
    /// Uploads `heads` (query-head indices below `head_count`, each at most once, in any order) on
    /// the device's stream.
    pub fn new(device: &Device, heads: &[usize], head_count: usize) -> Result<HeadSubset, MinfError> {
        let listed = check_head_subset(heads, head_count)?;
        let device_heads = device
            .stream()
            .clone_htod(&listed)
            .map_err(MinfError::driver(format!("uploading a head map of {} heads", heads.len())))?;
        Ok(HeadSubset { heads: heads.to_vec(), head_count, device_heads })
    }

    /// The query heads, in launch-slot order.
    pub fn heads(&self) -> &[usize] {
        &self.heads
    }

    /// The number of query heads of the layer the subset was checked against.
    pub fn head_count(&self) -> usize {
        self.head_count
    }

    /// The heads as the kernel reads them (`int32`, one per launch slot).
    pub fn device_heads(&self) -> &CudaSlice<i32> {
        &self.device_heads
    }

    /// The device entries, for a kernel that rewrites them (the tile choice sets the slots the
    /// other launch computes to -1).
    pub(crate) fn device_heads_mut(&mut self) -> &mut CudaSlice<i32> {
        &mut self.device_heads
    }
}

/// Checks a head subset on the host (non-empty, every head below `head_count`, no duplicates,
/// `head_count` within the launch grid) and returns it as the kernel's `int32` entries.
fn check_head_subset(heads: &[usize], head_count: usize) -> Result<Vec<i32>, MinfError> {
    if head_count == 0 || head_count > MAX_GRID_Y {
        return Err(shape_error(format!(
            "head subset: the layer has {head_count} query heads; allowed 1 to {MAX_GRID_Y}"
        )));
    }
    if heads.is_empty() {
        return Err(shape_error("head subset: list at least one query head".into()));
    }
    let mut seen = vec![false; head_count];
    for &head in heads {
        match seen.get_mut(head) {
            None => {
                return Err(shape_error(format!(
                    "head subset: head {head} is out of range; allowed 0 to {} ({head_count} query heads)",
                    head_count - 1
                )))
            }
            Some(true) => {
                return Err(shape_error(format!("head subset: head {head} is listed twice; list each head once")))
            }
            Some(slot) => *slot = true,
        }
    }
    // Every head is below head_count <= MAX_GRID_Y, which fits i32.
    Ok(heads.iter().map(|&h| h as i32).collect())
}

/// Largest grid y (query heads, or head-subset slots) and grid z (sequences) of a launch.
const MAX_GRID_Y: usize = 65_535;

/// MInference's converted vertical-slash index (int32, byte-compatible with its
/// `convert_vertical_slash_indexes`), one entry per (batch, query head, 64-row query block). For a
/// chunk (`q_len < kv_len`), row `r` is the chunk's query rows `[64r, 64r + 64)` and every stored
/// key (range starts, columns) is absolute in `[0, kv_len)`. Only each block's first
/// `block_count` starts and `column_count` columns are read; the slots past them may hold anything.
#[derive(Debug, Clone, Copy)]
pub struct VerticalSlashIndexRef<'a> {
    /// `[batch, heads, rows]`: how many 64-key ranges each block visits.
    pub block_count: &'a CudaSlice<i32>,
    /// `[batch, heads, rows, nnz_s]`: the ranges' start columns.
    pub block_offset: &'a CudaSlice<i32>,
    /// `[batch, heads, rows]`: how many gathered key columns each block visits.
    pub column_count: &'a CudaSlice<i32>,
    /// `[batch, heads, rows, nnz_v]`: the columns.
    pub column_index: &'a CudaSlice<i32>,
    /// Batch entries.
    pub batch: usize,
    /// Query heads.
    pub heads: usize,
    /// 64-row query blocks per (batch, head).
    pub rows: usize,
    /// Capacity of each block's range list.
    pub nnz_s: usize,
    /// Capacity of each block's column list.
    pub nnz_v: usize,
}

/// A block-sparse index: per (batch, query head, 64-row query block), a count and a sorted list of
/// 64-key block ids (FlexAttention's `kv_num_blocks` / `kv_indices` at block size 64). The diagonal
/// block, if listed, is masked causally. For a chunk (`q_len < kv_len`), row `r` is the chunk's
/// query rows `[64r, 64r + 64)` and block id `c` is the absolute keys `[64c, 64c + 64)`.
#[derive(Debug, Clone, Copy)]
pub struct BlockSparseIndexRef<'a> {
    /// `[batch, heads, rows]`.
    pub kv_num_blocks: &'a CudaSlice<i32>,
    /// `[batch, heads, rows, capacity]`, ascending within each list.
    pub kv_indices: &'a CudaSlice<i32>,
    /// Batch entries.
    pub batch: usize,
    /// Query heads.
    pub heads: usize,
    /// 64-row query blocks per (batch, head).
    pub rows: usize,
    /// Capacity of each block's list.
    pub capacity: usize,
}

/// Which key tiles each query block visits, with what the pattern needs.
#[derive(Debug, Clone, Copy)]
pub enum PatternArgs<'a> {
    /// Every key up to the diagonal (every key with [`AttentionOptions::causal`] false).
    Dense,
    /// Key j is visible to the query at absolute position p iff `j <= p` and (`j < n_init` or
    /// `p - j < n_local`).
    AShape(AShape),
    /// Ranges and columns from a converted vertical-slash index.
    VerticalSlash(VerticalSlashIndexRef<'a>),
    /// Listed 64x64 blocks.
    BlockSparse(BlockSparseIndexRef<'a>),
}

impl PatternArgs<'_> {
    /// The pattern these arguments are for.
    pub fn pattern(&self) -> Pattern {
        match self {
            PatternArgs::Dense => Pattern::Dense,
            PatternArgs::AShape(_) => Pattern::AShape,
            PatternArgs::VerticalSlash(_) => Pattern::VerticalSlash,
            PatternArgs::BlockSparse(_) => Pattern::BlockSparse,
        }
    }

    /// `(batch, heads, rows)` of an index-driven pattern's index (rows: 64-row query blocks per
    /// batch entry and head); `None` for dense and A-shape.
    pub fn index_dims(&self) -> Option<(usize, usize, usize)> {
        match self {
            PatternArgs::Dense | PatternArgs::AShape(_) => None,
            PatternArgs::VerticalSlash(index) => Some((index.batch, index.heads, index.rows)),
            PatternArgs::BlockSparse(index) => Some((index.batch, index.heads, index.rows)),
        }
    }
}

fn strides(layout: &Layout) -> [i64; 3] {
    [layout.strides[0] as i64, layout.strides[1] as i64, layout.strides[2] as i64]
}

fn shape_error(message: String) -> MinfError {
    MinfError::Shape(message)
}

fn fits_i32(what: &str, n: usize) -> Result<i32, MinfError> {
    i32::try_from(n).map_err(|_| shape_error(format!("{what} = {n} does not fit the kernel's 32-bit counters")))
}

/// Causal attention `out = softmax(q kᵀ · scale, causal) v` for q `[batch, q_len, heads, head_dim]`
/// against k and v `[batch, kv_len, kv_heads, head_dim]` (any strides with contiguous rows), with
/// grouped-query attention when `k` and `v` have fewer heads than `q` (no copies). `q_len <= kv_len`:
/// query row `i` sits at absolute position `kv_len - q_len + i` (the diagonal aligned bottom-right;
/// `q_len == kv_len` is a whole sequence). Every pattern takes these shapes.
pub fn dense_attention<T: AttentionElement>(
    device: &Device,
    q: TensorRef<'_, T>,
    k: TensorRef<'_, T>,
    v: TensorRef<'_, T>,
    out: TensorMut<'_, T>,
    options: AttentionOptions<'_>,
) -> Result<(), MinfError> {
    attention(device, q, k, v, out, PatternArgs::Dense, options)
}

/// The two parameters of an A-shape head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AShape {
    /// Sink tokens at the start.
    pub n_init: usize,
    /// Local window, counting the diagonal (at least 1).
    pub n_local: usize,
}

/// A-shape attention (MInference `stream_llm`): `n_init` sink tokens plus a window of `n_local`
/// keys ending at the diagonal; a key in both is counted once.
pub fn a_shape_attention<T: AttentionElement>(
    device: &Device,
    q: TensorRef<'_, T>,
    k: TensorRef<'_, T>,
    v: TensorRef<'_, T>,
    out: TensorMut<'_, T>,
    shape: AShape,
    options: AttentionOptions<'_>,
) -> Result<(), MinfError> {
    attention(device, q, k, v, out, PatternArgs::AShape(shape), options)
}

/// Vertical-slash attention on a converted index: each 64-row query block visits its listed 64-key
/// ranges and gathered key columns, causally masked.
pub fn vertical_slash_attention<T: AttentionElement>(
    device: &Device,
    q: TensorRef<'_, T>,
    k: TensorRef<'_, T>,
    v: TensorRef<'_, T>,
    out: TensorMut<'_, T>,
    index: VerticalSlashIndexRef<'_>,
    options: AttentionOptions<'_>,
) -> Result<(), MinfError> {
    attention(device, q, k, v, out, PatternArgs::VerticalSlash(index), options)
}

/// Block-sparse attention on listed 64x64 blocks, causally masked.
pub fn block_sparse_attention<T: AttentionElement>(
    device: &Device,
    q: TensorRef<'_, T>,
    k: TensorRef<'_, T>,
    v: TensorRef<'_, T>,
    out: TensorMut<'_, T>,
    index: BlockSparseIndexRef<'_>,
    options: AttentionOptions<'_>,
) -> Result<(), MinfError> {
    attention(device, q, k, v, out, PatternArgs::BlockSparse(index), options)
}

/// The kernel spec a launch runs: `spec` when the caller gives one; otherwise the device default
/// for the pattern, element type and head dimension ([`KernelSpec::default_for`]), with `tile`
/// applied when one is given. Every launcher (attention calls, the tile choice, prefill) picks its
/// spec here.
pub fn launch_spec(
    device: &Device,
    pattern: Pattern,
    dtype: DType,
    head_dim: usize,
    spec: Option<KernelSpec>,
    tile: Option<Tile>,
) -> KernelSpec {
    spec.unwrap_or_else(|| {
        // A head dimension past u32 is no supported one: spec 0, which validation rejects.
        let default = KernelSpec::default_for(pattern, dtype, u32::try_from(head_dim).unwrap_or(0), device.arch());
        tile.map_or(default, |tile| tile.apply(default))
    })
}

/// Attention with any pattern; the spec is `options.spec` or the default for the device
/// ([`launch_spec`]).
pub fn attention<T: AttentionElement>(
    device: &Device,
    q: TensorRef<'_, T>,
    k: TensorRef<'_, T>,
    v: TensorRef<'_, T>,
    out: TensorMut<'_, T>,
    args: PatternArgs<'_>,
    options: AttentionOptions<'_>,
) -> Result<(), MinfError> {
    let spec = launch_spec(device, args.pattern(), T::DTYPE, q.layout.shape[3], options.spec, None);
    attention_with_spec(device, &spec, q, k, v, out, args, options)
}

/// The shapes of one call after checking: what the grid and parameters need.
#[derive(Debug)]
struct Checked {
    batch: usize,
    heads: usize,
    kv_heads: usize,
    /// Query rows per sequence (the longest, with varlen).
    max_q: usize,
    /// Query rows in the tensors.
    q_rows: usize,
    /// Key/value rows in the tensors.
    kv_rows: usize,
}

/// The shape checks of an attention call that need no device: `q` is `[batch, q_len, heads, d]`,
/// `k` and `v` `[batch, kv_len, kv_heads, d]` with `q_len <= kv_len` when `causal` (or packed rows
/// that `varlen` describes), `out` like `q`, `lse` large enough.
#[allow(clippy::too_many_arguments)]
fn check_shapes(
    q: [usize; 4],
    k: [usize; 4],
    v: [usize; 4],
    out: [usize; 4],
    varlen: Option<VarlenRows>,
    lse_len: Option<usize>,
    heads_subset: Option<usize>,
    causal: bool,
) -> Result<Checked, MinfError> {
    let [batch, q_rows, heads, head_dim] = q;
    let [kv_batch, kv_rows, kv_heads, kv_head_dim] = k;
    if k != v {
        return Err(shape_error(format!("k shape {k:?} != v shape {v:?}")));
    }
    if kv_batch != batch || kv_head_dim != head_dim {
        return Err(shape_error(format!(
            "k shape {k:?} does not match q shape {q:?} (same batch and head_dim expected)"
        )));
    }
    if kv_heads == 0 || heads % kv_heads != 0 {
        return Err(shape_error(format!("{heads} query heads is not a multiple of {kv_heads} key/value heads")));
    }
    if out != q {
        return Err(shape_error(format!("out shape {out:?} != q shape {q:?}")));
    }
    fits_i32("q_len", q_rows)?;
    fits_i32("kv_len", kv_rows)?;
    let (batch, max_q) = match varlen {
        None => {
            if causal && q_rows > kv_rows {
                return Err(shape_error(format!(
                    "q_len {q_rows} > kv_len {kv_rows}: causal queries attend to a key prefix at least as long as \
                     themselves (q [batch, q_len, heads, d], k and v [batch, kv_len, kv_heads, d]); only \
                     non-causal dense parts take fewer keys than queries"
                )));
            }
            (batch, q_rows)
        }
        Some(varlen) => {
            if batch != 1 {
                return Err(shape_error(format!(
                    "with varlen, tensors are [1, total_rows, heads, head_dim]; got batch {batch}"
                )));
            }
            if varlen.total_q > q_rows {
                return Err(shape_error(format!(
                    "varlen cu_seqlens_q ends at row {} but q has {q_rows} rows",
                    varlen.total_q
                )));
            }
            if varlen.total_k > kv_rows {
                return Err(shape_error(format!(
                    "varlen cu_seqlens_k ends at row {} but k and v have {kv_rows} rows: the KV buffer is shorter \
                     than the declared sequences",
                    varlen.total_k
                )));
            }
            if let (true, Some(LongerQueries { sequence, q_len, kv_len })) = (causal, varlen.longer_queries) {
                return Err(shape_error(format!(
                    "varlen: sequence {sequence} has q_len {q_len} > kv_len {kv_len}; causal queries attend to a \
                     prefix of at least their own length (only non-causal dense parts take fewer keys)"
                )));
            }
            (varlen.batch, varlen.max_q)
        }
    };
    if batch > MAX_GRID_Y || heads > MAX_GRID_Y {
        return Err(shape_error(format!("batch {batch} and heads {heads} must each be at most {MAX_GRID_Y}")));
    }
    if let Some(subset_heads) = heads_subset {
        if subset_heads != heads {
            return Err(shape_error(format!(
                "the head subset was checked against {subset_heads} query heads but q has {heads}"
            )));
        }
    }
    if let Some(len) = lse_len {
        let (needed, layout) = match varlen {
            None => (batch * heads * q_rows, "[batch, heads, q_len]"),
            Some(_) => (heads * q_rows, "[heads, total_q_rows]"),
        };
        if len < needed {
            return Err(shape_error(format!("lse holds {len} floats but {layout} = {needed} are needed")));
        }
    }
    Ok(Checked { batch, heads, kv_heads, max_q, q_rows, kv_rows })
}

fn check_tensors<T: AttentionElement>(
    spec: &KernelSpec,
    device: &Device,
    q: &TensorRef<'_, T>,
    k: &TensorRef<'_, T>,
    v: &TensorRef<'_, T>,
    out: &TensorMut<'_, T>,
    options: &AttentionOptions<'_>,
) -> Result<Checked, MinfError> {
    check_layout("q", &q.layout, q.data.len())?;
    check_layout("k", &k.layout, k.data.len())?;
    check_layout("v", &v.layout, v.data.len())?;
    check_layout("out", &out.layout, out.data.len())?;
    let head_dim = q.layout.shape[3];
    if spec.dtype != T::DTYPE {
        return Err(shape_error(format!("spec dtype {} but tensors are {}", spec.dtype, T::DTYPE)));
    }
    if spec.arch != device.arch() {
        return Err(shape_error(format!("spec targets {} but the device is {}", spec.arch, device.arch())));
    }
    if head_dim != spec.head_dim as usize {
        return Err(shape_error(format!("q has head_dim {head_dim} but the spec is for {}", spec.head_dim)));
    }
    check_options(spec.pattern, options.causal, options.softmax_scale)?;
    check_shapes(
        q.layout.shape,
        k.layout.shape,
        v.layout.shape,
        out.layout.shape,
        options.varlen.map(Varlen::rows),
        options.lse.as_ref().map(|lse| lse.len()),
        options.heads.map(HeadSubset::head_count),
        options.causal,
    )
}

/// Non-causal attention exists for the dense pattern only (split-KV parts); a softmax scale must be
/// positive and finite (a masked score is -inf, and -inf times 0 is NaN).
fn check_options(pattern: Pattern, causal: bool, softmax_scale: Option<f32>) -> Result<(), MinfError> {
    if !causal && pattern != Pattern::Dense {
        return Err(shape_error(format!(
            "causal = false is for the dense pattern only (split-KV parts); pattern {pattern} is causal"
        )));
    }
    if let Some(scale) = softmax_scale.filter(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(shape_error(format!("softmax_scale {scale}: it must be positive and finite")));
    }
    Ok(())
}

fn check_index_dims(
    what: &str,
    (batch, heads, rows): (usize, usize, usize),
    checked: &Checked,
    lists: &[(&str, usize, usize)],
) -> Result<(), MinfError> {
    if batch != checked.batch || heads != checked.heads {
        return Err(shape_error(format!(
            "{what} index is for batch {batch} x {heads} heads but the call has batch {} x {} query heads",
            checked.batch, checked.heads
        )));
    }
    let needed_rows = checked.max_q.div_ceil(64);
    if rows < needed_rows {
        return Err(shape_error(format!(
            "{what} index has {rows} row blocks but {} query rows need {needed_rows} (one per 64 query rows)",
            checked.max_q
        )));
    }
    fits_i32("index rows", rows)?;
    for &(name, len, per_row) in lists {
        fits_i32(name, per_row)?;
        let needed = batch * heads * rows * per_row;
        if len < needed {
            return Err(shape_error(format!(
                "{what} index: {name} holds {len} entries but [batch, heads, rows{}] = {needed} are needed",
                if per_row == 1 { String::new() } else { format!(", {per_row}") }
            )));
        }
    }
    Ok(())
}

/// Attention with an explicit kernel spec (used by `#[sparse_attention]` kernels); the spec's
/// pattern must match `args`.
#[allow(clippy::too_many_arguments)]
pub fn attention_with_spec<T: AttentionElement>(
    device: &Device,
    spec: &KernelSpec,
    q: TensorRef<'_, T>,
    k: TensorRef<'_, T>,
    v: TensorRef<'_, T>,
    out: TensorMut<'_, T>,
    args: PatternArgs<'_>,
    options: AttentionOptions<'_>,
) -> Result<(), MinfError> {
    if spec.pattern != args.pattern() {
        return Err(shape_error(format!(
            "the spec is for pattern {} but the call passes {} arguments",
            spec.pattern,
            args.pattern()
        )));
    }
    spec.validate()?;
    let checked = check_tensors(spec, device, &q, &k, &v, &out, &options)?;
    let stream = device.stream();
    // The int32 buffers the kernel reads: index_count, index_list, column_count, column_index,
    // cu_seqlens_q, head_index, cu_seqlens_k.
    let mut int_buffers: [Option<&CudaSlice<i32>>; 7] = [None; 7];
    let (mut index_rows, mut list_capacity, mut column_capacity, mut n_init, mut n_local) = (0, 0, 0, 0, 0);
    match args {
        PatternArgs::Dense => {}
        PatternArgs::AShape(shape) => {
            if shape.n_local == 0 {
                return Err(shape_error("A-shape n_local must be at least 1 (the diagonal)".into()));
            }
            n_init = shape.n_init.min(i32::MAX as usize) as i32;
            n_local = shape.n_local.min(i32::MAX as usize) as i32;
        }
        PatternArgs::VerticalSlash(index) => {
            check_index_dims(
                "vertical-slash",
                (index.batch, index.heads, index.rows),
                &checked,
                &[
                    ("block_count", index.block_count.len(), 1),
                    ("block_offset", index.block_offset.len(), index.nnz_s),
                    ("column_count", index.column_count.len(), 1),
                    ("column_index", index.column_index.len(), index.nnz_v),
                ],
            )?;
            int_buffers[..4].copy_from_slice(&[
                Some(index.block_count),
                Some(index.block_offset),
                Some(index.column_count),
                Some(index.column_index),
            ]);
            (index_rows, list_capacity, column_capacity) = (index.rows as i32, index.nnz_s as i32, index.nnz_v as i32);
        }
        PatternArgs::BlockSparse(index) => {
            check_index_dims(
                "block-sparse",
                (index.batch, index.heads, index.rows),
                &checked,
                &[
                    ("kv_num_blocks", index.kv_num_blocks.len(), 1),
                    ("kv_indices", index.kv_indices.len(), index.capacity),
                ],
            )?;
            int_buffers[..2].copy_from_slice(&[Some(index.kv_num_blocks), Some(index.kv_indices)]);
            (index_rows, list_capacity) = (index.rows as i32, index.capacity as i32);
        }
    }
    int_buffers[4] = options.varlen.map(Varlen::device_cu_seqlens_q);
    int_buffers[5] = options.heads.map(HeadSubset::device_heads);
    int_buffers[6] = options.varlen.map(Varlen::device_cu_seqlens_k);
    // Grid y: every query head, or the subset's slots.
    let head_slots = options.heads.map_or(checked.heads, |subset| subset.heads().len());
    if checked.batch * head_slots * checked.max_q == 0 {
        return Ok(());
    }
    // Device addresses, each with the guard that orders the stream's use of its buffer.
    let int_ptrs = int_buffers.map(|buffer| buffer.map(|slice| slice.device_ptr(stream)));
    let int_ptr = |i: usize| ConstPtr::new(int_ptrs[i].as_ref().map_or(0, |(ptr, _)| *ptr));
    let (q_ptr, _q_sync) = q.data.device_ptr(stream);
    let (k_ptr, _k_sync) = k.data.device_ptr(stream);
    let (v_ptr, _v_sync) = v.data.device_ptr(stream);
    // The tensor-map engines' second parameter: a map per input, over the same pointers and
    // layouts as the parameters. What no tensor map can view (zero key rows: a non-causal part of
    // nothing, whose rows get output 0 and log-sum-exp -inf; a broadcast view) runs the same tile on
    // the `cp.async` producer, which computes the same result.
    let maps = if spec.mainloop.uses_tensor_maps() {
        crate::tma::encode_inputs(
            spec.dtype,
            [("q", &q.layout, q_ptr), ("k", &k.layout, k_ptr), ("v", &v.layout, v_ptr)],
        )?
    } else {
        None
    };
    let unmappable = spec.cp_async_twin().filter(|_| maps.is_none());
    if unmappable.is_some() {
        tracing::debug!("{}: a tensor map cannot view the call's tensors; running wgmma", spec.kernel_name());
    }
    let spec = unmappable.as_ref().unwrap_or(spec);
    let kernel = device.kernel(spec)?;
    let query_blocks = checked.max_q.div_ceil(kernel.launch.block_m as usize);
    let grid = if spec.persistent() {
        // Work items: query blocks x head slots x sequences. The grid has at most as many blocks
        // as the device holds (or the caller's cap), and no more than there are items.
        let items = query_blocks * head_slots * checked.batch;
        let blocks = match options.persistent_blocks {
            Some(0) => return Err(shape_error("persistent_blocks must be at least 1".into())),
            Some(cap) => cap.min(kernel.resident_blocks),
            None => kernel.resident_blocks,
        };
        let blocks = items.min(blocks as usize);
        // The kernel counts items, and steps through them by the grid, in 32 bits.
        if items + blocks > i32::MAX as usize {
            return Err(shape_error(format!(
                "{query_blocks} query blocks x {head_slots} heads x {} sequences make {items} work items; a \
                 launch takes fewer than {}",
                checked.batch,
                i32::MAX as usize - blocks
            )));
        }
        (blocks as u32, 1, 1)
    } else {
        (query_blocks as u32, head_slots as u32, checked.batch as u32)
    };
    let head_dim = q.layout.shape[3];
    let scale = options.softmax_scale.unwrap_or(1.0 / (head_dim as f32).sqrt());
    let o_layout = out.layout;
    let (o_ptr, _o_sync) = out.data.device_ptr_mut(stream);
    let (lse_ptr, _lse_sync) = match options.lse {
        Some(lse) => {
            let (ptr, sync) = lse.device_ptr_mut(stream);
            (ptr, Some(sync))
        }
        None => (0, None),
    };
    // The tile list of a kernel that lists its tiles: written by its pass, read by the kernel,
    // then freed (stream-ordered).
    let tile_list = if spec.lists_tiles() {
        Some(TileList::new(stream, checked.batch * checked.heads, index_rows, spec.block_m)?)
    } else {
        None
    };
    let tile_ptrs = tile_list.as_ref().map(|list| (list.records.device_ptr(stream), list.count.device_ptr(stream)));
    let params = AttentionParams {
        q: q_ptr.into(),
        k: k_ptr.into(),
        v: v_ptr.into(),
        o: o_ptr.into(),
        lse: MutPtr::new(lse_ptr),
        cu_seqlens_q: int_ptr(4),
        cu_seqlens_k: int_ptr(6),
        index_count: int_ptr(0),
        index_list: int_ptr(1),
        column_count: int_ptr(2),
        column_index: int_ptr(3),
        strides: [strides(&q.layout), strides(&k.layout), strides(&v.layout), strides(&o_layout)],
        q_rows: checked.q_rows as i32,
        kv_rows: checked.kv_rows as i32,
        heads: checked.heads as i32,
        kv_group: (checked.heads / checked.kv_heads) as i32,
        scale_log2: scale * std::f32::consts::LOG2_E,
        scale,
        index_rows,
        list_capacity,
        column_capacity,
        n_init,
        n_local,
        causal: i32::from(options.causal),
        head_index: int_ptr(5),
        work: [query_blocks as i32, head_slots as i32, checked.batch as i32],
        tile_list: MutPtr::new(tile_ptrs.as_ref().map_or(0, |(records, _)| records.0)),
        tile_count: MutPtr::new(tile_ptrs.as_ref().map_or(0, |(_, count)| count.0)),
        tile_blocks: tile_list.as_ref().map_or(0, |list| list.blocks),
    };
    if tile_list.is_some() {
        let pass = device.tile_list_kernel(spec)?;
        let config = pass.config((query_blocks as u32, head_slots as u32, checked.batch as u32));
        let params = KernelArgs(params);
        let mut launch = stream.launch_builder(&pass.function);
        launch.arg(&params);
        // SAFETY: the parameter block matches the pass's declaration (the kernel's); it writes
        // only the tile list's entries of the blocks it walks, within the buffers sized for them.
        unsafe { launch.launch(config) }.map_err(MinfError::driver(format!("launching {}", spec.tile_list_name())))?;
    }
    let config = kernel.config(grid);
    let params = KernelArgs(params);
    let maps = maps.map(KernelArgs);
    let mut launch = stream.launch_builder(&kernel.function);
    launch.arg(&params);
    if let Some(maps) = &maps {
        launch.arg(maps);
    }
    // SAFETY: the parameter block (and, for the tensor-map engines, the maps) matches the kernel's
    // declaration; every tensor's layout was
    // checked against its buffer and every index's sizes against the call; the kernel clamps index
    // counts to their capacities and bounds-checks every key and sequence offset it reads.
    unsafe { launch.launch(config) }.map_err(MinfError::driver(format!("launching {}", spec.kernel_name())))?;
    drop(tile_ptrs);
    drop(int_ptrs);
    Ok(())
}

/// The tile list of one call of a kernel that lists its tiles ([`KernelSpec::lists_tiles`]).
struct TileList {
    /// `[heads, blocks]` records of `TILE_LIST_RECORD_BYTES` ([`AttentionParams::tile_list`]).
    records: CudaSlice<u8>,
    /// `[heads, blocks]`: each block's tile count, or -1.
    count: CudaSlice<i32>,
    blocks: i32,
}

impl TileList {
    /// The list of `heads` (batch x query heads) of `index_rows` 64-row index blocks each, in
    /// query blocks of `block_m` rows.
    fn new(
        stream: &std::sync::Arc<cudarc::driver::CudaStream>,
        heads: usize,
        index_rows: i32,
        block_m: u32,
    ) -> Result<TileList, MinfError> {
        let blocks = (index_rows.max(0) as usize * 64).div_ceil(block_m as usize);
        fits_i32("tile-list blocks", blocks)?;
        let entries = heads * blocks;
        let bytes = entries * TILE_LIST_RECORD_BYTES as usize;
        // SAFETY: the pass writes every entry the kernel reads (a block's count, its tiles below the
        // count and its first window) before the kernel runs, in stream order.
        let (records, count) = unsafe {
            (
                stream
                    .alloc::<u8>(bytes.max(1))
                    .map_err(MinfError::driver(format!("allocating the tile list ({bytes} bytes)")))?,
                stream
                    .alloc::<i32>(entries.max(1))
                    .map_err(MinfError::driver(format!("allocating the tile counts ({entries})")))?,
            )
        };
        Ok(TileList { records, count, blocks: blocks as i32 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of<T: std::fmt::Debug>(result: Result<T, MinfError>) -> String {
        result.expect_err("must be rejected").to_string()
    }

    #[test]
    fn varlen_offsets_are_checked_on_the_host() {
        let lengths = |max_q, max_k| VarlenLengths { max_q, max_k, longer_queries: None };
        assert_eq!(check_varlen(&[0, 3, 3, 10], &[0, 5, 9, 20]).unwrap(), lengths(7, 11));
        assert_eq!(check_varlen(&[0, 1], &[0, 1]).unwrap(), lengths(1, 1));
        assert!(error_of(check_varlen(&[0], &[0])).contains("need batch + 1 >= 2 offsets each; got 1 and 1"));
        assert!(error_of(check_varlen(&[0, 3], &[0, 3, 4])).contains("got 2 and 3"));
        assert!(error_of(check_varlen(&[1, 3], &[0, 3])).contains("cu_seqlens_q must start at 0; got 1"));
        assert!(error_of(check_varlen(&[0, 3], &[2, 3])).contains("cu_seqlens_k must start at 0; got 2"));
        assert!(error_of(check_varlen(&[0, 4, 2], &[0, 4, 8]))
            .contains("cu_seqlens_q decreases at sequence 1 (4 then 2); offsets must be non-decreasing"));
        assert!(error_of(check_varlen(&[0, 1, 2], &[0, 9, 5])).contains("cu_seqlens_k decreases at sequence 1"));
        // More queries than keys: recorded (the first such sequence) for the call to check.
        assert_eq!(
            check_varlen(&[0, 2, 9, 20], &[0, 5, 10, 12]).unwrap(),
            VarlenLengths {
                max_q: 11,
                max_k: 5,
                longer_queries: Some(LongerQueries { sequence: 1, q_len: 7, kv_len: 5 })
            }
        );
    }

    #[test]
    fn chunk_shapes_are_checked_on_the_host() {
        let q = [2, 100, 8, 64];
        let kv = [2, 300, 2, 64];
        let checked = check_shapes(q, kv, kv, q, None, Some(2 * 8 * 100), None, true).unwrap();
        assert_eq!((checked.batch, checked.max_q, checked.q_rows, checked.kv_rows), (2, 100, 100, 300));
        // q_len == 1 is a chunk too.
        assert!(check_shapes([2, 1, 8, 64], kv, kv, [2, 1, 8, 64], None, None, None, true).is_ok());
        assert!(error_of(check_shapes([2, 301, 8, 64], kv, kv, [2, 301, 8, 64], None, None, None, true))
            .contains("q_len 301 > kv_len 300"));
        // A non-causal (split-KV) part may have fewer keys than queries.
        let checked = check_shapes([2, 301, 8, 64], kv, kv, [2, 301, 8, 64], None, None, None, false).unwrap();
        assert_eq!((checked.max_q, checked.q_rows, checked.kv_rows), (301, 301, 300));
        assert!(error_of(check_shapes(q, [1, 300, 2, 64], [1, 300, 2, 64], q, None, None, None, true))
            .contains("same batch and head_dim expected"));
        assert!(error_of(check_shapes(q, kv, [2, 299, 2, 64], q, None, None, None, true)).contains("!= v shape"));
        assert!(error_of(check_shapes(q, kv, kv, [2, 300, 8, 64], None, None, None, true)).contains("out shape"));
        assert!(error_of(check_shapes(q, kv, kv, q, None, Some(1599), None, true))
            .contains("lse holds 1599 floats but [batch, heads, q_len] = 1600 are needed"));
        assert!(
            error_of(check_shapes(q, kv, kv, q, None, None, Some(4), true)).contains("checked against 4 query heads")
        );
        assert!(error_of(check_shapes(q, [2, 300, 3, 64], [2, 300, 3, 64], q, None, None, None, true))
            .contains("not a multiple of 3"));
    }

    #[test]
    fn varlen_totals_are_checked_against_the_tensors() {
        // Sequences of 10 and 5 queries over 100 and 200 keys.
        let lengths = check_varlen(&[0, 10, 15], &[0, 100, 300]).unwrap();
        let rows = VarlenRows { batch: 2, total_q: 15, total_k: 300, max_q: lengths.max_q, longer_queries: None };
        let check = |q_rows: usize, kv_rows: usize, batch: usize, lse: Option<usize>| {
            let (q, kv) = ([batch, q_rows, 4, 64], [batch, kv_rows, 2, 64]);
            check_shapes(q, kv, kv, q, Some(rows), lse, None, true)
        };
        let checked = check(15, 300, 1, Some(4 * 15)).unwrap();
        assert_eq!((checked.batch, checked.max_q, checked.q_rows, checked.kv_rows), (2, 10, 15, 300));
        assert!(error_of(check(14, 300, 1, None)).contains("cu_seqlens_q ends at row 15 but q has 14 rows"));
        assert!(error_of(check(15, 299, 1, None))
            .contains("cu_seqlens_k ends at row 300 but k and v have 299 rows: the KV buffer is shorter"));
        assert!(error_of(check(15, 300, 2, None)).contains("got batch 2"));
        assert!(error_of(check(15, 300, 1, Some(59))).contains("[heads, total_q_rows] = 60"));

        // Sequences of 7 queries over 5 keys and 8 over 20: causal calls refuse them, non-causal
        // (split-KV) parts take them.
        let lengths = check_varlen(&[0, 7, 15], &[0, 5, 25]).unwrap();
        let rows = VarlenRows {
            batch: 2,
            total_q: 15,
            total_k: 25,
            max_q: lengths.max_q,
            longer_queries: lengths.longer_queries,
        };
        let (q, kv) = ([1, 15, 4, 64], [1, 25, 2, 64]);
        assert!(error_of(check_shapes(q, kv, kv, q, Some(rows), None, None, true))
            .contains("varlen: sequence 0 has q_len 7 > kv_len 5; causal queries"));
        assert_eq!(check_shapes(q, kv, kv, q, Some(rows), None, None, false).unwrap().max_q, 8);
    }

    #[test]
    fn non_causal_is_for_dense_only() {
        assert!(check_options(Pattern::Dense, false, None).is_ok());
        for pattern in [Pattern::AShape, Pattern::VerticalSlash, Pattern::BlockSparse] {
            assert!(check_options(pattern, true, Some(0.125)).is_ok());
            assert!(
                error_of(check_options(pattern, false, None)).contains("causal = false is for the dense pattern only")
            );
        }
        for bad in [0.0, -0.5, f32::NAN, f32::INFINITY] {
            assert!(error_of(check_options(Pattern::Dense, true, Some(bad))).contains("must be positive and finite"));
        }
    }

    #[test]
    fn head_subsets_are_checked_against_the_head_count() {
        assert_eq!(check_head_subset(&[3, 0, 7], 8).unwrap(), vec![3, 0, 7]);
        assert_eq!(check_head_subset(&[0], 1).unwrap(), vec![0]);
        let message = |heads: &[usize], count: usize| check_head_subset(heads, count).unwrap_err().to_string();
        assert!(message(&[8], 8).contains("head 8 is out of range; allowed 0 to 7"), "{}", message(&[8], 8));
        assert!(message(&[1, 2, 1], 8).contains("head 1 is listed twice"));
        assert!(message(&[], 8).contains("at least one"));
        assert!(message(&[0], 0).contains("allowed 1 to 65535"));
        assert!(message(&[0], 65_536).contains("allowed 1 to 65535"));
    }
}
