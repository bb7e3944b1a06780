//! GPU tests of the vertical-slash index converter: its output must equal the CPU model
//! (`minf_testkit::convert::convert_cpu`) byte for byte in every count and every counted entry, on
//! raw inputs (any order, duplicates, out-of-range values), on MInference-style inputs and across
//! reuses of the output and workspace; and the chunk converter (`convert_vertical_slash_chunk_into`)
//! against `minf_testkit::convert::convert_chunk_cpu`. The converter does not clear its outputs, so
//! the tests convert into indices poisoned with [`POISON`]: a count or counted entry it failed to
//! write shows up as a mismatch.

use super::{device, test_seed};
use minf::timing::median_ms;
use minf::vertical_slash::{
    convert_vertical_slash, convert_vertical_slash_chunk_into, convert_vertical_slash_into, ChunkLengths,
    ConvertWorkspace, HostVerticalSlashIndex, IndexShape, VerticalSlashIndex,
};
use minf::{Device, MinfError};
use minf_testkit::convert::{convert_chunk_cpu, convert_cpu, hostile_raw_indices};
use minf_testkit::reference::TestRng;

/// Sorted unique in-range indices, the slashes descending and including 0 (MInference's inputs).
fn minference_indices(rng: &mut TestRng, count: usize, length: i32, slash: bool) -> Vec<i32> {
    let mut chosen: Vec<i32> = if slash { vec![0] } else { Vec::new() };
    let mut seen = std::collections::HashSet::new();
    seen.extend(chosen.iter().copied());
    while chosen.len() < count.min(length as usize) {
        let x = rng.below(length as usize) as i32;
        if seen.insert(x) {
            chosen.push(x);
        }
    }
    chosen.sort_unstable();
    if slash {
        chosen.reverse();
    }
    chosen
}

/// `count` slash slots (descending, unused ones -1) in runs whose gaps sit on both sides of one and
/// two range steps (64 and 128 keys), where whether a slash starts a new range depends on where
/// the current range started.
fn clustered_slashes(rng: &mut TestRng, count: usize, length: i32) -> Vec<i32> {
    const GAPS: [i32; 12] = [1, 1, 1, 2, 63, 64, 65, 100, 127, 128, 129, 300];
    let mut offsets = Vec::with_capacity(count);
    let mut x = rng.below(3) as i32;
    while x < length && offsets.len() < count {
        offsets.push(x);
        x += GAPS[rng.below(GAPS.len())];
    }
    offsets.reverse();
    offsets.resize(count, -1);
    offsets
}

pub(super) struct Inputs {
    seqlens: Vec<i32>,
    vertical: Vec<i32>,
    slash: Vec<i32>,
    heads: usize,
    nnz_v: usize,
    nnz_s: usize,
    context: usize,
}

impl Inputs {
    pub(super) fn raw(rng: &mut TestRng, seqlens: &[i32], heads: usize, nnz_v: usize, nnz_s: usize) -> Inputs {
        let context = *seqlens.iter().max().unwrap_or(&1) as usize;
        let (mut vertical, mut slash) = (Vec::new(), Vec::new());
        for &length in seqlens {
            for _ in 0..heads {
                vertical.extend(hostile_raw_indices(rng, nnz_v, length, context));
                slash.extend(hostile_raw_indices(rng, nnz_s, length, context));
            }
        }
        Inputs { seqlens: seqlens.to_vec(), vertical, slash, heads, nnz_v, nnz_s, context }
    }

    /// MInference-style: one sequence of `length`, capacities at most `length`.
    pub(super) fn minference(rng: &mut TestRng, length: i32, heads: usize, nnz_v: usize, nnz_s: usize) -> Inputs {
        let (nnz_v, nnz_s) = (nnz_v.min(length as usize), nnz_s.min(length as usize));
        let (mut vertical, mut slash) = (Vec::new(), Vec::new());
        for _ in 0..heads {
            vertical.extend(minference_indices(rng, nnz_v, length, false));
            slash.extend(minference_indices(rng, nnz_s, length, true));
        }
        Inputs { seqlens: vec![length], vertical, slash, heads, nnz_v, nnz_s, context: length as usize }
    }

    /// Slashes in runs ([`clustered_slashes`]); verticals as MInference's.
    pub(super) fn clustered(rng: &mut TestRng, length: i32, heads: usize, nnz_v: usize, nnz_s: usize) -> Inputs {
        let (nnz_v, nnz_s) = (nnz_v.min(length as usize), nnz_s.min(length as usize));
        let (mut vertical, mut slash) = (Vec::new(), Vec::new());
        for _ in 0..heads {
            vertical.extend(minference_indices(rng, nnz_v, length, false));
            slash.extend(clustered_slashes(rng, nnz_s, length));
        }
        Inputs { seqlens: vec![length], vertical, slash, heads, nnz_v, nnz_s, context: length as usize }
    }

    pub(super) fn cpu(&self) -> HostVerticalSlashIndex {
        let batch = self.seqlens.len();
        convert_cpu(&self.seqlens, &self.vertical, &self.slash, batch, self.heads, self.nnz_v, self.nnz_s, self.context)
    }

    pub(super) fn describe(&self) -> String {
        format!(
            "seqlens {:?} context {} heads {} nnz_v {} nnz_s {}",
            self.seqlens, self.context, self.heads, self.nnz_v, self.nnz_s
        )
    }
}

struct DeviceInputs {
    seqlens: cudarc::driver::CudaSlice<i32>,
    vertical: cudarc::driver::CudaSlice<i32>,
    slash: cudarc::driver::CudaSlice<i32>,
}

fn upload(device: &Device, inputs: &Inputs) -> DeviceInputs {
    let stream = device.stream();
    DeviceInputs {
        seqlens: stream.clone_htod(&inputs.seqlens).expect("upload seqlens"),
        vertical: stream.clone_htod(&inputs.vertical).expect("upload vertical"),
        slash: stream.clone_htod(&inputs.slash).expect("upload slash"),
    }
}

pub(super) fn gpu(device: &Device, inputs: &Inputs, workspace: &mut ConvertWorkspace) -> VerticalSlashIndex {
    let d = upload(device, inputs);
    convert_vertical_slash(
        device,
        &d.seqlens,
        &d.vertical,
        &d.slash,
        inputs.seqlens.len(),
        inputs.heads,
        inputs.context,
        workspace,
    )
    .unwrap_or_else(|e| panic!("converting {}: {e}", inputs.describe()))
}

/// What [`poisoned`] fills every slot of an index with: past every capacity and every length of
/// these tests, so it equals no count and no key the converter writes.
pub(super) const POISON: i32 = 0x7fff_fff0;

/// `index` with every slot of its four buffers set to [`POISON`].
pub(super) fn poisoned(device: &Device, index: VerticalSlashIndex) -> VerticalSlashIndex {
    let (shape, mut parts) = index.into_parts();
    for buffer in parts.iter_mut() {
        device.stream().memcpy_htod(&vec![POISON; buffer.len()], buffer).expect("poison");
    }
    let [bc, bo, cc, ci] = parts;
    VerticalSlashIndex::from_parts(shape, bc, bo, cc, ci).expect("index parts")
}

/// Compares shapes, every count and each row's counted entries (the slots past the counts are
/// unspecified) and, on a mismatch, names the first differing row.
pub(super) fn assert_same(got: &HostVerticalSlashIndex, want: &HostVerticalSlashIndex, what: &str) {
    if got == want {
        return;
    }
    let shape = want.shape;
    assert_eq!(got.shape, shape, "{what}: shapes differ");
    for b in 0..shape.batch {
        for h in 0..shape.heads {
            for r in 0..shape.rows {
                let row = shape.row(b, h, r);
                assert!(
                    got.block_count[row] == want.block_count[row]
                        && got.column_count[row] == want.column_count[row]
                        && got.ranges(b, h, r) == want.ranges(b, h, r)
                        && got.columns(b, h, r) == want.columns(b, h, r),
                    "{what}: row block (b={b}, h={h}, r={r}) differs: GPU {} ranges {:?}, {} columns {:?}; \
                     CPU {} ranges {:?}, {} columns {:?}",
                    got.block_count[row],
                    got.ranges(b, h, r).iter().take(8).collect::<Vec<_>>(),
                    got.column_count[row],
                    got.columns(b, h, r).iter().take(8).collect::<Vec<_>>(),
                    want.block_count[row],
                    want.ranges(b, h, r).iter().take(8).collect::<Vec<_>>(),
                    want.column_count[row],
                    want.columns(b, h, r).iter().take(8).collect::<Vec<_>>(),
                );
            }
        }
    }
    panic!("{what}: indices differ");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn converter_matches_the_cpu_model() {
    let device = device();
    let seed = test_seed("converter_matches_the_cpu_model");
    let mut rng = TestRng::new(seed);
    // One workspace for every case: it grows and is reused across shapes.
    let mut workspace = ConvertWorkspace::new();
    let mut cases: Vec<(String, Inputs)> = Vec::new();
    for length in [1, 63, 64, 65, 1000, 4097] {
        let nnz_v = 1 + rng.below(length as usize + 100);
        let nnz_s = 1 + rng.below(length as usize + 100);
        cases.push((format!("raw {length}"), Inputs::raw(&mut rng, &[length], 4, nnz_v, nnz_s)));
        let other = 1 + rng.below(length as usize + 64) as i32;
        cases.push((
            format!("raw batch 2, {length} and {other}"),
            Inputs::raw(&mut rng, &[length, other], 2, nnz_v, nnz_s),
        ));
        cases.push((format!("MInference-style {length}"), Inputs::minference(&mut rng, length, 4, nnz_v, nnz_s)));
    }
    cases.push(("raw 32768 x 32 heads".into(), Inputs::raw(&mut rng, &[32768], 32, 1000, 2000)));
    cases.push(("raw batch 2, 32768 and 20000".into(), Inputs::raw(&mut rng, &[32768, 20000], 8, 1000, 2000)));
    cases.push(("MInference-style 32768 x 32 heads".into(), Inputs::minference(&mut rng, 32768, 32, 1000, 2000)));
    // Enough row blocks in one launch that fewer threads share each: 8 (32768 row blocks) and 4
    // (66560; a warp then converts eight row blocks side by side).
    cases.push(("raw 8192 x 256 heads".into(), Inputs::raw(&mut rng, &[8192], 256, 60, 90)));
    cases.push(("raw batch 2, 4097 and 3000 x 512 heads".into(), Inputs::raw(&mut rng, &[4097, 3000], 512, 70, 50)));
    // Slash gaps around 64 and 128 keys, with a warp (2048 row blocks), groups of 8 (32768) and
    // groups of 4 (65536) per row block.
    cases.push(("clustered 32768 x 4 heads".into(), Inputs::clustered(&mut rng, 32768, 4, 300, 3000)));
    cases.push(("clustered 8192 x 256 heads".into(), Inputs::clustered(&mut rng, 8192, 256, 100, 400)));
    cases.push(("clustered 32768 x 128 heads".into(), Inputs::clustered(&mut rng, 32768, 128, 100, 400)));
    // Capacities far above the length, and a longer padded context.
    let mut padded = Inputs::raw(&mut rng, &[500, 300], 3, 2000, 3000);
    padded.context = 1000;
    cases.push(("raw, padded context 1000".into(), padded));
    for (what, inputs) in &cases {
        let want = inputs.cpu();
        let index = gpu(&device, inputs, &mut workspace);
        assert_same(&index.to_host().expect("download"), &want, &format!("{what} ({})", inputs.describe()));
        // Again into the same index, poisoned: every count and counted entry must be rewritten.
        let mut index = poisoned(&device, index);
        let d = upload(&device, inputs);
        convert_vertical_slash_into(
            &device,
            &d.seqlens,
            &d.vertical,
            &d.slash,
            inputs.context,
            &mut workspace,
            &mut index,
        )
        .unwrap_or_else(|e| panic!("converting {what} into a poisoned index: {e}"));
        assert_same(&index.to_host().expect("download"), &want, &format!("{what}, poisoned ({})", inputs.describe()));
        println!("ok   {what}: {}", inputs.describe());
    }
    println!("workspace holds {} bytes", workspace.device_bytes());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn reused_and_poisoned_outputs_give_the_same_index_and_overlong_seqlens_are_clamped() {
    let device = device();
    let seed = test_seed("reused_and_poisoned_outputs_give_the_same_index_and_overlong_seqlens_are_clamped");
    let mut rng = TestRng::new(seed);
    let mut workspace = ConvertWorkspace::new();
    // First a dense case (many entries), then a sparse one of the same shape into the same index:
    // the dense entries past the sparse counts stay behind and must not matter.
    let dense = Inputs::raw(&mut rng, &[3000, 2500], 4, 1500, 1500);
    let mut sparse = Inputs::raw(&mut rng, &[3000, 1200], 4, 1500, 1500);
    for x in sparse.vertical.iter_mut().chain(sparse.slash.iter_mut()).skip(7).step_by(3) {
        *x = -1;
    }
    let mut index = gpu(&device, &dense, &mut workspace);
    assert_same(&index.to_host().expect("download"), &dense.cpu(), "first conversion");
    let d = upload(&device, &sparse);
    convert_vertical_slash_into(&device, &d.seqlens, &d.vertical, &d.slash, sparse.context, &mut workspace, &mut index)
        .expect("second conversion");
    let reused = index.to_host().expect("download");
    assert_same(&reused, &sparse.cpu(), "reused output");
    // The same conversion into the index poisoned: the same index (rows past the second
    // sequence's 1200 tokens included, whose counts only the conversion writes).
    let mut index = poisoned(&device, index);
    convert_vertical_slash_into(&device, &d.seqlens, &d.vertical, &d.slash, sparse.context, &mut workspace, &mut index)
        .expect("conversion into a poisoned index");
    let from_poison = index.to_host().expect("download");
    assert_same(&from_poison, &reused, "poisoned output against the reused one");
    assert!(
        from_poison.block_count.iter().chain(&from_poison.column_count).all(|&n| n != POISON),
        "a count was not written"
    );
    // Lengths past the context are the context, negative ones are empty (every row of the second
    // sequence gets zero counts over the poison).
    let mut clamped = Inputs::raw(&mut rng, &[3000, 2000], 4, 1500, 1500);
    clamped.seqlens = vec![1 << 30, -5];
    let mut index = poisoned(&device, index);
    let d = upload(&device, &clamped);
    convert_vertical_slash_into(
        &device,
        &d.seqlens,
        &d.vertical,
        &d.slash,
        clamped.context,
        &mut workspace,
        &mut index,
    )
    .expect("clamped conversion");
    assert_same(&index.to_host().expect("download"), &clamped.cpu(), "clamped seqlens");
    // A shape mismatch with the output index is an error that names both shapes.
    let err = convert_vertical_slash_into(&device, &d.seqlens, &d.vertical, &d.slash, 5000, &mut workspace, &mut index)
        .expect_err("context 5000 does not fit an index of 47 rows");
    assert!(err.to_string().contains("the output index has shape"), "{err}");
    let short = device.stream().clone_htod(&[1i32; 7]).expect("upload");
    let err = convert_vertical_slash(&device, &d.seqlens, &short, &d.slash, 2, 4, 3000, &mut workspace)
        .expect_err("7 verticals for 8 heads");
    assert!(err.to_string().contains("vertical holds 7 indices"), "{err}");
}

/// Long-context shape: 128K tokens, 32 heads, 1000 verticals and 6096 slashes per head
/// (MInference's largest vertical-slash budget), checked against the CPU model and timed.
#[test]
#[ignore = "needs a CUDA GPU"]
fn converter_128k_x_32_heads_timing() {
    let device = device();
    let seed = test_seed("converter_128k_x_32_heads_timing");
    let mut rng = TestRng::new(seed);
    let (length, heads, nnz_v, nnz_s) = (131_072, 32, 1000, 6096);
    // Realistic picks: sinks and local diagonals near 0 plus spread-out ones, unsorted.
    let mut inputs = Inputs::raw(&mut rng, &[length], heads, nnz_v, nnz_s);
    for h in 0..heads {
        for k in 0..64 {
            inputs.vertical[h * nnz_v + k] = k as i32;
            inputs.slash[h * nnz_s + k] = k as i32;
        }
    }
    let d = upload(&device, &inputs);
    let mut workspace = ConvertWorkspace::new();
    let mut index =
        convert_vertical_slash(&device, &d.seqlens, &d.vertical, &d.slash, 1, heads, length as usize, &mut workspace)
            .expect("first conversion (compiles the converter)");
    let stream = device.stream();
    stream.synchronize().expect("first conversion ran");
    let total_ms = median_ms(stream, 1, 10, || {
        convert_vertical_slash_into(
            &device,
            &d.seqlens,
            &d.vertical,
            &d.slash,
            length as usize,
            &mut workspace,
            &mut index,
        )
    })
    .expect("timed conversions");
    // A zero fill of the outputs (which the converter does not do), for comparison.
    let (shape, mut parts) = index.into_parts();
    let zero_ms = median_ms(stream, 1, 10, || {
        for part in parts.iter_mut() {
            stream.memset_zeros(part).map_err(MinfError::driver("zeroing an output"))?;
        }
        Ok(())
    })
    .expect("timed zeroing");
    let output_bytes: usize = parts.iter().map(|p| p.num_bytes()).sum();
    let [bc, bo, cc, ci] = parts;
    let index = VerticalSlashIndex::from_parts(shape, bc, bo, cc, ci).expect("same buffers");
    println!(
        "vs_convert {length} tokens x {heads} heads, nnz_v {nnz_v}, nnz_s {nnz_s} on {}: {total_ms:.3} ms per call \
         (zeroing its {:.2} GB of outputs, which it does not do, takes {zero_ms:.3} ms)",
        device.name(),
        output_bytes as f64 / 1e9,
    );
    let mut index = poisoned(&device, index);
    convert_vertical_slash_into(
        &device,
        &d.seqlens,
        &d.vertical,
        &d.slash,
        length as usize,
        &mut workspace,
        &mut index,
    )
    .expect("conversion");
    assert_same(&index.to_host().expect("download"), &inputs.cpu(), &inputs.describe());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn chunk_converter_matches_the_cpu_model() {
    let device = device();
    let seed = test_seed("chunk_converter_matches_the_cpu_model");
    let mut rng = TestRng::new(seed);
    let mut workspace = ConvertWorkspace::new();
    let stream = device.stream();
    let (heads, nnz_v, nnz_s) = (3, 70, 130);
    // (q_len, prefix) of the first sequence; the second has a shorter chunk after another prefix.
    for q_len in [1usize, 63, 64, 65, 1000] {
        for prefix in [0usize, 37, 64, 1000, 4133] {
            let q_lens = [q_len as i32, (q_len as i32 - 17).max(1)];
            let kv_lens = [(prefix + q_len) as i32, (prefix / 2 + q_len) as i32];
            let max_kv_len = *kv_lens.iter().max().unwrap_or(&1) as usize;
            let (mut vertical, mut slash) = (Vec::new(), Vec::new());
            for &length in &kv_lens {
                for _ in 0..heads {
                    vertical.extend(hostile_raw_indices(&mut rng, nnz_v, length, max_kv_len));
                    if prefix % 2 == 1 {
                        slash.extend(clustered_slashes(&mut rng, nnz_s, length));
                    } else {
                        slash.extend(hostile_raw_indices(&mut rng, nnz_s, length, max_kv_len));
                    }
                }
            }
            let want =
                convert_chunk_cpu(&q_lens, &kv_lens, &vertical, &slash, (2, heads, nnz_v, nnz_s), q_len, max_kv_len);
            let shape = IndexShape { batch: 2, heads, rows: q_len.div_ceil(64), nnz_s, nnz_v };
            // Poisoned: every count and counted entry must be written, rows past a chunk included.
            let mut index = poisoned(&device, VerticalSlashIndex::zeros(&device, shape).expect("index"));
            let q_lens_device = stream.clone_htod(&q_lens).expect("upload q_lens");
            let kv_lens_device = stream.clone_htod(&kv_lens).expect("upload kv_lens");
            let vertical_device = stream.clone_htod(&vertical).expect("upload vertical");
            let slash_device = stream.clone_htod(&slash).expect("upload slash");
            let lengths =
                ChunkLengths { q_lens: &q_lens_device, kv_lens: &kv_lens_device, max_q_len: q_len, max_kv_len };
            convert_vertical_slash_chunk_into(
                &device,
                lengths,
                &vertical_device,
                &slash_device,
                &mut workspace,
                &mut index,
            )
            .expect("chunk conversion");
            let got = index.to_host().expect("download");
            assert_same(&got, &want, &format!("q_lens {q_lens:?} kv_lens {kv_lens:?} (seed {seed})"));
            if prefix == 0 && q_lens[1] == kv_lens[1] {
                // A whole prompt: the one-shot converter's index.
                let one_shot = convert_cpu(&kv_lens, &vertical, &slash, 2, heads, nnz_v, nnz_s, max_kv_len);
                assert_same(&got, &one_shot, "whole prompt");
            }
        }
    }
    // The longest chunk past the longest kv_len, and a wrong row count, are refused on the host.
    let lens = stream.clone_htod(&[10i32]).expect("lens");
    let raw = stream.clone_htod(&[0i32; 3]).expect("raw");
    let mut index = VerticalSlashIndex::zeros(&device, IndexShape { batch: 1, heads: 1, rows: 1, nnz_s: 3, nnz_v: 3 })
        .expect("index");
    let too_long = ChunkLengths { q_lens: &lens, kv_lens: &lens, max_q_len: 11, max_kv_len: 10 };
    let error = convert_vertical_slash_chunk_into(&device, too_long, &raw, &raw, &mut workspace, &mut index)
        .expect_err("q longer than kv");
    assert!(error.to_string().contains("longest chunk 11 tokens"), "{error}");
    let rows = ChunkLengths { q_lens: &lens, kv_lens: &lens, max_q_len: 65, max_kv_len: 100 };
    let error = convert_vertical_slash_chunk_into(&device, rows, &raw, &raw, &mut workspace, &mut index)
        .expect_err("two rows expected");
    assert!(error.to_string().contains("the output index has shape"), "{error}");
}
