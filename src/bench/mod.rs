//! `minf bench`: latency of every pattern at several context lengths, as records (JSON), a
//! terminal table and a log-log plot, and the comparison with the peers' records
//! (`bench/peers.py` writes the same schema).
//!
//! - [`cases`]: patterns and cases from the command line;
//! - [`run`]: timing the cases on the GPU (through [`crate::Prefill`]);
//! - [`indices`]: the computed tiles (density, TFLOP/s) and the index files for the peers;
//! - [`record`]: the record schema and its file;
//! - [`plot`]: the SVG plot;
//! - [`compare`]: ratios, targets and the Markdown report.

pub mod cases;
pub mod compare;
pub mod indices;
pub mod plot;
pub mod record;
pub mod run;

use plot::tokens;
use record::Record;

/// The header of the terminal table ([`table_row`]).
pub fn table_header() -> String {
    format!(
        "{:<7} {:<34} {:>5} {:>10} {:>9} {:>9} {:>10} {:>10} {:>8} {:>7} {:>9} {:>9}",
        "tokens",
        "pattern",
        "heads",
        "est ms",
        "conv ms",
        "attn ms",
        "total ms",
        "ms/head",
        "density",
        "TFLOP/s",
        "speedup",
        "compile s"
    )
}

/// One record as a row of the terminal table.
pub fn table_row(r: &Record) -> String {
    let number = |v: Option<f64>, digits: usize| v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"));
    let mut label = r.label();
    let chars = label.chars().count();
    if chars > 34 {
        label = format!("...{}", label.chars().skip(chars - 31).collect::<String>());
    }
    format!(
        "{:<7} {:<34} {:>5} {:>10} {:>9} {:>9} {:>10.3} {:>10.3} {:>8} {:>7} {:>9} {:>9}",
        tokens(r.seq as f64),
        label,
        r.heads,
        number(r.est_ms, 3),
        number(r.conv_ms, 3),
        number(r.attn_ms, 3),
        r.total_ms,
        r.per_head_ms,
        number(r.density, 4),
        number(r.tflops, 1),
        r.dense_speedup.map_or_else(|| "-".to_string(), |s| format!("{s:.2}x")),
        number(r.compile_s, 2)
    )
}
