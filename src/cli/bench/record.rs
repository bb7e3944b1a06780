//! One benchmark record per case, the JSON schema shared with `bench/peers.py`, and the file
//! that holds them (a JSON array, rewritten after every case so an interrupted run keeps what it
//! finished).

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Method name of minf's own records.
pub const MINF_METHOD: &str = "minf";

/// One measured case. Times are CUDA-event medians in milliseconds; fields a method does not
/// measure are `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Who ran it: `minf`, `sdpa_flash`, `sdpa_cudnn`, `flex_attention`, `minference_vs`, ...
    pub method: String,
    /// `dense`, `a_shape`, `vertical_slash`, `block_sparse` or `config`.
    pub pattern: String,
    /// The pattern's parameters as on the command line (`1000,6096`; empty for dense).
    pub params: String,
    /// Tokens.
    pub seq: usize,
    /// Query heads measured.
    pub heads: usize,
    /// Key/value heads measured.
    pub kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// Element type (`bf16`, `f16`).
    pub dtype: String,
    /// Index estimation (without the conversion).
    pub est_ms: Option<f64>,
    /// Conversion of the estimate into the kernel's index.
    pub conv_ms: Option<f64>,
    /// The attention launches.
    pub attn_ms: Option<f64>,
    /// The whole call.
    pub total_ms: f64,
    /// `total_ms / heads`.
    pub per_head_ms: f64,
    /// Computed 64x64 tiles over the causal 64x64 tiles (diagonal tiles counted whole).
    pub density: Option<f64>,
    /// Attention recall: the share of each query row's dense softmax mass on the keys the case
    /// visited, `exp(lse_case - lse_dense)`, averaged over every row and head; 1 for dense.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall: Option<f64>,
    /// TFLOP/s on computed tiles: `4 * 64 * 64 * head_dim` FLOPs per computed tile over `attn_ms`.
    pub tflops: Option<f64>,
    /// Dense time of the same length and heads (same method family) over `total_ms`.
    pub dense_speedup: Option<f64>,
    /// Compiling or loading the case's kernels, measured before any timing.
    pub compile_s: Option<f64>,
    /// Device memory of the case (see `note` for how it was counted).
    pub peak_mem_bytes: Option<u64>,
    /// The GPU's name.
    pub card: String,
    /// CUDA driver version.
    pub driver: String,
    /// The version of the tool (`minf` version, or torch's for the peers).
    pub version: String,
    /// UTC date of the run, `YYYY-MM-DD`.
    pub date: String,
    /// Timed runs behind each median.
    #[serde(default)]
    pub reps: Option<usize>,
    /// Anything a reader needs to interpret the numbers (head subsets, scaling, memory counting).
    #[serde(default)]
    pub note: Option<String>,
    /// Tokens per chunk of the chunked run next to this one-shot case (`minf bench --chunk`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_tokens: Option<usize>,
    /// The whole prompt prefilled chunk by chunk (`Prefill::prefill_chunked`), median.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunked_total_ms: Option<f64>,
    /// `chunked_total_ms / total_ms`: what chunking costs over the one-shot call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunked_ratio: Option<f64>,
    /// Where the chunked run's time goes: estimation, conversion and attention summed over the
    /// chunks of one run that times each chunk alone (`Prefill::prefill_chunked_timed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunked_est_ms: Option<f64>,
    /// See `chunked_est_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunked_conv_ms: Option<f64>,
    /// See `chunked_est_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunked_attn_ms: Option<f64>,
    /// Which inputs the case ran on, so that records on the same tensors can be paired:
    /// `structured seed N` (`structured flat-tail seed N`) for the generator, `file NAME` for a
    /// Q/K/V file (`minf bench --inputs`, `bench/peers.py --layer-inputs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<String>,
}

impl Record {
    /// The pattern label used in tables and plots: `dense` or `pattern:params`.
    pub fn label(&self) -> String {
        if self.params.is_empty() {
            self.pattern.clone()
        } else {
            format!("{}:{}", self.pattern, self.params)
        }
    }

    /// The series name in a plot: method and pattern label.
    pub fn series(&self) -> String {
        format!("{} {}", self.method, self.label())
    }
}

/// Reads the records of a JSON array file, or of a JSON Lines file (one record per line).
pub fn read_records(path: &Path) -> Result<Vec<Record>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if text.trim_start().starts_with('[') {
        return serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a JSON array of records: {e}", path.display()));
    }
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| format!("{}: line {}: not a record: {e}", path.display(), i + 1))
        })
        .collect()
}

/// Writes `records` to `path` as a pretty JSON array, through a temporary file renamed over the
/// old one, so the file is always complete.
pub fn write_records(path: &Path, records: &[Record]) -> Result<(), String> {
    let text = serde_json::to_string_pretty(records).map_err(|e| format!("encoding records: {e}"))?;
    let temporary = path.with_extension("json.partial");
    std::fs::write(&temporary, text + "\n").map_err(|e| format!("{}: {e}", temporary.display()))?;
    std::fs::rename(&temporary, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Today's UTC date, `YYYY-MM-DD`.
pub fn today() -> String {
    let seconds = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    civil_date(seconds / 86_400)
}

/// The proleptic Gregorian date of `days` since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_date(days: u64) -> String {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(19_782), "2024-02-29");
        assert_eq!(civil_date(20_000), "2024-10-04");
    }
}
