//! Per-head pattern configs in MInference's JSON format.
//!
//! MInference (0.1.6, `minference/configs/*.json`) ships one file per model: a JSON list with one
//! object per layer, mapping a query-head index (a string) to `[pattern, vertical_size, slash_size,
//! score]`. [`PatternConfig`] reads such a file exactly as MInference's prefill does
//! (`minference/modules/minference_forward.py`):
//!
//! - `"vertical_and_slash"` → [`HeadPattern::VerticalSlash`] with the two sizes;
//! - `"stream_llm"` → [`HeadPattern::AShape`] with `n_init = vertical_size`, `n_local = slash_size`;
//! - `"block_sparse"` → [`HeadPattern::BlockSparse`] with MInference's fixed `top_k` of
//!   [`MINFERENCE_BLOCK_TOP_K`] key blocks: its `block_sparse_kernel` ignores both sizes;
//! - a head missing from its layer → `vertical_and_slash` with [`FALLBACK_VERTICAL`] and
//!   [`FALLBACK_SLASH`] (score [`FALLBACK_SCORE`]);
//! - layers below [`PatternConfig::starting_layer`] run dense;
//! - a ratio ([`PatternConfig::with_ratio`], MInference's `minference_ratio`) multiplies both sizes
//!   of every head and truncates toward zero, as Python's `int(size * ratio)` does.
//!
//! The run-time clamps MInference applies to vertical-slash sizes (`min(N, max(v, 30))`,
//! `min(N, max(s, 50))`) depend on the prompt length and belong to the estimation, not here.
//!
//! Every error names the file, the layer and the head concerned, what was wrong and what is allowed.

use crate::error::MinfError;
use minf_codegen::spec::suggest;
use minf_codegen::{Arch, DType, KernelSpec, Pattern};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// Vertical size MInference uses for a head missing from its layer.
pub const FALLBACK_VERTICAL: usize = 1000;
/// Slash size MInference uses for a head missing from its layer.
pub const FALLBACK_SLASH: usize = 6096;
/// Score MInference's fallback tuple carries (`("vertical_and_slash", 1000, 6096, 1)`).
pub const FALLBACK_SCORE: f64 = 1.0;
/// Key blocks (of 64 keys) per query block that MInference's `block_sparse` heads keep: its
/// `block_sparse_kernel` hard-codes `topk = 100` and ignores the sizes written in the config.
pub const MINFERENCE_BLOCK_TOP_K: usize = 100;

/// The most head entries (layers × query heads) a config may describe; the largest models have a
/// few tens of thousands.
pub const MAX_HEAD_ENTRIES: usize = 1 << 20;

/// A pattern name as written in MInference's config files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FilePattern {
    /// `"vertical_and_slash"`.
    VerticalAndSlash,
    /// `"stream_llm"` (A-shape).
    StreamLlm,
    /// `"block_sparse"`.
    BlockSparse,
}

impl FilePattern {
    /// Every name, in the order MInference's prefill lists them.
    pub const ALL: &'static [FilePattern] =
        &[FilePattern::StreamLlm, FilePattern::VerticalAndSlash, FilePattern::BlockSparse];

    /// The name as written in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            FilePattern::VerticalAndSlash => "vertical_and_slash",
            FilePattern::StreamLlm => "stream_llm",
            FilePattern::BlockSparse => "block_sparse",
        }
    }

    /// The pattern with exactly this name (case-sensitive, as MInference's dictionary lookup is).
    pub fn from_name(name: &str) -> Option<FilePattern> {
        FilePattern::ALL.iter().copied().find(|p| p.as_str() == name)
    }
}

impl fmt::Display for FilePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one query head computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeadPattern {
    /// Dense causal attention (layers below the starting layer).
    Dense,
    /// Vertical-slash: the top `vertical` key columns and top `slash` diagonals, estimated per prompt.
    VerticalSlash {
        /// Key columns to keep.
        vertical: usize,
        /// Diagonals to keep.
        slash: usize,
    },
    /// A-shape (MInference `stream_llm`): `n_init` sink tokens plus a local window of `n_local` keys.
    AShape {
        /// Initial (sink) tokens every query attends to.
        n_init: usize,
        /// Local window width.
        n_local: usize,
    },
    /// Block-sparse: the top `top_k` key blocks of 64 per 64-row query block, estimated per prompt.
    BlockSparse {
        /// Key blocks kept per query block.
        top_k: usize,
    },
}

impl HeadPattern {
    /// The attention kernel pattern this head runs.
    pub fn kernel_pattern(&self) -> Pattern {
        match self {
            HeadPattern::Dense => Pattern::Dense,
            HeadPattern::VerticalSlash { .. } => Pattern::VerticalSlash,
            HeadPattern::AShape { .. } => Pattern::AShape,
            HeadPattern::BlockSparse { .. } => Pattern::BlockSparse,
        }
    }
}

/// One query head's entry: what it computes and what the file said.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadConfig {
    /// What the head computes, after the starting layer and the ratio are applied.
    pub pattern: HeadPattern,
    /// The pattern name in the file (or the fallback's).
    pub file_pattern: FilePattern,
    /// `vertical_size` as written in the file (or the fallback's), before the ratio.
    pub vertical_size: usize,
    /// `slash_size` as written in the file (or the fallback's), before the ratio.
    pub slash_size: usize,
    /// The search score in the file (informational; [`FALLBACK_SCORE`] for a missing head).
    pub score: f64,
    /// Whether the head was missing from its layer and got MInference's fallback.
    pub fallback: bool,
}

impl HeadConfig {
    /// MInference's entry for a head missing from its layer.
    fn fallback() -> HeadConfig {
        HeadConfig {
            pattern: HeadPattern::VerticalSlash { vertical: FALLBACK_VERTICAL, slash: FALLBACK_SLASH },
            file_pattern: FilePattern::VerticalAndSlash,
            vertical_size: FALLBACK_VERTICAL,
            slash_size: FALLBACK_SLASH,
            score: FALLBACK_SCORE,
            fallback: true,
        }
    }

    /// Recomputes [`HeadConfig::pattern`] from the file's entry.
    fn resolve(&mut self, dense: bool, ratio: Option<f64>) {
        // Python's `int(size * ratio)`: the product in f64, truncated toward zero.
        let scale = |size: usize| ratio.map_or(size, |r| (size as f64 * r) as usize);
        self.pattern = if dense {
            HeadPattern::Dense
        } else {
            match self.file_pattern {
                FilePattern::VerticalAndSlash => {
                    HeadPattern::VerticalSlash { vertical: scale(self.vertical_size), slash: scale(self.slash_size) }
                }
                FilePattern::StreamLlm => {
                    HeadPattern::AShape { n_init: scale(self.vertical_size), n_local: scale(self.slash_size) }
                }
                FilePattern::BlockSparse => HeadPattern::BlockSparse { top_k: MINFERENCE_BLOCK_TOP_K },
            }
        };
    }
}

/// The attention shape of a model: what a config needs to be checked and its kernels chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModelShape {
    /// Transformer layers (entries in the config list).
    pub layers: usize,
    /// Query heads per layer.
    pub heads: usize,
    /// Key/value heads per layer (GQA groups `heads / kv_heads` query heads).
    pub kv_heads: usize,
    /// Head dimension.
    pub head_dim: u32,
}

/// A model whose config files minf recognises by their file-name prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownModel {
    /// File-name prefix of its MInference configs.
    pub prefix: &'static str,
    /// The model's name.
    pub model: &'static str,
    /// Its attention shape, from the model's published config.
    pub shape: ModelShape,
}

const fn known(prefix: &'static str, model: &'static str, layers: usize, heads: usize, kv_heads: usize) -> KnownModel {
    KnownModel { prefix, model, shape: ModelShape { layers, heads, kv_heads, head_dim: 128 } }
}

/// The models of the configs MInference 0.1.6 ships (`../shared/minference-configs/README.md`).
pub const KNOWN_MODELS: &[KnownModel] = &[
    known("Llama_3_8B_Instruct_262k_", "Llama-3-8B-Instruct-262k", 32, 32, 8),
    known("Llama_3_70B_Instruct_262k_", "Llama-3-70B-Instruct-262k", 80, 64, 8),
    known("Llama_3.1_8B_Instruct_128k_", "Llama-3.1-8B-Instruct", 32, 32, 8),
    known("Llama_3.1_70B_Instruct_128k_", "Llama-3.1-70B-Instruct", 80, 64, 8),
    KnownModel {
        prefix: "Phi_3_mini_128k_",
        model: "Phi-3-mini-128k-instruct",
        shape: ModelShape { layers: 32, heads: 32, kv_heads: 32, head_dim: 96 },
    },
    known("Qwen2_7B_Instruct_128k_", "Qwen2-7B-Instruct", 28, 28, 4),
    known("Qwen2.5_7B_Instruct_128k_", "Qwen2.5-7B-Instruct", 28, 28, 4),
    known("Qwen2.5_7B_Instruct_1M", "Qwen2.5-7B-Instruct-1M", 28, 28, 4),
    known("Qwen2.5_14B_Instruct_1M", "Qwen2.5-14B-Instruct-1M", 48, 40, 8),
    known("Qwen2.5_32B_Instruct_128k_", "Qwen2.5-32B-Instruct", 64, 40, 8),
    known("Qwen2.5_72B_Instruct_128k_", "Qwen2.5-72B-Instruct", 80, 64, 8),
    known("Yi_9B_200k_", "Yi-9B-200K", 48, 32, 4),
    known("GLM_4_9B_1M_", "GLM-4-9B-Chat-1M", 40, 32, 2),
];

/// The known model whose prefix the file name of `path` starts with.
pub fn known_model(path: &Path) -> Option<&'static KnownModel> {
    let name = path.file_name()?.to_str()?;
    KNOWN_MODELS.iter().find(|m| name.starts_with(m.prefix))
}

/// Where in a config file an error is: the file, and the layer and head when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file (or the name given to [`PatternConfig::parse`]).
    pub file: PathBuf,
    /// The layer (0-based, MInference's `layer_idx`).
    pub layer: Option<usize>,
    /// The head key as written in the file.
    pub head: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(layer) = self.layer {
            write!(f, ": layer {layer}")?;
        }
        if let Some(head) = &self.head {
            write!(f, ", head {head}")?;
        }
        Ok(())
    }
}

const ENTRY: &str = "[pattern, vertical_size, slash_size, score]";
const PATTERN_NAMES: &str = "\"vertical_and_slash\", \"stream_llm\", \"block_sparse\"";

/// What is wrong with a per-head config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read the pattern config: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text is not JSON.
    #[error("{}:{line}:{column}: invalid JSON: {message}", file.display())]
    Json {
        /// The file.
        file: PathBuf,
        /// Line of the error (1-based).
        line: usize,
        /// Column of the error (1-based; 0 at the end of the input).
        column: usize,
        /// What the JSON parser expected.
        message: String,
    },
    /// The top level is not a list.
    #[error("{}: expected a JSON list with one object per layer (MInference's per-head config), found {found}", file.display())]
    NotAList {
        /// The file.
        file: PathBuf,
        /// What was found instead.
        found: String,
    },
    /// The list has no layers.
    #[error("{}: the config lists no layers (MInference's per-head config has one object per layer)", file.display())]
    NoLayers {
        /// The file.
        file: PathBuf,
    },
    /// A layer is not an object.
    #[error("{at}: expected an object mapping query-head indices (\"0\", \"1\", ...) to {ENTRY}, found {found}")]
    LayerNotObject {
        /// The layer.
        at: Location,
        /// What was found instead.
        found: String,
    },
    /// A head key is not a decimal head index.
    #[error("{at}: {key:?} is not a query-head index; allowed: a decimal integer from 0 to {max} without sign, spaces or leading zeros, e.g. \"0\" or \"17\"")]
    HeadKey {
        /// The layer and the key.
        at: Location,
        /// The key as written.
        key: String,
        /// The largest allowed head index.
        max: usize,
    },
    /// A head index is not below the number of query heads.
    #[error("{at}: head index {head} is out of range: the model has {heads} query heads (allowed 0 to {})", heads.saturating_sub(1))]
    HeadOutOfRange {
        /// The layer and the head.
        at: Location,
        /// The index.
        head: usize,
        /// Query heads per layer.
        heads: usize,
    },
    /// A head's entry is not a list of four elements.
    #[error("{at}: expected {ENTRY} (a list of 4 elements), found {found}")]
    Arity {
        /// The layer and the head.
        at: Location,
        /// What was found instead.
        found: String,
    },
    /// The pattern is not a string.
    #[error("{at}: the pattern (first element) must be a string, one of {PATTERN_NAMES}; found {found}")]
    PatternNotString {
        /// The layer and the head.
        at: Location,
        /// What was found instead.
        found: String,
    },
    /// The pattern name is not one MInference knows.
    #[error("{at}: unknown pattern {name:?}{}; allowed: {PATTERN_NAMES}", suggestion.as_ref().map(|s| format!(" (did you mean \"{s}\"?)")).unwrap_or_default())]
    UnknownPattern {
        /// The layer and the head.
        at: Location,
        /// The name as written.
        name: String,
        /// The closest known name, when one is close enough to be a likely typo.
        suggestion: Option<String>,
    },
    /// A size is not a non-negative integer.
    #[error("{at}: {field} must be a non-negative integer (e.g. 1000), found {found}")]
    Size {
        /// The layer and the head.
        at: Location,
        /// `vertical_size` or `slash_size`.
        field: &'static str,
        /// What was found instead.
        found: String,
    },
    /// The score is not a number.
    #[error("{at}: score (last element, informational) must be a number, found {found}")]
    Score {
        /// The layer and the head.
        at: Location,
        /// What was found instead.
        found: String,
    },
    /// The number of layers differs from the model's.
    #[error("{}: has {found} layers, but {model} has {expected}: the config must list one object per layer", file.display())]
    LayerCount {
        /// The file.
        file: PathBuf,
        /// Layers in the file.
        found: usize,
        /// Layers of the model.
        expected: usize,
        /// The model (its name, or "the given model shape").
        model: String,
    },
    /// The file name matches no known model, and no shape was given.
    #[error("{}: no known model shape for this file name (known prefixes: {known}); give the shape explicitly (`--heads` on the command line, `PatternConfig::load_with_shape` in Rust)", file.display())]
    UnknownModel {
        /// The file.
        file: PathBuf,
        /// The known file-name prefixes.
        known: String,
    },
    /// The model shape has no heads.
    #[error("{}: the number of query heads must be at least 1, got {heads}", file.display())]
    Heads {
        /// The file.
        file: PathBuf,
        /// The number given.
        heads: usize,
    },
    /// The layers and heads make a table larger than any model's.
    #[error("{}: {layers} layers of {heads} query heads is more than the {MAX_HEAD_ENTRIES} head entries minf reads from a config", file.display())]
    TooLarge {
        /// The file.
        file: PathBuf,
        /// Layers in the file.
        layers: usize,
        /// Query heads per layer.
        heads: usize,
    },
    /// The ratio is negative or not finite.
    #[error("{}: invalid ratio {ratio}: it must be a finite number >= 0 (it multiplies vertical and slash sizes)", file.display())]
    Ratio {
        /// The file.
        file: PathBuf,
        /// The ratio given.
        ratio: f64,
    },
}

impl From<ConfigError> for MinfError {
    fn from(error: ConfigError) -> MinfError {
        MinfError::Config(Box::new(error))
    }
}

/// A short description of a JSON value for error messages.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(a) => format!("a list of {} element(s)", a.len()),
        Value::Object(o) => format!("an object with {} key(s)", o.len()),
    }
}

/// A head key as MInference writes them: a canonical decimal integer.
fn head_index(key: &str) -> Option<usize> {
    let canonical = !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit()) && (key == "0" || !key.starts_with('0'));
    if canonical {
        key.parse().ok()
    } else {
        None
    }
}

/// Per-head sparse patterns of a model, read from a MInference config file.
#[derive(Debug, Clone, PartialEq)]
pub struct PatternConfig {
    layers: Vec<Vec<HeadConfig>>,
    source: PathBuf,
    heads: usize,
    shape: Option<ModelShape>,
    starting_layer: usize,
    ratio: Option<f64>,
}

impl PatternConfig {
    /// Reads a config for a model with `heads` query heads per layer; heads missing from a layer get
    /// MInference's fallback. The number of layers is taken from the file.
    pub fn load(path: impl AsRef<Path>, heads: usize) -> Result<PatternConfig, ConfigError> {
        let path = path.as_ref();
        PatternConfig::parse(&read(path)?, path, heads)
    }

    /// Reads a config and checks it against a model shape (its layer and head counts).
    pub fn load_with_shape(path: impl AsRef<Path>, shape: ModelShape) -> Result<PatternConfig, ConfigError> {
        let path = path.as_ref();
        let mut config = PatternConfig::parse(&read(path)?, path, shape.heads)?;
        if config.layers.len() != shape.layers {
            let model = known_model(path)
                .filter(|m| m.shape == shape)
                .map_or_else(|| "the given model shape".to_string(), |m| m.model.to_string());
            return Err(ConfigError::LayerCount {
                file: path.to_path_buf(),
                found: config.layers.len(),
                expected: shape.layers,
                model,
            });
        }
        config.shape = Some(shape);
        Ok(config)
    }

    /// Reads one of the configs MInference ships, taking the model shape from its file name
    /// ([`KNOWN_MODELS`]); other files need [`PatternConfig::load_with_shape`] or
    /// [`PatternConfig::load`].
    pub fn load_for_model(path: impl AsRef<Path>) -> Result<PatternConfig, ConfigError> {
        let path = path.as_ref();
        let Some(model) = known_model(path) else {
            // A file that cannot be read says so before its name's shape is asked for.
            check_readable(path)?;
            return Err(ConfigError::UnknownModel {
                file: path.to_path_buf(),
                known: KNOWN_MODELS.iter().map(|m| format!("{}*", m.prefix)).collect::<Vec<_>>().join(", "),
            });
        };
        PatternConfig::load_with_shape(path, model.shape)
    }

    /// Parses a config's JSON text; `name` stands for the file in error messages.
    pub fn parse(json: &str, name: impl AsRef<Path>, heads: usize) -> Result<PatternConfig, ConfigError> {
        let file = name.as_ref().to_path_buf();
        if heads == 0 {
            return Err(ConfigError::Heads { file, heads });
        }
        let value: Value = serde_json::from_str(json).map_err(|e| {
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            let message = e.to_string();
            ConfigError::Json {
                file: file.clone(),
                line: e.line(),
                column: e.column(),
                message: message.strip_suffix(&suffix).unwrap_or(&message).to_string(),
            }
        })?;
        let Value::Array(list) = value else {
            return Err(ConfigError::NotAList { file, found: describe(&value) });
        };
        if list.is_empty() {
            return Err(ConfigError::NoLayers { file });
        }
        if list.len().saturating_mul(heads) > MAX_HEAD_ENTRIES {
            return Err(ConfigError::TooLarge { file, layers: list.len(), heads });
        }
        let layers = list
            .iter()
            .enumerate()
            .map(|(layer, value)| parse_layer(&file, layer, value, heads))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PatternConfig { layers, source: file, heads, shape: None, starting_layer: 0, ratio: None })
    }

    /// Runs layers below `starting_layer` dense (MInference's `starting_layer`, default 0). A value
    /// at or past the number of layers makes every layer dense.
    pub fn with_starting_layer(mut self, starting_layer: usize) -> PatternConfig {
        self.starting_layer = starting_layer;
        self.resolve();
        self
    }

    /// Multiplies the vertical and slash sizes of every head by `ratio`, truncating toward zero
    /// (MInference's `minference_ratio`: `int(size * ratio)`; it also scales `stream_llm` heads'
    /// `n_init` and `n_local`, and has no effect on `block_sparse` heads, whose sizes are unused).
    pub fn with_ratio(mut self, ratio: f64) -> Result<PatternConfig, ConfigError> {
        if !ratio.is_finite() || ratio < 0.0 {
            return Err(ConfigError::Ratio { file: self.source, ratio });
        }
        self.ratio = Some(ratio);
        self.resolve();
        Ok(self)
    }

    fn resolve(&mut self) {
        for (layer, heads) in self.layers.iter_mut().enumerate() {
            for head in heads {
                head.resolve(layer < self.starting_layer, self.ratio);
            }
        }
    }

    /// Every layer's heads, `layers()[layer][head]`, each layer with [`PatternConfig::heads`] entries.
    pub fn layers(&self) -> &[Vec<HeadConfig>] {
        &self.layers
    }

    /// One head's entry.
    pub fn head(&self, layer: usize, head: usize) -> Option<&HeadConfig> {
        self.layers.get(layer)?.get(head)
    }

    /// The file the config was read from (or the name given to [`PatternConfig::parse`]).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Query heads per layer.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// The model shape the config was checked against, if one was known or given.
    pub fn shape(&self) -> Option<ModelShape> {
        self.shape
    }

    /// The first layer that runs sparse; layers below it run dense.
    pub fn starting_layer(&self) -> usize {
        self.starting_layer
    }

    /// The ratio applied to vertical and slash sizes, if any.
    pub fn ratio(&self) -> Option<f64> {
        self.ratio
    }

    /// How many heads use each attention kernel pattern, over all layers.
    pub fn pattern_counts(&self) -> BTreeMap<Pattern, usize> {
        let mut counts = BTreeMap::new();
        for head in self.layers.iter().flatten() {
            *counts.entry(head.pattern.kernel_pattern()).or_insert(0) += 1;
        }
        counts
    }

    /// The distinct attention kernels running this config needs, with their default tiles, in
    /// [`Pattern`] order, each followed by the kernels a launch of it may run instead
    /// ([`KernelSpec::with_companions`]: the tile choice's 64-row alternative, the `wgmma` twin of
    /// a tensor-map default). Dense is always
    /// among them: it runs the layers below the starting layer and is the fallback for prompts too
    /// short for sparse attention to pay (and for decoding).
    pub fn kernel_specs(&self, head_dim: u32, dtype: DType, arch: Arch) -> Vec<KernelSpec> {
        let patterns: BTreeSet<Pattern> = std::iter::once(Pattern::Dense)
            .chain(self.layers.iter().flatten().map(|h| h.pattern.kernel_pattern()))
            .collect();
        patterns
            .into_iter()
            .map(|p| KernelSpec::default_for(p, dtype, head_dim, arch))
            .flat_map(KernelSpec::with_companions)
            .collect()
    }
}

/// Whether a config file can be read ([`ConfigError::Read`] if not): what a caller checks before
/// asking for the model shape of a file whose name names no known model.
pub fn check_readable(path: impl AsRef<Path>) -> Result<(), ConfigError> {
    read(path.as_ref()).map(|_| ())
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { file: path.to_path_buf(), source })
}

fn parse_layer(file: &Path, layer: usize, value: &Value, heads: usize) -> Result<Vec<HeadConfig>, ConfigError> {
    let at =
        |head: Option<&str>| Location { file: file.to_path_buf(), layer: Some(layer), head: head.map(String::from) };
    let Value::Object(map) = value else {
        return Err(ConfigError::LayerNotObject { at: at(None), found: describe(value) });
    };
    let mut out = vec![HeadConfig::fallback(); heads];
    for (key, entry) in map {
        let head =
            head_index(key).ok_or_else(|| ConfigError::HeadKey { at: at(None), key: key.clone(), max: heads - 1 })?;
        let slot = out.get_mut(head).ok_or_else(|| ConfigError::HeadOutOfRange { at: at(Some(key)), head, heads })?;
        *slot = parse_entry(at(Some(key)), entry)?;
    }
    Ok(out)
}

fn parse_entry(at: Location, entry: &Value) -> Result<HeadConfig, ConfigError> {
    let [pattern, vertical, slash, score] = entry.as_array().map(Vec::as_slice).unwrap_or_default() else {
        return Err(ConfigError::Arity { at, found: describe(entry) });
    };
    let Value::String(name) = pattern else {
        return Err(ConfigError::PatternNotString { at, found: describe(pattern) });
    };
    let Some(file_pattern) = FilePattern::from_name(name) else {
        let suggestion = suggest(name, FilePattern::ALL.iter().map(|p| p.as_str()));
        return Err(ConfigError::UnknownPattern { at, name: name.clone(), suggestion });
    };
    let size = |field: &'static str, value: &Value| {
        value.as_u64().and_then(|v| usize::try_from(v).ok()).ok_or_else(|| ConfigError::Size {
            at: at.clone(),
            field,
            found: describe(value),
        })
    };
    let vertical_size = size("vertical_size", vertical)?;
    let slash_size = size("slash_size", slash)?;
    let Some(score) = score.as_f64() else {
        return Err(ConfigError::Score { at, found: describe(score) });
    };
    let mut head =
        HeadConfig { pattern: HeadPattern::Dense, file_pattern, vertical_size, slash_size, score, fallback: false };
    head.resolve(false, None);
    Ok(head)
}
