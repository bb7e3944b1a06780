//! Queries, keys and values on the host, and their safetensors files: [`load_safetensors`] reads
//! real Q/K/V dumps (F32, BF16 or F16, in the layouts PyTorch and MInference write) into a
//! [`HostQkv`], and [`save_safetensors`] writes one back.

use crate::error::MinfError;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;

/// Queries, keys and values on the host, f32, batch 1, contiguous: `q` is
/// `[1, seq, heads, head_dim]`, `k` and `v` are `[1, seq, kv_heads, head_dim]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HostQkv {
    /// Tokens.
    pub seq: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// `[1, seq, heads, head_dim]`.
    pub q: Vec<f32>,
    /// `[1, seq, kv_heads, head_dim]`.
    pub k: Vec<f32>,
    /// `[1, seq, kv_heads, head_dim]`.
    pub v: Vec<f32>,
}

/// How a 4-D tensor in a safetensors file is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileLayout {
    /// `[1, seq, heads, dim]`.
    Bshd,
    /// `[1, heads, seq, dim]`.
    Bhsd,
}

/// A tensor read from a file, as f32 with its shape.
struct FileTensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

/// Fills `out` on up to 16 threads, in pieces of a whole number of `unit` elements (at least 64K
/// elements each): `fill(first, part)` writes the elements `first .. first + part.len()`. A layer of
/// a long prompt is gigabytes: one thread would take seconds to convert or transpose it.
fn fill_in_parallel<T: Send>(out: &mut [T], unit: usize, fill: impl Fn(usize, &mut [T]) + Sync) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 16);
    let piece = out.len().div_ceil(threads).max(1 << 16).next_multiple_of(unit.max(1));
    let fill = &fill;
    std::thread::scope(|scope| {
        for (i, part) in out.chunks_mut(piece).enumerate() {
            scope.spawn(move || fill(i * piece, part));
        }
    });
}

fn read_tensor(
    file: &SafeTensors<'_>,
    name: &str,
    err: &impl Fn(String) -> MinfError,
) -> Result<FileTensor, MinfError> {
    let view = file.tensor(name).map_err(|e| err(format!("tensor `{name}`: {e}")))?;
    let bytes = view.data();
    let element: fn(&[u8]) -> f32 = match view.dtype() {
        Dtype::F32 => |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        Dtype::BF16 => |b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        Dtype::F16 => |b| half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
        other => return Err(err(format!("tensor `{name}` is {other:?}; minf reads F32, BF16 and F16"))),
    };
    let size = if view.dtype() == Dtype::F32 { 4 } else { 2 };
    let mut data = vec![0.0f32; bytes.len() / size];
    fill_in_parallel(&mut data, 1, |first, part| {
        for (x, b) in part.iter_mut().zip(bytes[first * size..].chunks_exact(size)) {
            *x = element(b);
        }
    });
    Ok(FileTensor { shape: view.shape().to_vec(), data })
}

/// Checks that each tensor's data ends inside the file, before the safetensors parser sums the
/// offsets (an end near `u64::MAX` overflows there). Anything else malformed is left to the parser.
fn check_data_offsets(bytes: &[u8]) -> Result<(), String> {
    let Some((length, rest)) = bytes.split_first_chunk::<8>() else { return Ok(()) };
    let Some(header) = usize::try_from(u64::from_le_bytes(*length)).ok().and_then(|n| rest.get(..n)) else {
        return Ok(());
    };
    let data_len = (rest.len() - header.len()) as u64;
    let Ok(serde_json::Value::Object(entries)) = serde_json::from_slice(header) else { return Ok(()) };
    for (name, entry) in &entries {
        let end = entry.get("data_offsets").and_then(|offsets| offsets.get(1)).and_then(serde_json::Value::as_u64);
        if let Some(end) = end.filter(|&end| end > data_len) {
            return Err(format!("tensor `{name}`: its data would end at byte {end} of a {data_len}-byte data section"));
        }
    }
    Ok(())
}

/// Reads tensors named `q`, `k` and `v` (F32, BF16 or F16) from a safetensors file.
///
/// Accepted shapes (all three of the same rank, `k` and `v` equal, the same `seq` and `dim`, and
/// `kv_heads` dividing `heads`):
///
/// - `[seq, heads, dim]`;
/// - `[1, seq, heads, dim]` or `[1, heads, seq, dim]`. The file's `__metadata__` entry `layout`
///   (`"bshd"` or `"bhsd"`, as [`save_safetensors`] writes) decides; without it, the axis `q` and
///   `k` share is the sequence when exactly one axis differs (GQA), and otherwise the tensors are
///   read as `[1, heads, seq, dim]`, the layout of PyTorch attention modules (and of MInference).
///
/// The result is converted to f32 `[1, seq, heads, dim]`.
pub fn load_safetensors(path: impl AsRef<Path>) -> Result<HostQkv, MinfError> {
    let path = path.as_ref();
    let err = |message: String| MinfError::Safetensors { path: path.to_path_buf(), message };
    let bytes = std::fs::read(path).map_err(|source| MinfError::Io { path: path.to_path_buf(), source })?;
    check_data_offsets(&bytes).map_err(err)?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| err(e.to_string()))?;
    let (_, metadata) = SafeTensors::read_metadata(&bytes).map_err(|e| err(e.to_string()))?;
    let declared = match metadata.metadata().as_ref().and_then(|m| m.get("layout")) {
        None => None,
        Some(layout) if layout == "bshd" => Some(FileLayout::Bshd),
        Some(layout) if layout == "bhsd" => Some(FileLayout::Bhsd),
        Some(other) => return Err(err(format!("metadata layout `{other}` is neither `bshd` nor `bhsd`"))),
    };
    let [q, k, v] = [read_tensor(&file, "q", &err)?, read_tensor(&file, "k", &err)?, read_tensor(&file, "v", &err)?];
    if k.shape != v.shape {
        return Err(err(format!("k has shape {:?} but v has {:?}", k.shape, v.shape)));
    }
    if q.data.is_empty() || k.data.is_empty() {
        return Err(err(format!("q has shape {:?} and k/v {:?}: a tensor with no elements", q.shape, k.shape)));
    }
    // Normalise to (layout, seq, heads, dim) per tensor.
    let dims = |t: &FileTensor, layout: FileLayout| -> Result<[usize; 3], MinfError> {
        match (t.shape.as_slice(), layout) {
            ([seq, heads, dim], _)
            | ([1, seq, heads, dim], FileLayout::Bshd)
            | ([1, heads, seq, dim], FileLayout::Bhsd) => Ok([*seq, *heads, *dim]),
            (shape, _) => Err(err(format!(
                "shape {shape:?}: expected [seq, heads, dim], [1, seq, heads, dim] or [1, heads, seq, dim]"
            ))),
        }
    };
    let layout = match (declared, q.shape.as_slice(), k.shape.as_slice()) {
        (Some(layout), _, _) => layout,
        (None, [_, q1, q2, _], [_, k1, k2, _]) if q1 == k1 && q2 != k2 => FileLayout::Bshd,
        _ => FileLayout::Bhsd,
    };
    if q.shape.len() != k.shape.len() {
        return Err(err(format!("q has shape {:?} but k has {:?}: ranks differ", q.shape, k.shape)));
    }
    let [seq, heads, head_dim] = dims(&q, layout)?;
    let [kv_seq, kv_heads, kv_dim] = dims(&k, layout)?;
    if kv_seq != seq || kv_dim != head_dim || heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(err(format!(
            "q is (seq {seq}, heads {heads}, dim {head_dim}) and k/v (seq {kv_seq}, heads {kv_heads}, dim {kv_dim}): \
             seq and dim must match and kv heads must divide heads"
        )));
    }
    let to_bshd = |t: FileTensor, heads: usize| -> Vec<f32> {
        if t.shape.len() == 3 || layout == FileLayout::Bshd {
            return t.data;
        }
        let mut out = vec![0.0f32; t.data.len()];
        let row = heads * head_dim;
        // Whole sequence rows per piece: piece `first` starts at sequence row `first / row`.
        fill_in_parallel(&mut out, row, |first, part| {
            for (i, out_row) in part.chunks_exact_mut(row).enumerate() {
                let s = first / row + i;
                for (h, out_head) in out_row.chunks_exact_mut(head_dim).enumerate() {
                    out_head.copy_from_slice(&t.data[(h * seq + s) * head_dim..][..head_dim]);
                }
            }
        });
        out
    };
    Ok(HostQkv {
        seq,
        heads,
        kv_heads,
        head_dim,
        q: to_bshd(q, heads),
        k: to_bshd(k, kv_heads),
        v: to_bshd(v, kv_heads),
    })
}

/// Writes `qkv` as f32 tensors `q`, `k`, `v` of shape `[1, seq, heads, dim]` with metadata
/// `layout = "bshd"`, which [`load_safetensors`] reads back exactly.
pub fn save_safetensors(qkv: &HostQkv, path: impl AsRef<Path>) -> Result<(), MinfError> {
    let path = path.as_ref();
    let err = |message: String| MinfError::Safetensors { path: path.to_path_buf(), message };
    let expected = [("q", &qkv.q, qkv.heads), ("k", &qkv.k, qkv.kv_heads), ("v", &qkv.v, qkv.kv_heads)];
    let mut bytes: Vec<(&str, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, data, heads) in expected {
        let dims = vec![1, qkv.seq, heads, qkv.head_dim];
        if data.len() != dims.iter().product::<usize>() {
            return Err(err(format!(
                "tensor `{name}` has {} elements, its shape {dims:?} needs {}",
                data.len(),
                dims.iter().product::<usize>()
            )));
        }
        bytes.push((name, dims, data.iter().flat_map(|x| x.to_le_bytes()).collect()));
    }
    let mut views = Vec::new();
    for (name, dims, data) in &bytes {
        views.push((
            *name,
            safetensors::tensor::TensorView::new(Dtype::F32, dims.clone(), data).map_err(|e| err(e.to_string()))?,
        ));
    }
    let metadata = HashMap::from([("layout".to_string(), "bshd".to_string())]);
    let serialized = safetensors::serialize(views, Some(metadata)).map_err(|e| err(e.to_string()))?;
    std::fs::write(path, serialized).map_err(|source| MinfError::Io { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distinct, finite values of every tensor (no two elements equal), so a transposition shows.
    fn filled(seq: usize, heads: usize, kv_heads: usize, head_dim: usize) -> HostQkv {
        let values =
            |n: usize, offset: f32| (0..n).map(|i| offset + (i as f32 * 0.618).sin() + i as f32 * 1e-3).collect();
        HostQkv {
            seq,
            heads,
            kv_heads,
            head_dim,
            q: values(seq * heads * head_dim, 0.0),
            k: values(seq * kv_heads * head_dim, 3.0),
            v: values(seq * kv_heads * head_dim, -3.0),
        }
    }

    /// A tensor to write: name, dtype, shape, little-endian bytes.
    type Raw<'a> = (&'a str, Dtype, Vec<usize>, Vec<u8>);

    fn write(path: &Path, tensors: &[Raw<'_>], layout: Option<&str>) {
        let views: Vec<_> = tensors
            .iter()
            .map(|(name, dtype, shape, data)| {
                (*name, safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap())
            })
            .collect();
        let metadata = layout.map(|l| HashMap::from([("layout".to_string(), l.to_string())]));
        std::fs::write(path, safetensors::serialize(views, metadata).unwrap()).unwrap();
    }

    /// `x` as `[1, heads, seq, dim]` from `[1, seq, heads, dim]`.
    fn bhsd(x: &[f32], seq: usize, heads: usize, dim: usize) -> Vec<f32> {
        let mut out = vec![0.0; x.len()];
        for s in 0..seq {
            for h in 0..heads {
                out[(h * seq + s) * dim..][..dim].copy_from_slice(&x[(s * heads + h) * dim..][..dim]);
            }
        }
        out
    }

    #[test]
    fn safetensors_round_trip_and_conversions() {
        let dir = tempfile::tempdir().unwrap();
        let qkv = filled(40, 4, 2, 8);
        let path = dir.path().join("qkv.safetensors");
        save_safetensors(&qkv, &path).unwrap();
        assert_eq!(load_safetensors(&path).unwrap(), qkv);

        let f32s = |x: &[f32]| x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
        let bf16s = |x: &[f32]| x.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect::<Vec<u8>>();
        let f16s = |x: &[f32]| x.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect::<Vec<u8>>();
        let rounded = |x: &[f32], f: fn(f32) -> f32| x.iter().map(|v| f(*v)).collect::<Vec<f32>>();
        let via_bf16 = |v: f32| half::bf16::from_f32(v).to_f32();
        let via_f16 = |v: f32| half::f16::from_f32(v).to_f32();
        let (s, h, g, d) = (40, 4, 2, 8);

        // [1, heads, seq, dim] without metadata, told apart by GQA; bf16 q, f16 k/v.
        write(
            &path,
            &[
                ("q", Dtype::BF16, vec![1, h, s, d], bf16s(&bhsd(&qkv.q, s, h, d))),
                ("k", Dtype::F16, vec![1, g, s, d], f16s(&bhsd(&qkv.k, s, g, d))),
                ("v", Dtype::F16, vec![1, g, s, d], f16s(&bhsd(&qkv.v, s, g, d))),
            ],
            None,
        );
        let got = load_safetensors(&path).unwrap();
        assert_eq!((got.seq, got.heads, got.kv_heads, got.head_dim), (s, h, g, d));
        assert_eq!(got.q, rounded(&qkv.q, via_bf16));
        assert_eq!(got.k, rounded(&qkv.k, via_f16));
        assert_eq!(got.v, rounded(&qkv.v, via_f16));

        // [1, seq, heads, dim] without metadata (GQA tells), and [seq, heads, dim].
        for shape in [vec![1, s], vec![s]] {
            let with = |heads: usize| [shape.clone(), vec![heads, d]].concat();
            write(
                &path,
                &[
                    ("q", Dtype::F32, with(h), f32s(&qkv.q)),
                    ("k", Dtype::F32, with(g), f32s(&qkv.k)),
                    ("v", Dtype::F32, with(g), f32s(&qkv.v)),
                ],
                None,
            );
            assert_eq!(load_safetensors(&path).unwrap(), qkv, "{shape:?}");
        }

        // Without GQA a 4-D file is [1, heads, seq, dim] unless its metadata says otherwise.
        let mha = filled(16, 2, 2, 8);
        let tensors = |x: &HostQkv| {
            [("q", &x.q), ("k", &x.k), ("v", &x.v)].map(|(n, t)| (n, Dtype::F32, vec![1, 16, 2, 8], f32s(t)))
        };
        write(&path, &tensors(&mha), Some("bshd"));
        assert_eq!(load_safetensors(&path).unwrap(), mha);
        write(&path, &tensors(&mha), None);
        let guessed = load_safetensors(&path).unwrap();
        assert_eq!((guessed.seq, guessed.heads), (2, 16));
        assert_eq!(guessed.q, bhsd(&mha.q, 16, 2, 8));
    }

    #[test]
    fn long_files_convert_and_transpose_in_parallel_pieces() {
        // Several 64K-element pieces per tensor, a row count that splits unevenly, bf16 in the
        // [1, heads, seq, dim] layout: every element lands where the single-threaded rule puts it.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("long.safetensors");
        let (s, h, g, d) = (4999, 6, 2, 16);
        let qkv = filled(s, h, g, d);
        let bf16s = |x: &[f32]| x.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect::<Vec<u8>>();
        let rounded = |x: &[f32]| x.iter().map(|v| half::bf16::from_f32(*v).to_f32()).collect::<Vec<f32>>();
        write(
            &path,
            &[
                ("q", Dtype::BF16, vec![1, h, s, d], bf16s(&bhsd(&qkv.q, s, h, d))),
                ("k", Dtype::BF16, vec![1, g, s, d], bf16s(&bhsd(&qkv.k, s, g, d))),
                ("v", Dtype::BF16, vec![1, g, s, d], bf16s(&bhsd(&qkv.v, s, g, d))),
            ],
            Some("bhsd"),
        );
        let got = load_safetensors(&path).unwrap();
        assert_eq!((got.seq, got.heads, got.kv_heads, got.head_dim), (s, h, g, d));
        assert_eq!(got.q, rounded(&qkv.q));
        assert_eq!(got.k, rounded(&qkv.k));
        assert_eq!(got.v, rounded(&qkv.v));
    }

    #[test]
    fn malformed_safetensors_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.safetensors");
        let f32s = |n: usize| vec![0u8; n * 4];
        let cases: Vec<(Vec<Raw<'_>>, Option<&str>, &str)> = vec![
            (vec![("q", Dtype::F32, vec![2, 1, 8], f32s(16)), ("k", Dtype::F32, vec![2, 1, 8], f32s(16))], None, "`v`"),
            (
                vec![
                    ("q", Dtype::I32, vec![2, 1, 8], f32s(16)),
                    ("k", Dtype::F32, vec![2, 1, 8], f32s(16)),
                    ("v", Dtype::F32, vec![2, 1, 8], f32s(16)),
                ],
                None,
                "I32",
            ),
            (
                vec![
                    ("q", Dtype::F32, vec![2, 3, 8], f32s(48)),
                    ("k", Dtype::F32, vec![2, 2, 8], f32s(32)),
                    ("v", Dtype::F32, vec![2, 2, 8], f32s(32)),
                ],
                None,
                "divide",
            ),
            (
                vec![
                    ("q", Dtype::F32, vec![2, 1, 8], f32s(16)),
                    ("k", Dtype::F32, vec![2, 1, 8], f32s(16)),
                    ("v", Dtype::F32, vec![3, 1, 8], f32s(24)),
                ],
                None,
                "v has",
            ),
            (
                vec![
                    ("q", Dtype::F32, vec![2, 2, 1, 8], f32s(32)),
                    ("k", Dtype::F32, vec![2, 2, 1, 8], f32s(32)),
                    ("v", Dtype::F32, vec![2, 2, 1, 8], f32s(32)),
                ],
                None,
                "expected",
            ),
            (
                vec![
                    ("q", Dtype::F32, vec![1, 2, 1, 8], f32s(16)),
                    ("k", Dtype::F32, vec![1, 2, 1, 8], f32s(16)),
                    ("v", Dtype::F32, vec![1, 2, 1, 8], f32s(16)),
                ],
                Some("sbhd"),
                "sbhd",
            ),
        ];
        for (tensors, layout, needle) in cases {
            write(&path, &tensors, layout);
            let message = load_safetensors(&path).unwrap_err().to_string();
            assert!(message.contains("bad.safetensors") && message.contains(needle), "{message}");
        }
        std::fs::write(&path, b"not a safetensors file").unwrap();
        assert!(matches!(load_safetensors(&path), Err(MinfError::Safetensors { .. })));
        assert!(matches!(load_safetensors(dir.path().join("missing")), Err(MinfError::Io { .. })));
        let wrong = HostQkv { q: vec![0.0; 3], ..filled(4, 1, 1, 8) };
        assert!(save_safetensors(&wrong, &path).unwrap_err().to_string().contains("`q`"));
    }
}
