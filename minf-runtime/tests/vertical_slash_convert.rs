//! The vertical-slash converter without a GPU: the CPU model against the format's guarantees and
//! against a port of MInference's walk, and the GPU template through NVRTC (NVRTC must be
//! installed; these tests fail, not skip, without it).

use minf_codegen::{render_index, Arch, IndexKernel, IndexKernelSpec};
use minf_runtime::jit::KernelCache;
use minf_runtime::vertical_slash::{realised_mask_contains, HostVerticalSlashIndex, BLOCK};
use minf_testkit::convert::{convert_cpu, hostile_raw_indices};
use minf_testkit::reference::TestRng;
use proptest::prelude::*;
use std::collections::BTreeSet;

#[test]
fn converter_template_compiles_for_sm80_and_sm90a() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let cache = KernelCache::at(dir.path().to_path_buf());
    for arch in [Arch::Sm80, Arch::Sm90a] {
        let spec = IndexKernelSpec { kernel: IndexKernel::VerticalSlashConvert, arch };
        let rendered = render_index(&spec).unwrap_or_else(|e| panic!("rendering {spec:?}: {e}"));
        assert!(!rendered.source.contains("#include"), "the converter must be header-free");
        for entry in ["_lists", "_rows"] {
            let name = format!("{}{entry}", spec.kernel_name());
            assert!(rendered.source.contains(&format!("{name}(")), "missing entry point {name}");
        }
        let compiled = cache.get_or_compile(&rendered).unwrap_or_else(|e| panic!("compiling {spec:?}: {e}"));
        assert!(!compiled.is_ptx, "{arch}: expected a CUBIN");
        assert_eq!(&compiled.image[..4], b"\x7fELF", "{arch}: CUBIN without the ELF magic");
    }
}

/// Everything one conversion needs, from a seed.
#[derive(Debug, Clone)]
struct Case {
    seqlens: Vec<i32>,
    vertical: Vec<i32>,
    slash: Vec<i32>,
    batch: usize,
    heads: usize,
    nnz_v: usize,
    nnz_s: usize,
    context: usize,
}

impl Case {
    fn convert(&self) -> HostVerticalSlashIndex {
        convert_cpu(
            &self.seqlens,
            &self.vertical,
            &self.slash,
            self.batch,
            self.heads,
            self.nnz_v,
            self.nnz_s,
            self.context,
        )
    }

    /// In-range unique values of head `(b, h)` of `raw` (capacity `nnz` per head).
    fn valid(&self, raw: &[i32], nnz: usize, b: usize, h: usize) -> BTreeSet<i32> {
        let length = self.seqlens[b].clamp(0, self.context as i32);
        let bh = b * self.heads + h;
        raw[bh * nnz..(bh + 1) * nnz].iter().copied().filter(|x| (0..length).contains(x)).collect()
    }
}

fn raw_case(batch: usize, heads: usize, lengths: [i32; 2], pad: usize, nnz: [usize; 2], seed: u64) -> Case {
    let mut rng = TestRng::new(seed);
    let seqlens: Vec<i32> = lengths[..batch].to_vec();
    let context = *seqlens.iter().max().unwrap_or(&1) as usize + pad;
    let [nnz_v, nnz_s] = nnz;
    let mut vertical = Vec::new();
    let mut slash = Vec::new();
    for &length in &seqlens {
        for _ in 0..heads {
            vertical.extend(hostile_raw_indices(&mut rng, nnz_v, length, context));
            slash.extend(hostile_raw_indices(&mut rng, nnz_s, length, context));
        }
    }
    Case { seqlens, vertical, slash, batch, heads, nnz_v, nnz_s, context }
}

/// Checks the format's guarantees for every row block of `index`, converted from `case`.
fn check_guarantees(case: &Case, index: &HostVerticalSlashIndex) {
    let shape = index.shape;
    assert_eq!(shape.rows, case.context.div_ceil(BLOCK));
    assert_eq!((shape.nnz_v, shape.nnz_s), (case.nnz_v, case.nnz_s));
    for b in 0..case.batch {
        let length = case.seqlens[b].clamp(0, case.context as i32) as usize;
        for h in 0..case.heads {
            let verticals = case.valid(&case.vertical, case.nnz_v, b, h);
            let slashes = case.valid(&case.slash, case.nnz_s, b, h);
            for r in 0..shape.rows {
                let row = shape.row(b, h, r);
                let (blocks, cols) = (index.block_count[row], index.column_count[row]);
                let at = format!("b={b} h={h} r={r} length={length}");
                // (c) counts within capacity, nothing past the length (the slots past the counts
                // are unspecified).
                assert!((0..=case.nnz_s as i32).contains(&blocks), "{at}: block_count {blocks}");
                assert!((0..=case.nnz_v as i32).contains(&cols), "{at}: column_count {cols}");
                let start_m = r * BLOCK;
                if start_m >= length {
                    assert_eq!((blocks, cols), (0, 0), "{at}: a row block past the length has entries");
                    continue;
                }
                let end_m = start_m + BLOCK;
                let last_row = end_m.min(length) - 1;
                let ranges = index.ranges(b, h, r);
                let columns = index.columns(b, h, r);
                // (b) ranges ascending and disjoint, columns ascending (so unique), chosen, causal
                // for the block and outside every range.
                assert!(ranges.iter().all(|&s| s >= 0 && (s as usize) < end_m), "{at}: range starts {ranges:?}");
                assert!(ranges.windows(2).all(|w| w[1] >= w[0] + BLOCK as i32), "{at}: overlapping {ranges:?}");
                assert!(columns.windows(2).all(|w| w[0] < w[1]), "{at}: columns not strictly ascending");
                let span = ranges.last().map_or(end_m, |&s| end_m.max(s as usize + BLOCK));
                let mut in_range = vec![false; span];
                for &s in ranges {
                    in_range[s as usize..s as usize + BLOCK].iter_mut().for_each(|x| *x = true);
                }
                for &c in columns {
                    assert!(verticals.contains(&c) && (c as usize) < end_m, "{at}: column {c} was not asked for");
                    assert!(!in_range[c as usize], "{at}: column {c} lies inside a listed range");
                }
                // (a) coverage: every causal (i, j) of the block on a chosen column or diagonal.
                let mut covered = in_range;
                for &c in columns {
                    covered[c as usize] = true;
                }
                let mut prefix = vec![0usize; covered.len() + 1];
                for (k, &x) in covered.iter().enumerate() {
                    prefix[k + 1] = prefix[k] + usize::from(x);
                }
                // realised_mask_contains scans the row, so it is asked for every 16th index only.
                for (k, &v) in verticals.range(..=last_row as i32).enumerate() {
                    assert!(covered[v as usize], "{at}: vertical {v} not covered");
                    if k % 16 == 0 {
                        assert!(realised_mask_contains(index, b, h, last_row, v as usize), "{at}: ({last_row}, {v})");
                    }
                }
                for (k, &s) in slashes.range(..=last_row as i32).enumerate() {
                    let s = s as usize;
                    let (first, last) = (start_m.max(s) - s, last_row - s);
                    assert!(prefix[last + 1] - prefix[first] == last - first + 1, "{at}: slash {s} not covered");
                    if k % 16 == 0 {
                        assert!(realised_mask_contains(index, b, h, start_m.max(s), first), "{at}: slash {s}");
                        assert!(realised_mask_contains(index, b, h, last_row, last), "{at}: slash {s}");
                    }
                }
                // realised_mask_contains is the covered set, below the diagonal only.
                for i in [start_m, last_row, (start_m + last_row) / 2] {
                    for j in [0, i / 2, i.saturating_sub(1), i, i + 1, end_m - 1] {
                        let want = j <= i && covered.get(j).copied().unwrap_or(false);
                        assert_eq!(realised_mask_contains(index, b, h, i, j), want, "{at}: ({i}, {j})");
                    }
                }
            }
        }
    }
}

/// MInference's walk for one row block, ported from the format's description: `vertical`
/// ascending and `slash` descending, unique and in range, and some slash below `end_m` (MInference
/// reads past the slash list otherwise). Returns (range starts, columns).
fn minference_row(vertical: &[i32], slash: &[i32], end_m: i32) -> (Vec<i32>, Vec<i32>) {
    const B: i32 = BLOCK as i32;
    let (mut starts, mut columns) = (Vec::new(), Vec::new());
    let save = |starts: &mut Vec<i32>, from: i32, to: i32| starts.extend((from..to).step_by(BLOCK));
    let (mut v, mut s) = (1, 1);
    let mut v_idx = vertical[0];
    let mut s_idx = slash[0];
    while s_idx >= end_m {
        s_idx = slash[s];
        s += 1;
    }
    s_idx = (end_m - s_idx).max(B);
    let (mut range_start, mut range_end) = (s_idx - B, s_idx);
    loop {
        if v_idx < range_end {
            if v_idx < range_start {
                columns.push(v_idx);
            }
            if v < vertical.len() {
                v_idx = vertical[v];
                v += 1;
            } else {
                v_idx = end_m + B;
            }
        } else {
            if s < slash.len() {
                s_idx = (end_m - slash[s]).max(B);
                s += 1;
            } else {
                save(&mut starts, range_start, range_end);
                break;
            }
            if s_idx > range_end + B {
                save(&mut starts, range_start, range_end);
                range_start = s_idx - B;
                range_end = s_idx;
            } else if s_idx > range_end {
                range_end += B;
            }
        }
    }
    (starts, columns)
}

/// Sorted unique in-range inputs with the main diagonal among the slashes (what MInference's
/// Python side passes), converted both ways.
fn minference_style(batch: usize, heads: usize, lengths: [i32; 2], pad: usize, frac: [u32; 2], seed: u64) {
    let mut rng = TestRng::new(seed);
    let seqlens: Vec<i32> = lengths[..batch].to_vec();
    let shortest = *seqlens.iter().min().unwrap_or(&1) as usize;
    let context = *seqlens.iter().max().unwrap_or(&1) as usize + pad;
    let nnz_v = 1 + (shortest - 1) * frac[0] as usize / 1000;
    let nnz_s = 1 + (shortest - 1) * frac[1] as usize / 1000;
    let pick = |rng: &mut TestRng, length: usize, count: usize, with_zero: bool| -> Vec<i32> {
        let mut all: Vec<i32> = (0..length as i32).collect();
        let from = usize::from(with_zero);
        for k in from..count {
            let other = k + rng.below(length - k);
            all.swap(k, other);
        }
        let mut chosen = all[..count].to_vec();
        chosen.sort_unstable();
        chosen
    };
    let (mut vertical, mut slash) = (Vec::new(), Vec::new());
    for &length in &seqlens {
        for _ in 0..heads {
            vertical.extend(pick(&mut rng, length as usize, nnz_v, false));
            slash.extend(pick(&mut rng, length as usize, nnz_s, true).into_iter().rev());
        }
    }
    let case = Case { seqlens, vertical, slash, batch, heads, nnz_v, nnz_s, context };
    let index = case.convert();
    check_guarantees(&case, &index);
    let mut want = HostVerticalSlashIndex::zeros(index.shape).expect("small shape");
    for b in 0..batch {
        for h in 0..heads {
            let bh = b * heads + h;
            let v = &case.vertical[bh * nnz_v..(bh + 1) * nnz_v];
            let s = &case.slash[bh * nnz_s..(bh + 1) * nnz_s];
            for r in (0..index.shape.rows).take_while(|r| r * BLOCK < case.seqlens[b] as usize) {
                let (starts, columns) = minference_row(v, s, (r * BLOCK + BLOCK) as i32);
                let row = index.shape.row(b, h, r);
                want.block_count[row] = starts.len() as i32;
                want.block_offset[row * nnz_s..row * nnz_s + starts.len()].copy_from_slice(&starts);
                want.column_count[row] = columns.len() as i32;
                want.column_index[row * nnz_v..row * nnz_v + columns.len()].copy_from_slice(&columns);
            }
        }
    }
    assert_eq!(index, want, "minf and MInference disagree on MInference-style inputs {case:?}");
}

fn lengths() -> impl Strategy<Value = i32> {
    prop_oneof![1i32..=130, 1i32..3000]
}

// 2200 cases in all, about 10 s of one core in a debug build.
proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn raw_inputs_keep_every_guarantee(
        batch in 1usize..=2,
        heads in 1usize..=2,
        lengths in [lengths(), lengths()],
        pad in prop_oneof![Just(0usize), 0usize..200],
        frac in [0u32..=1000, 0u32..=1000],
        seed in any::<u64>(),
    ) {
        // Capacities from 1 to past the longest length.
        let longest = lengths[..batch].iter().copied().max().unwrap_or(1) as usize;
        let nnz = frac.map(|f| 1 + (longest + 100) * f as usize / 1000);
        let case = raw_case(batch, heads, lengths, pad, nnz, seed);
        check_guarantees(&case, &case.convert());
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn order_duplicates_and_garbage_do_not_change_the_index(
        lengths in [lengths(), lengths()],
        frac in [0u32..=1000, 0u32..=1000],
        seed in any::<u64>(),
    ) {
        let longest = lengths.iter().copied().max().unwrap_or(1) as usize;
        let nnz = frac.map(|f| 1 + longest * f as usize / 1000);
        let case = raw_case(2, 1, lengths, 0, nnz, seed);
        // The same valid sets, sorted, each once, padded with an out-of-range value.
        let mut clean = case.clone();
        for (raw, nnz) in [(&mut clean.vertical, case.nnz_v), (&mut clean.slash, case.nnz_s)] {
            for b in 0..2 {
                let mut set: Vec<i32> = case.valid(raw, nnz, b, 0).into_iter().collect();
                set.resize(nnz, -1);
                raw[b * nnz..(b + 1) * nnz].copy_from_slice(&set);
            }
        }
        prop_assert_eq!(case.convert(), clean.convert());
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 800, ..ProptestConfig::default() })]

    #[test]
    fn minference_style_inputs_match_minference(
        batch in 1usize..=2,
        heads in 1usize..=2,
        lengths in [lengths(), lengths()],
        pad in prop_oneof![Just(0usize), 0usize..200],
        frac in [0u32..=1000, 0u32..=1000],
        seed in any::<u64>(),
    ) {
        minference_style(batch, heads, lengths, pad, frac, seed);
    }
}

#[test]
fn verticals_past_the_last_range_are_kept() {
    // One slash far from the diagonal: MInference would drop vertical 199 in row block 3 (its last
    // range ends at 256 - 100 = 156); minf keeps it. Row block 0 has no slash below 64 at all.
    let case = Case {
        seqlens: vec![256],
        vertical: vec![199, 10, 150, 10],
        slash: vec![100],
        batch: 1,
        heads: 1,
        nnz_v: 4,
        nnz_s: 1,
        context: 256,
    };
    let index = case.convert();
    check_guarantees(&case, &index);
    assert_eq!((index.ranges(0, 0, 0), index.columns(0, 0, 0)), (&[][..], &[10][..]));
    assert_eq!((index.ranges(0, 0, 3), index.columns(0, 0, 3)), (&[92][..], &[10, 199][..]));
    assert_eq!(minference_row(&[10, 150, 199], &[100], 256), (vec![92], vec![10]));
}

#[test]
fn slash_ranges_merge_like_minference() {
    // Row block 2 (end_m = 192): slashes 150, 100, 60, 0 end at 64 (clamped), 92, 132, 192. 92 is
    // within 64 of 64, so [0, 64) grows to [0, 128); 132 also extends it to [0, 192), which
    // covers 192's range too.
    let case = Case {
        seqlens: vec![192],
        vertical: vec![5, 100, 191],
        slash: vec![0, 60, 100, 150],
        batch: 1,
        heads: 1,
        nnz_v: 3,
        nnz_s: 4,
        context: 192,
    };
    let index = case.convert();
    check_guarantees(&case, &index);
    assert_eq!((index.ranges(0, 0, 2), index.columns(0, 0, 2)), (&[0, 64, 128][..], &[][..]));
    assert_eq!(minference_row(&[5, 100, 191], &[150, 100, 60, 0], 192), (vec![0, 64, 128], vec![]));
    // Row block 1 (end_m = 128): slashes 100, 60, 0 end at 64, 68, 128: [0, 64) grows to [0, 128)
    // at 68, and 128 is covered.
    assert_eq!((index.ranges(0, 0, 1), index.columns(0, 0, 1)), (&[0, 64][..], &[][..]));
}

#[test]
fn seqlens_are_clamped_to_the_context() {
    let base = Case {
        seqlens: vec![100, 70],
        vertical: vec![3, 90, 3, 90],
        slash: vec![0, 80, 0, 80],
        batch: 2,
        heads: 1,
        nnz_v: 2,
        nnz_s: 2,
        context: 100,
    };
    // A length past the context is the context; a negative one is empty.
    let long = Case { seqlens: vec![5000, -7], ..base.clone() };
    let index = long.convert();
    let expected = Case { seqlens: vec![100, 0], ..base };
    assert_eq!(index, expected.convert());
    assert!(index.block_count[2..].iter().chain(&index.column_count[2..]).all(|&x| x == 0));
    assert_eq!((index.ranges(0, 0, 1), index.columns(0, 0, 1)), (&[0, 64][..], &[][..]));
}

#[test]
fn conversion_shapes_are_checked_with_what_is_allowed() {
    use minf_runtime::vertical_slash::IndexShape;
    let shape = IndexShape::for_conversion(2, 2 * 32 * 1000, 2 * 32 * 6096, 2, 32, 131_072).expect("valid");
    assert_eq!(shape, IndexShape { batch: 2, heads: 32, rows: 2048, nnz_s: 6096, nnz_v: 1000 });
    assert_eq!(IndexShape::for_conversion(1, 1, 1, 1, 1, 65).expect("valid").rows, 2);
    let message = |r: Result<IndexShape, minf_runtime::MinfError>| r.expect_err("must be rejected").to_string();
    let e = message(IndexShape::for_conversion(2, 10, 64, 2, 4, 100));
    assert!(e.contains("vertical holds 10 indices") && e.contains("multiple of batch * heads = 8"), "{e}");
    let e = message(IndexShape::for_conversion(2, 8, 0, 2, 4, 100));
    assert!(e.contains("slash holds 0 indices"), "{e}");
    let e = message(IndexShape::for_conversion(3, 8, 8, 2, 4, 100));
    assert!(e.contains("seqlens holds 3 lengths but batch is 2"), "{e}");
    let e = message(IndexShape::for_conversion(2, 8, 8, 2, 4, 0));
    assert!(e.contains("context 0: allowed 1 to"), "{e}");
    let e = message(IndexShape::for_conversion(0, 8, 8, 0, 4, 100));
    assert!(e.contains("each must be between 1 and 65535"), "{e}");
    // Chunks: rows from the longest chunk, capacities as before, the chunk within the keys.
    let chunk = IndexShape::for_chunk_conversion(2, 2, 2 * 32 * 1000, 2 * 32 * 6096, 2, 32, 8192, 131_072);
    assert_eq!(chunk.expect("valid"), IndexShape { batch: 2, heads: 32, rows: 128, nnz_s: 6096, nnz_v: 1000 });
    assert_eq!(IndexShape::for_chunk_conversion(1, 1, 1, 1, 1, 1, 1, 5000).expect("valid").rows, 1);
    let e = message(IndexShape::for_chunk_conversion(1, 2, 8, 8, 2, 4, 10, 100));
    assert!(e.contains("q_lens holds 1 lengths but batch is 2"), "{e}");
    let e = message(IndexShape::for_chunk_conversion(2, 2, 8, 8, 2, 4, 101, 100));
    assert!(e.contains("longest chunk 101 tokens: allowed 1 to the longest kv_len (100)"), "{e}");
    let e = message(IndexShape::for_chunk_conversion(2, 2, 8, 8, 2, 4, 0, 100));
    assert!(e.contains("longest chunk 0 tokens"), "{e}");
}

/// Host indices compare by shape, counts and counted entries: the slots past the counts (which the
/// GPU converter leaves as it found them) are ignored, and `zero_padding` clears them.
#[test]
fn host_indices_compare_counts_and_counted_entries_only() {
    let case = raw_case(2, 3, [3000, 130], 64, [60, 6], 11);
    let index = case.convert();
    let mut padded = index.clone();
    let shape = index.shape;
    for (counts, list, capacity) in [
        (&padded.block_count, &mut padded.block_offset, shape.nnz_s),
        (&padded.column_count, &mut padded.column_index, shape.nnz_v),
    ] {
        for (&n, row) in counts.iter().zip(list.chunks_mut(capacity)) {
            row[n as usize..].fill(0x7fff_fff0);
        }
    }
    assert!(padded.block_offset.contains(&0x7fff_fff0) && padded.column_index.contains(&0x7fff_fff0));
    assert_eq!(padded, index, "slots past the counts are not compared");
    let mut cleared = padded.clone();
    cleared.zero_padding();
    assert_eq!(cleared.block_offset, index.block_offset);
    assert_eq!(cleared.column_index, index.column_index);
    // A count, or an entry below it, that differs makes the indices differ.
    let (b, h, r) = (0..shape.heads)
        .flat_map(|h| (0..shape.rows).map(move |r| (0, h, r)))
        .find(|&(b, h, r)| !index.ranges(b, h, r).is_empty() && !index.columns(b, h, r).is_empty())
        .expect("a row with ranges and columns");
    let row = shape.row(b, h, r);
    let mut other = padded.clone();
    other.block_count[row] -= 1;
    assert_ne!(other, index, "a range count");
    let mut other = padded.clone();
    other.column_count[row] -= 1;
    assert_ne!(other, index, "a column count");
    let mut other = padded.clone();
    other.block_offset[row * shape.nnz_s + index.ranges(b, h, r).len() - 1] += 1;
    assert_ne!(other, index, "the last counted range start");
    let mut other = padded;
    other.column_index[row * shape.nnz_v] += 1;
    assert_ne!(other, index, "the first counted column");
}
