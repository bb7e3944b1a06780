//! Tensor entry points: `attention` and the `Prefill` class on tensors another library owns.
//!
//! The Python side (`python/minf/_tensors.py`) checks every tensor (device, dtype, rank, strides,
//! shapes) and passes each as a plain description: its device address, logical
//! `[batch, seq, heads, head_dim]` shape and element strides. Here the memory is viewed without a
//! copy ([`ForeignSlice`]) and the kernels launch on the caller's stream ([`stream_device`]),
//! after the runtime's own checks; nothing waits for the GPU. Index-driven calls (vertical-slash
//! and block-sparse) go through a [`TileChoice`] kept per device and head count ([`chosen_attention`]),
//! as `minf bench` and `minf.Prefill` run them.

use crate::minf_error;
use half::{bf16, f16};
use minf_runtime::attention::{attention, AShape, AttentionOptions, BlockSparseIndexRef, PatternArgs};
use minf_runtime::codegen::spec::HEAD_DIMS;
use minf_runtime::config::{known_model, ModelShape, PatternConfig, MAX_HEAD_ENTRIES};
use minf_runtime::estimate::{clamp_sizes, BLOCK};
use minf_runtime::foreign::{keeping_current_context, stream_device, ForeignSlice};
use minf_runtime::prefill::{HeadGroups, Prefill, PrefillOptions};
use minf_runtime::tensor::{AttentionElement, Layout, TensorMut, TensorRef};
use minf_runtime::{
    estimate_block_sparse_gpu, estimate_vertical_slash_gpu, BlockSparseIndex, Device, EstimateWorkspace, IndexShape,
    MinfError, TileChoice, VerticalSlashHead, VerticalSlashIndex, VerticalSlashIndexRef,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use std::path::PathBuf;
use std::sync::Mutex;

/// One tensor as the Python side describes it: `(data_ptr, shape, strides)`, shape and strides in
/// the logical `[batch, seq, heads, head_dim]` order, strides in elements.
#[derive(Debug, Clone, Copy, FromPyObject)]
pub struct TensorArg(u64, [usize; 4], [usize; 4]);

impl TensorArg {
    fn layout(&self) -> Layout {
        Layout { shape: self.1, strides: self.2 }
    }

    fn shape(&self) -> [usize; 4] {
        self.1
    }

    /// A view of the tensor's elements on `device`'s stream.
    ///
    /// # Safety
    ///
    /// The description is of a live tensor of element type `T` on `device`'s GPU, kept alive by
    /// the caller for the call (see [`ForeignSlice::new`]).
    unsafe fn view<T>(&self, device: &Device) -> ForeignSlice<T> {
        // SAFETY: the caller's contract; the layout's span is the elements the view reaches.
        unsafe { ForeignSlice::new(device.stream(), self.0, self.layout().span()) }
    }
}

/// A contiguous int32 index tensor: `(data_ptr, shape)`.
#[derive(Debug, Clone, FromPyObject)]
pub struct IndexArg(u64, Vec<usize>);

impl IndexArg {
    fn len(&self) -> usize {
        self.1.iter().product()
    }

    /// # Safety
    ///
    /// As [`TensorArg::view`], for a contiguous int32 tensor.
    unsafe fn view(&self, device: &Device) -> ForeignSlice<i32> {
        // SAFETY: the caller's contract.
        unsafe { ForeignSlice::new(device.stream(), self.0, self.len()) }
    }

    /// Dimension `i`, or a clear error when the tensor has fewer.
    fn dim(&self, name: &str, i: usize) -> Result<usize, MinfError> {
        self.1.get(i).copied().ok_or_else(|| {
            MinfError::Shape(format!("{name} has shape {:?}; it needs at least {} dimensions", self.1, i + 1))
        })
    }
}

/// Where a call runs: the CUDA device ordinal and the caller's stream handle (0: the default stream).
#[derive(Debug, Clone, Copy)]
struct Place {
    ordinal: usize,
    stream: usize,
}

impl Place {
    fn device(self) -> Result<&'static Device, MinfError> {
        // SAFETY: the Python side passes `torch.cuda.current_stream(device).cuda_stream` of the
        // tensors' device: a stream of that device's primary context, which PyTorch never destroys
        // while it can be current (pooled streams live for the process; a user's external stream
        // must outlive its use, as for PyTorch itself).
        unsafe { stream_device(self.ordinal, self.stream as cudarc::driver::sys::CUstream) }
    }
}

/// The kernels' element type from the Python side's name.
#[derive(Debug, Clone, Copy)]
enum Element {
    Bf16,
    F16,
}

fn element(dtype: &str) -> PyResult<Element> {
    match dtype {
        "bf16" => Ok(Element::Bf16),
        "f16" => Ok(Element::F16),
        other => Err(PyTypeError::new_err(format!("dtype {other:?}: allowed bf16 and f16"))),
    }
}

/// What a pattern needs, as the Python side passes it.
#[derive(Debug, Clone)]
enum PatternCall {
    Dense,
    AShape(AShape),
    /// Per-head requested sizes, estimated on the GPU.
    VerticalSlashEstimated {
        vertical: Vec<usize>,
        slash: Vec<usize>,
    },
    /// A converted index: block_count, block_offset, column_count, column_index.
    VerticalSlashIndex([IndexArg; 4]),
    BlockSparseEstimated {
        top_k: usize,
    },
    /// kv_num_blocks, kv_indices.
    BlockSparseIndex([IndexArg; 2]),
}

/// One `minf.attention` call after argument parsing.
#[derive(Debug, Clone)]
struct AttentionCall {
    q: TensorArg,
    k: TensorArg,
    v: TensorArg,
    out: TensorArg,
    /// `(data_ptr, elements)` of a float32 `[batch, heads, q_len]` buffer.
    lse: Option<(u64, usize)>,
    softmax_scale: Option<f32>,
    pattern: PatternCall,
}

/// The tile choices of index-driven `attention` calls, one per (device, query heads): a choice's
/// head maps live on its device and are rewritten by each call in stream order, so a warm call
/// allocates nothing. Devices are the process-lifetime ones of [`stream_device`], keyed by address.
static TILE_CHOICES: Mutex<Vec<(usize, usize, TileChoice)>> = Mutex::new(Vec::new());

/// Index-driven attention through the tile choice of `device` for `q`'s query heads (created on
/// the first such call): per head, 128-row or 64-row blocks, picked on the device from the index.
fn chosen_attention<T: AttentionElement>(
    device: &'static Device,
    q: TensorRef<'_, T>,
    k: TensorRef<'_, T>,
    v: TensorRef<'_, T>,
    out: TensorMut<'_, T>,
    args: PatternArgs<'_>,
    options: AttentionOptions<'_>,
) -> Result<(), MinfError> {
    let mut choices = TILE_CHOICES
        .lock()
        .map_err(|_| MinfError::Shape("the tile-choice table is poisoned by a panic in another thread".into()))?;
    let heads = q.layout.shape[2];
    let key = (std::ptr::from_ref(device) as usize, heads);
    let at = match choices.iter().position(|(d, h, _)| (*d, *h) == key) {
        Some(at) => at,
        None => {
            let all: Vec<usize> = (0..heads).collect();
            choices.push((key.0, key.1, TileChoice::new(device, &all, heads)?));
            choices.len() - 1
        }
    };
    choices[at].2.attention(device, q, k, v, out, args, options)
}

fn run_attention<T: AttentionElement>(device: &'static Device, call: &AttentionCall) -> Result<(), MinfError> {
    // SAFETY: the Python side describes live tensors of the checked dtype on this device and keeps
    // them referenced for the call; launches are ordered on the caller's stream.
    let (q_view, k_view, v_view) =
        unsafe { (call.q.view::<T>(device), call.k.view::<T>(device), call.v.view::<T>(device)) };
    // SAFETY: as above; `out` and `lse` are fresh tensors the Python side allocated for this call.
    let mut out_view = unsafe { call.out.view::<T>(device) };
    let mut lse_view = call.lse.map(|(ptr, len)| unsafe { ForeignSlice::<f32>::new(device.stream(), ptr, len) });
    let q = TensorRef::new(q_view.slice(), call.q.layout())?;
    let k = TensorRef::new(k_view.slice(), call.k.layout())?;
    let v = TensorRef::new(v_view.slice(), call.v.layout())?;
    let out = TensorMut::new(out_view.slice_mut(), call.out.layout())?;
    let options = AttentionOptions {
        softmax_scale: call.softmax_scale,
        lse: lse_view.as_mut().map(|lse| lse.slice_mut()),
        ..Default::default()
    };
    // The index has a row per 64 queries; its sizes are clamped by the keys (a chunk's q_len may be
    // shorter than its kv_len).
    let [batch, seq, heads, _] = call.q.shape();
    let kv_len = call.k.shape()[1];
    let rows = seq.div_ceil(BLOCK);
    let key_blocks = kv_len.div_ceil(BLOCK);
    match &call.pattern {
        PatternCall::Dense => attention(device, q, k, v, out, PatternArgs::Dense, options),
        PatternCall::AShape(shape) => attention(device, q, k, v, out, PatternArgs::AShape(*shape), options),
        PatternCall::VerticalSlashEstimated { vertical, slash } => {
            let listed: Vec<VerticalSlashHead> = (0..heads)
                .map(|head| VerticalSlashHead { head, vertical: vertical[head], slash: slash[head] })
                .collect();
            let (nnz_v, nnz_s) = listed
                .iter()
                .map(|h| clamp_sizes(kv_len, h.vertical, h.slash))
                .fold((1, 1), |a, b| (a.0.max(b.0), a.1.max(b.1)));
            let mut index = VerticalSlashIndex::zeros(device, IndexShape { batch, heads, rows, nnz_s, nnz_v })?;
            let mut workspace = EstimateWorkspace::new();
            estimate_vertical_slash_gpu(device, q, k, &listed, &mut workspace, &mut index)?;
            chosen_attention(device, q, k, v, out, PatternArgs::VerticalSlash(index.as_ref()), options)
        }
        PatternCall::VerticalSlashIndex(tensors) => {
            // SAFETY: live contiguous int32 tensors on this device, checked on the Python side.
            let views = tensors.clone().map(|t| unsafe { t.view(device) });
            let index = VerticalSlashIndexRef {
                block_count: views[0].slice(),
                block_offset: views[1].slice(),
                column_count: views[2].slice(),
                column_index: views[3].slice(),
                batch: tensors[0].dim("block_count", 0)?,
                heads: tensors[0].dim("block_count", 1)?,
                rows: tensors[0].dim("block_count", 2)?,
                nnz_s: tensors[1].dim("block_offset", 3)?,
                nnz_v: tensors[3].dim("column_index", 3)?,
            };
            chosen_attention(device, q, k, v, out, PatternArgs::VerticalSlash(index), options)
        }
        PatternCall::BlockSparseEstimated { top_k } => {
            let capacity = (*top_k).min(key_blocks).max(1);
            let mut index = BlockSparseIndex::zeros(device, batch, heads, rows, capacity)?;
            let mut workspace = EstimateWorkspace::new();
            let all: Vec<usize> = (0..heads).collect();
            estimate_block_sparse_gpu(device, q, k, &all, *top_k, &mut workspace, &mut index)?;
            chosen_attention(device, q, k, v, out, PatternArgs::BlockSparse(index.as_ref()), options)
        }
        PatternCall::BlockSparseIndex(tensors) => {
            // SAFETY: as above.
            let views = tensors.clone().map(|t| unsafe { t.view(device) });
            let index = BlockSparseIndexRef {
                kv_num_blocks: views[0].slice(),
                kv_indices: views[1].slice(),
                batch: tensors[0].dim("kv_num_blocks", 0)?,
                heads: tensors[0].dim("kv_num_blocks", 1)?,
                rows: tensors[0].dim("kv_num_blocks", 2)?,
                capacity: tensors[1].dim("kv_indices", 3)?,
            };
            chosen_attention(device, q, k, v, out, PatternArgs::BlockSparse(index), options)
        }
    }
}

/// A per-head list: one value for every head, or one per head.
fn per_head(name: &str, value: Vec<usize>, heads: usize) -> PyResult<Vec<usize>> {
    match value.len() {
        1 => Ok(vec![value[0]; heads]),
        n if n == heads => Ok(value),
        n => Err(PyValueError::new_err(format!(
            "{name} has {n} entries: give one integer or one per query head ({heads})"
        ))),
    }
}

/// `value` as the kernels' f32 softmax scale: positive and finite after the conversion (a scale
/// that is finite as a Python float may still overflow to infinity or underflow to zero).
fn f32_softmax_scale(value: f64) -> PyResult<f32> {
    let scale = value as f32;
    if scale.is_finite() && scale > 0.0 {
        Ok(scale)
    } else {
        Err(PyValueError::new_err(format!(
            "softmax_scale {value:?}: it must be positive and finite as a float32 (between {:e} and {:e})",
            f32::from_bits(1),
            f32::MAX
        )))
    }
}

/// The allowed head dimensions, as error messages list them: `64, 96, 128, 256`.
fn head_dims_text() -> String {
    HEAD_DIMS.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

/// Attention of `q`, `k`, `v` into `out` (and `lse`) with one pattern for every head; see
/// `minf.attention` for the arguments.
#[pyfunction]
#[pyo3(signature = (
    ordinal, stream, dtype, q, k, v, out, *, pattern, lse=None, softmax_scale=None, n_init=None, n_local=None,
    vertical_size=None, slash_size=None, top_k=None, vertical_slash_index=None, block_sparse_index=None
))]
#[allow(clippy::too_many_arguments)]
pub fn attention_into(
    py: Python<'_>,
    ordinal: usize,
    stream: usize,
    dtype: &str,
    q: TensorArg,
    k: TensorArg,
    v: TensorArg,
    out: TensorArg,
    pattern: &str,
    lse: Option<(u64, usize)>,
    softmax_scale: Option<f64>,
    n_init: Option<usize>,
    n_local: Option<usize>,
    vertical_size: Option<Vec<usize>>,
    slash_size: Option<Vec<usize>>,
    top_k: Option<usize>,
    vertical_slash_index: Option<[IndexArg; 4]>,
    block_sparse_index: Option<[IndexArg; 2]>,
) -> PyResult<()> {
    let element = element(dtype)?;
    let softmax_scale = softmax_scale.map(f32_softmax_scale).transpose()?;
    let heads = q.shape()[2];
    let missing = |name: &str| PyValueError::new_err(format!("pattern {pattern:?} needs {name}"));
    let pattern = match pattern {
        "dense" => PatternCall::Dense,
        "a_shape" => PatternCall::AShape(AShape {
            n_init: n_init.ok_or_else(|| missing("n_init"))?,
            n_local: n_local.ok_or_else(|| missing("n_local"))?,
        }),
        "vertical_slash" => match vertical_slash_index {
            Some(index) => PatternCall::VerticalSlashIndex(index),
            None => PatternCall::VerticalSlashEstimated {
                vertical: per_head("vertical_size", vertical_size.ok_or_else(|| missing("vertical_size"))?, heads)?,
                slash: per_head("slash_size", slash_size.ok_or_else(|| missing("slash_size"))?, heads)?,
            },
        },
        "block_sparse" => match block_sparse_index {
            Some(index) => PatternCall::BlockSparseIndex(index),
            None => PatternCall::BlockSparseEstimated { top_k: top_k.ok_or_else(|| missing("top_k"))? },
        },
        other => {
            return Err(PyValueError::new_err(format!(
                "pattern {other:?}: allowed dense, a_shape, vertical_slash, block_sparse"
            )))
        }
    };
    let call = AttentionCall { q, k, v, out, lse, softmax_scale, pattern };
    let place = Place { ordinal, stream };
    py.detach(|| {
        let device = place.device()?;
        match element {
            Element::Bf16 => run_attention::<bf16>(device, &call),
            Element::F16 => run_attention::<f16>(device, &call),
        }
    })
    .map_err(minf_error)
}

/// MInference's per-layer prefill under a per-head config, on the caller's tensors and stream:
/// the native half of `minf.Prefill`. One runtime [`Prefill`] is kept per (device, stream) the
/// calls come from, each with its own indices and scratch.
#[pyclass(module = "minf._minf", name = "Prefill")]
pub struct PrefillHandle {
    config: PatternConfig,
    shape: ModelShape,
    options: PrefillOptions,
    runs: Vec<(usize, usize, Prefill<'static>)>,
}

impl Drop for PrefillHandle {
    /// Frees the runtime state of every device the handle ran on without changing the thread's
    /// current CUDA context: the handle is often collected outside any `torch.cuda.device` guard,
    /// and freeing a buffer binds its device's context, which would change torch's current device.
    fn drop(&mut self) {
        if !self.runs.is_empty() {
            let runs = std::mem::take(&mut self.runs);
            keeping_current_context(move || drop(runs));
        }
    }
}

#[pymethods]
impl PrefillHandle {
    /// Reads and checks the config (or builds MInference's default: every head vertical-slash
    /// with 1000 columns and 6096 diagonals) for a model of the given shape.
    #[new]
    #[pyo3(signature = (config=None, *, layers=None, heads=None, kv_heads=None, head_dim=None, starting_layer=0,
        dense_below=None, dense_chunks_below=None, block_sparse_top_k=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        config: Option<PathBuf>,
        layers: Option<usize>,
        heads: Option<usize>,
        kv_heads: Option<usize>,
        head_dim: Option<usize>,
        starting_layer: usize,
        dense_below: Option<usize>,
        dense_chunks_below: Option<usize>,
        block_sparse_top_k: Option<usize>,
    ) -> PyResult<PrefillHandle> {
        let known = config.as_deref().and_then(known_model).map(|model| model.shape);
        if let (Some(path), None) = (&config, known) {
            crate::check_readable(path)?;
        }
        let need = |value: Option<usize>, from_file: Option<usize>, name: &str| {
            value.or(from_file).ok_or_else(|| {
                PyValueError::new_err(match &config {
                    Some(path) => format!("{}: not a known model's config: pass {name}", path.display()),
                    None => format!(
                        "without a config, pass the model's layers, heads, kv_heads and head_dim ({name} is missing)"
                    ),
                })
            })
        };
        let heads = need(heads, known.map(|s| s.heads), "heads")?;
        let kv_heads = need(kv_heads, known.map(|s| s.kv_heads), "kv_heads")?;
        let head_dim = need(head_dim, known.map(|s| s.head_dim as usize), "head_dim")?;
        // The kernels' head dimensions, checked here rather than at the first call.
        let head_dim = u32::try_from(head_dim)
            .ok()
            .filter(|d| HEAD_DIMS.contains(d))
            .ok_or_else(|| PyValueError::new_err(format!("head_dim {head_dim}: allowed {}", head_dims_text())))?;
        if layers == Some(0) {
            return Err(PyValueError::new_err("layers must be at least 1"));
        }
        // The config's own bound on its table, checked before anything of that size is built.
        if let Some(layers) = layers {
            if layers.saturating_mul(heads) > MAX_HEAD_ENTRIES {
                return Err(PyValueError::new_err(format!(
                    "layers {layers} and heads {heads}: {layers} layers of {heads} query heads is more than the \
                     {MAX_HEAD_ENTRIES} head entries minf reads from a config"
                )));
            }
        }
        let loaded = match &config {
            Some(path) => PatternConfig::load(path, heads).map_err(minf_error)?,
            None => {
                let layers = need(layers, None, "layers")?;
                let json = format!("[{}]", vec!["{}"; layers].join(","));
                PatternConfig::parse(&json, "default (every head vertical_slash 1000, 6096)", heads)
                    .map_err(minf_error)?
            }
        };
        let layers = layers.unwrap_or(loaded.layers().len());
        if loaded.layers().len() != layers {
            return Err(PyValueError::new_err(format!(
                "{}: the config has {} layers but the model has {layers}",
                loaded.source().display(),
                loaded.layers().len()
            )));
        }
        if kv_heads == 0 || heads % kv_heads != 0 {
            return Err(PyValueError::new_err(format!(
                "{heads} query heads and {kv_heads} key/value heads: kv_heads must divide heads"
            )));
        }
        let config = loaded.with_starting_layer(starting_layer);
        for layer in 0..layers {
            HeadGroups::for_layer(&config, layer).map_err(minf_error)?;
        }
        let mut options = PrefillOptions::default();
        if let Some(tokens) = dense_below {
            options.dense_below = tokens;
        }
        if let Some(queries) = dense_chunks_below {
            options.dense_chunks_below = queries;
        }
        if let Some(top_k) = block_sparse_top_k {
            if top_k == 0 {
                return Err(PyValueError::new_err("block_sparse_top_k must be at least 1"));
            }
            options.block_sparse_top_k = top_k;
        }
        Ok(PrefillHandle { config, shape: ModelShape { layers, heads, kv_heads, head_dim }, options, runs: Vec::new() })
    }

    /// `(layers, heads, kv_heads, head_dim)`.
    #[getter]
    fn shape(&self) -> (usize, usize, usize, u32) {
        let ModelShape { layers, heads, kv_heads, head_dim } = self.shape;
        (layers, heads, kv_heads, head_dim)
    }

    /// Prompts shorter than this run every head dense.
    #[getter]
    fn dense_below(&self) -> usize {
        self.options.dense_below
    }

    /// Chunks of fewer queries run every head dense.
    #[getter]
    fn dense_chunks_below(&self) -> usize {
        self.options.dense_chunks_below
    }

    /// The config file (or the default's description).
    #[getter]
    fn source(&self) -> String {
        self.config.source().display().to_string()
    }

    /// What each head of `layer` runs: a list of `(pattern, parameters)` per head.
    fn layer_patterns(&self, layer: usize) -> PyResult<Vec<(String, Vec<usize>)>> {
        let groups = HeadGroups::for_layer(&self.config, layer).map_err(minf_error)?;
        let mut heads = vec![(String::new(), Vec::new()); self.shape.heads];
        for &h in &groups.dense {
            heads[h] = ("dense".into(), vec![]);
        }
        for (shape, members) in &groups.a_shape {
            for &h in members {
                heads[h] = ("a_shape".into(), vec![shape.n_init, shape.n_local]);
            }
        }
        for h in &groups.vertical_slash {
            heads[h.head] = ("vertical_slash".into(), vec![h.vertical, h.slash]);
        }
        for &h in &groups.block_sparse {
            heads[h] = ("block_sparse".into(), vec![self.options.block_sparse_top_k]);
        }
        Ok(heads)
    }

    /// Runs layer `layer` on the described tensors into `out`, on the given device and stream:
    /// the whole prompt (`chunk` None), one chunk after a prefix (`chunk` 0, with an optional
    /// `lse` buffer `(data_ptr, elements)`), or the whole prompt chunk by chunk (`chunk` > 0 tokens).
    #[pyo3(signature = (ordinal, stream, dtype, layer, q, k, v, out, *, chunk=None, lse=None))]
    #[allow(clippy::too_many_arguments)]
    fn prefill_into(
        &mut self,
        py: Python<'_>,
        ordinal: usize,
        stream: usize,
        dtype: &str,
        layer: usize,
        q: TensorArg,
        k: TensorArg,
        v: TensorArg,
        out: TensorArg,
        chunk: Option<usize>,
        lse: Option<(u64, usize)>,
    ) -> PyResult<()> {
        let element = element(dtype)?;
        let place = Place { ordinal, stream };
        let call = match chunk {
            None => PrefillCall::Whole,
            Some(0) => PrefillCall::Chunk { lse },
            Some(tokens) => PrefillCall::Chunked { tokens },
        };
        if lse.is_some() && !matches!(call, PrefillCall::Chunk { .. }) {
            return Err(PyValueError::new_err("lse is returned by prefill_chunk only"));
        }
        py.detach(|| {
            let device = place.device()?;
            let prefill = self.prefill_for(place, device)?;
            match element {
                Element::Bf16 => run_prefill::<bf16>(device, prefill, layer, [q, k, v, out], call),
                Element::F16 => run_prefill::<f16>(device, prefill, layer, [q, k, v, out], call),
            }
        })
        .map_err(minf_error)
    }
}

impl PrefillHandle {
    /// The runtime prefill for `place`, planned (head maps uploaded) on its first call there.
    fn prefill_for(&mut self, place: Place, device: &'static Device) -> Result<&mut Prefill<'static>, MinfError> {
        let at = match self.runs.iter().position(|(o, s, _)| (*o, *s) == (place.ordinal, place.stream)) {
            Some(at) => at,
            None => {
                let prefill = Prefill::new(device, &self.config, self.shape, self.options)?;
                self.runs.push((place.ordinal, place.stream, prefill));
                self.runs.len() - 1
            }
        };
        Ok(&mut self.runs[at].2)
    }
}

/// Which runtime entry a prefill call takes.
#[derive(Debug, Clone, Copy)]
enum PrefillCall {
    /// [`Prefill::prefill`].
    Whole,
    /// [`Prefill::prefill_chunk`], with an optional f32 LSE buffer `(data_ptr, elements)`.
    Chunk { lse: Option<(u64, usize)> },
    /// [`Prefill::prefill_chunked`] with chunks of `tokens` queries.
    Chunked { tokens: usize },
}

fn run_prefill<T: AttentionElement>(
    device: &Device,
    prefill: &mut Prefill<'static>,
    layer: usize,
    [q, k, v, out]: [TensorArg; 4],
    call: PrefillCall,
) -> Result<(), MinfError> {
    // SAFETY: as in `run_attention`: live tensors of this dtype on this device, referenced by the
    // caller for the call; `out` (and `lse`) are fresh tensors or the caller's output tensors.
    let (q_view, k_view, v_view, mut out_view) =
        unsafe { (q.view::<T>(device), k.view::<T>(device), v.view::<T>(device), out.view::<T>(device)) };
    let q_ref = TensorRef::new(q_view.slice(), q.layout())?;
    let k_ref = TensorRef::new(k_view.slice(), k.layout())?;
    let v_ref = TensorRef::new(v_view.slice(), v.layout())?;
    let out_ref = TensorMut::new(out_view.slice_mut(), out.layout())?;
    match call {
        PrefillCall::Whole => prefill.prefill(layer, q_ref, k_ref, v_ref, out_ref),
        PrefillCall::Chunk { lse } => {
            // SAFETY: as above, for the f32 LSE tensor the Python side allocated.
            let mut lse_view = lse.map(|(ptr, len)| unsafe { ForeignSlice::<f32>::new(device.stream(), ptr, len) });
            let lse = lse_view.as_mut().map(|view| view.slice_mut());
            prefill.prefill_chunk(layer, q_ref, k_ref, v_ref, out_ref, lse)
        }
        PrefillCall::Chunked { tokens } => prefill.prefill_chunked(layer, q_ref, k_ref, v_ref, out_ref, tokens),
    }
}
