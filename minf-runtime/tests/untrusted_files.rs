//! The readers of user-supplied files never panic on arbitrary bytes or on damaged versions of
//! valid files: the safetensors Q/K/V loader ([`load_safetensors`]) and the MInference config
//! parser ([`PatternConfig`]).
//!
//! The loader also never allocates much more than the file's own size: a tracking allocator
//! records the largest single allocation each thread requests, so a loader that believed a
//! header's shape or offsets before checking them against the file fails here even where the
//! allocation happened to succeed. The config parser refuses tables larger than any model's.

use minf_runtime::config::{ConfigError, PatternConfig};
use minf_runtime::qkv::load_safetensors;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::path::Path;

/// [`System`], recording the largest allocation request of each thread.
struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: the slot may be gone while a thread is being torn down.
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
}

// SAFETY: every call is forwarded unchanged to `System`; recording touches only a thread-local
// `Cell<usize>`, which needs no allocation and has no destructor.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as for `alloc`; `ptr` and `layout` come from this allocator, that is, from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `realloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Runs `f` and returns its result with the largest single allocation it requested.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|largest| largest.set(0));
    let result = f();
    (result, LARGEST.with(Cell::get))
}

/// Allocation allowed for reading a file of `len` bytes: the file itself, a tensor widened from
/// 16 to 32 bits, its transposed copy, and bookkeeping.
fn allowance(len: usize) -> usize {
    4 * len + (1 << 20)
}

/// Loads `bytes` written to `path` and checks the largest allocation and, if it loads, the result.
/// A panic fails the case too: the test runner catches it.
fn load_checked(path: &Path, bytes: &[u8]) -> Result<(), TestCaseError> {
    std::fs::write(path, bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let (result, largest) = largest_allocation(|| load_safetensors(path));
    prop_assert!(
        largest <= allowance(bytes.len()),
        "loading {} bytes allocated {largest} bytes at once ({result:?})",
        bytes.len()
    );
    if let Ok(qkv) = result {
        let (seq, heads, kv_heads, dim) = (qkv.seq, qkv.heads, qkv.kv_heads, qkv.head_dim);
        prop_assert!(seq > 0 && dim > 0 && kv_heads > 0 && heads % kv_heads == 0, "{seq} {heads} {kv_heads} {dim}");
        prop_assert_eq!(qkv.q.len(), seq * heads * dim);
        prop_assert_eq!(qkv.k.len(), seq * kv_heads * dim);
        prop_assert_eq!(qkv.v.len(), seq * kv_heads * dim);
    }
    Ok(())
}

/// A valid Q/K/V file: random sizes, dtype, rank and layout metadata.
fn valid_qkv_file() -> impl Strategy<Value = Vec<u8>> {
    (1usize..6, 1usize..4, 1usize..4, 1usize..6, 0usize..3, 0usize..4, any::<u64>()).prop_map(
        |(seq, kv_heads, group, dim, dtype, form, seed)| {
            let heads = kv_heads * group;
            let (dtype, width) = [(Dtype::F32, 4), (Dtype::BF16, 2), (Dtype::F16, 2)][dtype];
            let layout = [None, Some("bshd"), Some("bhsd"), None][form];
            let shape = |s: usize, h: usize, d: usize| match form {
                0 => vec![s, h, d],
                1 => vec![1, s, h, d],
                _ => vec![1, h, s, d],
            };
            let tensors: Vec<(&str, Vec<usize>)> =
                vec![("q", shape(seq, heads, dim)), ("k", shape(seq, kv_heads, dim)), ("v", shape(seq, kv_heads, dim))];
            let data: Vec<Vec<u8>> = tensors
                .iter()
                .enumerate()
                .map(|(i, (_, shape))| {
                    let bytes = shape.iter().product::<usize>() * width;
                    // Small finite values in every dtype: a byte pattern from the seed, high byte tamed.
                    (0..bytes)
                        .map(|b| if b % width == width - 1 { 0x3c } else { (seed >> ((b + i) % 8 * 8)) as u8 })
                        .collect()
                })
                .collect();
            let views: Vec<(&str, TensorView<'_>)> = tensors
                .iter()
                .zip(&data)
                .map(|((name, shape), data)| {
                    let view = TensorView::new(dtype, shape.clone(), data).unwrap_or_else(|e| panic!("{name}: {e}"));
                    (*name, view)
                })
                .collect();
            let metadata = layout.map(|l| HashMap::from([("layout".to_string(), l.to_string())]));
            safetensors::serialize(views, metadata).unwrap_or_else(|e| panic!("serialize: {e}"))
        },
    )
}

/// A number a lying header might carry: small, at a power-of-two edge, or anything.
fn header_number() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..80,
        1 => Just(u64::MAX),
        1 => Just(u64::MAX / 2),
        1 => Just(1 << 32),
        1 => Just((1 << 32) - 1),
        1 => Just(1 << 61),
        1 => Just(1 << 53),
        1 => any::<u64>(),
    ]
}

/// A tensor's header entry: name, dtype, shape, and the data offsets used unless chained.
type HeaderTensor = (&'static str, &'static str, Vec<u64>, u64, u64);

/// Bytes per element of the dtypes `lying_file` writes (`None`: not a whole number of bytes).
fn width(dtype: &str) -> Option<u64> {
    match dtype {
        "F64" | "I64" => Some(8),
        "F32" => Some(4),
        "BF16" | "F16" => Some(2),
        "U8" | "BOOL" => Some(1),
        _ => None,
    }
}

/// A header whose shapes, offsets, dtypes and metadata need not agree with each other or with the
/// data that follows it. With `chained`, each tensor's offsets follow from its shape and dtype
/// where they can (so the file gets past the format's own checks to minf's); otherwise they are
/// drawn like the rest.
fn lying_file() -> impl Strategy<Value = Vec<u8>> {
    let dtype = prop_oneof![
        4 => prop::sample::select(vec!["F32", "BF16", "F16"]),
        1 => prop::sample::select(vec!["F64", "U8", "BOOL", "F4", "I64", "Q4", ""]),
    ];
    let axis = prop_oneof![12 => 0u64..6, 1 => header_number()];
    let tensor = (dtype.clone(), prop::collection::vec(axis.clone(), 0..5), header_number(), header_number());
    let names = prop_oneof![
        3 => Just(vec!["q", "k", "v"]),
        1 => prop::collection::vec(prop::sample::select(vec!["q", "k", "v", "x"]), 0..5),
    ];
    let unrelated = (names, prop::collection::vec(tensor, 5))
        .prop_map(|(names, tensors)| names.into_iter().zip(tensors).map(|(n, (d, s, a, b))| (n, d, s, a, b)).collect());
    // q, k and v shaped alike, as a file for minf would be, with some axis or rank off.
    let related = (dtype, prop::collection::vec(axis, 6), 0usize..4, header_number(), header_number()).prop_map(
        |(dtype, axes, form, start, end)| {
            let [seq, heads, kv_heads, dim, kv_seq, kv_dim] = [axes[0], axes[1], axes[2], axes[3], axes[4], axes[5]];
            let shape = |s: u64, h: u64, d: u64| match form {
                0 => vec![s, h, d],
                1 => vec![1, s, h, d],
                2 => vec![1, h, s, d],
                _ => vec![h, s, d, 1],
            };
            // Usually the keys' sequence and head dim agree with the queries'.
            let kv = if kv_seq % 4 == 0 { shape(kv_seq, kv_heads, kv_dim) } else { shape(seq, kv_heads, dim) };
            vec![
                ("q", dtype, shape(seq, heads, dim), start, end),
                ("k", dtype, kv.clone(), start, end),
                ("v", dtype, if kv_dim % 5 == 0 { shape(kv_dim, kv_seq, 1) } else { kv }, start, end),
            ]
        },
    );
    let tensors = prop_oneof![unrelated, related];
    let layout = prop::sample::select(vec![None, Some("bshd"), Some("bhsd"), Some("bsdh")]);
    let data = prop::collection::vec(any::<u8>(), 0..200);
    let honest_length = prop::bool::weighted(0.8);
    (tensors, layout, data, prop::bool::weighted(0.75), honest_length).prop_map(
        |(tensors, layout, mut data, chained, honest_length): (Vec<HeaderTensor>, _, _, _, _)| {
            let mut header = serde_json::Map::new();
            let mut offset = 0u64;
            for (name, dtype, shape, start, end) in tensors {
                let bytes = width(dtype)
                    .and_then(|w| shape.iter().try_fold(w, |n, &axis| n.checked_mul(axis)))
                    .filter(|&bytes| chained && bytes <= 4096 && offset <= 1 << 16);
                let offsets = match bytes.and_then(|bytes| offset.checked_add(bytes)) {
                    Some(chained_end) => [offset, chained_end],
                    None if chained => [offset, offset + end % 64],
                    None => [start, end],
                };
                offset = offsets[1];
                header.insert(name.to_string(), json!({ "dtype": dtype, "shape": shape, "data_offsets": offsets }));
            }
            if let Some(layout) = layout {
                header.insert("__metadata__".to_string(), json!({ "layout": layout }));
            }
            if chained {
                let pattern = if data.is_empty() { vec![0x3c] } else { data };
                data = pattern.iter().copied().cycle().take(offset as usize).collect();
            }
            let header = Value::Object(header).to_string().into_bytes();
            let n = if honest_length { header.len() as u64 } else { header.len() as u64 + data.len() as u64 / 2 };
            let mut file = n.to_le_bytes().to_vec();
            file.extend_from_slice(&header);
            file.extend_from_slice(&data);
            file
        },
    )
}

/// A damage done to a valid file.
#[derive(Debug, Clone)]
enum Damage {
    /// Keep only this fraction (per mille) of the bytes.
    Truncate(u16),
    /// XOR the byte at this fraction (per mille) of the file with a non-zero mask.
    Flip(Vec<(u16, u8)>),
    /// Replace the 8-byte header length.
    HeaderLength(u64),
    /// Replace a run of digits in the header with another number.
    Number(u16, u64),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (0u16..1000).prop_map(Damage::Truncate),
        prop::collection::vec((0u16..1000, 1u8..=255), 1..8).prop_map(Damage::Flip),
        header_number().prop_map(Damage::HeaderLength),
        (0u16..1000, header_number()).prop_map(|(at, n)| Damage::Number(at, n)),
    ]
}

fn apply(damage: &Damage, mut bytes: Vec<u8>) -> Vec<u8> {
    let at = |per_mille: u16, len: usize| per_mille as usize * len / 1000;
    match damage {
        Damage::Truncate(keep) => bytes.truncate(at(*keep, bytes.len())),
        Damage::Flip(flips) => {
            for &(position, mask) in flips {
                let i = at(position, bytes.len());
                bytes[i] ^= mask;
            }
        }
        Damage::HeaderLength(n) => bytes[..8].copy_from_slice(&n.to_le_bytes()),
        Damage::Number(position, n) => {
            let header_end =
                (8 + u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8])) as usize).min(bytes.len());
            let digits: Vec<usize> = (8..header_end).filter(|&i| bytes[i].is_ascii_digit()).collect();
            if let Some(&start) = digits.get(at(*position, digits.len())) {
                let end = (start..header_end).find(|&i| !bytes[i].is_ascii_digit()).unwrap_or(header_end);
                bytes.splice(start..end, n.to_string().into_bytes());
            }
        }
    }
    bytes
}

/// Cases per property.
const CASES: u32 = 1000;

/// Runs `check` on [`CASES`] inputs drawn from `strategy`, all in one scratch directory.
fn run_cases<S: Strategy>(strategy: S, check: impl Fn(&Path, S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temporary directory: {e}"));
    let config = ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() };
    if let Err(e) = TestRunner::new(config).run(&strategy, |value| check(dir.path(), value)) {
        panic!("{e}");
    }
}

#[test]
fn safetensors_loader_survives_arbitrary_bytes() {
    run_cases(prop::collection::vec(any::<u8>(), 0..600), |dir, bytes| {
        load_checked(&dir.join("random.safetensors"), &bytes)?;
        // The same bytes behind a header length that fits the file, to reach the JSON parser.
        let mut framed = (bytes.len() as u64).to_le_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        load_checked(&dir.join("framed.safetensors"), &framed)
    });
}

#[test]
fn safetensors_loader_reads_valid_files_and_survives_their_damage() {
    run_cases((valid_qkv_file(), damage()), |dir, (file, damage)| {
        let path = dir.join("qkv.safetensors");
        std::fs::write(&path, &file).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let loaded = load_safetensors(&path);
        prop_assert!(loaded.is_ok(), "a valid file must load: {loaded:?}");
        load_checked(&path, &apply(&damage, file))
    });
}

#[test]
fn safetensors_loader_survives_lying_headers() {
    run_cases(lying_file(), |dir, file| load_checked(&dir.join("lying.safetensors"), &file));
}

/// A header of tensors, each of a size the parser accepts, whose offsets chain up to
/// `u64::MAX - 7`, far past the end of the file.
#[test]
fn safetensors_offsets_past_the_end_of_the_file_are_an_error() {
    // The largest byte count whose bit count fits a u64.
    let step = u64::MAX / 8;
    let mut header = serde_json::Map::new();
    for i in 0..8u64 {
        let tensor = json!({ "dtype": "U8", "shape": [step], "data_offsets": [i * step, (i + 1) * step] });
        header.insert(format!("t{i}"), tensor);
    }
    let header = Value::Object(header).to_string().into_bytes();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&header);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("offsets.safetensors");
    std::fs::write(&path, &file).unwrap_or_else(|e| panic!("{e}"));
    assert!(load_safetensors(&path).is_err());
}

/// Empty tensors whose other axes are huge describe no data: an error, not a loop over the axes.
#[test]
fn safetensors_empty_tensors_with_huge_axes_are_an_error() {
    let huge = 1u64 << 40;
    for shape in [json!([1, huge, 0, huge]), json!([0, huge, huge]), json!([1, 0, huge, huge])] {
        let mut header = serde_json::Map::new();
        for name in ["q", "k", "v"] {
            header.insert(name.to_string(), json!({ "dtype": "F32", "shape": shape, "data_offsets": [0, 0] }));
        }
        let header = Value::Object(header).to_string().into_bytes();
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(&header);
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("empty.safetensors");
        std::fs::write(&path, &file).unwrap_or_else(|e| panic!("{e}"));
        let err = load_safetensors(&path).err().unwrap_or_else(|| panic!("{shape} loaded"));
        assert!(err.to_string().contains("no elements"), "{shape}: {err}");
    }
}

/// Checks a parse result: a config has one entry per head in every layer, and its derived views
/// (ratio, starting layer, kernel list) work on whatever it holds.
fn check_config(result: Result<PatternConfig, ConfigError>, heads: usize, ratio: f64) -> Result<(), TestCaseError> {
    match result {
        Ok(config) => {
            prop_assert!(config.layers().iter().all(|layer| layer.len() == heads));
            let layers = config.layers().len();
            let config = config.with_starting_layer(layers / 2);
            let _ = config.pattern_counts();
            let _ = config.kernel_specs(128, minf_codegen::DType::Bf16, minf_codegen::Arch::Sm80);
            if let Ok(scaled) = config.with_ratio(ratio) {
                prop_assert_eq!(scaled.layers().len(), layers);
            }
        }
        Err(err) => prop_assert!(!err.to_string().is_empty()),
    }
    Ok(())
}

/// A JSON value shaped like a config: a list of layers mapping keys to entries, every part of
/// which may be wrong.
fn config_json() -> impl Strategy<Value = String> {
    let number = prop_oneof![
        (0u64..10_000).prop_map(|n| json!(n)),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|x| json!(x)),
        Just(json!(u64::MAX)),
        Just(json!(null)),
        Just(json!("1000")),
    ];
    let pattern = prop::sample::select(vec!["vertical_and_slash", "stream_llm", "block_sparse", "vertcal_slash", ""])
        .prop_map(|p| json!(p));
    let entry =
        prop::collection::vec(prop_oneof![3 => number.clone(), 1 => pattern.clone()], 0..6).prop_map(Value::Array);
    let valid_entry = (pattern, number.clone(), number.clone(), number).prop_map(|(p, v, s, x)| json!([p, v, s, x]));
    let key = prop_oneof![
        (0usize..40).prop_map(|h| h.to_string()),
        prop::sample::select(vec!["007", "-1", "+2", " 3", "", "1.0", "99999999999999999999999"])
            .prop_map(String::from),
        "[0-9a-z]{0,4}",
    ];
    let layer = prop::collection::vec((key, prop_oneof![3 => valid_entry, 1 => entry]), 0..6)
        .prop_map(|heads| Value::Object(heads.into_iter().collect()));
    let layer_or_not = prop_oneof![8 => layer, 1 => Just(json!([])), 1 => Just(json!(3))];
    prop::collection::vec(layer_or_not, 0..5).prop_map(|layers| Value::Array(layers).to_string())
}

#[test]
fn config_parser_survives_arbitrary_bytes() {
    let input = (prop::collection::vec(any::<u8>(), 0..400), 1usize..64, any::<f64>());
    run_cases(input, |dir, (bytes, heads, ratio)| {
        let text = String::from_utf8_lossy(&bytes);
        check_config(PatternConfig::parse(&text, "random.json", heads), heads, ratio)?;
        let path = dir.join("random.json");
        std::fs::write(&path, &bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_config(PatternConfig::load(&path, heads), heads, ratio)
    });
}

#[test]
fn config_parser_survives_wrong_and_damaged_configs() {
    let damage = (0usize..1000, prop::collection::vec((0usize..1000, 1u8..=127), 0..4));
    run_cases((config_json(), 1usize..48, any::<f64>(), damage), |_, (json, heads, ratio, (cut, flips))| {
        check_config(PatternConfig::parse(&json, "config.json", heads), heads, ratio)?;
        let mut damaged = json.into_bytes();
        for (position, mask) in flips {
            if !damaged.is_empty() {
                let i = position * damaged.len() / 1000;
                damaged[i] ^= mask;
            }
        }
        damaged.truncate(cut * damaged.len() / 1000 + 1);
        check_config(PatternConfig::parse(&String::from_utf8_lossy(&damaged), "config.json", heads), heads, ratio)
    });
}

/// Huge head counts (a caller's `--heads`) and many layers are refused before the per-head table
/// is allocated.
#[test]
fn config_parser_refuses_a_table_too_large_to_be_a_model() {
    let (result, largest) = largest_allocation(|| PatternConfig::parse("[{}, {}]", "config.json", usize::MAX / 2));
    let err = result.err().unwrap_or_else(|| panic!("usize::MAX / 2 heads accepted"));
    assert!(matches!(err, ConfigError::TooLarge { .. }), "{err}");
    assert!(largest < 1 << 20, "allocated {largest} bytes at once");
    let layers = format!("[{}{{}}]", "{}, ".repeat(100_000));
    let err = PatternConfig::parse(&layers, "config.json", 64).err().unwrap_or_else(|| panic!("6.4M heads accepted"));
    assert!(err.to_string().contains("100001 layers of 64 query heads"), "{err}");
}
