//! GPU tests of the offline pattern search (`minf::search`): planted heads whose best pattern is
//! known are recovered, under both criteria; the same inputs give the same file; a finished
//! search resumes from its progress file without evaluating again; with grouped-query attention
//! every query head gets its shared key/value head's pattern.
//!
//! Each planted head's scores are built from orthogonal one-hot directions, so every score is
//! exactly 25 (27 for planted columns and sinks, so they rank first among the estimate's columns)
//! or exactly 0 (scaled logits): the mass off the planted keys is below `16384 * e^-25`, and a
//! candidate that covers the planted keys matches dense attention, one that misses some does not.
//!
//! - **sink + window**: 64 sink tokens, and the keys of the query's 512-token segment and the one
//!   before (a window of 512 to 1023 keys; segments start 256 tokens before multiples of 512).
//!   `stream_llm (64, 1024)` covers it exactly and is the cheapest candidate that does;
//!   `vertical_and_slash (64, 512)` misses the far part of the window: the last 64 queries, which
//!   the estimate reads, sit 192 to 255 tokens into their segment, so the window diagonals it
//!   keeps have offsets below 705 (equal mass up to 704, less past it; the others it keeps are the
//!   sinks'), and their 64-key ranges reach offsets below 768, while queries late in a segment
//!   need offsets up to 1023. (With segments aligned to the prompt's end the last
//!   queries would rank diagonals up to 960 as equals, and which of them the estimate kept, by
//!   f32 rounding, would decide whether its ranges reach the whole window.) `block_sparse` covers
//!   it at 100 key blocks per row block.
//! - **vertical-slash**: 8 planted key columns and the keys of the query's 256-token segment and
//!   the one before (diagonals 0 to 511). `vertical_and_slash (64, 512)` covers it exactly;
//!   `stream_llm` misses the columns; the larger vertical-slash and `block_sparse` cost more.
//! - **block-diagonal**: causal blocks of 6144 tokens (96 key blocks). Only `block_sparse` (top
//!   100 key blocks) covers them; no candidate keeps 6143 diagonals.

use super::{device, test_seed};
use minf::search::{
    progress_path, run_search, Candidate, Criterion, SearchInputs, SearchOptions, SearchShape, SearchSpace,
};
use minf::{save_safetensors, HostQkv};
use minf_testkit::reference::random_normal;
use std::path::Path;

const SEQ: usize = 16384;
const HEAD_DIM: usize = 128;
const SINK: usize = 64;
const WINDOW_SEGMENT: usize = 512;
/// Window segment `n` holds the tokens `512 n - 256 .. 512 n + 256` (see the module docs).
const WINDOW_SHIFT: usize = 256;
const BAND_SEGMENT: usize = 256;
const BLOCK: usize = 6144;
const COLUMNS: [usize; 8] = [1000, 2500, 4100, 5600, 7300, 9000, 11000, 13000];

/// Dimensions of each head's directions: window segments (33), band segments (64), blocks, the
/// sink and the planted columns (a head uses only its own pattern's).
const WINDOW_DIMS: usize = 0;
const BAND_DIMS: usize = 32;
const BLOCK_DIMS: usize = 96;
const SINK_DIM: usize = 99;
const COLUMN_DIM: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Planted {
    SinkWindow,
    VerticalSlash,
    BlockDiagonal,
}

impl Planted {
    /// The candidate that must win in [`space`].
    fn expected(self) -> Candidate {
        match self {
            Planted::SinkWindow => Candidate::StreamLlm { n_init: 64, n_local: 1024 },
            Planted::VerticalSlash => Candidate::VerticalSlash { vertical: 64, slash: 512 },
            Planted::BlockDiagonal => Candidate::BlockSparse,
        }
    }
}

/// One candidate per planted structure that fits it best, and one large vertical-slash candidate
/// that covers the first two at a higher cost.
fn space() -> SearchSpace {
    SearchSpace::parse(
        r#"{"budget_keys": 6400, "tolerance": 0.25, "candidates": [
            {"pattern": "stream_llm", "n_init": 64, "n_local": 1024},
            {"pattern": "vertical_and_slash", "vertical": 64, "slash": 512},
            {"pattern": "vertical_and_slash", "vertical": 2048, "slash": 4096},
            {"pattern": "block_sparse"}]}"#,
        "planted-space.json",
    )
    .expect("test space")
}

/// Q/K/V of one layer whose key/value heads are `heads`, each shared by `group` query heads that
/// all carry its structure, values drawn from `seed`.
fn planted_layer(heads: &[Planted], group: usize, seed: u64) -> HostQkv {
    let kv_count = heads.len();
    let h_count = kv_count * group;
    // q . k = AMPLITUDE^2 gives a scaled score of 25.
    let amplitude = (25.0 * (HEAD_DIM as f32).sqrt()).sqrt();
    let heavy = amplitude * 27.0 / 25.0;
    let mut q = vec![0f32; SEQ * h_count * HEAD_DIM];
    let mut k = vec![0f32; SEQ * kv_count * HEAD_DIM];
    for (h, planted) in (0..h_count).map(|h| (h, heads[h / group])) {
        // The first query head of a group writes its key/value head's keys.
        let writes_keys = h % group == 0;
        for t in 0..SEQ {
            let at = (t * h_count + h) * HEAD_DIM;
            let kv_at = (t * kv_count + h / group) * HEAD_DIM;
            let q_row = &mut q[at..at + HEAD_DIM];
            let mut scratch = [0f32; HEAD_DIM];
            let k_row = if writes_keys { &mut k[kv_at..kv_at + HEAD_DIM] } else { &mut scratch[..] };
            match planted {
                Planted::SinkWindow => {
                    let segment = (t + WINDOW_SHIFT) / WINDOW_SEGMENT;
                    q_row[WINDOW_DIMS + segment] = amplitude;
                    if segment > 0 {
                        q_row[WINDOW_DIMS + segment - 1] = amplitude;
                    }
                    q_row[SINK_DIM] = amplitude;
                    if t < SINK {
                        k_row[SINK_DIM] = heavy;
                    } else {
                        k_row[WINDOW_DIMS + segment] = amplitude;
                    }
                }
                Planted::VerticalSlash => {
                    let segment = t / BAND_SEGMENT;
                    q_row[BAND_DIMS + segment] = amplitude;
                    if segment > 0 {
                        q_row[BAND_DIMS + segment - 1] = amplitude;
                    }
                    q_row[COLUMN_DIM] = amplitude;
                    if COLUMNS.contains(&t) {
                        k_row[COLUMN_DIM] = heavy;
                    } else {
                        k_row[BAND_DIMS + segment] = amplitude;
                    }
                }
                Planted::BlockDiagonal => {
                    q_row[BLOCK_DIMS + t / BLOCK] = amplitude;
                    k_row[BLOCK_DIMS + t / BLOCK] = amplitude;
                }
            }
        }
    }
    let v = random_normal(SEQ * kv_count * HEAD_DIM, seed);
    HostQkv { seq: SEQ, heads: h_count, kv_heads: kv_count, head_dim: HEAD_DIM, q, k, v }
}

const LAYERS: [[Planted; 3]; 2] = [
    [Planted::SinkWindow, Planted::VerticalSlash, Planted::BlockDiagonal],
    [Planted::BlockDiagonal, Planted::SinkWindow, Planted::VerticalSlash],
];

/// Two prompts (different values) of the two layers in [`LAYERS`], each key/value head shared by
/// `group` query heads.
fn write_inputs(dir: &Path, group: usize, seed: u64) {
    for (p, prompt) in ["a", "b"].iter().enumerate() {
        let prompt_dir = dir.join(prompt);
        std::fs::create_dir_all(&prompt_dir).expect("prompt dir");
        for (layer, heads) in LAYERS.iter().enumerate() {
            let qkv = planted_layer(heads, group, seed.wrapping_add((10 * p + layer) as u64));
            save_safetensors(&qkv, prompt_dir.join(format!("layer_{layer}.safetensors"))).expect("write layer");
        }
    }
}

fn search(inputs: &SearchInputs, group: usize, criterion: Criterion, output: &Path) -> (String, usize) {
    let device = device();
    let shape = SearchShape { heads: 3 * group, kv_heads: 3, head_dim: HEAD_DIM };
    let options = SearchOptions { criterion, sample_blocks: 0 };
    let mut evaluated = 0;
    let choices = run_search(&device, inputs, shape, &space(), options, output, |report| {
        evaluated += usize::from(!report.resumed);
        for (h, choice) in report.choices.iter().enumerate() {
            println!(
                "{criterion} layer {} head {h}: {} score {} cost {} budget {}",
                report.layer, choice.candidate, choice.score, choice.cost, choice.budget
            );
        }
    })
    .expect("search");
    for (layer, heads) in LAYERS.iter().enumerate() {
        for (h, planted) in (0..3 * group).map(|h| (h, heads[h / group])) {
            let chosen = &choices[layer][h];
            assert_eq!(
                chosen.candidate,
                planted.expected(),
                "{criterion}: layer {layer} head {h} ({planted:?}) chose {} (score {}, cost {}, budget {})",
                chosen.candidate,
                chosen.score,
                chosen.cost,
                chosen.budget
            );
        }
    }
    (std::fs::read_to_string(output).expect("config written"), evaluated)
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn search_recovers_planted_heads_deterministically_and_resumes() {
    let seed = test_seed("search_recovers_planted_heads");
    let dir = tempfile::tempdir().expect("temp dir");
    write_inputs(&dir.path().join("inputs"), 1, seed);
    let inputs = SearchInputs::discover(dir.path().join("inputs")).expect("inputs");
    assert_eq!((inputs.layers(), inputs.prompts.len()), (2, 2));

    for criterion in [Criterion::Mismatch, Criterion::Recall] {
        let first = dir.path().join(format!("{criterion}-first.json"));
        let (text, evaluated) = search(&inputs, 1, criterion, &first);
        assert_eq!(evaluated, 2);
        // The config reads back with the choices and their scores.
        let config = minf::PatternConfig::load(&first, 3).expect("written config reads back");
        assert_eq!(config.layers().len(), 2);
        assert!(config.layers().iter().flatten().all(|head| !head.fallback));
        if criterion == Criterion::Recall {
            assert!(config.layers().iter().flatten().all(|head| head.score > 0.999), "{text}");
        }
        // A second search of the same inputs writes the same file.
        let second = dir.path().join(format!("{criterion}-second.json"));
        let (again, _) = search(&inputs, 1, criterion, &second);
        assert_eq!(again, text, "{criterion}: the same inputs gave different configs");
        // Searching into the first output again reads every layer from its progress file.
        assert!(progress_path(&first).is_file());
        let (resumed, evaluated) = search(&inputs, 1, criterion, &first);
        assert_eq!((resumed, evaluated), (text, 0));
    }
}

/// Grouped-query attention: each planted key/value head is shared by two query heads, and each
/// query head is given its key/value head's pattern.
#[test]
#[ignore = "needs a CUDA GPU"]
fn search_maps_query_heads_to_their_shared_key_value_heads() {
    let seed = test_seed("search_gqa");
    let dir = tempfile::tempdir().expect("temp dir");
    write_inputs(&dir.path().join("inputs"), 2, seed);
    let inputs = SearchInputs::discover(dir.path().join("inputs")).expect("inputs");
    let output = dir.path().join("gqa.json");
    let (_, evaluated) = search(&inputs, 2, Criterion::Mismatch, &output);
    assert_eq!(evaluated, 2);
    let config = minf::PatternConfig::load(&output, 6).expect("written config reads back");
    assert_eq!(config.layers().iter().map(Vec::len).collect::<Vec<_>>(), vec![6, 6]);
}
