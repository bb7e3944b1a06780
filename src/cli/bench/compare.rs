//! `minf bench compare`: minf's records against the peers' (same schema), as ratios per case, the
//! targets of the benchmark, and a Markdown report.

use super::plot::tokens;
use super::record::{Record, MINF_METHOD};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One minf case with the peers' times on it.
#[derive(Debug, Clone, PartialEq)]
pub struct RatioRow {
    /// minf's record.
    pub minf: Record,
    /// Per peer method: its per-head time over minf's (above 1: minf is faster). A peer is
    /// compared on the same pattern and length, or, when it ran only dense at that length, on
    /// dense (the dense-equivalent speedup).
    pub ratios: BTreeMap<String, f64>,
}

/// The peer record minf's `record` is compared with for `method`: same length and pattern, else
/// the peer's dense record of that length.
fn counterpart<'a>(records: &'a [Record], method: &str, record: &Record) -> Option<&'a Record> {
    let same_length = || records.iter().filter(move |r| r.method == method && r.seq == record.seq);
    same_length().find(|r| r.label() == record.label()).or_else(|| same_length().find(|r| r.pattern == "dense"))
}

/// The peer methods present, in order of first appearance.
pub fn peer_methods(records: &[Record]) -> Vec<String> {
    let mut methods: Vec<String> = Vec::new();
    for record in records.iter().filter(|r| r.method != MINF_METHOD) {
        if !methods.contains(&record.method) {
            methods.push(record.method.clone());
        }
    }
    methods
}

/// Every minf record with its ratios to every peer that measured a comparable case, sorted by
/// length then pattern.
pub fn ratios(records: &[Record]) -> Vec<RatioRow> {
    let methods = peer_methods(records);
    let mut rows: Vec<RatioRow> = records
        .iter()
        .filter(|r| r.method == MINF_METHOD)
        .map(|minf| {
            let ratios = methods
                .iter()
                .filter_map(|method| {
                    let peer = counterpart(records, method, minf)?;
                    (minf.per_head_ms > 0.0).then(|| (method.clone(), peer.per_head_ms / minf.per_head_ms))
                })
                .collect();
            RatioRow { minf: minf.clone(), ratios }
        })
        .collect();
    rows.sort_by_key(|row| (row.minf.seq, row.minf.label()));
    rows
}

/// One of the benchmark's required targets, evaluated on the records.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Target {
    /// What is compared.
    pub name: String,
    /// The measured value, `None` when the records lack a side.
    pub value: Option<f64>,
    /// The bound the value must meet.
    pub bound: f64,
    /// Whether the value must be at most (`true`) or at least (`false`) the bound.
    pub at_most: bool,
}

impl Target {
    fn at_most(name: impl Into<String>, value: Option<f64>, bound: f64) -> Target {
        Target { name: name.into(), value, bound, at_most: true }
    }

    fn at_least(name: impl Into<String>, value: Option<f64>, bound: f64) -> Target {
        Target { name: name.into(), value, bound, at_most: false }
    }

    /// Whether the target is met (`None` when it was not measured).
    pub fn met(&self) -> Option<bool> {
        self.value.map(|v| if self.at_most { v <= self.bound } else { v >= self.bound })
    }
}

/// A target as `bench/results/targets.json` lists it: name, value, bound, met.
#[derive(Debug, serde::Serialize)]
struct TargetRecord<'a> {
    name: &'a str,
    value: Option<f64>,
    bound: String,
    met: Option<bool>,
}

/// The targets as a JSON array of `{name, value, bound, met}` (`bound` like `">= 1.1"`; `value`
/// and `met` are null when the records lack a side).
pub fn targets_json(targets: &[Target]) -> Result<String, serde_json::Error> {
    let rows: Vec<TargetRecord<'_>> = targets
        .iter()
        .map(|t| TargetRecord {
            name: &t.name,
            value: t.value,
            bound: format!("{} {}", if t.at_most { "<=" } else { ">=" }, t.bound),
            met: t.met(),
        })
        .collect();
    serde_json::to_string_pretty(&rows)
}

fn find<'a>(records: &'a [Record], method: &str, label: &str, seq: usize) -> Option<&'a Record> {
    records.iter().find(|r| r.method == method && r.label() == label && r.seq == seq)
}

/// The record of `method` for the config layer at `seq`.
fn config_layer<'a>(records: &'a [Record], method: &str, seq: usize) -> Option<&'a Record> {
    records.iter().find(|r| r.method == method && r.pattern == "config" && r.seq == seq)
}

/// minf's config layer at `peer`'s length on the same inputs as `peer` where a record says so,
/// else minf's first config record of that length.
fn config_layer_like<'a>(records: &'a [Record], peer: &Record) -> Option<&'a Record> {
    let same = |r: &&Record| r.method == MINF_METHOD && r.pattern == "config" && r.seq == peer.seq;
    let on_same_inputs = peer.inputs.as_ref().and_then(|inputs| {
        records.iter().filter(same).find(|r| r.heads == peer.heads && r.inputs.as_ref() == Some(inputs))
    });
    on_same_inputs.or_else(|| records.iter().find(same))
}

/// minf's record of `pattern` (`"dense"` or `"config"`) at `seq` that also ran in chunks of
/// `chunk` tokens (`minf bench --chunk`).
fn chunked<'a>(records: &'a [Record], pattern: &str, seq: usize, chunk: usize) -> Option<&'a Record> {
    records
        .iter()
        .find(|r| r.method == MINF_METHOD && r.pattern == pattern && r.seq == seq && r.chunk_tokens == Some(chunk))
}

/// The benchmark's required targets, in three groups.
///
/// - Against the peers: minf's vertical-slash (1000, 6096) total at 128K against MInference's
///   kernel alone (at most 1.0x); minf's dense TFLOP/s against SDPA FlashAttention's at 128K (at
///   least 0.9x); the config layer at 1M against SDPA cuDNN (at least 30x faster per head).
/// - Hopper at full speed: dense TFLOP/s at least 1.10x cuDNN's at 128K; each sparse pattern's
///   TFLOP/s on computed tiles at least 0.9x minf's dense; the vertical-slash conversion (the
///   (1000, 6096) case, 128K x 32 heads) at most 0.3 ms; block-sparse estimation at most 1.5 ms
///   at 128K and 6 ms at 1M; the config layer against MInference's own layer (`minference_layer`:
///   its per-head estimation and kernels) at least 3x at 128K and 2.5x at 1M.
/// - Chunked prefill: the config layer in 64K chunks at 1M within 1.15x of one shot, dense within
///   1.05x; in 8K chunks at 128K within 1.3x.
pub fn targets(records: &[Record]) -> Vec<Target> {
    const K128: usize = 131_072;
    const M1: usize = 1_048_576;
    let minf = |label: &str, seq: usize| find(records, MINF_METHOD, label, seq);
    let vs = "vertical_slash:1000,6096";
    let vs_ratio =
        minf(vs, K128).zip(find(records, "minference_vs", vs, K128)).map(|(m, p)| m.per_head_ms / p.per_head_ms);
    let tflops_ratio = |a: Option<&Record>, b: Option<&Record>| a.zip(b).and_then(|(a, b)| Some(a.tflops? / b.tflops?));
    let dense = minf("dense", K128);
    let config_speedup = |peer: Option<&Record>, seq: usize| {
        config_layer(records, MINF_METHOD, seq).zip(peer).map(|(m, p)| p.per_head_ms / m.per_head_ms)
    };
    let own_layer = |seq: usize| {
        let peer = config_layer(records, "minference_layer", seq)?;
        config_layer_like(records, peer).map(|m| peer.per_head_ms / m.per_head_ms)
    };
    let chunked_ratio = |pattern: &str, seq: usize, chunk: usize| chunked(records, pattern, seq, chunk)?.chunked_ratio;
    let mut targets = vec![
        Target::at_most("minf vertical_slash:1000,6096 total / MInference kernel (128K)", vs_ratio, 1.0),
        Target::at_least(
            "minf dense TFLOP/s / SDPA FLASH_ATTENTION TFLOP/s (128K)",
            tflops_ratio(dense, find(records, "sdpa_flash", "dense", K128)),
            0.9,
        ),
        Target::at_least(
            "SDPA CUDNN_ATTENTION / minf config layer, per head (1M)",
            config_speedup(find(records, "sdpa_cudnn", "dense", M1), M1),
            30.0,
        ),
        Target::at_least(
            "minf dense TFLOP/s / SDPA CUDNN_ATTENTION TFLOP/s (128K)",
            tflops_ratio(dense, find(records, "sdpa_cudnn", "dense", K128)),
            1.1,
        ),
    ];
    for label in [vs, "vertical_slash:3500,100", "block_sparse:100", "a_shape:128,3968"] {
        targets.push(Target::at_least(
            format!("minf {label} TFLOP/s on computed tiles / minf dense TFLOP/s (128K)"),
            tflops_ratio(minf(label, K128), dense),
            0.9,
        ));
    }
    targets.extend([
        Target::at_most(
            "minf vertical-slash conversion ms, vertical_slash:1000,6096 (128K)",
            minf(vs, K128).and_then(|r| r.conv_ms),
            0.3,
        ),
        Target::at_most(
            "minf block-sparse estimation ms, block_sparse:100 (128K)",
            minf("block_sparse:100", K128).and_then(|r| r.est_ms),
            1.5,
        ),
        Target::at_most(
            "minf block-sparse estimation ms, block_sparse:100 (1M)",
            minf("block_sparse:100", M1).and_then(|r| r.est_ms),
            6.0,
        ),
        Target::at_least("MInference's own config layer / minf config layer, per head (128K)", own_layer(K128), 3.0),
        Target::at_least("MInference's own config layer / minf config layer, per head (1M)", own_layer(M1), 2.5),
        Target::at_most("minf config layer in 64K chunks / one shot (1M)", chunked_ratio("config", M1, 65_536), 1.15),
        Target::at_most("minf dense in 64K chunks / one shot (1M)", chunked_ratio("dense", M1, 65_536), 1.05),
        Target::at_most("minf config layer in 8K chunks / one shot (128K)", chunked_ratio("config", K128, 8_192), 1.3),
    ]);
    targets
}

fn cell(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

/// The Markdown report: the targets, the ratio table and every record.
pub fn markdown(records: &[Record]) -> String {
    let mut out = String::new();
    let methods = peer_methods(records);
    let cards: Vec<&str> = {
        let mut cards: Vec<&str> = records.iter().map(|r| r.card.as_str()).collect();
        cards.sort_unstable();
        cards.dedup();
        cards
    };
    let _ = writeln!(out, "Cards: {}\n", cards.join(", "));
    let _ = writeln!(out, "## Targets\n\n| target | value | bound | met |\n|---|---|---|---|");
    for target in targets(records) {
        let bound = format!("{} {}", if target.at_most { "<=" } else { ">=" }, target.bound);
        let met = match target.met() {
            Some(true) => "yes",
            Some(false) => "no",
            None => "not measured",
        };
        let _ = writeln!(out, "| {} | {} | {bound} | {met} |", target.name, cell(target.value, 3));
    }
    let _ = writeln!(
        out,
        "\n## minf against each peer\n\nEach `vs` column is the peer's time per head over minf's (above 1: minf is \
         faster), on the same pattern and length, or against the peer's dense time when it ran only dense \
         there (the dense-equivalent speedup).\n"
    );
    let mut header =
        "| tokens | pattern | heads | minf ms/head | est / conv / attn ms | density | recall | TFLOP/s | vs minf dense |"
            .to_string();
    let mut rule = "|---|---|---|---|---|---|---|---|---|".to_string();
    for method in &methods {
        let _ = write!(header, " vs {method} |");
        rule.push_str("---|");
    }
    let _ = writeln!(out, "{header}\n{rule}");
    for row in ratios(records) {
        let r = &row.minf;
        let split = format!("{} / {} / {}", cell(r.est_ms, 2), cell(r.conv_ms, 2), cell(r.attn_ms, 2));
        let _ = write!(
            out,
            "| {} | {} | {} | {:.3} | {split} | {} | {} | {} | {} |",
            tokens(r.seq as f64),
            r.label(),
            r.heads,
            r.per_head_ms,
            cell(r.density, 3),
            cell(r.recall, 4),
            cell(r.tflops, 1),
            r.dense_speedup.map_or_else(|| "-".to_string(), |s| format!("{s:.2}x"))
        );
        for method in &methods {
            let _ =
                write!(out, " {} |", row.ratios.get(method).map_or_else(|| "-".to_string(), |v| format!("{v:.2}x")));
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "\n## Every record\n\n| method | pattern | tokens | heads | total ms | ms/head | density | TFLOP/s | note |\n\
         |---|---|---|---|---|---|---|---|---|"
    );
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by(|a, b| (a.seq, &a.method, a.label()).cmp(&(b.seq, &b.method, b.label())));
    for r in sorted {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.3} | {:.3} | {} | {} | {} |",
            r.method,
            r.label(),
            tokens(r.seq as f64),
            r.heads,
            r.total_ms,
            r.per_head_ms,
            cell(r.density, 3),
            cell(r.tflops, 1),
            r.note.as_deref().unwrap_or("")
        );
    }
    out
}
