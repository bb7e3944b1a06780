//! Running the cases on the GPU: every pattern goes through [`Prefill`] on a one-layer config
//! (uniform patterns are written as a config whose heads all have that pattern), so each case is
//! timed by the same code with the same split (estimation, conversion, attention, total). With
//! `--chunk`, each case also runs chunk by chunk ([`Prefill::prefill_chunked`]) on the same inputs
//! and config, timed as a whole.

use super::cases::{load_config, Case, PatternSpec};
use super::indices::{save_index, tile_counts};
use super::record::{today, Record, MINF_METHOD};
use cudarc::driver::CudaSlice;
use half::{bf16, f16};
use minf_runtime::codegen::abi::TILE_LIST_RECORD_BYTES;
use minf_runtime::codegen::{DType, Tile};
use minf_runtime::config::MINFERENCE_BLOCK_TOP_K;
use minf_runtime::device::{driver_available, probe};
use minf_runtime::timing::median_ms;
use minf_runtime::{
    attention, AttentionElement, AttentionOptions, Device, HostQkv, MinfError, ModelShape, PatternArgs, PatternConfig,
    Prefill, PrefillOptions, PrefillTiming, TensorMut, TensorRef,
};
use minf_testkit::inputs::{InputSpec, StructuredInputs};
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Instant;

/// Tokens of the small input whose first call compiles or loads a case's kernels before timing.
const COMPILE_PROBE_SEQ: usize = 1024;

/// Why a benchmark could not run.
#[derive(Debug)]
pub enum BenchError {
    /// No usable GPU on this machine (the message says what was found).
    NoGpu(String),
    /// A case could not be set up or run.
    Case(String),
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::NoGpu(reason) => write!(
                f,
                "minf bench needs an NVIDIA GPU: {reason}\nRun `minf doctor` to see what minf finds on this machine; \
                 without a GPU, `minf warm --arch sm_80,sm_90a` still compiles every kernel"
            ),
            BenchError::Case(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for BenchError {}

impl From<MinfError> for BenchError {
    fn from(error: MinfError) -> Self {
        BenchError::Case(error.to_string())
    }
}

/// Where the inputs come from.
#[derive(Debug)]
pub enum InputSource {
    /// [`StructuredInputs`] with this seed, generated once per length and head count.
    Structured {
        /// The generator's seed.
        seed: u64,
        /// [`InputSpec::flat_tail`] instead of [`InputSpec::new`]: the generator without the
        /// long-range decay (`--flat-tail`).
        flat_tail: bool,
    },
    /// One file's inputs (`--inputs`), for every case at its length, and the file's name.
    File(HostQkv, String),
}

/// How the cases are timed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSettings {
    /// Timed runs per case below `long_from` tokens.
    pub reps: usize,
    /// Timed runs per case from `long_from` tokens on.
    pub long_reps: usize,
    /// The length from which `long_reps` applies.
    pub long_from: usize,
    /// Untimed runs before the timed ones (after the compile probe).
    pub warmup: usize,
    /// Where to write each sparse case's index (`--save-indices`).
    pub save_indices: Option<PathBuf>,
    /// Tile and engine of the index-driven kernels instead of the device default (`--index-tile`).
    pub index_tile: Option<Tile>,
    /// Whether the index-driven heads choose their tile per head (`--no-tile-choice` turns it off).
    pub tile_choice: bool,
    /// Index rows from which the tile choice runs (`--tile-choice-from-rows`).
    pub tile_choice_from_rows: usize,
    /// Tokens per chunk of the chunked run next to each case (`--chunk`), or none.
    pub chunk: Option<usize>,
}

/// Device buffers of one input: q, k, v and an output.
struct Buffers<T> {
    q: CudaSlice<T>,
    k: CudaSlice<T>,
    v: CudaSlice<T>,
    out: CudaSlice<T>,
}

impl<T: AttentionElement> Buffers<T> {
    fn upload(device: &Device, qkv: &HostQkv) -> Result<Self, MinfError> {
        let stream = device.stream();
        let convert = |x: &[f32]| x.iter().map(|&v| T::from_f32(v)).collect::<Vec<T>>();
        let upload = |x: &[f32]| stream.clone_htod(&convert(x)).map_err(MinfError::driver("uploading inputs"));
        Ok(Buffers {
            q: upload(&qkv.q)?,
            k: upload(&qkv.k)?,
            v: upload(&qkv.v)?,
            out: stream.alloc_zeros::<T>(qkv.q.len()).map_err(MinfError::driver("allocating the output"))?,
        })
    }

    fn zeros(device: &Device, seq: usize, case: &Case) -> Result<Self, MinfError> {
        let stream = device.stream();
        let alloc = |n: usize| stream.alloc_zeros::<T>(n).map_err(MinfError::driver("allocating probe inputs"));
        let (q_len, kv_len) = (seq * case.heads * case.head_dim, seq * case.kv_heads * case.head_dim);
        Ok(Buffers { q: alloc(q_len)?, k: alloc(kv_len)?, v: alloc(kv_len)?, out: alloc(q_len)? })
    }

    fn bytes(&self) -> u64 {
        ((self.q.len() + self.k.len() + self.v.len() + self.out.len()) * std::mem::size_of::<T>()) as u64
    }

    /// One prefill call on these buffers (`seq` tokens); timed when `timed`.
    fn prefill(
        &mut self,
        prefill: &mut Prefill<'_>,
        case: &Case,
        seq: usize,
        timed: bool,
    ) -> Result<PrefillTiming, MinfError> {
        let q_shape = [1, seq, case.heads, case.head_dim];
        let kv_shape = [1, seq, case.kv_heads, case.head_dim];
        let (q, k, v) = (
            TensorRef::bshd(&self.q, q_shape)?,
            TensorRef::bshd(&self.k, kv_shape)?,
            TensorRef::bshd(&self.v, kv_shape)?,
        );
        let out = TensorMut::bshd(&mut self.out, q_shape)?;
        if timed {
            prefill.prefill_timed(0, q, k, v, out)
        } else {
            prefill.prefill(0, q, k, v, out).map(|()| PrefillTiming::default())
        }
    }

    /// The log-sum-exp `[heads, seq]` of every query row of the whole prompt, through the case's
    /// prefill (`prefill` given) or dense attention (`None`); waits for the device to download it.
    fn log_sum_exp(
        &mut self,
        device: &Device,
        prefill: Option<&mut Prefill<'_>>,
        case: &Case,
    ) -> Result<Vec<f32>, MinfError> {
        let stream = device.stream();
        let q_shape = [1, case.seq, case.heads, case.head_dim];
        let kv_shape = [1, case.seq, case.kv_heads, case.head_dim];
        let mut lse = stream
            .alloc_zeros::<f32>(case.heads * case.seq)
            .map_err(MinfError::driver("allocating the log-sum-exp"))?;
        let (q, k, v) = (
            TensorRef::bshd(&self.q, q_shape)?,
            TensorRef::bshd(&self.k, kv_shape)?,
            TensorRef::bshd(&self.v, kv_shape)?,
        );
        let out = TensorMut::bshd(&mut self.out, q_shape)?;
        match prefill {
            Some(prefill) => prefill.prefill_chunk(0, q, k, v, out, Some(&mut lse))?,
            None => {
                let options = AttentionOptions { lse: Some(&mut lse), ..AttentionOptions::default() };
                attention(device, q, k, v, out, PatternArgs::Dense, options)?
            }
        }
        stream.clone_dtoh(&lse).map_err(MinfError::driver("downloading the log-sum-exp"))
    }

    /// The whole prompt (`seq` tokens) through [`Prefill::prefill_chunked`], `chunk` tokens at a
    /// time, not waited for; or, `timed`, through [`Prefill::prefill_chunked_timed`] (each chunk
    /// timed alone, waited for).
    fn prefill_chunked(
        &mut self,
        prefill: &mut Prefill<'_>,
        case: &Case,
        chunk: usize,
        timed: bool,
    ) -> Result<PrefillTiming, MinfError> {
        let q_shape = [1, case.seq, case.heads, case.head_dim];
        let kv_shape = [1, case.seq, case.kv_heads, case.head_dim];
        let (q, k, v) = (
            TensorRef::bshd(&self.q, q_shape)?,
            TensorRef::bshd(&self.k, kv_shape)?,
            TensorRef::bshd(&self.v, kv_shape)?,
        );
        let out = TensorMut::bshd(&mut self.out, q_shape)?;
        if timed {
            prefill.prefill_chunked_timed(0, q, k, v, out, chunk)
        } else {
            prefill.prefill_chunked(0, q, k, v, out, chunk).map(|()| PrefillTiming::default())
        }
    }
}

/// Inputs on the device in the case's element type.
enum DeviceInputs {
    Bf16(Buffers<bf16>),
    F16(Buffers<f16>),
}

/// The shape inputs are generated for: length, heads, KV heads, head dimension, element type.
type InputKey = (usize, usize, usize, usize, DType);

/// What one case measured, before it becomes a [`Record`].
struct Measured {
    timing: PrefillTiming,
    compile_s: f64,
    tiles: (u64, u64),
    device_bytes: u64,
    reps: usize,
}

/// The benchmark on one GPU: the device, the inputs of the current length, and the dense time of
/// each length for the speedups.
pub struct GpuBench {
    device: Device,
    driver: String,
    source: InputSource,
    inputs: Option<(InputKey, DeviceInputs)>,
    /// Dense attention's log-sum-exp of the current inputs, once a sparse case needed it.
    dense_lse: Option<Vec<f32>>,
    dense_ms: HashMap<(usize, usize), f64>,
}

impl GpuBench {
    /// Opens GPU 0 with structured inputs of seed 1 ([`GpuBench::use_inputs`] changes them);
    /// fails with [`BenchError::NoGpu`] (which points to `minf doctor`) without a usable GPU.
    pub fn new() -> Result<GpuBench, BenchError> {
        if !driver_available() {
            return Err(BenchError::NoGpu(MinfError::NoDriver.to_string()));
        }
        let info = probe(0).map_err(|e| BenchError::NoGpu(e.to_string()))?;
        let device = Device::new(0).map_err(|e| BenchError::NoGpu(e.to_string()))?;
        let driver = format!("CUDA {}.{}", info.driver_version.0, info.driver_version.1);
        let source = InputSource::Structured { seed: 1, flat_tail: false };
        Ok(GpuBench { device, driver, source, inputs: None, dense_lse: None, dense_ms: HashMap::new() })
    }

    /// Takes the inputs of the following cases from `source`.
    pub fn use_inputs(&mut self, source: InputSource) {
        self.source = source;
        self.inputs = None;
        self.dense_lse = None;
    }

    /// The GPU's name.
    pub fn card(&self) -> &str {
        self.device.name()
    }

    /// The driver version, `CUDA 13.0`.
    pub fn driver(&self) -> &str {
        &self.driver
    }

    /// Remembers a dense time measured earlier (a record from an appended file) for the speedups.
    pub fn know_dense(&mut self, seq: usize, heads: usize, total_ms: f64) {
        self.dense_ms.insert((seq, heads), total_ms);
    }

    /// Makes the inputs of `case` current: generated (or taken from the file) and uploaded once
    /// per length and head count. `progress` hears what is happening.
    fn prepare_inputs(&mut self, case: &Case, progress: &dyn Fn(&str)) -> Result<(), BenchError> {
        let key = (case.seq, case.heads, case.kv_heads, case.head_dim, case.dtype);
        if self.inputs.as_ref().is_some_and(|(have, _)| *have == key) {
            return Ok(());
        }
        self.inputs = None;
        self.dense_lse = None;
        let started = Instant::now();
        let host = match &self.source {
            InputSource::Structured { seed, flat_tail } => {
                progress(&format!("generating inputs: {} tokens, {}/{} heads", case.seq, case.heads, case.kv_heads));
                let make = if *flat_tail { InputSpec::flat_tail } else { InputSpec::new };
                StructuredInputs::generate(&make(case.seq, case.heads, case.kv_heads, case.head_dim, *seed))?
            }
            InputSource::File(qkv, _) => {
                let shape = (qkv.seq, qkv.heads, qkv.kv_heads, qkv.head_dim);
                if shape != (case.seq, case.heads, case.kv_heads, case.head_dim) {
                    return Err(BenchError::Case(format!(
                        "--inputs holds {} tokens, {}/{} heads, head_dim {}; the case needs {} tokens, {}/{} heads, \
                         head_dim {}",
                        qkv.seq,
                        qkv.heads,
                        qkv.kv_heads,
                        qkv.head_dim,
                        case.seq,
                        case.heads,
                        case.kv_heads,
                        case.head_dim
                    )));
                }
                qkv.clone()
            }
        };
        progress(&format!("uploading inputs ({:.1} s to make)", started.elapsed().as_secs_f64()));
        let inputs = match case.dtype {
            DType::Bf16 => DeviceInputs::Bf16(Buffers::upload(&self.device, &host)?),
            DType::F16 => DeviceInputs::F16(Buffers::upload(&self.device, &host)?),
        };
        self.inputs = Some((key, inputs));
        Ok(())
    }

    /// Runs one case and returns its record. `progress` hears what is happening.
    pub fn run_case(
        &mut self,
        case: &Case,
        settings: &RunSettings,
        progress: &dyn Fn(&str),
    ) -> Result<Record, BenchError> {
        self.prepare_inputs(case, progress)?;
        let (config, mut options) = case_config(case)?;
        options.indexed_tile = settings.index_tile;
        options.tile_choice = settings.tile_choice;
        options.tile_choice_from_rows = settings.tile_choice_from_rows;
        let shape =
            ModelShape { layers: 1, heads: case.heads, kv_heads: case.kv_heads, head_dim: case.head_dim as u32 };
        let reps = if case.seq >= settings.long_from { settings.long_reps } else { settings.reps }.max(1);
        let device = &self.device;
        let mut prefill = Prefill::new(device, &config, shape, options)?;
        let Some((_, inputs)) = self.inputs.as_mut() else {
            return Err(BenchError::Case("the case's inputs were not prepared".into()));
        };
        progress(&format!("timing {} at {} tokens", case.pattern, case.seq));
        let measured = match inputs {
            DeviceInputs::Bf16(buffers) => measure(device, &mut prefill, buffers, case, settings.warmup, reps)?,
            DeviceInputs::F16(buffers) => measure(device, &mut prefill, buffers, case, settings.warmup, reps)?,
        };
        let mask = prefill.realised_mask()?;
        let chosen = prefill.last_tile_choice()?;
        let index_note = match (&settings.save_indices, case.pattern.is_sparse()) {
            (Some(dir), true) => {
                let path = save_index(dir, case, &mask).map_err(BenchError::Case)?;
                Some(format!("index: {}", path.display()))
            }
            _ => None,
        };
        let Measured { timing, compile_s, tiles: (computed, causal), device_bytes, reps } = measured;
        let recall = if case.pattern.is_sparse() {
            progress(&format!("recall of {} at {} tokens", case.pattern, case.seq));
            let (sparse, dense) = match inputs {
                DeviceInputs::Bf16(buffers) => {
                    let dense = match self.dense_lse.take() {
                        Some(dense) => dense,
                        None => buffers.log_sum_exp(device, None, case)?,
                    };
                    (buffers.log_sum_exp(device, Some(&mut prefill), case)?, dense)
                }
                DeviceInputs::F16(buffers) => {
                    let dense = match self.dense_lse.take() {
                        Some(dense) => dense,
                        None => buffers.log_sum_exp(device, None, case)?,
                    };
                    (buffers.log_sum_exp(device, Some(&mut prefill), case)?, dense)
                }
            };
            let recall = mean_recall(&sparse, &dense);
            self.dense_lse = Some(dense);
            Some(recall)
        } else {
            Some(1.0)
        };
        let (chunked_total_ms, chunked_split) = match settings.chunk {
            Some(chunk) => {
                progress(&format!("timing {} at {} tokens in chunks of {chunk}", case.pattern, case.seq));
                let warmup = settings.warmup.max(1);
                let stream = device.stream();
                let (ms, split) = match inputs {
                    DeviceInputs::Bf16(buffers) => (
                        median_ms(stream, warmup, reps, || {
                            buffers.prefill_chunked(&mut prefill, case, chunk, false).map(|_| ())
                        })?,
                        buffers.prefill_chunked(&mut prefill, case, chunk, true)?,
                    ),
                    DeviceInputs::F16(buffers) => (
                        median_ms(stream, warmup, reps, || {
                            buffers.prefill_chunked(&mut prefill, case, chunk, false).map(|_| ())
                        })?,
                        buffers.prefill_chunked(&mut prefill, case, chunk, true)?,
                    ),
                };
                (Some(ms), Some(split))
            }
            None => (None, None),
        };
        if case.pattern == PatternSpec::Dense {
            self.dense_ms.insert((case.seq, case.heads), timing.total_ms);
        }
        let tile_flops = 4.0 * (BLOCK_FLOP_TILE * BLOCK_FLOP_TILE) as f64 * case.head_dim as f64;
        let tflops =
            (timing.attention_ms > 0.0).then(|| computed as f64 * tile_flops / (timing.attention_ms * 1e-3) / 1e12);
        let mut notes = vec![format!(
            "peak_mem_bytes: q, k, v, out, indices and estimation scratch allocated for the case (not the tile list \
             a 128-row index-driven launch holds while it runs: {TILE_LIST_RECORD_BYTES} bytes a 128-row block of \
             every head); TFLOP/s on attn_ms, {BLOCK_FLOP_TILE}x{BLOCK_FLOP_TILE} tiles with causal diagonal tiles \
             counted whole"
        )];
        // The record's `inputs` (to pair records on the same tensors) and the note's words for them.
        let (inputs, inputs_note) = match &self.source {
            InputSource::Structured { seed, flat_tail: false } => {
                (format!("structured seed {seed}"), format!("structured inputs, seed {seed}"))
            }
            InputSource::Structured { seed, flat_tail: true } => (
                format!("structured flat-tail seed {seed}"),
                format!("structured inputs without the long-range decay (--flat-tail), seed {seed}"),
            ),
            InputSource::File(_, name) => (format!("file {name}"), format!("inputs from --inputs ({name})")),
        };
        notes.push(inputs_note);
        if case.is_subset() {
            notes.push(format!(
                "{} of the layer's {} query heads timed ({} KV heads); compare per_head_ms",
                case.heads, case.layer_heads, case.kv_heads
            ));
        }
        if let PatternSpec::Config { .. } = case.pattern {
            notes.push(format!("config heads {:?}", config_heads(case.heads, case.layer_heads)));
        }
        if let Some(tile) = settings.index_tile {
            notes.push(format!("index-driven kernels on tile {tile} (--index-tile)"));
        }
        if !chosen.is_empty() {
            let wide = chosen.iter().filter(|&&(_, wide)| wide).count();
            notes.push(format!(
                "tile choice: {wide} of {} index-driven heads on 128-row blocks, the others on 64-row blocks",
                chosen.len()
            ));
        } else if case.pattern.is_sparse() && settings.index_tile.is_none() && !settings.tile_choice {
            notes.push("index-driven kernels on the default tile (--no-tile-choice)".into());
        }
        if let Some(chunk) = settings.chunk {
            notes.push(format!(
                "chunked_total_ms: Prefill::prefill_chunked in chunks of {chunk} tokens ({} chunks), each estimating \
                 its own indices; chunked_est_ms, chunked_conv_ms, chunked_attn_ms: one more chunked run with each chunk timed alone, summed",
                case.seq.div_ceil(chunk)
            ));
            if case.pattern.is_sparse() && settings.index_tile.is_none() && settings.tile_choice {
                notes.push(format!(
                    "chunks of fewer than {} index rows run on the default tile, with no tile choice (--tile-choice-from-rows)",
                    settings.tile_choice_from_rows
                ));
            }
        }
        notes.extend(index_note);
        Ok(Record {
            method: MINF_METHOD.to_string(),
            pattern: case.pattern.kind().to_string(),
            params: case.pattern.params(),
            seq: case.seq,
            heads: case.heads,
            kv_heads: case.kv_heads,
            head_dim: case.head_dim,
            dtype: case.dtype.as_str().to_string(),
            est_ms: Some(timing.estimation_ms),
            conv_ms: Some(timing.conversion_ms),
            attn_ms: Some(timing.attention_ms),
            total_ms: timing.total_ms,
            per_head_ms: timing.total_ms / case.heads as f64,
            density: Some(computed as f64 / causal.max(1) as f64),
            recall,
            tflops,
            dense_speedup: self.dense_ms.get(&(case.seq, case.heads)).map(|dense| dense / timing.total_ms),
            compile_s: Some(compile_s),
            peak_mem_bytes: Some(device_bytes),
            card: self.device.name().to_string(),
            driver: self.driver.clone(),
            version: format!("minf {}", env!("CARGO_PKG_VERSION")),
            date: today(),
            reps: Some(reps),
            note: Some(notes.join("; ")),
            chunk_tokens: settings.chunk,
            chunked_total_ms,
            chunked_ratio: chunked_total_ms.map(|chunked| chunked / timing.total_ms),
            chunked_est_ms: chunked_split.map(|split| split.estimation_ms),
            chunked_conv_ms: chunked_split.map(|split| split.conversion_ms),
            chunked_attn_ms: chunked_split.map(|split| split.attention_ms),
            inputs: Some(inputs),
        })
    }
}

/// Rows and keys of the tiles FLOPs are counted on.
const BLOCK_FLOP_TILE: usize = 64;

/// The mean over rows of `exp(sparse - dense)` (log-sum-exps of the same rows over the visited keys
/// and over every key): each row's share of its dense softmax mass, capped at 1 (rounding), a
/// non-finite share counted as 0.
pub fn mean_recall(sparse: &[f32], dense: &[f32]) -> f64 {
    let total: f64 = sparse
        .iter()
        .zip(dense)
        .map(|(&s, &d)| {
            let share = (f64::from(s) - f64::from(d)).exp();
            if share.is_finite() {
                share.min(1.0)
            } else {
                0.0
            }
        })
        .sum();
    total / sparse.len().max(1) as f64
}

/// Compiles or loads the case's kernels on a small input (wall time, before any timing), warms
/// up, then times `reps` calls and takes the median of each part.
fn measure<T: AttentionElement>(
    device: &Device,
    prefill: &mut Prefill<'_>,
    buffers: &mut Buffers<T>,
    case: &Case,
    warmup: usize,
    reps: usize,
) -> Result<Measured, MinfError> {
    let stream = device.stream();
    let started = Instant::now();
    let mut probe = Buffers::<T>::zeros(device, COMPILE_PROBE_SEQ.min(case.seq), case)?;
    probe.prefill(prefill, case, COMPILE_PROBE_SEQ.min(case.seq), false)?;
    stream.synchronize().map_err(MinfError::driver("waiting for the compile probe"))?;
    let compile_s = started.elapsed().as_secs_f64();
    drop(probe);
    for _ in 0..warmup.max(1) {
        buffers.prefill(prefill, case, case.seq, false)?;
    }
    let timings = (0..reps).map(|_| buffers.prefill(prefill, case, case.seq, true)).collect::<Result<Vec<_>, _>>()?;
    let median = |part: fn(&PrefillTiming) -> f64| {
        let mut values: Vec<f64> = timings.iter().map(part).collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let timing = PrefillTiming {
        estimation_ms: median(|t| t.estimation_ms),
        conversion_ms: median(|t| t.conversion_ms),
        attention_ms: median(|t| t.attention_ms),
        total_ms: median(|t| t.total_ms),
    };
    let tiles = tile_counts(&prefill.realised_mask()?);
    Ok(Measured { timing, compile_s, tiles, device_bytes: buffers.bytes() + prefill.device_bytes() as u64, reps })
}

/// The config heads a config case measures: all of them, or `measured` spread evenly.
fn config_heads(measured: usize, config_heads: usize) -> Vec<usize> {
    (0..measured).map(|i| i * config_heads / measured.max(1)).collect()
}

/// The one-layer config and options that run `case`'s pattern on its heads.
fn case_config(case: &Case) -> Result<(PatternConfig, PrefillOptions), BenchError> {
    let mut options = PrefillOptions { dense_below: 0, dense_chunks_below: 0, ..PrefillOptions::default() };
    let uniform = |entry: serde_json::Value| {
        let layer: serde_json::Map<String, serde_json::Value> =
            (0..case.heads).map(|h| (h.to_string(), entry.clone())).collect();
        serde_json::Value::Array(vec![serde_json::Value::Object(layer)])
    };
    let (json, name) = match &case.pattern {
        PatternSpec::Dense | PatternSpec::VerticalSlash { .. } => {
            let (vertical, slash) = match case.pattern {
                PatternSpec::VerticalSlash { vertical, slash } => (vertical, slash),
                _ => (1, 1),
            };
            (
                uniform(serde_json::json!(["vertical_and_slash", vertical, slash, 1])),
                PathBuf::from(case.pattern.to_string()),
            )
        }
        PatternSpec::AShape { n_init, n_local } => {
            (uniform(serde_json::json!(["stream_llm", n_init, n_local, 1])), PathBuf::from(case.pattern.to_string()))
        }
        PatternSpec::BlockSparse { top_k } => {
            options.block_sparse_top_k = *top_k;
            let json = uniform(serde_json::json!(["block_sparse", MINFERENCE_BLOCK_TOP_K, MINFERENCE_BLOCK_TOP_K, 1]));
            (json, PathBuf::from(case.pattern.to_string()))
        }
        PatternSpec::Config { path, layer } => {
            let file = load_config(path, case.layer_heads).map_err(|e| BenchError::Case(e.to_string()))?;
            let heads = file.layers().get(*layer).ok_or_else(|| {
                BenchError::Case(format!(
                    "{}: layer {layer} is out of range; the config has layers 0 to {}",
                    path.display(),
                    file.layers().len().saturating_sub(1)
                ))
            })?;
            if case.heads > heads.len() {
                return Err(BenchError::Case(format!(
                    "{}: the case has {} query heads but the config's layers have {}",
                    path.display(),
                    case.heads,
                    heads.len()
                )));
            }
            let layer: serde_json::Map<String, serde_json::Value> = config_heads(case.heads, heads.len())
                .into_iter()
                .enumerate()
                .map(|(slot, h)| {
                    let entry = &heads[h];
                    let value = serde_json::json!([
                        entry.file_pattern.as_str(),
                        entry.vertical_size,
                        entry.slash_size,
                        entry.score
                    ]);
                    (slot.to_string(), value)
                })
                .collect();
            (serde_json::Value::Array(vec![serde_json::Value::Object(layer)]), path.clone())
        }
    };
    let config =
        PatternConfig::parse(&json.to_string(), name, case.heads).map_err(|e| BenchError::Case(e.to_string()))?;
    let config = if case.pattern == PatternSpec::Dense { config.with_starting_layer(1) } else { config };
    Ok((config, options))
}
