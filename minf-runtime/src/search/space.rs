//! The search space: the candidates every head is evaluated under, the cost budget they are
//! compared at, and the JSON file that describes them.
//!
//! A space file is a JSON object:
//!
//! ```json
//! {
//!   "extends": "default",
//!   "budget_keys": 5120,
//!   "tolerance": 0.25,
//!   "candidates": [
//!     {"pattern": "stream_llm", "n_init": 64, "n_local": 2048},
//!     {"pattern": "vertical_and_slash", "vertical": 200, "slash": 1200},
//!     {"pattern": "block_sparse"}
//!   ]
//! }
//! ```
//!
//! - `extends` (optional): `"default"` adds the file's candidates to [`SearchSpace::default`]'s,
//!   `"none"` (the default) uses only the file's;
//! - `budget_keys` (optional, default [`DEFAULT_BUDGET_KEYS`]): the cost budget, in keys per query
//!   row (see [`crate::search::choice`]);
//! - `tolerance` (optional, default [`DEFAULT_TOLERANCE`]): how far past the budget a candidate
//!   may cost and still compete;
//! - `candidates`: `stream_llm` with `n_init` and `n_local` (at least 1), `vertical_and_slash`
//!   with `vertical` and `slash`, `block_sparse` with no sizes (MInference's configs fix its 100
//!   key blocks). A candidate listed twice is an error.
//!
//! Unknown keys are errors, so a misspelt size is not silently dropped.

use crate::config::{FilePattern, MINFERENCE_BLOCK_TOP_K};
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// Default cost budget in keys per query row: MInference's equal-FLOPs point (its paper's A-shape
/// of 1K sink and 4K local tokens).
pub const DEFAULT_BUDGET_KEYS: usize = 5120;

/// Default tolerance: a candidate may cost up to 25% more than the budget and still compete.
pub const DEFAULT_TOLERANCE: f64 = 0.25;

/// One candidate pattern with its sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Candidate {
    /// MInference's `stream_llm` (A-shape): `n_init` sink tokens and a local window of `n_local`.
    StreamLlm {
        /// Sink tokens.
        n_init: usize,
        /// Local window, counting the diagonal (at least 1).
        n_local: usize,
    },
    /// MInference's `vertical_and_slash`, estimated per prompt as `Prefill` does.
    VerticalSlash {
        /// Key columns kept.
        vertical: usize,
        /// Diagonals kept.
        slash: usize,
    },
    /// MInference's `block_sparse`: the top [`MINFERENCE_BLOCK_TOP_K`] key blocks of each query block.
    BlockSparse,
}

impl Candidate {
    /// The pattern name in MInference's configs.
    pub fn file_pattern(&self) -> FilePattern {
        match self {
            Candidate::StreamLlm { .. } => FilePattern::StreamLlm,
            Candidate::VerticalSlash { .. } => FilePattern::VerticalAndSlash,
            Candidate::BlockSparse => FilePattern::BlockSparse,
        }
    }

    /// The two sizes a config entry carries: `(n_init, n_local)`, `(vertical, slash)`, or
    /// `(100, 0)` for block-sparse (whose sizes MInference's kernels ignore).
    pub fn sizes(&self) -> (usize, usize) {
        match *self {
            Candidate::StreamLlm { n_init, n_local } => (n_init, n_local),
            Candidate::VerticalSlash { vertical, slash } => (vertical, slash),
            Candidate::BlockSparse => (MINFERENCE_BLOCK_TOP_K, 0),
        }
    }
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Candidate::StreamLlm { n_init, n_local } => write!(f, "stream_llm ({n_init}, {n_local})"),
            Candidate::VerticalSlash { vertical, slash } => write!(f, "vertical_and_slash ({vertical}, {slash})"),
            Candidate::BlockSparse => write!(f, "block_sparse (top {MINFERENCE_BLOCK_TOP_K})"),
        }
    }
}

/// The candidates and the budget they are compared at.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchSpace {
    /// The candidates, in the order ties are broken.
    pub candidates: Vec<Candidate>,
    /// Cost budget, in keys per query row.
    pub budget_keys: usize,
    /// A candidate competes when its cost is at most `budget * (1 + tolerance)`.
    pub tolerance: f64,
}

impl Default for SearchSpace {
    /// MInference's code set (`search_pattern_v2`: stream_llm (100, 800); vertical-slash (30, 800),
    /// (100, 800), (100, 750), (500, 700), (3500, 100), (1000, 4096); block-sparse top-100) and its
    /// paper's equal-FLOPs set (A-shape 1K sink + 4K local; vertical-slash (30, 2048), (100, 1800),
    /// (500, 1500), (3000, 200)).
    fn default() -> Self {
        let vs = |vertical, slash| Candidate::VerticalSlash { vertical, slash };
        SearchSpace {
            candidates: vec![
                Candidate::StreamLlm { n_init: 100, n_local: 800 },
                vs(30, 800),
                vs(100, 800),
                vs(100, 750),
                vs(500, 700),
                vs(3500, 100),
                vs(1000, 4096),
                Candidate::BlockSparse,
                Candidate::StreamLlm { n_init: 1024, n_local: 4096 },
                vs(30, 2048),
                vs(100, 1800),
                vs(500, 1500),
                vs(3000, 200),
            ],
            budget_keys: DEFAULT_BUDGET_KEYS,
            tolerance: DEFAULT_TOLERANCE,
        }
    }
}

/// What is wrong with a search-space file.
#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    /// The file could not be read.
    #[error("{}: cannot read the search space: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The JSON does not describe a space.
    #[error("{}:{line}:{column}: {message}", file.display())]
    Json {
        /// The file.
        file: PathBuf,
        /// Line (1-based).
        line: usize,
        /// Column (1-based).
        column: usize,
        /// What the parser expected.
        message: String,
    },
    /// A value is out of range.
    #[error("{}: {message}", file.display())]
    Invalid {
        /// The file.
        file: PathBuf,
        /// What is wrong and what is allowed.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpaceFile {
    #[serde(default)]
    extends: Extends,
    budget_keys: Option<usize>,
    tolerance: Option<f64>,
    candidates: Vec<CandidateFile>,
}

#[derive(Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Extends {
    Default,
    #[default]
    None,
}

#[derive(Deserialize)]
#[serde(tag = "pattern", deny_unknown_fields)]
enum CandidateFile {
    #[serde(rename = "stream_llm")]
    StreamLlm { n_init: usize, n_local: usize },
    #[serde(rename = "vertical_and_slash")]
    VerticalAndSlash { vertical: usize, slash: usize },
    #[serde(rename = "block_sparse")]
    BlockSparse {},
}

impl SearchSpace {
    /// Reads a space file (see the [module docs](self)).
    pub fn load(path: impl AsRef<Path>) -> Result<SearchSpace, SpaceError> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).map_err(|source| SpaceError::Read { file: path.to_path_buf(), source })?;
        SearchSpace::parse(&text, path)
    }

    /// Parses a space file's text; `name` stands for the file in errors.
    pub fn parse(json: &str, name: impl AsRef<Path>) -> Result<SearchSpace, SpaceError> {
        let file = name.as_ref().to_path_buf();
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(json) {
            if !value.is_object() {
                return Err(SpaceError::Invalid {
                    file,
                    message: "expected a JSON object with a \"candidates\" list (see docs/search.md)".into(),
                });
            }
        }
        let parsed: SpaceFile = serde_json::from_str(json).map_err(|e| {
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            let message = e.to_string();
            SpaceError::Json {
                file: file.clone(),
                line: e.line(),
                column: e.column(),
                message: message.strip_suffix(&suffix).unwrap_or(&message).to_string(),
            }
        })?;
        let invalid = |message: String| SpaceError::Invalid { file: file.clone(), message };
        let mut space = if parsed.extends == Extends::Default {
            SearchSpace::default()
        } else {
            SearchSpace { candidates: Vec::new(), ..SearchSpace::default() }
        };
        if let Some(budget) = parsed.budget_keys {
            if budget == 0 {
                return Err(invalid("budget_keys must be at least 1 (keys per query row)".into()));
            }
            space.budget_keys = budget;
        }
        if let Some(tolerance) = parsed.tolerance {
            if !(tolerance.is_finite() && tolerance >= 0.0) {
                return Err(invalid(format!("tolerance {tolerance} must be a finite number >= 0")));
            }
            space.tolerance = tolerance;
        }
        for (i, entry) in parsed.candidates.into_iter().enumerate() {
            let candidate = match entry {
                CandidateFile::StreamLlm { n_local: 0, .. } => {
                    return Err(invalid(format!(
                        "candidate {i}: stream_llm n_local must be at least 1 (the window includes the diagonal)"
                    )))
                }
                CandidateFile::StreamLlm { n_init, n_local } => Candidate::StreamLlm { n_init, n_local },
                CandidateFile::VerticalAndSlash { vertical, slash } => Candidate::VerticalSlash { vertical, slash },
                CandidateFile::BlockSparse {} => Candidate::BlockSparse,
            };
            if space.candidates.contains(&candidate) {
                return Err(invalid(format!("candidate {i}: {candidate} is already in the space; list it once")));
            }
            space.candidates.push(candidate);
        }
        if space.candidates.is_empty() {
            return Err(invalid("the space has no candidates: list some, or set \"extends\": \"default\"".into()));
        }
        Ok(space)
    }

    /// The space as a space file's JSON (every candidate listed, one per line, `extends` left
    /// out), which [`SearchSpace::parse`] reads back to the same space.
    pub fn to_json(&self) -> String {
        let candidates: Vec<String> = self
            .candidates
            .iter()
            .map(|c| match *c {
                Candidate::StreamLlm { n_init, n_local } => {
                    format!("{{\"pattern\": \"stream_llm\", \"n_init\": {n_init}, \"n_local\": {n_local}}}")
                }
                Candidate::VerticalSlash { vertical, slash } => {
                    format!("{{\"pattern\": \"vertical_and_slash\", \"vertical\": {vertical}, \"slash\": {slash}}}")
                }
                Candidate::BlockSparse => "{\"pattern\": \"block_sparse\"}".to_string(),
            })
            .collect();
        format!(
            "{{\n  \"budget_keys\": {},\n  \"tolerance\": {},\n  \"candidates\": [\n    {}\n  ]\n}}",
            self.budget_keys,
            serde_json::Value::from(self.tolerance),
            candidates.join(",\n    ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_space_is_minferences_two_sets() {
        let space = SearchSpace::default();
        assert_eq!(space.candidates.len(), 13);
        assert_eq!(space.candidates[0], Candidate::StreamLlm { n_init: 100, n_local: 800 });
        assert!(space.candidates.contains(&Candidate::VerticalSlash { vertical: 1000, slash: 4096 }));
        assert!(space.candidates.contains(&Candidate::StreamLlm { n_init: 1024, n_local: 4096 }));
        assert!(space.candidates.contains(&Candidate::BlockSparse));
        let mut unique = space.candidates.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 13);
        assert_eq!((space.budget_keys, space.tolerance), (5120, 0.25));
    }

    #[test]
    fn space_files_parse_extend_and_round_trip() {
        let text = r#"{"extends": "default", "budget_keys": 4096, "tolerance": 0.1, "candidates": [
            {"pattern": "stream_llm", "n_init": 64, "n_local": 2048},
            {"pattern": "vertical_and_slash", "vertical": 200, "slash": 1200}]}"#;
        let space = SearchSpace::parse(text, "space.json").unwrap();
        assert_eq!(space.candidates.len(), 15);
        assert_eq!(space.candidates[13], Candidate::StreamLlm { n_init: 64, n_local: 2048 });
        assert_eq!(space.candidates[14], Candidate::VerticalSlash { vertical: 200, slash: 1200 });
        assert_eq!((space.budget_keys, space.tolerance), (4096, 0.1));
        assert_eq!(SearchSpace::parse(&space.to_json(), "again.json").unwrap(), space);
        let own = SearchSpace::parse(r#"{"candidates": [{"pattern": "block_sparse"}]}"#, "own.json").unwrap();
        assert_eq!(own.candidates, vec![Candidate::BlockSparse]);
        assert_eq!(own.budget_keys, DEFAULT_BUDGET_KEYS);
        assert_eq!(SearchSpace::parse(&SearchSpace::default().to_json(), "d.json").unwrap(), SearchSpace::default());
    }

    #[test]
    fn bad_space_files_say_what_is_wrong() {
        let cases = [
            ("[1, 2]", "expected a JSON object"),
            ("{\"candidates\": [", "bad.json:1:"),
            (r#"{"candidates": [{"pattern": "vertical_slash", "vertical": 1, "slash": 2}]}"#, "unknown variant"),
            (r#"{"candidates": [{"pattern": "vertical_and_slash", "vertical": 1, "slahs": 2}]}"#, "slahs"),
            (r#"{"candidates": [{"pattern": "vertical_and_slash", "vertical": -1, "slash": 2}]}"#, "-1"),
            (r#"{"candidates": [{"pattern": "stream_llm", "n_init": 1, "n_local": 0}]}"#, "n_local must be"),
            (r#"{"candidates": [{"pattern": "block_sparse", "top_k": 50}]}"#, "top_k"),
            (r#"{"candidates": []}"#, "no candidates"),
            (r#"{"budget_keys": 0, "candidates": [{"pattern": "block_sparse"}]}"#, "budget_keys must be"),
            (r#"{"tolerance": -1, "candidates": [{"pattern": "block_sparse"}]}"#, "tolerance -1"),
            (r#"{"extends": "all", "candidates": []}"#, "unknown variant `all`"),
            (r#"{"candidates": [{"pattern": "block_sparse"}, {"pattern": "block_sparse"}]}"#, "list it once"),
            (r#"{"candidates": [{"pattern": "block_sparse"}], "budget": 3}"#, "unknown field `budget`"),
        ];
        for (text, needle) in cases {
            let message = SearchSpace::parse(text, "bad.json").unwrap_err().to_string();
            assert!(message.starts_with("bad.json") && message.contains(needle), "{text}: {message}");
        }
        let missing = SearchSpace::load("/nonexistent/space.json").unwrap_err().to_string();
        assert!(missing.contains("/nonexistent/space.json: cannot read"), "{missing}");
    }
}
