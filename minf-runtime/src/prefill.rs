//! MInference's per-layer prefill: a [`PatternConfig`] decides which pattern each query head of a
//! layer runs, and [`Prefill::prefill`] runs the whole layer with as few launches as the config
//! allows:
//!
//! - **dense** for layers below the config's starting layer, and for every layer when the prompt
//!   is shorter than [`PrefillOptions::dense_below`] (sparse attention does not pay there);
//! - **A-shape** (`stream_llm`): one launch per distinct `(n_init, n_local)`;
//! - **vertical-slash**: one estimation call for all vertical-slash heads of the layer (each with
//!   its own sizes) and one attention launch over them;
//! - **block-sparse**: one estimation call and one attention launch.
//!
//! Where the device has two tiles for the index-driven patterns (sm_90a), each vertical-slash and
//! block-sparse launch goes through a [`TileChoice`] ([`PrefillOptions::tile_choice`]): a small
//! kernel picks 128-row or 64-row blocks per head from the index, and both kernels launch over
//! complementary head maps.
//!
//! Heads of one launch are selected with a [`HeadSubset`] (the kernels' head map), uploaded once
//! per layer and pattern group when the [`Prefill`] is built. Indices and estimation scratch are
//! kept and reused, so a warm `prefill` call allocates nothing on the device (an index is
//! reallocated only when the batch, the prompt length or a needed capacity grows).
//!
//! **Chunked prefill.** [`Prefill::prefill_chunk`] runs one chunk of a prompt: its `q_len` queries
//! against the caller's KV buffer holding the `kv_len` keys of the prefix and the chunk, query row
//! `i` at absolute position `kv_len - q_len + i`. Each chunk estimates its own indices from its own
//! last queries (MInference's rules in absolute positions, [`crate::estimate::gpu`]); A-shape
//! windows are absolute. A chunk runs dense when its `kv_len` (the keys it attends to) is below
//! [`PrefillOptions::dense_below`], so every chunk of a short prompt runs dense, or when it has
//! fewer queries than [`PrefillOptions::dense_chunks_below`]: estimating a chunk reads all
//! `kv_len` keys, which costs about what a few hundred queries' dense attention over them does.
//! [`Prefill::prefill_chunked`] drives a whole prompt chunk by chunk. Scratch
//! per chunk is bounded by the chunk and its indices (`ceil(q_len / 64)` rows), never by
//! `kv_len` squared.

use crate::attention::{attention, launch_spec, AShape, AttentionOptions, HeadSubset, PatternArgs};
use crate::block_sparse::{BlockSparseIndex, HostBlockSparseIndex};
use crate::config::{HeadPattern, ModelShape, PatternConfig};
use crate::device::Device;
use crate::error::MinfError;
use crate::estimate::gpu::{
    check_block_sparse_seq, estimate_block_sparse_gpu, estimate_vertical_slash_gpu, estimate_vertical_slash_gpu_timed,
    EstimateWorkspace, VerticalSlashHead,
};
use crate::estimate::{clamp_sizes, BLOCK, BLOCK_SPARSE_TOP_K};
use crate::tensor::{check_layout, AttentionElement, Layout, TensorMut, TensorRef, TokenRange};
use crate::tile_choice::{TileChoice, CHOOSE_FROM_ROWS};
use crate::vertical_slash::{realised_chunk_mask_contains, HostVerticalSlashIndex, IndexShape, VerticalSlashIndex};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use minf_codegen::Tile;

/// Default of [`PrefillOptions::dense_below`], in tokens. On an H100 with `minf bench` on the
/// flat-tail structured inputs (`--flat-tail`), one Llama-3-8B-262K layer (layer 16, 32 heads)
/// takes 23.25 ms sparse against 22.81 ms dense at 32K (0.98x: estimation and conversion, 3.1 ms,
/// eat the gain) and 206.2 ms against 369.6 ms at 128K (1.79x); shorter prompts only widen the
/// estimation's share, so prompts below 32K run dense. MInference's own break-even is about 10K;
/// the right value depends on the config and the inputs' sparsity (docs/design.md, known limits).
pub const DEFAULT_DENSE_BELOW: usize = 32_768;

/// Default of [`PrefillOptions::dense_chunks_below`], in queries. Estimating a chunk over 128K
/// keys for 32 heads costs 1.3 ms for the scores of its last 64 queries and their top-k, plus
/// 0.1-0.5 ms for the conversion (H200, 2026-12-05): what dense attention of about 350-450
/// queries over the same keys takes (4.0 µs per query at 540 TFLOP/s), and the chunk's sparse
/// attention comes on top. A prediction from those measurements; the break-even itself is not yet
/// timed.
pub const DEFAULT_DENSE_CHUNKS_BELOW: usize = 512;

/// How [`Prefill`] runs a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefillOptions {
    /// Prompts of fewer tokens run every head dense (the sparse patterns' estimation and index
    /// do not pay for short prompts); default [`DEFAULT_DENSE_BELOW`]. `0` never falls back.
    /// For a chunk, the tokens are its `kv_len`.
    pub dense_below: usize,
    /// Chunks of fewer queries run every head dense, whatever their `kv_len` (a short turn of a
    /// chat after a long prefix: estimating its indices would cost more than it saves); default
    /// [`DEFAULT_DENSE_CHUNKS_BELOW`]. `0` never falls back.
    pub dense_chunks_below: usize,
    /// Key blocks (of 64) each 64-row query block of a block-sparse head keeps; default
    /// [`BLOCK_SPARSE_TOP_K`] (MInference's 100, which its configs' sizes do not change).
    pub block_sparse_top_k: usize,
    /// Tile and engine of the index-driven kernels (vertical-slash and block-sparse heads) instead
    /// of the device default. On an H100, 64-row wgmma blocks ran a scattered 128K vertical-slash
    /// index 2.3x faster than the default 128-row blocks, and the banded one slower
    /// (docs/design.md). `None` (the default): the device default ([`launch_spec`]), split per
    /// head by [`PrefillOptions::tile_choice`].
    pub indexed_tile: Option<Tile>,
    /// With no `indexed_tile`: let a [`TileChoice`] pick, per head and call, between the default
    /// 128-row blocks and 64-row blocks where the device has both (sm_90a); default `true`.
    pub tile_choice: bool,
    /// The fewest index rows (64-row query blocks) of a call for which the tile choice runs; a
    /// call over fewer (a short chunk) runs every index-driven head on the default tile
    /// ([`TileChoice::choose_from_rows`]). Default [`CHOOSE_FROM_ROWS`].
    pub tile_choice_from_rows: usize,
}

impl Default for PrefillOptions {
    fn default() -> Self {
        PrefillOptions {
            dense_below: DEFAULT_DENSE_BELOW,
            dense_chunks_below: DEFAULT_DENSE_CHUNKS_BELOW,
            block_sparse_top_k: BLOCK_SPARSE_TOP_K,
            indexed_tile: None,
            tile_choice: true,
            tile_choice_from_rows: CHOOSE_FROM_ROWS,
        }
    }
}

impl PrefillOptions {
    /// Whether a prompt of `seq` tokens runs every head dense.
    pub fn runs_dense(&self, seq: usize) -> bool {
        seq < self.dense_below
    }

    /// Whether a chunk of `q_len` queries over `kv_len` keys runs every head dense (a whole
    /// prompt is `q_len == kv_len`).
    pub fn runs_dense_chunk(&self, q_len: usize, kv_len: usize) -> bool {
        self.runs_dense(kv_len) || q_len < self.dense_chunks_below
    }
}

/// The query heads of one layer grouped by what they run: each group is one launch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeadGroups {
    /// Heads running dense (every head of a layer below the starting layer).
    pub dense: Vec<usize>,
    /// A-shape heads, grouped by equal parameters, in order of each group's first head.
    pub a_shape: Vec<(AShape, Vec<usize>)>,
    /// Vertical-slash heads with their sizes (before MInference's clamp), ascending.
    pub vertical_slash: Vec<VerticalSlashHead>,
    /// Block-sparse heads, ascending.
    pub block_sparse: Vec<usize>,
}

impl HeadGroups {
    /// The groups of layer `layer` of `config`. An A-shape head whose local window is 0 (a
    /// `stream_llm` entry with `slash_size` 0, or scaled to 0 by the ratio) is an error: the
    /// window includes the diagonal, so it must be at least 1.
    pub fn for_layer(config: &PatternConfig, layer: usize) -> Result<HeadGroups, MinfError> {
        let heads = config.layers().get(layer).ok_or_else(|| {
            MinfError::Shape(format!(
                "{}: layer {layer} is out of range; the config has layers 0 to {}",
                config.source().display(),
                config.layers().len().saturating_sub(1)
            ))
        })?;
        let mut groups = HeadGroups::default();
        for (head, entry) in heads.iter().enumerate() {
            match entry.pattern {
                HeadPattern::Dense => groups.dense.push(head),
                HeadPattern::AShape { n_init, n_local } => {
                    if n_local == 0 {
                        return Err(MinfError::Shape(format!(
                            "{}: layer {layer}, head {head}: stream_llm local window (slash_size {} after the ratio) \
                             is 0; it must be at least 1 (it includes the diagonal)",
                            config.source().display(),
                            entry.slash_size
                        )));
                    }
                    let shape = AShape { n_init, n_local };
                    match groups.a_shape.iter_mut().find(|(s, _)| *s == shape) {
                        Some((_, members)) => members.push(head),
                        None => groups.a_shape.push((shape, vec![head])),
                    }
                }
                HeadPattern::VerticalSlash { vertical, slash } => {
                    groups.vertical_slash.push(VerticalSlashHead { head, vertical, slash })
                }
                HeadPattern::BlockSparse { .. } => groups.block_sparse.push(head),
            }
        }
        Ok(groups)
    }

    /// The launches this layer needs for a sparse prompt (dense, one per A-shape group,
    /// vertical-slash, block-sparse).
    pub fn launches(&self) -> usize {
        usize::from(!self.dense.is_empty())
            + self.a_shape.len()
            + usize::from(!self.vertical_slash.is_empty())
            + usize::from(!self.block_sparse.is_empty())
    }

    /// The largest clamped vertical and slash sizes of the vertical-slash heads at `seq` tokens
    /// (the index capacities the layer needs); `None` without vertical-slash heads.
    pub fn vertical_slash_capacity(&self, seq: usize) -> Option<(usize, usize)> {
        self.vertical_slash
            .iter()
            .map(|h| clamp_sizes(seq, h.vertical, h.slash))
            .reduce(|a, b| (a.0.max(b.0), a.1.max(b.1)))
    }
}

/// The heads of one launch: all of them (no head map), or a subset on the device.
#[derive(Debug)]
enum LaunchHeads {
    All,
    Subset(HeadSubset),
}

impl LaunchHeads {
    fn new(device: &Device, heads: &[usize], head_count: usize) -> Result<LaunchHeads, MinfError> {
        if heads.iter().copied().eq(0..head_count) {
            Ok(LaunchHeads::All)
        } else {
            Ok(LaunchHeads::Subset(HeadSubset::new(device, heads, head_count)?))
        }
    }

    fn subset(&self) -> Option<&HeadSubset> {
        match self {
            LaunchHeads::All => None,
            LaunchHeads::Subset(subset) => Some(subset),
        }
    }
}

/// The heads of an index-driven group: one launch, or a per-head tile choice between two.
#[derive(Debug)]
enum IndexedHeads {
    Fixed(LaunchHeads),
    Chosen(Box<TileChoice>),
}

impl IndexedHeads {
    /// `choose`: the tile choice's [`TileChoice::choose_from_rows`], or `None` for one fixed launch.
    fn new(
        device: &Device,
        heads: &[usize],
        head_count: usize,
        choose: Option<usize>,
    ) -> Result<IndexedHeads, MinfError> {
        Ok(if let Some(choose_from_rows) = choose {
            let mut choice = TileChoice::new(device, heads, head_count)?;
            choice.set_choose_from_rows(choose_from_rows);
            IndexedHeads::Chosen(Box::new(choice))
        } else {
            IndexedHeads::Fixed(LaunchHeads::new(device, heads, head_count)?)
        })
    }

    /// What a launch takes: a fixed head map, or the choice that makes two.
    fn launch_heads(&mut self) -> (Option<&HeadSubset>, Option<&mut TileChoice>) {
        match self {
            IndexedHeads::Fixed(heads) => (heads.subset(), None),
            IndexedHeads::Chosen(choice) => (None, Some(choice)),
        }
    }
}

/// One layer's groups with their head maps on the device.
#[derive(Debug)]
struct LayerPlan {
    groups: HeadGroups,
    dense: Option<LaunchHeads>,
    a_shape: Vec<(AShape, LaunchHeads)>,
    vertical_slash: Option<IndexedHeads>,
    block_sparse: Option<IndexedHeads>,
}

impl LayerPlan {
    fn new(
        device: &Device,
        groups: HeadGroups,
        head_count: usize,
        choose: Option<usize>,
    ) -> Result<LayerPlan, MinfError> {
        let heads = |list: &[usize]| -> Result<Option<LaunchHeads>, MinfError> {
            (!list.is_empty()).then(|| LaunchHeads::new(device, list, head_count)).transpose()
        };
        let indexed = |list: &[usize]| -> Result<Option<IndexedHeads>, MinfError> {
            (!list.is_empty()).then(|| IndexedHeads::new(device, list, head_count, choose)).transpose()
        };
        let vertical_slash: Vec<usize> = groups.vertical_slash.iter().map(|h| h.head).collect();
        Ok(LayerPlan {
            dense: heads(&groups.dense)?,
            a_shape: groups
                .a_shape
                .iter()
                .map(|(shape, members)| Ok((*shape, LaunchHeads::new(device, members, head_count)?)))
                .collect::<Result<_, MinfError>>()?,
            vertical_slash: indexed(&vertical_slash)?,
            block_sparse: indexed(&groups.block_sparse)?,
            groups,
        })
    }
}

/// Where the time of one [`Prefill::prefill_timed`] call went, in milliseconds (CUDA events on
/// the device's stream).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PrefillTiming {
    /// Index estimation (vertical-slash scores and top-k, block-sparse), without the conversion.
    pub estimation_ms: f64,
    /// Converting the vertical-slash selection into the kernel's index.
    pub conversion_ms: f64,
    /// The attention launches.
    pub attention_ms: f64,
    /// The whole call.
    pub total_ms: f64,
}

/// What the last [`Prefill::prefill`] call ran: which layer, at what size, and whether it fell
/// back to dense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LastCall {
    layer: usize,
    dims: CallDims,
    dense_fallback: bool,
}

/// The checked sizes of a call: `q_len` queries (the last of the `kv_len` tokens) per sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CallDims {
    batch: usize,
    q_len: usize,
    kv_len: usize,
}

/// MInference's per-layer prefill on one device (see the [module docs](self)).
#[derive(Debug)]
pub struct Prefill<'d> {
    device: &'d Device,
    shape: ModelShape,
    options: PrefillOptions,
    layers: Vec<LayerPlan>,
    workspace: EstimateWorkspace,
    vertical_slash_index: Option<VerticalSlashIndex>,
    block_sparse_index: Option<BlockSparseIndex>,
    last: Option<LastCall>,
}

fn shape_error(message: String) -> MinfError {
    MinfError::Shape(message)
}

fn event(stream: &CudaStream) -> Result<CudaEvent, MinfError> {
    stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(MinfError::driver("recording a timing event"))
}

fn elapsed(start: &CudaEvent, end: &CudaEvent) -> Result<f64, MinfError> {
    Ok(start.elapsed_ms(end).map_err(MinfError::driver("reading a timing event"))? as f64)
}

/// Checks that `config` and `options` fit a model of `shape`.
fn check_model(config: &PatternConfig, shape: ModelShape, options: PrefillOptions) -> Result<(), MinfError> {
    if shape.heads == 0 || shape.kv_heads == 0 || !shape.heads.is_multiple_of(shape.kv_heads) {
        return Err(shape_error(format!(
            "model shape: {} query heads and {} key/value heads; both must be positive and kv_heads must divide heads",
            shape.heads, shape.kv_heads
        )));
    }
    if config.heads() != shape.heads || config.layers().len() != shape.layers {
        return Err(shape_error(format!(
            "{}: the config has {} layers of {} heads but the model shape has {} layers of {} heads",
            config.source().display(),
            config.layers().len(),
            config.heads(),
            shape.layers,
            shape.heads
        )));
    }
    if options.block_sparse_top_k == 0 {
        return Err(shape_error("prefill options: block_sparse_top_k must be at least 1".into()));
    }
    Ok(())
}

/// Checks a call's layer and the shapes of q, k, v and out against the model: q and out
/// `[batch, q_len, heads, d]`, k and v `[batch, kv_len, kv_heads, d]`, `1 <= q_len <= kv_len`.
fn check_call(shape: ModelShape, layer: usize, tensors: [[usize; 4]; 4]) -> Result<CallDims, MinfError> {
    let ModelShape { layers, heads, kv_heads, head_dim } = shape;
    if layer >= layers {
        return Err(shape_error(format!(
            "prefill: layer {layer} is out of range; the model has layers 0 to {}",
            layers.saturating_sub(1)
        )));
    }
    let [batch, q_len, _, _] = tensors[0];
    let kv_len = tensors[1][1];
    let d = head_dim as usize;
    let expected = [("q", q_len, "seq", heads), ("k", kv_len, "kv_len", kv_heads), ("v", kv_len, "kv_len", kv_heads)];
    for ((name, rows, what, want_heads), have) in
        expected.into_iter().chain([("out", q_len, "seq", heads)]).zip(tensors)
    {
        if have != [batch, rows, want_heads, d] {
            return Err(shape_error(format!(
                "prefill: {name} has shape {have:?} but the model needs [batch, {what}, {want_heads}, {d}] with q's \
                 batch {batch}, q's seq {q_len} and k's kv_len {kv_len} ({heads} query heads, {kv_heads} key/value \
                 heads, head_dim {d})"
            )));
        }
    }
    if q_len == 0 || q_len > kv_len {
        return Err(shape_error(format!(
            "prefill: q has {q_len} tokens and k {kv_len}; a chunk's queries are the last q_len of the kv_len tokens \
             in the KV buffer, so 1 <= q_len <= kv_len"
        )));
    }
    Ok(CallDims { batch, q_len, kv_len })
}

/// Checks, before any GPU work, that a prompt of `seq` tokens fits the estimate of every layer
/// that has block-sparse heads, so a prompt too long for the model fails on its first call.
fn check_seq<'a>(layers: impl IntoIterator<Item = &'a HeadGroups>, seq: usize) -> Result<(), MinfError> {
    match layers.into_iter().position(|groups| !groups.block_sparse.is_empty()) {
        Some(layer) => check_block_sparse_seq(&format!("prefill (layer {layer} has block-sparse heads)"), seq),
        None => Ok(()),
    }
}

/// The first `tokens` tokens of every sequence of `t` (a view of the same buffer).
fn first_tokens<T>(t: TensorRef<'_, T>, tokens: usize) -> TensorRef<'_, T> {
    let [batch, seq, heads, head_dim] = t.layout.shape;
    TensorRef {
        data: t.data,
        layout: Layout { shape: [batch, tokens.min(seq), heads, head_dim], strides: t.layout.strides },
    }
}

impl<'d> Prefill<'d> {
    /// Plans every layer of `config` for a model of `shape` and uploads each launch's head map.
    /// The config must have `shape.layers` layers of `shape.heads` heads.
    pub fn new(
        device: &'d Device,
        config: &PatternConfig,
        shape: ModelShape,
        options: PrefillOptions,
    ) -> Result<Prefill<'d>, MinfError> {
        check_model(config, shape, options)?;
        let choose = (options.tile_choice && options.indexed_tile.is_none()).then_some(options.tile_choice_from_rows);
        let layers = (0..shape.layers)
            .map(|layer| LayerPlan::new(device, HeadGroups::for_layer(config, layer)?, shape.heads, choose))
            .collect::<Result<Vec<_>, MinfError>>()?;
        Ok(Prefill {
            device,
            shape,
            options,
            layers,
            workspace: EstimateWorkspace::new(),
            vertical_slash_index: None,
            block_sparse_index: None,
            last: None,
        })
    }

    /// The model shape.
    pub fn shape(&self) -> ModelShape {
        self.shape
    }

    /// The options.
    pub fn options(&self) -> PrefillOptions {
        self.options
    }

    /// The head groups of `layer` (what a sparse prompt runs); `None` past the last layer.
    pub fn head_groups(&self, layer: usize) -> Option<&HeadGroups> {
        self.layers.get(layer).map(|plan| &plan.groups)
    }

    /// The vertical-slash index of the last call that estimated one (its shape may be larger
    /// than that call needed: indices are reused).
    pub fn vertical_slash_index(&self) -> Option<&VerticalSlashIndex> {
        self.vertical_slash_index.as_ref()
    }

    /// The block-sparse index of the last call that estimated one.
    pub fn block_sparse_index(&self) -> Option<&BlockSparseIndex> {
        self.block_sparse_index.as_ref()
    }

    /// Device memory held for indices and estimation scratch, in bytes.
    pub fn device_bytes(&self) -> usize {
        self.workspace.device_bytes()
            + self.vertical_slash_index.as_ref().map_or(0, |index| {
                let shape = index.shape();
                4 * (2 * shape.count_len().unwrap_or(0)
                    + shape.offset_len().unwrap_or(0)
                    + shape.column_len().unwrap_or(0))
            })
            + self.block_sparse_index.as_ref().map_or(0, |index| {
                let index = index.as_ref();
                4 * (index.kv_num_blocks.len() + index.kv_indices.len())
            })
    }

    /// Attention of every query head of layer `layer`: `out = attention(q, k, v)` with each head's
    /// pattern (see the [module docs](self)). `q` and `out` are `[batch, seq, heads, head_dim]`,
    /// `k` and `v` `[batch, seq, kv_heads, head_dim]` (any strides with contiguous rows), bf16 or
    /// f16, with the model's head counts and dimension. `k` and `v` may also hold more tokens than
    /// `q` (a chunk after its prefix): that is [`Prefill::prefill_chunk`] without the LSE. Launches
    /// on `device.stream()`; nothing waits for the device.
    pub fn prefill<T: AttentionElement>(
        &mut self,
        layer: usize,
        q: TensorRef<'_, T>,
        k: TensorRef<'_, T>,
        v: TensorRef<'_, T>,
        out: TensorMut<'_, T>,
    ) -> Result<(), MinfError> {
        self.run(layer, q, k, v, out, None, false).map(|_| ())
    }

    /// [`Prefill::prefill`] timed with CUDA events: where the time went. Waits for the device at
    /// the end (to read the events).
    pub fn prefill_timed<T: AttentionElement>(
        &mut self,
        layer: usize,
        q: TensorRef<'_, T>,
        k: TensorRef<'_, T>,
        v: TensorRef<'_, T>,
        out: TensorMut<'_, T>,
    ) -> Result<PrefillTiming, MinfError> {
        self.run(layer, q, k, v, out, None, true)
    }

    /// One chunk of a prompt (see the [module docs](self)): `q_chunk` and `out` are the chunk's
    /// `[batch, q_len, heads, head_dim]`, `k_all` and `v_all` the caller-owned KV buffer's
    /// `[batch, kv_len, kv_heads, head_dim]` holding the prefix and this chunk (its last `q_len`
    /// rows), `1 <= q_len <= kv_len`; query row `i` sits at absolute position `kv_len - q_len + i`.
    /// `lse`, when given, receives the natural-log log-sum-exp of every query row, f32
    /// `[batch, heads, q_len]` (to merge with attention over other keys). The chunk estimates its
    /// own indices from its own last queries; it runs dense when `kv_len` is below
    /// [`PrefillOptions::dense_below`]. Launches on `device.stream()`; nothing waits for the device.
    #[allow(clippy::too_many_arguments)]
    pub fn prefill_chunk<T: AttentionElement>(
        &mut self,
        layer: usize,
        q_chunk: TensorRef<'_, T>,
        k_all: TensorRef<'_, T>,
        v_all: TensorRef<'_, T>,
        out: TensorMut<'_, T>,
        lse: Option<&mut CudaSlice<f32>>,
    ) -> Result<(), MinfError> {
        self.run(layer, q_chunk, k_all, v_all, out, lse, false).map(|_| ())
    }

    /// A whole prompt through [`Prefill::prefill_chunk`], `chunk_tokens` queries at a time:
    /// `q`, `out` `[batch, seq, heads, head_dim]` and `k`, `v` `[batch, seq, kv_heads, head_dim]`
    /// (any strides with contiguous rows) hold the whole prompt; chunk `c` attends to the keys
    /// `0 .. min((c + 1) * chunk_tokens, seq)`. Each chunk reads its queries from `q` and writes
    /// its output into `out` in place (no copies, no buffers of its own);
    /// [`Prefill::realised_mask`] then describes the last chunk. Launches on `device.stream()`;
    /// nothing waits for the device.
    pub fn prefill_chunked<T: AttentionElement>(
        &mut self,
        layer: usize,
        q: TensorRef<'_, T>,
        k: TensorRef<'_, T>,
        v: TensorRef<'_, T>,
        out: TensorMut<'_, T>,
        chunk_tokens: usize,
    ) -> Result<(), MinfError> {
        self.chunked(layer, q, k, v, out, chunk_tokens, false).map(|_| ())
    }

    /// As [`Prefill::prefill_chunked`], timing each chunk as [`Prefill::prefill_timed`] does
    /// (waits for the device after every chunk): the estimation, conversion, attention and total
    /// times summed over the chunks.
    pub fn prefill_chunked_timed<T: AttentionElement>(
        &mut self,
        layer: usize,
        q: TensorRef<'_, T>,
        k: TensorRef<'_, T>,
        v: TensorRef<'_, T>,
        out: TensorMut<'_, T>,
        chunk_tokens: usize,
    ) -> Result<PrefillTiming, MinfError> {
        self.chunked(layer, q, k, v, out, chunk_tokens, true)
    }

    #[allow(clippy::too_many_arguments)]
    fn chunked<T: AttentionElement>(
        &mut self,
        layer: usize,
        q: TensorRef<'_, T>,
        k: TensorRef<'_, T>,
        v: TensorRef<'_, T>,
        out: TensorMut<'_, T>,
        chunk_tokens: usize,
        timed: bool,
    ) -> Result<PrefillTiming, MinfError> {
        let dims = check_call(self.shape, layer, [q.layout.shape, k.layout.shape, v.layout.shape, out.layout.shape])?;
        if dims.q_len != dims.kv_len {
            return Err(shape_error(format!(
                "prefill_chunked: q has {} tokens and k {}; the driver takes a whole prompt (use prefill_chunk for one \
                 chunk after a prefix)",
                dims.q_len, dims.kv_len
            )));
        }
        if chunk_tokens == 0 {
            return Err(shape_error("prefill_chunked: chunk_tokens must be at least 1".into()));
        }
        let (q_layout, out_layout) = (q.layout, out.layout);
        check_layout("prefill_chunked: q", &q_layout, q.data.len())?;
        check_layout("prefill_chunked: out", &out_layout, out.data.len())?;
        let seq = dims.q_len;
        let chunk = chunk_tokens.min(seq);
        let stream = self.device.stream().clone();
        // Each chunk reads its queries and writes its output in place, through views of `q` and
        // `out` from the chunk's first token on. Taking the base addresses through cudarc orders
        // the stream after earlier writes to both buffers and records this call's use of them
        // when the guards drop, after the last chunk's launches.
        let (q_len_elements, out_len_elements) = (q.data.len(), out.data.len());
        let (q_base, _q_read) = q.data.device_ptr(&stream);
        let (out_base, _out_write) = out.data.device_ptr_mut(&stream);
        let mut sum = PrefillTiming::default();
        for start in (0..seq).step_by(chunk) {
            let end = (start + chunk).min(seq);
            // SAFETY: `q` and `out` are borrowed for this call and checked to hold their layouts;
            // their memory outlives the chunk's launches, which are ordered on the device's stream
            // before the guards above record this call's use of both buffers; `out` is borrowed
            // mutably, so only this chunk's launches write its view.
            let (q_chunk, mut out_chunk) = unsafe {
                (
                    TokenRange::<T>::new(&stream, q_base, q_len_elements, q_layout, start..end)?,
                    TokenRange::<T>::new(&stream, out_base, out_len_elements, out_layout, start..end)?,
                )
            };
            // The KV buffer's first `end` tokens: the prefix and this chunk.
            let (k_all, v_all) = (first_tokens(k, end), first_tokens(v, end));
            let timing = self.run(layer, q_chunk.tensor(), k_all, v_all, out_chunk.tensor_mut(), None, timed)?;
            sum.estimation_ms += timing.estimation_ms;
            sum.conversion_ms += timing.conversion_ms;
            sum.attention_ms += timing.attention_ms;
            sum.total_ms += timing.total_ms;
        }
        Ok(sum)
    }

    #[allow(clippy::too_many_arguments)]
    fn run<T: AttentionElement>(
        &mut self,
        layer: usize,
        q: TensorRef<'_, T>,
        k: TensorRef<'_, T>,
        v: TensorRef<'_, T>,
        out: TensorMut<'_, T>,
        mut lse: Option<&mut CudaSlice<f32>>,
        timed: bool,
    ) -> Result<PrefillTiming, MinfError> {
        let dims = check_call(self.shape, layer, [q.layout.shape, k.layout.shape, v.layout.shape, out.layout.shape])?;
        let CallDims { batch, q_len, kv_len } = dims;
        let dense_fallback = self.options.runs_dense_chunk(q_len, kv_len);
        if !dense_fallback {
            check_seq(self.layers.iter().map(|plan| &plan.groups), kv_len)?;
        }
        let device = self.device;
        let stream = device.stream();
        let start = if timed { Some(event(stream)?) } else { None };
        self.last = None;
        let mut conversion_ms = 0.0;
        let plan = &mut self.layers[layer];
        let groups = &plan.groups;
        if !dense_fallback {
            if let Some((nnz_v, nnz_s)) = groups.vertical_slash_capacity(kv_len) {
                let rows = q_len.div_ceil(BLOCK);
                let reusable = self.vertical_slash_index.as_ref().is_some_and(|index| {
                    let have = index.shape();
                    (have.batch, have.heads, have.rows) == (batch, self.shape.heads, rows)
                        && have.nnz_v >= nnz_v
                        && have.nnz_s >= nnz_s
                });
                if !reusable {
                    self.vertical_slash_index = None;
                    let shape = IndexShape { batch, heads: self.shape.heads, rows, nnz_s, nnz_v };
                    self.vertical_slash_index = Some(VerticalSlashIndex::zeros(device, shape)?);
                }
                let Some(index) = self.vertical_slash_index.as_mut() else {
                    return Err(shape_error("prefill: the vertical-slash index was not allocated".into()));
                };
                if timed {
                    let [_, _, convert] = estimate_vertical_slash_gpu_timed(
                        device,
                        q,
                        k,
                        &groups.vertical_slash,
                        &mut self.workspace,
                        index,
                    )?;
                    conversion_ms = convert as f64;
                } else {
                    estimate_vertical_slash_gpu(device, q, k, &groups.vertical_slash, &mut self.workspace, index)?;
                }
            }
            if !groups.block_sparse.is_empty() {
                let rows = q_len.div_ceil(BLOCK);
                let capacity = self.options.block_sparse_top_k.min(kv_len.div_ceil(BLOCK));
                let reusable = self.block_sparse_index.as_ref().is_some_and(|index| {
                    let have = index.as_ref();
                    (have.batch, have.heads, have.rows) == (batch, self.shape.heads, rows) && have.capacity >= capacity
                });
                if !reusable {
                    self.block_sparse_index = None;
                    self.block_sparse_index =
                        Some(BlockSparseIndex::zeros(device, batch, self.shape.heads, rows, capacity)?);
                }
                let Some(index) = self.block_sparse_index.as_mut() else {
                    return Err(shape_error("prefill: the block-sparse index was not allocated".into()));
                };
                estimate_block_sparse_gpu(
                    device,
                    q,
                    k,
                    &groups.block_sparse,
                    self.options.block_sparse_top_k,
                    &mut self.workspace,
                    index,
                )?;
            }
        }
        let estimated = if timed { Some(event(stream)?) } else { None };

        let head_dim = q.layout.shape[3];
        let indexed_tile = self.options.indexed_tile;
        let mut launch = |args: PatternArgs<'_>, heads: Option<&HeadSubset>, choice: Option<&mut TileChoice>| {
            let out = TensorMut { data: &mut *out.data, layout: out.layout };
            let pattern = args.pattern();
            let tile = indexed_tile.filter(|_| pattern.is_indexed());
            let spec = launch_spec(device, pattern, T::DTYPE, head_dim, None, tile);
            let options = AttentionOptions { heads, spec: Some(spec), lse: lse.as_deref_mut(), ..Default::default() };
            match choice {
                Some(choice) => choice.attention(device, q, k, v, out, args, options),
                None => attention(device, q, k, v, out, args, options),
            }
        };
        if dense_fallback {
            launch(PatternArgs::Dense, None, None)?;
        } else {
            if let Some(heads) = &plan.dense {
                launch(PatternArgs::Dense, heads.subset(), None)?;
            }
            for (shape, heads) in &plan.a_shape {
                launch(PatternArgs::AShape(*shape), heads.subset(), None)?;
            }
            if let (Some(heads), Some(index)) = (plan.vertical_slash.as_mut(), &self.vertical_slash_index) {
                let (subset, choice) = heads.launch_heads();
                launch(PatternArgs::VerticalSlash(index.as_ref()), subset, choice)?;
            }
            if let (Some(heads), Some(index)) = (plan.block_sparse.as_mut(), &self.block_sparse_index) {
                let (subset, choice) = heads.launch_heads();
                launch(PatternArgs::BlockSparse(index.as_ref()), subset, choice)?;
            }
        }
        self.last = Some(LastCall { layer, dims, dense_fallback });
        let (Some(start), Some(estimated)) = (start, estimated) else {
            return Ok(PrefillTiming::default());
        };
        let end = event(stream)?;
        end.synchronize().map_err(MinfError::driver("waiting for the timed prefill"))?;
        let estimate_and_convert = elapsed(&start, &estimated)?;
        Ok(PrefillTiming {
            estimation_ms: estimate_and_convert - conversion_ms,
            conversion_ms,
            attention_ms: elapsed(&estimated, &end)?,
            total_ms: elapsed(&start, &end)?,
        })
    }

    /// The tile choice of the last [`Prefill::prefill`] call (waits for the device): each
    /// index-driven head whose tile was chosen per head, with `true` where it ran on 128-row blocks;
    /// empty when there was no choice (no call yet, the dense fallback, a fixed
    /// [`PrefillOptions::indexed_tile`], or a device with one index-driven tile).
    pub fn last_tile_choice(&self) -> Result<Vec<(usize, bool)>, MinfError> {
        let Some(last) = self.last.as_ref().filter(|last| !last.dense_fallback) else {
            return Ok(Vec::new());
        };
        let plan = &self.layers[last.layer];
        let mut chosen = Vec::new();
        for group in [&plan.vertical_slash, &plan.block_sparse].into_iter().flatten() {
            if let IndexedHeads::Chosen(choice) = group {
                if let Some(wide) = choice.last_choice(self.device)? {
                    chosen.extend(choice.heads().iter().copied().zip(wide));
                }
            }
        }
        Ok(chosen)
    }

    /// The mask the last [`Prefill::prefill`] call computed, per head, with its indices downloaded
    /// (waits for the device).
    pub fn realised_mask(&self) -> Result<RealisedMask, MinfError> {
        let last = self.last.ok_or_else(|| shape_error("realised_mask: no prefill call has completed yet".into()))?;
        let groups = &self.layers[last.layer].groups;
        let mut heads = vec![HeadMask::Dense; self.shape.heads];
        let (mut vertical_slash, mut block_sparse) = (None, None);
        if !last.dense_fallback {
            for (shape, members) in &groups.a_shape {
                for &h in members {
                    heads[h] = HeadMask::AShape(*shape);
                }
            }
            if let (false, Some(index)) = (groups.vertical_slash.is_empty(), &self.vertical_slash_index) {
                for h in &groups.vertical_slash {
                    heads[h.head] = HeadMask::VerticalSlash;
                }
                vertical_slash = Some(index.to_host()?);
            }
            if let (false, Some(index)) = (groups.block_sparse.is_empty(), &self.block_sparse_index) {
                for &h in &groups.block_sparse {
                    heads[h] = HeadMask::BlockSparse;
                }
                block_sparse = Some(index.to_host()?);
            }
        }
        let CallDims { batch, q_len, kv_len } = last.dims;
        Ok(RealisedMask { batch, seq: kv_len, q_offset: kv_len - q_len, heads, vertical_slash, block_sparse })
    }
}

/// What one head of a [`RealisedMask`] computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadMask {
    /// Every causal key.
    Dense,
    /// Sinks and a local window.
    AShape(AShape),
    /// The vertical-slash index.
    VerticalSlash,
    /// The block-sparse index.
    BlockSparse,
}

/// The keys each query of a prefill call attended to, head by head, on the host: for recall,
/// accuracy checks and density. Positions are absolute: a chunk's queries are the positions
/// `q_offset .. seq` (a whole prompt: `q_offset = 0`), its index row `r` their rows
/// `q_offset + 64r ..`.
#[derive(Debug, Clone)]
pub struct RealisedMask {
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence: the keys (`kv_len` of a chunk).
    pub seq: usize,
    /// Absolute position of the first query (`kv_len - q_len` of a chunk, 0 for a whole prompt).
    pub q_offset: usize,
    /// What each query head computed.
    pub heads: Vec<HeadMask>,
    /// The vertical-slash index, when a head used it.
    pub vertical_slash: Option<HostVerticalSlashIndex>,
    /// The block-sparse index, when a head used it.
    pub block_sparse: Option<HostBlockSparseIndex>,
}

impl RealisedMask {
    /// Whether the query at absolute position `i` of (`b`, `h`) attended to key `j`.
    pub fn contains(&self, b: usize, h: usize, i: usize, j: usize) -> bool {
        if j > i || i >= self.seq || i < self.q_offset {
            return false;
        }
        match self.heads.get(h) {
            Some(HeadMask::Dense) => true,
            Some(HeadMask::AShape(shape)) => j < shape.n_init || i - j < shape.n_local,
            Some(HeadMask::VerticalSlash) => self
                .vertical_slash
                .as_ref()
                .is_some_and(|index| realised_chunk_mask_contains(index, self.q_offset, b, h, i, j)),
            Some(HeadMask::BlockSparse) => self.block_sparse.as_ref().is_some_and(|index| {
                i32::try_from(j / BLOCK)
                    .is_ok_and(|block| index.blocks(b, h, (i - self.q_offset) / BLOCK).binary_search(&block).is_ok())
            }),
            None => false,
        }
    }

    /// Keys the kernel visits for 64-row block `r` (of the queries) of (`b`, `h`), counted in whole
    /// 64-key ranges and gathered columns as the kernels load them, at most the causal keys up to
    /// the block's end.
    pub fn visited_keys(&self, b: usize, h: usize, r: usize) -> usize {
        let causal = (self.q_offset + (r + 1) * BLOCK).min(self.seq);
        let visited = match self.heads.get(h) {
            Some(HeadMask::Dense) => causal,
            Some(HeadMask::AShape(shape)) => shape.n_init + shape.n_local + BLOCK - 1,
            Some(HeadMask::VerticalSlash) => self.vertical_slash.as_ref().map_or(0, |index| {
                if r >= index.shape.rows {
                    return 0;
                }
                index.ranges(b, h, r).len() * BLOCK + index.columns(b, h, r).len()
            }),
            Some(HeadMask::BlockSparse) => {
                self.block_sparse.as_ref().map_or(0, |index| index.blocks(b, h, r).len() * BLOCK)
            }
            None => 0,
        };
        visited.min(causal)
    }

    /// Share of the causal keys visited, over every 64-row block of the listed heads (all heads
    /// when `heads` is empty) and every sequence.
    pub fn density(&self, heads: &[usize]) -> f64 {
        let all: Vec<usize> = (0..self.heads.len()).collect();
        let heads = if heads.is_empty() { &all } else { heads };
        let (mut visited, mut causal) = (0usize, 0usize);
        for b in 0..self.batch {
            for &h in heads {
                for r in 0..(self.seq - self.q_offset).div_ceil(BLOCK) {
                    visited += self.visited_keys(b, h, r);
                    causal += (self.q_offset + (r + 1) * BLOCK).min(self.seq);
                }
            }
        }
        visited as f64 / causal.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Layer 0: heads 0 and 2 A-shape (64, 256), head 1 A-shape (16, 256), head 3 block-sparse,
    /// head 4 vertical-slash (100, 200), heads 5..8 missing (MInference's fallback). Layer 1:
    /// every head vertical-slash (30, 50).
    const MIXED: &str = r#"[
        {"0": ["stream_llm", 64, 256, 0.9], "1": ["stream_llm", 16, 256, 0.9], "2": ["stream_llm", 64, 256, 0.8],
         "3": ["block_sparse", 7, 7, 0.5], "4": ["vertical_and_slash", 100, 200, 0.7]},
        {"0": ["vertical_and_slash", 30, 50, 1], "1": ["vertical_and_slash", 30, 50, 1],
         "2": ["vertical_and_slash", 30, 50, 1], "3": ["vertical_and_slash", 30, 50, 1],
         "4": ["vertical_and_slash", 30, 50, 1], "5": ["vertical_and_slash", 30, 50, 1],
         "6": ["vertical_and_slash", 30, 50, 1], "7": ["vertical_and_slash", 30, 50, 1]}
    ]"#;

    fn mixed() -> PatternConfig {
        PatternConfig::parse(MIXED, "mixed.json", 8).unwrap()
    }

    fn vs(head: usize, vertical: usize, slash: usize) -> VerticalSlashHead {
        VerticalSlashHead { head, vertical, slash }
    }

    #[test]
    fn heads_are_grouped_by_pattern_and_parameters() {
        let groups = HeadGroups::for_layer(&mixed(), 0).unwrap();
        assert_eq!(
            groups,
            HeadGroups {
                dense: vec![],
                a_shape: vec![
                    (AShape { n_init: 64, n_local: 256 }, vec![0, 2]),
                    (AShape { n_init: 16, n_local: 256 }, vec![1]),
                ],
                vertical_slash: vec![vs(4, 100, 200), vs(5, 1000, 6096), vs(6, 1000, 6096), vs(7, 1000, 6096)],
                block_sparse: vec![3],
            }
        );
        assert_eq!(groups.launches(), 4);
        // Clamped as MInference does: v = min(N, max(v, 30)), s = min(N, max(s, 50)).
        assert_eq!(groups.vertical_slash_capacity(100_000), Some((1000, 6096)));
        assert_eq!(groups.vertical_slash_capacity(500), Some((500, 500)));
        let uniform = HeadGroups::for_layer(&mixed(), 1).unwrap();
        assert_eq!(uniform.launches(), 1);
        assert_eq!(uniform.vertical_slash.len(), 8);
        assert_eq!(uniform.vertical_slash_capacity(40), Some((30, 40)));
    }

    #[test]
    fn prompts_past_the_block_sparse_estimate_are_refused_on_the_host() {
        use crate::estimate::gpu::{MAX_BLOCK_SPARSE_ROWS, MAX_BLOCK_SPARSE_SEQ};
        let config = mixed();
        let layers = [HeadGroups::for_layer(&config, 1).unwrap(), HeadGroups::for_layer(&config, 0).unwrap()];
        check_seq(&layers, MAX_BLOCK_SPARSE_SEQ).unwrap();
        let err = check_seq(&layers, MAX_BLOCK_SPARSE_SEQ + 1).unwrap_err().to_string();
        let expected = format!(
            "prefill (layer 1 has block-sparse heads): {} tokens make {} query blocks of 64, but the block-sparse \
             estimate takes at most {MAX_BLOCK_SPARSE_ROWS} blocks ({MAX_BLOCK_SPARSE_SEQ} tokens",
            MAX_BLOCK_SPARSE_SEQ + 1,
            MAX_BLOCK_SPARSE_ROWS + 1
        );
        assert!(err.contains(&expected), "{err}");
        assert!(err.contains("use prompts of at most 1048576 tokens, or a config whose heads are not block_sparse"));
        // Without block-sparse heads the length is not limited here.
        check_seq(&layers[..1], 4 * MAX_BLOCK_SPARSE_SEQ).unwrap();
    }

    #[test]
    fn starting_layer_and_ratio_change_the_groups() {
        let dense = HeadGroups::for_layer(&mixed().with_starting_layer(1), 0).unwrap();
        assert_eq!(dense, HeadGroups { dense: (0..8).collect(), ..HeadGroups::default() });
        assert_eq!(dense.launches(), 1);
        let sparse = HeadGroups::for_layer(&mixed().with_starting_layer(1), 1).unwrap();
        assert_eq!(sparse.vertical_slash.len(), 8);
        let scaled = HeadGroups::for_layer(&mixed().with_ratio(0.5).unwrap(), 0).unwrap();
        assert_eq!(scaled.a_shape[0], (AShape { n_init: 32, n_local: 128 }, vec![0, 2]));
        assert_eq!(scaled.vertical_slash[0], vs(4, 50, 100));
        assert_eq!(scaled.vertical_slash[1], vs(5, 500, 3048));
        assert_eq!(scaled.block_sparse, vec![3]);
    }

    #[test]
    fn bad_layers_and_windows_are_errors() {
        let message = HeadGroups::for_layer(&mixed(), 2).unwrap_err().to_string();
        assert!(message.contains("mixed.json: layer 2 is out of range; the config has layers 0 to 1"), "{message}");
        let zero = PatternConfig::parse(r#"[{"0": ["stream_llm", 4, 0, 1]}]"#, "zero.json", 1).unwrap();
        let message = HeadGroups::for_layer(&zero, 0).unwrap_err().to_string();
        assert!(message.contains("zero.json: layer 0, head 0") && message.contains("at least 1"), "{message}");
    }

    #[test]
    fn dense_threshold() {
        let options = PrefillOptions::default();
        assert_eq!(options.dense_below, DEFAULT_DENSE_BELOW);
        assert_eq!(options.block_sparse_top_k, 100);
        assert!(options.runs_dense(DEFAULT_DENSE_BELOW - 1));
        assert!(!options.runs_dense(DEFAULT_DENSE_BELOW));
        let never = PrefillOptions { dense_below: 0, ..options };
        assert!(!never.runs_dense(0) && !never.runs_dense(1));
        let always = PrefillOptions { dense_below: usize::MAX, ..options };
        assert!(always.runs_dense(1 << 20));
        // Chunks: dense below dense_below keys, or below dense_chunks_below queries.
        assert_eq!(options.dense_chunks_below, DEFAULT_DENSE_CHUNKS_BELOW);
        let long = DEFAULT_DENSE_BELOW * 4;
        assert!(options.runs_dense_chunk(DEFAULT_DENSE_CHUNKS_BELOW - 1, long));
        assert!(!options.runs_dense_chunk(DEFAULT_DENSE_CHUNKS_BELOW, long));
        assert!(options.runs_dense_chunk(8192, DEFAULT_DENSE_BELOW - 1));
        assert!(!options.runs_dense_chunk(long, long));
        let sparse_chunks = PrefillOptions { dense_chunks_below: 0, ..options };
        assert!(!sparse_chunks.runs_dense_chunk(1, long));
    }

    fn model(layers: usize, heads: usize, kv_heads: usize) -> ModelShape {
        ModelShape { layers, heads, kv_heads, head_dim: 64 }
    }

    #[test]
    fn the_model_must_fit_the_config() {
        let options = PrefillOptions::default();
        assert!(check_model(&mixed(), model(2, 8, 2), options).is_ok());
        let message = check_model(&mixed(), model(3, 8, 2), options).unwrap_err().to_string();
        assert!(message.contains("2 layers of 8 heads but the model shape has 3 layers of 8 heads"), "{message}");
        let message = check_model(&mixed(), model(2, 8, 3), options).unwrap_err().to_string();
        assert!(message.contains("kv_heads must divide heads"), "{message}");
        let message =
            check_model(&mixed(), model(2, 8, 2), PrefillOptions { block_sparse_top_k: 0, ..options }).unwrap_err();
        assert!(message.to_string().contains("block_sparse_top_k must be at least 1"));
    }

    #[test]
    fn calls_must_fit_the_model() {
        let shape = model(2, 8, 2);
        let (q, kv) = ([1, 100, 8, 64], [1, 100, 2, 64]);
        assert_eq!(check_call(shape, 1, [q, kv, kv, q]).unwrap(), CallDims { batch: 1, q_len: 100, kv_len: 100 });
        // A chunk: 100 queries after a prefix of 900 keys.
        let kv_all = [1, 1000, 2, 64];
        assert_eq!(
            check_call(shape, 1, [q, kv_all, kv_all, q]).unwrap(),
            CallDims { batch: 1, q_len: 100, kv_len: 1000 }
        );
        let message = check_call(shape, 0, [[1, 1001, 8, 64], kv_all, kv_all, [1, 1001, 8, 64]]).unwrap_err();
        assert!(message.to_string().contains("so 1 <= q_len <= kv_len"), "{message}");
        let message = check_call(shape, 0, [[1, 0, 8, 64], kv_all, kv_all, [1, 0, 8, 64]]).unwrap_err();
        assert!(message.to_string().contains("q has 0 tokens and k 1000"), "{message}");
        let message = check_call(shape, 0, [q, kv_all, kv, q]).unwrap_err().to_string();
        assert!(
            message.contains("v has shape [1, 100, 2, 64] but the model needs [batch, kv_len, 2, 64]"),
            "{message}"
        );
        let message = check_call(shape, 0, [q, kv_all, kv_all, [1, 1000, 8, 64]]).unwrap_err().to_string();
        assert!(
            message.contains("out has shape [1, 1000, 8, 64] but the model needs [batch, seq, 8, 64]"),
            "{message}"
        );
        let message = check_call(shape, 2, [q, kv, kv, q]).unwrap_err().to_string();
        assert!(message.contains("layer 2 is out of range; the model has layers 0 to 1"), "{message}");
        let message = check_call(shape, 0, [[1, 100, 4, 64], kv, kv, [1, 100, 4, 64]]).unwrap_err().to_string();
        assert!(message.contains("q has shape [1, 100, 4, 64] but the model needs [batch, seq, 8, 64]"), "{message}");
        let message = check_call(shape, 0, [q, kv, [1, 99, 2, 64], q]).unwrap_err().to_string();
        assert!(message.contains("v has shape [1, 99, 2, 64]"), "{message}");
        let message = check_call(shape, 0, [q, kv, kv, [2, 100, 8, 64]]).unwrap_err().to_string();
        assert!(message.contains("out has shape"), "{message}");
        let message = check_call(shape, 0, [[1, 100, 8, 128], kv, kv, q]).unwrap_err().to_string();
        assert!(message.contains("head_dim 64"), "{message}");
    }

    #[test]
    fn realised_masks_by_hand() {
        let window = AShape { n_init: 2, n_local: 3 };
        let mask = RealisedMask {
            batch: 1,
            seq: 200,
            q_offset: 0,
            heads: vec![HeadMask::Dense, HeadMask::AShape(window), HeadMask::VerticalSlash],
            vertical_slash: None,
            block_sparse: None,
        };
        assert!(mask.contains(0, 0, 150, 0) && mask.contains(0, 0, 150, 150) && !mask.contains(0, 0, 150, 151));
        assert!(mask.contains(0, 1, 150, 1) && !mask.contains(0, 1, 150, 2) && mask.contains(0, 1, 150, 148));
        assert!(!mask.contains(0, 1, 150, 147) && !mask.contains(0, 1, 200, 199));
        // A vertical-slash head without its index, and a head past the layer, see nothing.
        assert!(!mask.contains(0, 2, 150, 150) && !mask.contains(0, 3, 150, 150));
        // Dense: the causal keys up to each block's end (64, 128, then 200 of the last block).
        assert_eq!([0, 1, 3].map(|r| mask.visited_keys(0, 0, r)), [64, 128, 200]);
        assert_eq!(mask.density(&[0]), 1.0);
        // A-shape: at most n_init + n_local + 63 keys per block.
        assert_eq!([0, 3].map(|r| mask.visited_keys(0, 1, r)), [64, 68]);
        assert!((mask.density(&[1]) - (64.0 + 68.0 * 3.0) / (64.0 + 128.0 + 192.0 + 200.0)).abs() < 1e-12);
    }

    #[test]
    fn realised_masks_of_a_chunk_are_in_absolute_positions() {
        use crate::vertical_slash::HostVerticalSlashIndex;
        // A chunk of 100 queries after 100 prefix tokens (q_offset 100, not a multiple of 64):
        // index row 0 holds positions 100..164, row 1 positions 164..200.
        let vs_shape = IndexShape { batch: 1, heads: 4, rows: 2, nnz_s: 2, nnz_v: 2 };
        let mut vs = HostVerticalSlashIndex::zeros(vs_shape).unwrap();
        // Head 2, row 0: the range 40..104 and the column 7; row 1: the column 150.
        let row0 = vs_shape.row(0, 2, 0);
        vs.block_count[row0] = 1;
        vs.block_offset[row0 * 2] = 40;
        vs.column_count[row0] = 1;
        vs.column_index[row0 * 2] = 7;
        let row1 = vs_shape.row(0, 2, 1);
        vs.column_count[row1] = 1;
        vs.column_index[row1 * 2] = 150;
        // Head 3: row 0 keeps key block 0, row 1 key block 2 (keys 128..192).
        let bs = HostBlockSparseIndex {
            batch: 1,
            heads: 4,
            rows: 2,
            capacity: 1,
            kv_num_blocks: vec![0, 0, 0, 0, 0, 0, 1, 1],
            kv_indices: vec![0, 0, 0, 0, 0, 0, 0, 2],
        };
        let mask = RealisedMask {
            batch: 1,
            seq: 200,
            q_offset: 100,
            heads: vec![
                HeadMask::Dense,
                HeadMask::AShape(AShape { n_init: 2, n_local: 3 }),
                HeadMask::VerticalSlash,
                HeadMask::BlockSparse,
            ],
            vertical_slash: Some(vs),
            block_sparse: Some(bs),
        };
        // Prefix positions are not queries of this call.
        assert!(!mask.contains(0, 0, 99, 0) && mask.contains(0, 0, 100, 100) && !mask.contains(0, 0, 100, 101));
        // A-shape windows are absolute.
        assert!(mask.contains(0, 1, 150, 1) && !mask.contains(0, 1, 150, 2) && mask.contains(0, 1, 150, 148));
        assert!(!mask.contains(0, 1, 150, 147));
        // Vertical-slash rows by (position - q_offset) / 64, causal by absolute position.
        assert!(mask.contains(0, 2, 100, 7) && mask.contains(0, 2, 163, 103) && mask.contains(0, 2, 100, 40));
        assert!(!mask.contains(0, 2, 100, 101) && !mask.contains(0, 2, 164, 7) && mask.contains(0, 2, 199, 150));
        assert!(!mask.contains(0, 2, 149, 150), "column 150 is right of the diagonal at 149");
        // Block-sparse: absolute key blocks.
        assert!(mask.contains(0, 3, 163, 63) && !mask.contains(0, 3, 163, 64) && mask.contains(0, 3, 170, 130));
        assert!(!mask.contains(0, 3, 170, 171) && !mask.contains(0, 3, 170, 10));
        // Density over the chunk's causal keys: rows end at 164 and 200.
        assert_eq!([0, 1].map(|r| mask.visited_keys(0, 0, r)), [164, 200]);
        assert_eq!(mask.density(&[0]), 1.0);
        assert_eq!([0, 1].map(|r| mask.visited_keys(0, 2, r)), [65, 1]);
        assert!((mask.density(&[2]) - 66.0 / 364.0).abs() < 1e-12);
    }

    #[test]
    fn llama_3_8b_runs_one_vertical_slash_launch_per_layer() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/minference-configs/Llama_3_8B_Instruct_262k_kv_out_v32_fit_o_best_pattern.json"
        );
        let config = PatternConfig::load_for_model(path).unwrap().with_starting_layer(2);
        for layer in 0..32 {
            let groups = HeadGroups::for_layer(&config, layer).unwrap();
            assert_eq!(groups.launches(), 1, "layer {layer}");
            if layer < 2 {
                assert_eq!(groups.dense, (0..32).collect::<Vec<_>>());
            } else {
                assert!(groups.vertical_slash.iter().map(|h| h.head).eq(0..32), "layer {layer}");
            }
        }
    }
}
