//! MInference per-head configs: every shipped file loads and matches its JSON and the README's model
//! table; every kind of malformed file gets an error naming the file, the layer and the head.

use minf_codegen::{Arch, DType, KernelSpec, Mainloop, Pattern, Tile};
use minf_runtime::config::{
    known_model, ConfigError, FilePattern, HeadPattern, ModelShape, PatternConfig, FALLBACK_SLASH, FALLBACK_VERTICAL,
    MINFERENCE_BLOCK_TOP_K,
};
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The shipped configs, next to the repository (`../shared/minference-configs`). Missing is a
/// failure, never a skip.
fn configs_dir() -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/minference-configs"));
    assert!(
        dir.join("README.md").is_file(),
        "the MInference configs are missing: looked for {} (expected at ../shared/minference-configs next to the \
         repository root)",
        dir.display()
    );
    dir
}

fn shipped_configs() -> Result<Vec<PathBuf>, Box<dyn std::error::Error>> {
    let mut files: Vec<PathBuf> = fs::read_dir(configs_dir())?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    Ok(files)
}

/// The README's model table: (file-name prefix, shape) per row, one row per `prefix*` pattern.
fn readme_shapes() -> Result<Vec<(String, ModelShape)>, Box<dyn std::error::Error>> {
    let readme = fs::read_to_string(configs_dir().join("README.md"))?;
    let mut rows = Vec::new();
    for line in readme.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| file") && !l.starts_with("|---")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let [files, _model, layers, heads, kv_heads, head_dim] = cells.as_slice() else {
            return Err(format!("unexpected README table row: {line}").into());
        };
        let shape = ModelShape {
            layers: layers.parse()?,
            heads: heads.parse()?,
            kv_heads: kv_heads.parse()?,
            head_dim: head_dim.parse()?,
        };
        for part in files.split(", ") {
            let word = part.split_whitespace().next().ok_or("empty file cell")?;
            let prefix = word.split('*').next().ok_or("empty file pattern")?;
            rows.push((prefix.to_string(), shape));
        }
    }
    assert!(rows.len() >= 12, "README table not found or too short: {rows:?}");
    Ok(rows)
}

#[test]
fn every_shipped_config_loads_with_the_readme_shape_and_its_json_values() -> TestResult {
    let files = shipped_configs()?;
    assert_eq!(files.len(), 14, "expected MInference 0.1.6's 14 configs: {files:?}");
    let readme = readme_shapes()?;
    for file in &files {
        let name = file.file_name().and_then(|n| n.to_str()).ok_or("file name")?;
        // The longest README prefix that matches (Llama_3_8B vs Llama_3.1_8B do not overlap, but be safe).
        let (_, expected) = readme
            .iter()
            .filter(|(prefix, _)| name.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .ok_or_else(|| format!("{name}: no row in the README table"))?;
        let config = PatternConfig::load_for_model(file)?;
        assert_eq!(config.shape(), Some(*expected), "{name}");
        assert_eq!(known_model(file).map(|m| m.shape), Some(*expected), "{name}");
        assert_eq!(config.layers().len(), expected.layers, "{name}");
        assert_eq!(config.heads(), expected.heads, "{name}");
        assert!(config.layers().iter().all(|l| l.len() == expected.heads), "{name}");
        assert_eq!(config.source(), file.as_path());

        // Every entry against the JSON itself.
        let json: Value = serde_json::from_str(&fs::read_to_string(file)?)?;
        let layers = json.as_array().ok_or("not a list")?;
        assert_eq!(layers.len(), config.layers().len(), "{name}");
        let mut listed = 0;
        for (layer, object) in layers.iter().enumerate() {
            for (key, entry) in object.as_object().ok_or("layer not an object")? {
                let head = config.head(layer, key.parse()?).ok_or_else(|| format!("{name}: {layer}/{key}"))?;
                let entry = entry.as_array().ok_or("entry not a list")?;
                assert_eq!(Some(head.file_pattern.as_str()), entry[0].as_str(), "{name} {layer}/{key}");
                assert_eq!(Some(head.vertical_size as u64), entry[1].as_u64(), "{name} {layer}/{key}");
                assert_eq!(Some(head.slash_size as u64), entry[2].as_u64(), "{name} {layer}/{key}");
                assert_eq!(Some(head.score), entry[3].as_f64(), "{name} {layer}/{key}");
                assert!(!head.fallback);
                let (v, s) = (head.vertical_size, head.slash_size);
                let want = match entry[0].as_str() {
                    Some("vertical_and_slash") => HeadPattern::VerticalSlash { vertical: v, slash: s },
                    Some("stream_llm") => HeadPattern::AShape { n_init: v, n_local: s },
                    Some("block_sparse") => HeadPattern::BlockSparse { top_k: MINFERENCE_BLOCK_TOP_K },
                    other => return Err(format!("{name}: unexpected pattern {other:?}").into()),
                };
                assert_eq!(head.pattern, want, "{name} {layer}/{key}");
                listed += 1;
            }
        }
        // Every shipped file lists every head: none falls back.
        assert_eq!(listed, expected.layers * expected.heads, "{name}");
        assert!(config.layers().iter().flatten().all(|h| !h.fallback), "{name}");
    }
    Ok(())
}

fn shipped(prefix: &str) -> Result<PathBuf, Box<dyn std::error::Error>> {
    shipped_configs()?
        .into_iter()
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix)))
        .ok_or_else(|| format!("no shipped config {prefix}*").into())
}

#[test]
fn spot_values() -> TestResult {
    // Phi-3-mini is the only file with stream_llm heads: 43 of them, all (100, 800).
    let phi = PatternConfig::load_for_model(shipped("Phi_3_mini_128k_")?)?;
    let counts = phi.pattern_counts();
    assert_eq!(counts.get(&Pattern::AShape), Some(&43));
    assert_eq!(counts.get(&Pattern::VerticalSlash), Some(&(1024 - 43)));
    assert_eq!(phi.head(8, 1).map(|h| h.pattern), Some(HeadPattern::AShape { n_init: 100, n_local: 800 }));
    assert_eq!(phi.head(8, 1).map(|h| h.file_pattern), Some(FilePattern::StreamLlm));
    assert_eq!(phi.head(0, 0).map(|h| h.score), Some(0.33349305391311646));
    assert_eq!(phi.shape().map(|s| s.head_dim), Some(96));
    // Kernel needs: dense (always), A-shape and vertical-slash at the model's head_dim; on sm_90a
    // each on tensor maps with its wgmma twin, and vertical-slash's 64-row alternative for the
    // per-head tile choice with its twin.
    let specs = phi.kernel_specs(96, DType::Bf16, Arch::Sm90a);
    let [dense, a_shape, vertical_slash] = [Pattern::Dense, Pattern::AShape, Pattern::VerticalSlash]
        .map(|p| KernelSpec::default_for(p, DType::Bf16, 96, Arch::Sm90a));
    let tensor_maps = (Mainloop::WgmmaTma, Mainloop::WgmmaTma, Mainloop::WgmmaTma);
    assert_eq!((dense.mainloop, a_shape.mainloop, vertical_slash.mainloop), tensor_maps);
    let square = Tile { mainloop: Mainloop::WgmmaTma, ..Tile::SQUARE_WGMMA }.apply(vertical_slash);
    let want = [
        dense,
        KernelSpec { mainloop: Mainloop::Wgmma, ..dense },
        a_shape,
        KernelSpec { mainloop: Mainloop::Wgmma, ..a_shape },
        vertical_slash,
        square,
        KernelSpec { mainloop: Mainloop::Wgmma, ..vertical_slash },
        Tile::SQUARE_WGMMA.apply(vertical_slash),
    ];
    assert_eq!(specs, want);
    let on_sm80 = phi.kernel_specs(96, DType::Bf16, Arch::Sm80);
    assert_eq!(on_sm80.len(), 3, "no 64-row alternative where the default already has 64-row blocks");

    // Qwen2.5-14B-1M layer 0: head 1 is (5096, 10192), head 4 (9192, 14288).
    let qwen = PatternConfig::load_for_model(shipped("Qwen2.5_14B_Instruct_1M")?)?;
    assert_eq!(qwen.head(0, 1).map(|h| h.pattern), Some(HeadPattern::VerticalSlash { vertical: 5096, slash: 10192 }));
    assert_eq!(qwen.head(0, 4).map(|h| h.pattern), Some(HeadPattern::VerticalSlash { vertical: 9192, slash: 14288 }));
    assert_eq!(qwen.shape(), Some(ModelShape { layers: 48, heads: 40, kv_heads: 8, head_dim: 128 }));

    // Llama-3-8B-262k has integer scores; every head is vertical-slash.
    let llama = PatternConfig::load_for_model(shipped("Llama_3_8B_Instruct_262k_")?)?;
    assert_eq!(llama.pattern_counts().get(&Pattern::VerticalSlash), Some(&1024));
    assert!(llama.layers().iter().flatten().all(|h| h.score.fract() == 0.0));
    let kinds: Vec<Pattern> = llama.kernel_specs(128, DType::F16, Arch::Sm80).iter().map(|s| s.pattern).collect();
    assert_eq!(kinds, [Pattern::Dense, Pattern::VerticalSlash]);
    Ok(())
}

#[test]
fn starting_layer_ratio_and_fallback_follow_minference() -> TestResult {
    let json = r#"[{"0": ["vertical_and_slash", 1000, 6096, 0.5], "1": ["stream_llm", 100, 800, 0.9]},
                   {"0": ["block_sparse", 8, 1, 0.1], "2": ["vertical_and_slash", 30, 800, 3]}]"#;
    let config = PatternConfig::parse(json, "inline.json", 3)?;
    // Missing heads get ("vertical_and_slash", 1000, 6096).
    let fallback = config.head(0, 2).ok_or("head")?;
    assert!(fallback.fallback);
    assert_eq!(fallback.pattern, HeadPattern::VerticalSlash { vertical: FALLBACK_VERTICAL, slash: FALLBACK_SLASH });
    assert_eq!(config.head(1, 1).map(|h| h.fallback), Some(true));
    // block_sparse ignores its sizes: MInference's kernel keeps 100 blocks.
    assert_eq!(config.head(1, 0).map(|h| h.pattern), Some(HeadPattern::BlockSparse { top_k: 100 }));

    // Ratio: int(size * ratio) on both sizes of every head, the fallback included.
    let scaled = config.clone().with_ratio(0.3)?;
    assert_eq!(scaled.ratio(), Some(0.3));
    assert_eq!(scaled.head(0, 0).map(|h| h.pattern), Some(HeadPattern::VerticalSlash { vertical: 300, slash: 1828 }));
    assert_eq!(scaled.head(0, 1).map(|h| h.pattern), Some(HeadPattern::AShape { n_init: 30, n_local: 240 }));
    assert_eq!(scaled.head(0, 2).map(|h| h.pattern), Some(HeadPattern::VerticalSlash { vertical: 300, slash: 1828 }));
    assert_eq!(scaled.head(1, 0).map(|h| h.pattern), Some(HeadPattern::BlockSparse { top_k: 100 }));
    assert_eq!(scaled.head(1, 2).map(|h| h.pattern), Some(HeadPattern::VerticalSlash { vertical: 9, slash: 240 }));
    // Sizes as written stay available.
    assert_eq!(scaled.head(0, 0).map(|h| (h.vertical_size, h.slash_size)), Some((1000, 6096)));

    // Starting layer: layers below it are dense; kernels needed follow.
    let late = config.clone().with_starting_layer(1);
    assert_eq!(late.starting_layer(), 1);
    assert!(late.layers()[0].iter().all(|h| h.pattern == HeadPattern::Dense));
    assert_eq!(late.head(1, 0).map(|h| h.pattern), Some(HeadPattern::BlockSparse { top_k: 100 }));
    let kinds: Vec<Pattern> = late.kernel_specs(128, DType::Bf16, Arch::Sm90a).iter().map(|s| s.pattern).collect();
    // On sm_90a: dense on tensor maps and its wgmma twin; each index-driven pattern's default and
    // the tile choice's 64-row blocks, both on tensor maps, and their wgmma twins.
    let (dense, vertical_slash, block_sparse) = (Pattern::Dense, Pattern::VerticalSlash, Pattern::BlockSparse);
    let want = [[dense; 2].as_slice(), &[vertical_slash; 4], &[block_sparse; 4]].concat();
    assert_eq!(kinds, want);
    let all_dense = config.with_starting_layer(5);
    assert_eq!(all_dense.pattern_counts().into_iter().collect::<Vec<_>>(), [(Pattern::Dense, 6)]);
    Ok(())
}

/// Writes `json` to a temporary file named `name` and returns the error of loading it.
fn load_error(name: &str, json: &str, load: impl Fn(&Path) -> Result<PatternConfig, ConfigError>) -> ConfigError {
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => panic!("tempdir: {e}"),
    };
    let path = dir.path().join(name);
    if let Err(e) = fs::write(&path, json) {
        panic!("write {}: {e}", path.display());
    }
    match load(&path) {
        Ok(config) => panic!("{name} loaded: {config:?}"),
        Err(e) => {
            let message = e.to_string();
            assert!(message.contains(&path.display().to_string()), "message does not name the file: {message}");
            e
        }
    }
}

/// Checks that `message` names the layer and, when given, the head, and contains every `needle`.
fn assert_message(error: &ConfigError, layer: Option<usize>, head: Option<&str>, needles: &[&str]) {
    let message = error.to_string();
    if let Some(layer) = layer {
        assert!(message.contains(&format!("layer {layer}")), "no layer {layer} in: {message}");
    }
    if let Some(head) = head {
        assert!(message.contains(head), "no head {head} in: {message}");
    }
    for needle in needles {
        assert!(message.contains(needle), "no `{needle}` in: {message}");
    }
}

const GOOD: &str = r#"{"0": ["vertical_and_slash", 1000, 6096, 0.5]}"#;

fn with_layer1(layer1: &str) -> String {
    format!("[{GOOD}, {layer1}]")
}

#[test]
fn unknown_pattern_names_file_layer_head_and_suggests() {
    let load = |p: &Path| PatternConfig::load(p, 32);
    let e = load_error("typo.json", &with_layer1(r#"{"7": ["vertical_and_slahs", 1000, 6096, 0.5]}"#), load);
    assert!(matches!(e, ConfigError::UnknownPattern { .. }), "{e:?}");
    assert_message(
        &e,
        Some(1),
        Some("head 7"),
        &["\"vertical_and_slahs\"", "did you mean \"vertical_and_slash\"", "stream_llm", "block_sparse"],
    );
    let e = load_error("nothing_close.json", &with_layer1(r#"{"3": ["dense", 1, 2, 0.5]}"#), load);
    assert_message(&e, Some(1), Some("head 3"), &["unknown pattern \"dense\"; allowed"]);
    let e = load_error("number.json", &with_layer1(r#"{"3": [5, 1, 2, 0.5]}"#), load);
    assert!(matches!(e, ConfigError::PatternNotString { .. }), "{e:?}");
    assert_message(&e, Some(1), Some("head 3"), &["must be a string", "the number 5"]);
}

#[test]
fn wrong_arity_is_an_error() {
    let load = |p: &Path| PatternConfig::load(p, 32);
    let e = load_error("short.json", &with_layer1(r#"{"2": ["vertical_and_slash", 1000, 6096]}"#), load);
    assert!(matches!(e, ConfigError::Arity { .. }), "{e:?}");
    assert_message(&e, Some(1), Some("head 2"), &["a list of 4 elements", "a list of 3 element(s)"]);
    let e = load_error("scalar.json", &with_layer1(r#"{"2": "vertical_and_slash"}"#), load);
    assert_message(&e, Some(1), Some("head 2"), &["a list of 4 elements", "the string"]);
}

#[test]
fn negative_and_non_integer_sizes_are_errors() {
    let load = |p: &Path| PatternConfig::load(p, 32);
    let e = load_error("negative.json", &with_layer1(r#"{"5": ["vertical_and_slash", -1000, 6096, 0.5]}"#), load);
    assert!(matches!(e, ConfigError::Size { field: "vertical_size", .. }), "{e:?}");
    assert_message(&e, Some(1), Some("head 5"), &["vertical_size must be a non-negative integer", "-1000"]);
    let e = load_error("fraction.json", &with_layer1(r#"{"5": ["stream_llm", 100, 800.5, 0.5]}"#), load);
    assert!(matches!(e, ConfigError::Size { field: "slash_size", .. }), "{e:?}");
    assert_message(&e, Some(1), Some("head 5"), &["slash_size must be a non-negative integer", "800.5"]);
    let e = load_error("string.json", &with_layer1(r#"{"5": ["stream_llm", "100", 800, 0.5]}"#), load);
    assert_message(&e, Some(1), Some("head 5"), &["vertical_size", "the string \"100\""]);
    let e = load_error("score.json", &with_layer1(r#"{"5": ["stream_llm", 100, 800, "high"]}"#), load);
    assert!(matches!(e, ConfigError::Score { .. }), "{e:?}");
    assert_message(&e, Some(1), Some("head 5"), &["score", "must be a number"]);
}

#[test]
fn head_keys_must_be_indices_below_the_head_count() {
    let load = |p: &Path| PatternConfig::load(p, 32);
    let e = load_error("key.json", &with_layer1(r#"{"head3": ["vertical_and_slash", 1000, 6096, 0.5]}"#), load);
    assert!(matches!(e, ConfigError::HeadKey { .. }), "{e:?}");
    assert_message(&e, Some(1), Some("\"head3\""), &["not a query-head index", "from 0 to 31"]);
    for key in ["-1", "07", " 7", "+7", ""] {
        let json = with_layer1(&format!(r#"{{"{key}": ["vertical_and_slash", 1000, 6096, 0.5]}}"#));
        let e = load_error("key.json", &json, load);
        assert!(matches!(e, ConfigError::HeadKey { .. }), "{key:?}: {e:?}");
    }
    let e = load_error("range.json", &with_layer1(r#"{"32": ["vertical_and_slash", 1000, 6096, 0.5]}"#), load);
    assert!(matches!(e, ConfigError::HeadOutOfRange { head: 32, heads: 32, .. }), "{e:?}");
    assert_message(&e, Some(1), Some("head 32"), &["out of range", "32 query heads", "0 to 31"]);
}

#[test]
fn structure_and_json_errors() {
    let load = |p: &Path| PatternConfig::load(p, 32);
    let e = load_error("object.json", GOOD, load);
    assert!(matches!(e, ConfigError::NotAList { .. }), "{e:?}");
    assert_message(&e, None, None, &["expected a JSON list with one object per layer", "an object with 1 key(s)"]);
    let e = load_error("nested.json", &with_layer1(r#"[["vertical_and_slash", 1000, 6096, 0.5]]"#), load);
    assert!(matches!(e, ConfigError::LayerNotObject { .. }), "{e:?}");
    assert_message(&e, Some(1), None, &["expected an object mapping query-head indices", "a list of 1 element(s)"]);
    // A trailing comma on line 3.
    let e = load_error("broken.json", "[\n{\"0\": [\"vertical_and_slash\", 1000, 6096, 0.5]},\n]\n", load);
    let ConfigError::Json { line, column, .. } = e else { panic!("{e:?}") };
    assert_eq!((line, column), (3, 1));
    assert_message(&e, None, None, &[":3:1: invalid JSON: trailing comma"]);
    let e = load_error("empty.json", "", load);
    assert_message(&e, None, None, &["invalid JSON"]);
    // An unreadable file names itself too.
    let missing = Path::new("/nonexistent/minf/config.json");
    let message = PatternConfig::load(missing, 32).map(|_| ()).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("/nonexistent/minf/config.json: cannot read"), "{message}");
    // Even where its name matches no model: the missing file, not the name, is the error.
    let e = PatternConfig::load_for_model(missing).map(|_| ()).err();
    assert!(matches!(e, Some(ConfigError::Read { .. })), "{e:?}");
    // A list without layers.
    let e = load_error("no-layers.json", "[]", load);
    assert!(matches!(e, ConfigError::NoLayers { .. }), "{e:?}");
    assert_message(&e, None, None, &["lists no layers"]);
}

#[test]
fn layer_count_and_model_shape_errors() {
    // A file named like a shipped Llama-3-8B config must have its 32 layers.
    let e = load_error("Llama_3_8B_Instruct_262k_short.json", &with_layer1("{}"), |p| PatternConfig::load_for_model(p));
    assert!(matches!(e, ConfigError::LayerCount { found: 2, expected: 32, .. }), "{e:?}");
    assert_message(&e, None, None, &["has 2 layers", "Llama-3-8B-Instruct-262k has 32"]);
    // An explicit shape checks layers and heads.
    let shape = ModelShape { layers: 3, heads: 4, kv_heads: 2, head_dim: 64 };
    let e = load_error("custom.json", &with_layer1("{}"), |p| PatternConfig::load_with_shape(p, shape));
    assert_message(&e, None, None, &["has 2 layers", "the given model shape has 3"]);
    let e = load_error("custom.json", &with_layer1(r#"{"4": ["stream_llm", 1, 2, 3]}"#), |p| {
        PatternConfig::load_with_shape(p, shape)
    });
    assert_message(&e, Some(1), Some("head 4"), &["0 to 3"]);
    // Unknown file names need a shape.
    let e = load_error("custom.json", &with_layer1("{}"), |p| PatternConfig::load_for_model(p));
    assert!(matches!(e, ConfigError::UnknownModel { .. }), "{e:?}");
    assert_message(&e, None, None, &["no known model shape", "Phi_3_mini_128k_*", "--heads", "load_with_shape"]);
    // Zero heads and a bad ratio.
    let e = load_error("zero.json", &with_layer1("{}"), |p| PatternConfig::load(p, 0));
    assert_message(&e, None, None, &["at least 1"]);
    let e = load_error("ratio.json", &with_layer1("{}"), |p| PatternConfig::load(p, 4)?.with_ratio(-0.5));
    assert!(matches!(e, ConfigError::Ratio { .. }), "{e:?}");
    assert_message(&e, None, None, &["invalid ratio -0.5", ">= 0"]);
}

#[test]
fn config_errors_convert_into_minf_error() {
    let error = PatternConfig::parse("{}", "x.json", 4).map(|_| ()).map_err(minf_runtime::MinfError::from);
    let message = error.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.starts_with("x.json: expected a JSON list"), "{message}");
}
