//! The bench's parts without a GPU: patterns and cases, records, the plot, the comparison and
//! the tile lists of a realised mask.

use super::cases::{
    default_long_heads, parse_chunk_tokens, parse_seqs, CaseOptions, PatternSpec, DEFAULT_LONG_FROM, DEFAULT_PATTERNS,
};
use super::compare::{markdown, ratios, targets};
use super::plot::{latency_svg, TITLE, X_LABEL, Y_LABEL};
use super::record::{read_records, write_records, Record};
use super::run::mean_recall;
use super::{table_header, table_row};
use minf::codegen::DType;
use std::path::PathBuf;

fn record(method: &str, pattern: &str, params: &str, seq: usize, heads: usize, total_ms: f64) -> Record {
    Record {
        method: method.into(),
        pattern: pattern.into(),
        params: params.into(),
        seq,
        heads,
        kv_heads: heads / 4,
        head_dim: 128,
        dtype: "bf16".into(),
        est_ms: None,
        conv_ms: None,
        attn_ms: Some(total_ms),
        total_ms,
        per_head_ms: total_ms / heads as f64,
        density: Some(0.1),
        recall: None,
        tflops: Some(300.0),
        dense_speedup: None,
        compile_s: None,
        peak_mem_bytes: Some(1 << 30),
        card: "NVIDIA H100 80GB HBM3".into(),
        driver: "CUDA 13.0".into(),
        version: "test".into(),
        date: "2025-01-01".into(),
        reps: Some(10),
        note: None,
        chunk_tokens: None,
        chunked_total_ms: None,
        chunked_ratio: None,
        chunked_est_ms: None,
        chunked_conv_ms: None,
        chunked_attn_ms: None,
        inputs: None,
    }
}

#[test]
fn patterns_parse_with_their_parameters() {
    let list = PatternSpec::parse_list(DEFAULT_PATTERNS).unwrap();
    assert_eq!(
        list,
        vec![
            PatternSpec::Dense,
            PatternSpec::AShape { n_init: 1024, n_local: 4096 },
            PatternSpec::AShape { n_init: 128, n_local: 3968 },
            PatternSpec::VerticalSlash { vertical: 1000, slash: 6096 },
            PatternSpec::VerticalSlash { vertical: 100, slash: 800 },
            PatternSpec::VerticalSlash { vertical: 3500, slash: 100 },
            PatternSpec::BlockSparse { top_k: 100 },
        ]
    );
    assert_eq!(
        PatternSpec::parse("config:dir/x.json:3").unwrap(),
        PatternSpec::Config { path: PathBuf::from("dir/x.json"), layer: 3 }
    );
    assert_eq!(
        PatternSpec::parse("config:x.json").unwrap(),
        PatternSpec::Config { path: PathBuf::from("x.json"), layer: 16 }
    );
    for pattern in &list {
        assert_eq!(&PatternSpec::parse(&pattern.to_string()).unwrap(), pattern, "label round trip");
    }
    assert_eq!(parse_seqs("32K,131072,1M").unwrap(), vec![32_768, 131_072, 1_048_576]);
}

#[test]
fn bad_patterns_say_what_was_wrong_and_what_is_allowed() {
    assert_eq!(
        PatternSpec::parse_list("dense,block_sparse:100,dense,block_sparse:100").unwrap(),
        vec![PatternSpec::Dense, PatternSpec::BlockSparse { top_k: 100 }]
    );
    let error = |text: &str| PatternSpec::parse_list(text).unwrap_err().to_string();
    let unknown = error("dense,sparse");
    assert!(unknown.contains("\"sparse\"") && unknown.contains("vertical_slash:VERTICAL,SLASH"), "{unknown}");
    let count = error("vertical_slash:1000");
    assert!(count.contains("1 value(s)") && count.contains("vertical_slash:VERTICAL,SLASH"), "{count}");
    assert!(error("a_shape:x,y").contains("a_shape:N_INIT,N_LOCAL"));
    assert!(error("a_shape:1,0").contains("N_LOCAL"));
    assert!(error("block_sparse").contains("block_sparse:TOP_K"));
    assert!(error("dense:3").contains("no parameters"));
    assert!(error("config").contains("config:PATH[:LAYER]"));
    assert!(error("dense,,block_sparse:1").contains("empty entry"));
    assert!(parse_seqs("32K,abc").unwrap_err().to_string().contains("\"abc\""));
}

#[test]
fn cases_group_by_length_with_dense_first_and_fewer_heads_when_long() {
    let options = CaseOptions {
        seqs: vec![1_048_576, 32_768],
        heads: 32,
        kv_heads: 8,
        head_dim: 128,
        dtype: DType::Bf16,
        patterns: PatternSpec::parse_list("block_sparse:100,dense").unwrap(),
        long_from: DEFAULT_LONG_FROM,
        long_heads: 4,
    };
    let cases = options.cases().unwrap();
    let summary: Vec<(usize, String, usize, usize, bool)> =
        cases.iter().map(|c| (c.seq, c.pattern.to_string(), c.heads, c.kv_heads, c.is_subset())).collect();
    assert_eq!(
        summary,
        vec![
            (32_768, "dense".into(), 32, 8, false),
            (32_768, "block_sparse:100".into(), 32, 8, false),
            (1_048_576, "dense".into(), 4, 1, true),
            (1_048_576, "block_sparse:100".into(), 4, 1, true),
        ]
    );
    let bad_heads = CaseOptions { kv_heads: 5, ..options.clone() }.cases().unwrap_err().to_string();
    assert!(bad_heads.contains("--kv-heads 5"), "{bad_heads}");
    let bad_dim = CaseOptions { head_dim: 100, ..options.clone() }.cases().unwrap_err().to_string();
    assert!(bad_dim.contains("--head-dim 100") && bad_dim.contains("128"), "{bad_dim}");
    assert!(CaseOptions { patterns: vec![], ..options }.cases().is_err());
}

#[test]
fn long_cases_default_to_four_heads_when_they_fit_the_kv_groups() {
    // (query heads, KV heads) -> long heads: 4 when a multiple or divisor of the group, else one group.
    for ((heads, kv_heads), long) in
        [((32, 8), 4), ((32, 32), 4), ((64, 8), 4), ((32, 2), 4), ((28, 4), 7), ((36, 4), 9)]
    {
        assert_eq!(default_long_heads(heads, kv_heads), long, "{heads}/{kv_heads}");
    }
}

#[test]
fn records_round_trip_through_the_json_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.json");
    let mut full = record("minf", "vertical_slash", "1000,6096", 131_072, 32, 40.0);
    full.est_ms = Some(3.0);
    full.note = Some("a note".into());
    let records = vec![full, record("sdpa_flash", "dense", "", 131_072, 32, 400.0)];
    write_records(&path, &records).unwrap();
    assert_eq!(read_records(&path).unwrap(), records);
    // JSON Lines, as a peer may write, and a record without the optional fields.
    let lines: String = records.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
    std::fs::write(&path, lines).unwrap();
    assert_eq!(read_records(&path).unwrap(), records);
    let mut value = serde_json::to_value(&records[1]).unwrap();
    value.as_object_mut().unwrap().remove("note");
    value.as_object_mut().unwrap().remove("reps");
    std::fs::write(&path, format!("[{value}]")).unwrap();
    assert_eq!(read_records(&path).unwrap()[0].note, None);
}

#[test]
fn the_plot_is_an_svg_with_every_series_and_both_axes() {
    let records = vec![
        record("minf", "dense", "", 32_768, 32, 30.0),
        record("minf", "dense", "", 131_072, 32, 400.0),
        record("minf", "vertical_slash", "1000,6096", 32_768, 32, 10.0),
        record("minf", "vertical_slash", "1000,6096", 1_048_576, 4, 80.0),
        record("sdpa_cudnn", "dense", "", 131_072, 32, 226.0),
    ];
    let svg = latency_svg(&records).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{}", &svg[..svg.len().min(200)]);
    for text in ["minf dense", "minf vertical_slash:1000,6096", "sdpa_cudnn dense", TITLE, X_LABEL, Y_LABEL] {
        assert!(svg.contains(text), "the SVG lacks {text:?}");
    }
    assert!(latency_svg(&[]).is_err());
    // Lengths are labelled at powers of two, also when every record has one length.
    let one_length = [record("minf", "dense", "", 131_072, 32, 320.0)];
    let svg = latency_svg(&one_length).unwrap();
    assert!(svg.contains("128K"), "no tick label at 128K");
    assert!(!svg.contains("157286"), "a light tick is labelled");
}

#[test]
fn compare_divides_peer_time_by_minf_time_per_head() {
    let records = vec![
        record("minf", "dense", "", 131_072, 32, 320.0),
        record("minf", "vertical_slash", "1000,6096", 131_072, 32, 40.0),
        record("minf", "config", "llama.json:16", 1_048_576, 4, 40.0),
        record("sdpa_flash", "dense", "", 131_072, 32, 400.0),
        record("minference_vs", "vertical_slash", "1000,6096", 131_072, 32, 50.0),
        // cuDNN at 1M on one head: 583 ms per head.
        record("sdpa_cudnn", "dense", "", 1_048_576, 1, 583.0),
    ];
    let rows = ratios(&records);
    assert_eq!(rows.len(), 3);
    let dense = &rows.iter().find(|r| r.minf.pattern == "dense").unwrap().ratios;
    assert!((dense["sdpa_flash"] - 1.25).abs() < 1e-12);
    assert!(!dense.contains_key("minference_vs"), "minference_vs ran no dense case");
    let vs = &rows.iter().find(|r| r.minf.pattern == "vertical_slash").unwrap().ratios;
    assert!((vs["minference_vs"] - 1.25).abs() < 1e-12, "same pattern: {vs:?}");
    assert!((vs["sdpa_flash"] - 10.0).abs() < 1e-12, "dense-equivalent: {vs:?}");
    let config = &rows.iter().find(|r| r.minf.pattern == "config").unwrap().ratios;
    assert!((config["sdpa_cudnn"] - 58.3).abs() < 1e-9, "per head: {config:?}");

    let checked = targets(&records);
    let target = |prefix: &str| checked.iter().find(|t| t.name.starts_with(prefix)).unwrap();
    let vs_target = target("minf vertical_slash:1000,6096 total / MInference kernel");
    assert!((vs_target.value.unwrap() - 0.8).abs() < 1e-12);
    assert_eq!(vs_target.met(), Some(true));
    let dense_target = target("minf dense TFLOP/s / SDPA FLASH_ATTENTION");
    assert!((dense_target.value.unwrap() - 1.0).abs() < 1e-12, "equal TFLOP/s in the synthetic records");
    assert_eq!(target("SDPA CUDNN_ATTENTION / minf config layer").met(), Some(true));
    let report = markdown(&records);
    assert!(report.contains("vs minference_vs") && report.contains("1.25x") && report.contains("58.30x"), "{report}");
    assert!(targets(&records[..1]).iter().all(|t| t.met().is_none()), "one record measures no target");
}

/// The Hopper and chunked-prefill targets read the right fields of the right records, and the
/// JSON lists every target with its bound and whether it is met.
#[test]
fn targets_read_tflops_estimation_conversion_and_chunked_ratios() {
    const K128: usize = 131_072;
    const M1: usize = 1_048_576;
    let with = |mut r: Record, f: &dyn Fn(&mut Record)| {
        f(&mut r);
        r
    };
    let records = vec![
        with(record("minf", "dense", "", K128, 32, 260.0), &|r| r.tflops = Some(540.0)),
        with(record("sdpa_cudnn", "dense", "", K128, 32, 250.0), &|r| r.tflops = Some(600.0)),
        with(record("minf", "vertical_slash", "1000,6096", K128, 32, 50.0), &|r| {
            r.tflops = Some(500.0);
            r.conv_ms = Some(0.25);
        }),
        with(record("minf", "vertical_slash", "3500,100", K128, 32, 7.0), &|r| r.tflops = Some(130.0)),
        with(record("minf", "block_sparse", "100", K128, 32, 38.0), &|r| r.est_ms = Some(8.7)),
        with(record("minf", "block_sparse", "100", M1, 4, 89.0), &|r| r.est_ms = Some(5.5)),
        with(record("minf", "config", "l.json:16", K128, 32, 32.0), &|r| {
            r.chunk_tokens = Some(8_192);
            r.chunked_ratio = Some(1.2);
        }),
        record("minference_layer", "config", "l.json:16", K128, 32, 96.0),
        with(record("minf", "dense", "", M1, 4, 2100.0), &|r| {
            r.chunk_tokens = Some(65_536);
            r.chunked_ratio = Some(1.07);
        }),
        // At 1M the own layer pairs with minf's record on its file, not the first config record.
        with(record("minf", "config", "l.json:16", M1, 4, 60.0), &|r| r.inputs = Some("structured seed 1".into())),
        with(record("minf", "config", "l.json:16", M1, 4, 40.0), &|r| {
            r.inputs = Some("file layer_0.safetensors".into())
        }),
        with(record("minference_layer", "config", "l.json:16", M1, 4, 80.0), &|r| {
            r.inputs = Some("file layer_0.safetensors".into())
        }),
    ];
    let checked = targets(&records);
    let value = |prefix: &str| {
        let t = checked.iter().find(|t| t.name.starts_with(prefix)).unwrap_or_else(|| panic!("no target {prefix}"));
        (t.value, t.met())
    };
    let (ratio, met) = value("minf dense TFLOP/s / SDPA CUDNN_ATTENTION");
    assert!((ratio.unwrap() - 0.9).abs() < 1e-12 && met == Some(false));
    let (ratio, met) = value("minf vertical_slash:1000,6096 TFLOP/s");
    assert!((ratio.unwrap() - 500.0 / 540.0).abs() < 1e-12 && met == Some(true));
    assert_eq!(value("minf vertical_slash:3500,100 TFLOP/s").1, Some(false));
    assert_eq!(value("minf block_sparse:100 TFLOP/s"), (Some(300.0 / 540.0), Some(false)));
    assert_eq!(value("minf a_shape:128,3968 TFLOP/s"), (None, None));
    assert_eq!(value("minf vertical-slash conversion ms"), (Some(0.25), Some(true)));
    assert_eq!(value("minf block-sparse estimation ms, block_sparse:100 (128K)"), (Some(8.7), Some(false)));
    assert_eq!(value("minf block-sparse estimation ms, block_sparse:100 (1M)"), (Some(5.5), Some(true)));
    assert_eq!(value("MInference's own config layer / minf config layer, per head (128K)"), (Some(3.0), Some(true)));
    assert_eq!(value("MInference's own config layer / minf config layer, per head (1M)"), (Some(2.0), Some(false)));
    assert_eq!(value("minf config layer in 8K chunks"), (Some(1.2), Some(true)));
    assert_eq!(value("minf dense in 64K chunks"), (Some(1.07), Some(false)));
    assert_eq!(value("minf config layer in 64K chunks"), (None, None));

    let json: serde_json::Value = serde_json::from_str(&super::compare::targets_json(&checked).unwrap()).unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), checked.len());
    let chunk = rows.iter().find(|r| r["name"] == "minf dense in 64K chunks / one shot (1M)").unwrap();
    assert_eq!(chunk["bound"], "<= 1.05");
    assert_eq!(chunk["met"], false);
    assert!((chunk["value"].as_f64().unwrap() - 1.07).abs() < 1e-12);
    let unmeasured = rows.iter().find(|r| r["name"] == "minf config layer in 64K chunks / one shot (1M)").unwrap();
    assert!(unmeasured["value"].is_null() && unmeasured["met"].is_null());
}

/// The bench's tile lists cover every key the realised mask attends to: the 64-key blocks of
/// each 64-row block (what TFLOP/s and density count) and the 128-key blocks of each 128-row
/// block (FlexAttention's BlockMask for the peers), on each kind of head.
#[test]
fn tile_lists_cover_the_realised_mask() {
    for seed in 1..=4 {
        tile_lists_cover_the_realised_mask_of(seed);
    }
}

/// [`tile_lists_cover_the_realised_mask`] on the random heads of `seed`.
fn tile_lists_cover_the_realised_mask_of(seed: u64) {
    use super::indices::{blocks_128, key_blocks, tile_counts};
    use minf::prefill::HeadMask;
    use minf::HostBlockSparseIndex;
    use minf::{AShape, RealisedMask};
    use minf_testkit::convert::convert_cpu;
    use minf_testkit::reference::TestRng;

    let (seq, heads) = (333usize, 4usize);
    let rows = seq.div_ceil(64);
    let mut rng = TestRng::new(seed);
    // Head 2 is vertical-slash: random columns and diagonals through the CPU converter.
    let (nnz_v, nnz_s) = (7usize, 5usize);
    let raw = |n: usize, rng: &mut TestRng| (0..heads * n).map(|_| rng.below(seq) as i32).collect::<Vec<i32>>();
    let (vertical, slash) = (raw(nnz_v, &mut rng), raw(nnz_s, &mut rng));
    let vs = convert_cpu(&[seq as i32], &vertical, &slash, 1, heads, nnz_v, nnz_s, seq);
    // Head 3 is block-sparse: up to 3 random causal blocks per row block, ascending.
    let capacity = 3;
    let mut kv_num_blocks = vec![0i32; heads * rows];
    let mut kv_indices = vec![0i32; heads * rows * capacity];
    for r in 0..rows {
        let mut blocks: Vec<i32> = (0..capacity).map(|_| rng.below(r + 1) as i32).collect();
        blocks.sort_unstable();
        blocks.dedup();
        let at = 3 * rows + r;
        kv_num_blocks[at] = blocks.len() as i32;
        kv_indices[at * capacity..][..blocks.len()].copy_from_slice(&blocks);
    }
    let bs = HostBlockSparseIndex { batch: 1, heads, rows, capacity, kv_num_blocks, kv_indices };
    let mask = RealisedMask {
        batch: 1,
        seq,
        q_offset: 0,
        heads: vec![
            HeadMask::Dense,
            HeadMask::AShape(AShape { n_init: 70, n_local: 100 }),
            HeadMask::VerticalSlash,
            HeadMask::BlockSparse,
        ],
        vertical_slash: Some(vs),
        block_sparse: Some(bs),
    };
    let (counts, width, lists) = blocks_128(&mask);
    let rows_128 = seq.div_ceil(128);
    for h in 0..heads {
        for i in 0..seq {
            let blocks = key_blocks(&mask, h, i / 64);
            assert!(
                blocks.iter().all(|&b| b <= i / 64),
                "head {h} row block {}: a block right of the diagonal",
                i / 64
            );
            let at = h * rows_128 + i / 128;
            let list = &lists[at * width..][..counts[at] as usize];
            for j in (0..=i).filter(|&j| mask.contains(0, h, i, j)) {
                assert!(blocks.contains(&(j / 64)), "head {h}: ({i}, {j}) outside the 64-key blocks {blocks:?}");
                assert!(list.contains(&((j / 128) as i32)), "head {h}: ({i}, {j}) outside the 128-key blocks {list:?}");
            }
        }
    }
    let (computed, causal) = tile_counts(&mask);
    assert_eq!(causal, (heads * rows * (rows + 1) / 2) as u64);
    assert!(computed >= (rows * (rows + 1) / 2) as u64 && computed <= causal, "{computed} of {causal}");
}

#[test]
fn chunk_sizes_parse_like_lengths_one_at_a_time() {
    assert_eq!(parse_chunk_tokens("64K"), Ok(65_536));
    assert_eq!(parse_chunk_tokens("8k"), Ok(8192));
    assert_eq!(parse_chunk_tokens("65536"), Ok(65_536));
    assert_eq!(parse_chunk_tokens("1M"), Ok(1 << 20));
    for bad in ["0", "", "-8K", "8KB", "lots"] {
        let message = parse_chunk_tokens(bad).unwrap_err();
        assert!(message.contains("expected a positive number of tokens, e.g. 65536, 64K or 8K"), "{bad}: {message}");
    }
    let message = parse_chunk_tokens("64K,8K").unwrap_err();
    assert!(message.contains("one size"), "{message}");
}

#[test]
fn chunked_runs_report_their_total_and_ratio() {
    let mut chunked = record("minf", "config", "llama.json:16", 1 << 20, 4, 800.0);
    chunked.chunk_tokens = Some(65_536);
    chunked.chunked_total_ms = Some(880.0);
    chunked.chunked_ratio = Some(1.1);
    (chunked.chunked_est_ms, chunked.chunked_conv_ms, chunked.chunked_attn_ms) = (Some(21.3), Some(20.0), Some(800.5));
    // The table: three more columns with --chunk, a dash where a record has no chunked run.
    let (header, plain_header) = (table_header(true), table_header(false));
    assert!(
        header.starts_with(&plain_header) && header.ends_with("chunked ms   ratio   chunks est+conv+attn"),
        "{header}"
    );
    let row = table_row(&chunked, true);
    assert!(row.starts_with(&table_row(&chunked, false)), "{row}");
    assert!(row.ends_with("    880.000  1.100x        21.3+20.0+800.5"), "{row}");
    let without = record("minf", "dense", "", 1 << 20, 4, 500.0);
    assert!(
        table_row(&without, true).ends_with("          -       -                      -"),
        "{}",
        table_row(&without, true)
    );
    assert_eq!(header.len(), row.len(), "columns line up:\n{header}\n{row}");
    // The JSON: the three fields round-trip, and records without a chunked run omit them.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chunked.json");
    write_records(&path, &[chunked.clone(), without.clone()]).unwrap();
    assert_eq!(read_records(&path).unwrap(), [chunked.clone(), without.clone()]);
    let value = serde_json::to_value(&chunked).unwrap();
    assert_eq!(value["chunk_tokens"], 65_536);
    assert_eq!(value["chunked_total_ms"], 880.0);
    assert_eq!(value["chunked_ratio"], 1.1);
    assert_eq!((value["chunked_est_ms"].as_f64(), value["chunked_attn_ms"].as_f64()), (Some(21.3), Some(800.5)));
    let plain = serde_json::to_value(&without).unwrap();
    let fields =
        ["chunk_tokens", "chunked_total_ms", "chunked_ratio", "chunked_est_ms", "chunked_conv_ms", "chunked_attn_ms"];
    assert!(fields.iter().all(|k| plain.get(k).is_none()), "{plain}");
}

#[test]
fn recall_is_the_mean_share_of_the_dense_mass_and_shows_in_the_table() {
    // Rows keeping all, half and a tenth of their mass; a row with a non-finite share counts 0.
    let dense = [1.0f32, 2.0, 3.0, 0.5];
    let sparse = [1.0f32, 2.0 + 0.5f32.ln(), 3.0 + 0.1f32.ln(), f32::NAN];
    let recall = mean_recall(&sparse, &dense);
    assert!((recall - (1.0 + 0.5 + 0.1) / 4.0).abs() < 1e-6, "{recall}");
    // Rounding can put a sparse row a hair above its dense one: the share is capped at 1.
    assert_eq!(mean_recall(&[2.0 + 1e-6], &[2.0]), 1.0);
    assert_eq!(mean_recall(&[], &[]), 0.0);
    let mut sparse_record = record("minf", "vertical_slash", "1000,6096", 131_072, 32, 50.0);
    sparse_record.recall = Some(0.9731);
    let row = table_row(&sparse_record, false);
    assert!(row.contains(" 0.1000  0.9731 "), "{row}");
    assert_eq!(table_header(false).len(), row.len(), "columns line up:\n{}\n{row}", table_header(false));
    let value = serde_json::to_value(&sparse_record).unwrap();
    assert_eq!(value["recall"], 0.9731);
    assert!(serde_json::to_value(record("minf", "dense", "", 1024, 4, 1.0)).unwrap().get("recall").is_none());
}

#[derive(clap::Parser)]
struct RunCli {
    #[command(flatten)]
    run: super::RunArgs,
}

fn file_shape(seq: usize, heads: usize, kv_heads: usize) -> minf::HostQkv {
    minf::HostQkv { seq, heads, kv_heads, head_dim: 128, q: Vec::new(), k: Vec::new(), v: Vec::new() }
}

#[test]
fn input_files_with_fewer_heads_than_a_config_time_those_heads_of_its_layer() {
    use clap::Parser;
    let config =
        concat!(env!("CARGO_MANIFEST_DIR"), "/configs/Llama_3_8B_Instruct_262k_kv_out_v32_fit_o_best_pattern.json");
    let run = RunCli::parse_from(["bench", "--patterns", &format!("config:{config}:16")]).run;
    let shape = |qkv: &minf::HostQkv| {
        let patterns = super::run_patterns(&run).expect("patterns");
        let cases = super::case_options(&run, patterns, Some(qkv)).expect("options").cases().expect("cases");
        assert_eq!(cases.len(), 1);
        let case = &cases[0];
        (case.seq, case.heads, case.kv_heads, case.layer_heads)
    };
    // Four of the layer's 32 heads (one KV head), as `search_inputs --heads 4 --kv-heads 1` writes.
    assert_eq!(shape(&file_shape(1 << 20, 4, 1)), (1 << 20, 4, 1, 32));
    assert_eq!(shape(&file_shape(4096, 32, 8)), (4096, 32, 8, 32));
    // More heads than the layer's are no subset of it.
    let patterns = super::run_patterns(&run).expect("patterns");
    let error = super::case_options(&run, patterns, Some(&file_shape(4096, 64, 16))).expect_err("64 heads").to_string();
    assert!(error.contains("the inputs hold 64/16 query/KV heads"), "{error}");
    // Fewer heads of another grouping are no subset of it either.
    let patterns = super::run_patterns(&run).expect("patterns");
    assert!(super::case_options(&run, patterns, Some(&file_shape(4096, 4, 2))).is_err());
    // Without a config the file's shape is the case's.
    let dense = RunCli::parse_from(["bench", "--patterns", "dense"]).run;
    let patterns = super::run_patterns(&dense).expect("patterns");
    let cases =
        super::case_options(&dense, patterns, Some(&file_shape(4096, 4, 1))).expect("options").cases().expect("cases");
    assert_eq!((cases[0].heads, cases[0].kv_heads, cases[0].layer_heads), (4, 1, 4));
}

#[test]
fn comparison_refuses_no_records_and_mixed_shapes() {
    assert!(super::check_comparable(&[]).is_err_and(|e| e.to_string().contains("no records")));
    let minf = record("minf", "dense", "", 131072, 32, 40.0);
    let peer = record("sdpa_flash", "dense", "", 131072, 32, 50.0);
    assert!(super::check_comparable(&[minf.clone(), peer.clone()]).is_ok());
    let narrow = Record { head_dim: 64, ..peer.clone() };
    let error = super::check_comparable(&[minf.clone(), narrow]).map_err(|e| e.to_string()).err().unwrap_or_default();
    assert!(error.contains("head_dim 128 (bf16)") && error.contains("head_dim 64 (bf16)"), "{error}");
    let half = Record { dtype: "f16".into(), ..peer };
    assert!(super::check_comparable(&[minf, half]).is_err());
}
