//! What `minf bench` measures: attention patterns with their parameters, and the cases (one
//! pattern at one context length and head count) built from the command line.

use minf_runtime::codegen::DType;
use minf_runtime::config::{known_model, PatternConfig};
use std::fmt;
use std::path::{Path, PathBuf};

/// Query heads of a run when neither `--heads` nor a config gives them.
pub const DEFAULT_HEADS: usize = 32;
/// Key/value heads of a run when neither `--kv-heads` nor a config's model gives them.
pub const DEFAULT_KV_HEADS: usize = 8;
/// Head dimension of a run when neither `--head-dim` nor a config's model gives it.
pub const DEFAULT_HEAD_DIM: usize = 128;

/// From this length on, cases run on [`CaseOptions::long_heads`] heads (and report per-head times).
pub const DEFAULT_LONG_FROM: usize = 524_288;
/// Heads measured from [`DEFAULT_LONG_FROM`] tokens on.
pub const DEFAULT_LONG_HEADS: usize = 4;
/// The MInference config measured by default, when it exists in one of [`DEFAULT_CONFIG_DIRS`].
pub const DEFAULT_CONFIG: &str = "Llama_3_8B_Instruct_262k_kv_out_v32_fit_o_best_pattern.json";
/// Where the default config is looked for, relative to the project root: the copy shipped in
/// `configs/`, then beside the project.
pub const DEFAULT_CONFIG_DIRS: &[&str] = &["configs", "../shared/minference-configs"];
/// The layer of a config measured when `config:PATH` names none (the middle of Llama-3-8B).
pub const DEFAULT_CONFIG_LAYER: usize = 16;
/// The fixed patterns measured by default, in order (the default config is added when it exists).
pub const DEFAULT_PATTERNS: &str =
    "dense,a_shape:1024,4096,a_shape:128,3968,vertical_slash:1000,6096,vertical_slash:100,800,vertical_slash:3500,100,block_sparse:100";

/// The forms a pattern takes on the command line, for error messages.
pub const PATTERN_FORMS: &str = "dense, a_shape:N_INIT,N_LOCAL, vertical_slash:VERTICAL,SLASH, block_sparse:TOP_K, \
                                 config:PATH[:LAYER]";

/// One attention pattern with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatternSpec {
    /// Dense causal attention.
    Dense,
    /// Sink tokens plus a local window (MInference's `stream_llm`).
    AShape {
        /// Initial (sink) tokens.
        n_init: usize,
        /// Local window width (including the diagonal).
        n_local: usize,
    },
    /// Vertical-slash with these sizes for every head, estimated on the GPU per prompt.
    VerticalSlash {
        /// Key columns kept.
        vertical: usize,
        /// Diagonals kept.
        slash: usize,
    },
    /// Block-sparse: the top `top_k` 64-key blocks per 64-row query block.
    BlockSparse {
        /// Key blocks kept per query block.
        top_k: usize,
    },
    /// One layer of a MInference per-head config.
    Config {
        /// The config file.
        path: PathBuf,
        /// The layer.
        layer: usize,
    },
}

/// A pattern that could not be read from the command line: what was given and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseError(pub String);

impl fmt::Display for CaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CaseError {}

impl PatternSpec {
    /// The pattern's name as in records: `dense`, `a_shape`, `vertical_slash`, `block_sparse`, `config`.
    pub fn kind(&self) -> &'static str {
        match self {
            PatternSpec::Dense => "dense",
            PatternSpec::AShape { .. } => "a_shape",
            PatternSpec::VerticalSlash { .. } => "vertical_slash",
            PatternSpec::BlockSparse { .. } => "block_sparse",
            PatternSpec::Config { .. } => "config",
        }
    }

    /// The parameters as written after the colon (empty for dense); a config's are its file name
    /// (without the folder) and layer.
    pub fn params(&self) -> String {
        match self {
            PatternSpec::Dense => String::new(),
            PatternSpec::AShape { n_init, n_local } => format!("{n_init},{n_local}"),
            PatternSpec::VerticalSlash { vertical, slash } => format!("{vertical},{slash}"),
            PatternSpec::BlockSparse { top_k } => top_k.to_string(),
            PatternSpec::Config { path, layer } => {
                let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into());
                format!("{name}:{layer}")
            }
        }
    }

    /// Whether the pattern computes fewer tiles than dense (its tiles are saved for the peers).
    pub fn is_sparse(&self) -> bool {
        !matches!(self, PatternSpec::Dense)
    }

    /// Parses one pattern: `dense`, `a_shape:N_INIT,N_LOCAL`, `vertical_slash:VERTICAL,SLASH`,
    /// `block_sparse:TOP_K` or `config:PATH[:LAYER]`.
    pub fn parse(text: &str) -> Result<PatternSpec, CaseError> {
        let text = text.trim();
        let (name, params) = text.split_once(':').map_or((text, None), |(n, p)| (n, Some(p)));
        let numbers = |want: usize, what: &str| -> Result<Vec<usize>, CaseError> {
            let params = params
                .ok_or_else(|| CaseError(format!("pattern {text:?}: {name} needs its parameters, {name}:{what}")))?;
            let values: Vec<usize> =
                params.split(',').map(|p| p.trim().parse::<usize>()).collect::<Result<_, _>>().map_err(|_| {
                    CaseError(format!(
                        "pattern {text:?}: {params:?} is not {want} non-negative integer(s); expected {name}:{what}"
                    ))
                })?;
            if values.len() != want {
                return Err(CaseError(format!(
                    "pattern {text:?}: {} value(s) given, {name} takes {want}: {name}:{what}",
                    values.len()
                )));
            }
            Ok(values)
        };
        let positive = |value: usize, what: &str| {
            if value == 0 {
                Err(CaseError(format!("pattern {text:?}: {what} must be at least 1")))
            } else {
                Ok(value)
            }
        };
        match name {
            "dense" if params.is_none() => Ok(PatternSpec::Dense),
            "dense" => Err(CaseError(format!("pattern {text:?}: dense takes no parameters"))),
            "a_shape" => {
                let v = numbers(2, "N_INIT,N_LOCAL")?;
                Ok(PatternSpec::AShape {
                    n_init: v[0],
                    n_local: positive(v[1], "N_LOCAL (the window includes the diagonal)")?,
                })
            }
            "vertical_slash" => {
                let v = numbers(2, "VERTICAL,SLASH")?;
                Ok(PatternSpec::VerticalSlash { vertical: v[0], slash: v[1] })
            }
            "block_sparse" => {
                let v = numbers(1, "TOP_K")?;
                Ok(PatternSpec::BlockSparse { top_k: positive(v[0], "TOP_K")? })
            }
            "config" => {
                let params = params
                    .filter(|p| !p.is_empty())
                    .ok_or_else(|| CaseError(format!("pattern {text:?}: config needs a file, config:PATH[:LAYER]")))?;
                let (path, layer) = match params.rsplit_once(':') {
                    Some((path, layer)) if !layer.is_empty() && layer.bytes().all(|b| b.is_ascii_digit()) => {
                        let layer = layer
                            .parse()
                            .map_err(|_| CaseError(format!("pattern {text:?}: layer {layer:?} is too large")))?;
                        (path, layer)
                    }
                    _ => (params, DEFAULT_CONFIG_LAYER),
                };
                Ok(PatternSpec::Config { path: PathBuf::from(path), layer })
            }
            _ => Err(CaseError(format!("unknown pattern {text:?}: allowed {PATTERN_FORMS}"))),
        }
    }

    /// Parses a comma-separated list of patterns. A part that is only digits continues the
    /// previous pattern's parameters, so `dense,a_shape:1024,4096,block_sparse:100` is three
    /// patterns; a pattern named twice is kept once.
    pub fn parse_list(text: &str) -> Result<Vec<PatternSpec>, CaseError> {
        let mut parts: Vec<String> = Vec::new();
        for part in text.split(',') {
            let part = part.trim();
            let continues = !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
            match parts.last_mut() {
                Some(last) if continues => {
                    last.push(',');
                    last.push_str(part);
                }
                _ if part.is_empty() => {
                    return Err(CaseError(format!("pattern list {text:?} has an empty entry: allowed {PATTERN_FORMS}")))
                }
                _ => parts.push(part.to_string()),
            }
        }
        // A pattern named twice is measured once, where it first stands.
        let mut patterns: Vec<PatternSpec> = Vec::with_capacity(parts.len());
        for part in &parts {
            let pattern = PatternSpec::parse(part)?;
            if !patterns.contains(&pattern) {
                patterns.push(pattern);
            }
        }
        Ok(patterns)
    }
}

impl fmt::Display for PatternSpec {
    /// The label of records and plots: `dense`, `vertical_slash:1000,6096`, `config:FILE:LAYER`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatternSpec::Dense => f.write_str("dense"),
            other => write!(f, "{}:{}", other.kind(), other.params()),
        }
    }
}

/// The default config under `root`, if one of [`DEFAULT_CONFIG_DIRS`] has it.
pub fn default_config(root: &Path) -> Option<PathBuf> {
    DEFAULT_CONFIG_DIRS.iter().map(|dir| root.join(dir).join(DEFAULT_CONFIG)).find(|path| path.exists())
}

/// The default pattern list: the fixed patterns, plus the default config under `root` when it
/// exists.
pub fn default_patterns(root: &Path) -> Vec<PatternSpec> {
    let mut patterns = PatternSpec::parse_list(DEFAULT_PATTERNS).unwrap_or_default();
    if let Some(path) = default_config(root) {
        patterns.push(PatternSpec::Config { path, layer: DEFAULT_CONFIG_LAYER });
    }
    patterns
}

/// Parses a comma-separated list of context lengths (`32768`, or with a suffix: `32K`, `1M`).
pub fn parse_seqs(text: &str) -> Result<Vec<usize>, CaseError> {
    text.split(',')
        .map(|part| {
            let part = part.trim();
            let (digits, scale) = match part.strip_suffix(['K', 'k']) {
                Some(d) => (d, 1024),
                None => part.strip_suffix(['M', 'm']).map_or((part, 1), |d| (d, 1024 * 1024)),
            };
            match digits.parse::<usize>().ok().and_then(|n| n.checked_mul(scale)) {
                Some(seq) if seq > 0 => Ok(seq),
                _ => Err(CaseError(format!(
                    "context length {part:?}: expected a positive number of tokens, e.g. 131072, 128K or 1M"
                ))),
            }
        })
        .collect()
}

/// Parses `--chunk`: one positive number of tokens, with `K` (1024) or `M` (1024 * 1024) accepted
/// (`64K`, `8K`, `65536`).
pub fn parse_chunk_tokens(text: &str) -> Result<usize, String> {
    if text.contains(',') {
        return Err(format!("chunk size {text:?}: one size, e.g. 64K (the chunked path runs next to every case)"));
    }
    match parse_seqs(text) {
        Ok(sizes) if sizes.len() == 1 => Ok(sizes[0]),
        _ => Err(format!("chunk size {text:?}: expected a positive number of tokens, e.g. 65536, 64K or 8K")),
    }
}

/// The attention shape asked for on the command line (or by `--inputs`); `None` is taken from the
/// configs measured, else from [`DEFAULT_HEADS`], [`DEFAULT_KV_HEADS`] and [`DEFAULT_HEAD_DIM`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShapeArgs {
    /// `--heads`.
    pub heads: Option<usize>,
    /// `--kv-heads`.
    pub kv_heads: Option<usize>,
    /// `--head-dim`.
    pub head_dim: Option<usize>,
}

/// The query heads an unknown model's config lists: its largest head index plus one, `None` when
/// the file lists none or is not a list of objects (loading it then says what is wrong).
fn listed_heads(path: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(path).ok()?;
    let layers: Vec<serde_json::Map<String, serde_json::Value>> = serde_json::from_str(&text).ok()?;
    layers.iter().flat_map(|layer| layer.keys()).filter_map(|key| key.parse::<usize>().ok()).max().map(|h| h + 1)
}

/// Loads the config of a `config:` pattern: a model minf knows by the file name with that model's
/// shape, any other file with the query heads it lists (`heads` when it lists none).
pub fn load_config(path: &Path, heads: usize) -> Result<PatternConfig, CaseError> {
    let loaded = match known_model(path) {
        Some(_) => PatternConfig::load_for_model(path),
        None => PatternConfig::load(path, listed_heads(path).unwrap_or(heads)),
    };
    loaded.map_err(|e| CaseError(e.to_string()))
}

/// The shape of a run's cases: the command line's, else the configs' (which must agree with it and
/// with each other: a config's layer has as many heads as its model), else the defaults. Reads every
/// config measured and checks its layer, so a bad `config:` pattern fails before any GPU work.
pub fn resolve_shape(patterns: &[PatternSpec], asked: ShapeArgs) -> Result<(usize, usize, usize), CaseError> {
    let mut from_config: Option<(PathBuf, usize, Option<usize>, Option<usize>)> = None;
    for pattern in patterns {
        let PatternSpec::Config { path, layer } = pattern else { continue };
        let config = load_config(path, asked.heads.unwrap_or(DEFAULT_HEADS))?;
        let layers = config.layers().len();
        if *layer >= layers {
            return Err(CaseError(format!(
                "pattern config:{}:{layer}: layer {layer} is out of range; the config has layers 0 to {}",
                path.display(),
                layers.saturating_sub(1)
            )));
        }
        let shape = config.shape();
        let (heads, kv_heads, head_dim) =
            (config.heads(), shape.map(|s| s.kv_heads), shape.map(|s| s.head_dim as usize));
        let mismatch =
            |flag: &str, asked: Option<usize>, has: Option<usize>, what: &dyn Fn(usize) -> String| match (asked, has) {
                (Some(asked), Some(has)) if asked != has => Err(CaseError(format!(
                    "{flag} {asked}: the config {} is of a model with {}; leave {flag} out to take the config's",
                    path.display(),
                    what(has)
                ))),
                _ => Ok(()),
            };
        mismatch("--heads", asked.heads, Some(heads), &|n| format!("{n} query heads per layer"))?;
        mismatch("--kv-heads", asked.kv_heads, kv_heads, &|n| format!("{n} key/value heads per layer"))?;
        mismatch("--head-dim", asked.head_dim, head_dim, &|n| format!("head dimension {n}"))?;
        match &from_config {
            Some((first, first_heads, first_kv, first_dim))
                if (*first_heads, *first_kv, *first_dim) != (heads, kv_heads, head_dim) =>
            {
                let describe = |heads: usize, kv_heads: Option<usize>, head_dim: Option<usize>| {
                    let unknown = |n: Option<usize>| n.map_or_else(|| "?".to_string(), |n| n.to_string());
                    format!("{heads}/{} query/KV heads, head_dim {}", unknown(kv_heads), unknown(head_dim))
                };
                return Err(CaseError(format!(
                    "the configs {} and {} are of different model shapes ({} against {}): measure them in separate \
                     runs",
                    first.display(),
                    path.display(),
                    describe(*first_heads, *first_kv, *first_dim),
                    describe(heads, kv_heads, head_dim)
                )));
            }
            Some(_) => {}
            None => from_config = Some((path.clone(), heads, kv_heads, head_dim)),
        }
    }
    if let (None, None, Some((path, heads, None, _))) = (asked.heads, asked.kv_heads, &from_config) {
        if heads % DEFAULT_KV_HEADS != 0 {
            return Err(CaseError(format!(
                "the config {} lists {heads} query heads and its model's key/value heads are unknown: pass \
                 --kv-heads (a divisor of {heads})",
                path.display()
            )));
        }
    }
    let (config_heads, config_kv, config_dim) =
        from_config.map_or((None, None, None), |(_, heads, kv, dim)| (Some(heads), kv, dim));
    Ok((
        asked.heads.or(config_heads).unwrap_or(DEFAULT_HEADS),
        asked.kv_heads.or(config_kv).unwrap_or(DEFAULT_KV_HEADS),
        asked.head_dim.or(config_dim).unwrap_or(DEFAULT_HEAD_DIM),
    ))
}

/// The query heads long cases run on when `--long-heads` is not given: [`DEFAULT_LONG_HEADS`]
/// when it fits the query heads per KV head (a multiple or a divisor), else one KV head's group.
pub fn default_long_heads(heads: usize, kv_heads: usize) -> usize {
    let group = (heads / kv_heads.max(1)).max(1);
    if DEFAULT_LONG_HEADS.is_multiple_of(group) || group.is_multiple_of(DEFAULT_LONG_HEADS) {
        DEFAULT_LONG_HEADS
    } else {
        group
    }
}

/// The shape and patterns of a run, before it is expanded into cases.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseOptions {
    /// Context lengths, in tokens.
    pub seqs: Vec<usize>,
    /// Query heads (below [`CaseOptions::long_from`]).
    pub heads: usize,
    /// Key/value heads (below [`CaseOptions::long_from`]); divides `heads`.
    pub kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// Element type.
    pub dtype: DType,
    /// Patterns, each measured at every length.
    pub patterns: Vec<PatternSpec>,
    /// From this length on, cases run on `long_heads` query heads.
    pub long_from: usize,
    /// Query heads of long cases (their key/value heads keep the query-per-KV group size).
    pub long_heads: usize,
}

/// One measurement: a pattern at one context length on some heads.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// Tokens.
    pub seq: usize,
    /// Query heads measured.
    pub heads: usize,
    /// Key/value heads measured.
    pub kv_heads: usize,
    /// Query heads of the full layer (`heads` is fewer for long cases).
    pub layer_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// Element type.
    pub dtype: DType,
    /// The pattern.
    pub pattern: PatternSpec,
}

impl Case {
    /// Whether fewer heads than the layer's are measured (times are then reported per head).
    pub fn is_subset(&self) -> bool {
        self.heads < self.layer_heads
    }
}

impl CaseOptions {
    /// Every case, grouped by length (ascending) with dense first in each group, so a sparse case
    /// finds the dense time of its length for the speedup. Checks the head counts.
    pub fn cases(&self) -> Result<Vec<Case>, CaseError> {
        if self.heads == 0 || self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return Err(CaseError(format!(
                "--heads {} and --kv-heads {}: both must be positive and kv-heads must divide heads",
                self.heads, self.kv_heads
            )));
        }
        if self.patterns.is_empty() {
            return Err(CaseError(format!("no pattern to measure: allowed {PATTERN_FORMS}")));
        }
        if !minf_runtime::codegen::spec::HEAD_DIMS.contains(&(self.head_dim as u32)) {
            return Err(CaseError(format!(
                "--head-dim {}: allowed {:?}",
                self.head_dim,
                minf_runtime::codegen::spec::HEAD_DIMS
            )));
        }
        let group = self.heads / self.kv_heads;
        let long_heads = self.long_heads.min(self.heads);
        if long_heads == 0 || !long_heads.is_multiple_of(group) && !group.is_multiple_of(long_heads) {
            return Err(CaseError(format!(
                "--long-heads {}: must be positive and a multiple or a divisor of the query heads per KV head ({group})",
                self.long_heads
            )));
        }
        let mut seqs = self.seqs.clone();
        seqs.sort_unstable();
        seqs.dedup();
        let mut patterns = self.patterns.clone();
        patterns.sort_by_key(|p| !matches!(p, PatternSpec::Dense));
        let mut cases = Vec::with_capacity(seqs.len() * patterns.len());
        for seq in seqs {
            let (heads, kv_heads) = if seq >= self.long_from {
                (long_heads, (long_heads / group).max(1))
            } else {
                (self.heads, self.kv_heads)
            };
            for pattern in &patterns {
                cases.push(Case {
                    seq,
                    heads,
                    kv_heads,
                    layer_heads: self.heads,
                    head_dim: self.head_dim,
                    dtype: self.dtype,
                    pattern: pattern.clone(),
                });
            }
        }
        Ok(cases)
    }
}
