//! GPU tests of the sparse patterns: each kernel against the float64 reference under the exact
//! mask its arguments define, over head dims, lengths, GQA groupings, packed batches of different
//! lengths, and indices that are random, adversarial (out of range, over capacity) or extreme.

use super::{
    check_attention, check_attention_with, describe, device, launch_bshd, launch_bshd_on, test_seed, upload, Case,
    Outcome, Packed, TOLERANCE,
};
use half::{bf16, f16};
use minf::codegen::abi::TILE_LIST_CAPACITY;
use minf::codegen::{DType, KernelSpec, Mainloop, Pattern};
use minf::{
    AShape, AttentionElement, BlockSparseIndexRef, Device, PatternArgs, TileChoice, Varlen, VerticalSlashIndexRef,
};
use minf_testkit::reference::TestRng;
use std::cell::Cell;

/// Kernel variants the pattern tests run besides the default spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Variant {
    /// The default spec for the pattern and device.
    Default,
    /// The `wgmma` engine (sm_90a, head_dim <= 128).
    Wgmma,
    /// Index-driven patterns with 128-row blocks serving two 64-row index entries (8 warps,
    /// 128-key tiles), which shares ranges listed by both.
    TwoRowBlocks,
    /// The wgmma engine on 128-row blocks for the index-driven patterns (two consumer warpgroups,
    /// each skipping the tiles its half does not list) with a three-stage ring.
    WgmmaTwoRowBlocks,
    /// The wgmma engine on 64x64 index-driven blocks (two per SM): the tile `--index-tile
    /// 64,64,4,2,wgmma` selects, which ran scattered indices fastest.
    WgmmaSquare,
    /// The default tile on the mma.sync engine (what A100-class cards run), where the default is
    /// the wgmma engine.
    MmaSync,
    /// The `wgmma_tma` engine (tensor-map copies, sm_90a, head_dim <= 128) on the `Wgmma` tiles.
    WgmmaTma,
    /// The `wgmma_tma` engine on 128-row index-driven blocks with 128-key tiles (the default tile).
    WgmmaTmaTwoRowBlocks,
    /// The `wgmma_tma` engine on 64x64 index-driven blocks.
    WgmmaTmaSquare,
    /// `wgmma_tma_pingpong` on 128-row blocks with 128-key tiles (every pattern).
    WgmmaTmaPingPong,
    /// `wgmma_tma_overlap` on 128-row blocks with 128-key tiles (every pattern).
    WgmmaTmaOverlap,
    /// `wgmma_tma_overlap` on 64x64 index-driven blocks (one consumer, two blocks per SM).
    WgmmaTmaOverlapSquare,
}

thread_local! {
    /// The variant this test thread runs.
    pub(super) static VARIANT: Cell<Variant> = const { Cell::new(Variant::Default) };
}

pub(super) fn spec_override<T: AttentionElement>(device: &Device, pattern: Pattern, case: &Case) -> Option<KernelSpec> {
    let base = KernelSpec::default_for(pattern, T::DTYPE, case.head_dim as u32, device.arch());
    match VARIANT.get() {
        Variant::Default => None,
        Variant::Wgmma if case.head_dim <= 128 => {
            let (block_m, warps) = if pattern.is_indexed() { (64, 4) } else { (128, 8) };
            Some(KernelSpec { block_m, warps, mainloop: Mainloop::Wgmma, ..base })
        }
        Variant::TwoRowBlocks if pattern.is_indexed() && case.head_dim <= 128 => {
            Some(KernelSpec { block_m: 128, block_n: 128, warps: 8, stages: 2, mainloop: Mainloop::MmaSync, ..base })
        }
        Variant::WgmmaTwoRowBlocks if pattern.is_indexed() && case.head_dim <= 128 => {
            Some(KernelSpec { block_m: 128, block_n: 128, warps: 8, stages: 3, mainloop: Mainloop::Wgmma, ..base })
        }
        Variant::WgmmaSquare if pattern.is_indexed() && case.head_dim <= 128 => {
            Some(KernelSpec { block_m: 64, block_n: 64, warps: 4, stages: 2, mainloop: Mainloop::Wgmma, ..base })
        }
        Variant::MmaSync if base.mainloop != Mainloop::MmaSync => {
            Some(KernelSpec { mainloop: Mainloop::MmaSync, ..base })
        }
        Variant::WgmmaTma if case.head_dim <= 128 => {
            let (block_m, block_n, warps) = if pattern.is_indexed() { (64, 64, 4) } else { (128, 128, 8) };
            Some(KernelSpec { block_m, block_n, warps, stages: 2, mainloop: Mainloop::WgmmaTma, ..base })
        }
        Variant::WgmmaTmaTwoRowBlocks if pattern.is_indexed() && case.head_dim <= 128 => {
            Some(KernelSpec { block_m: 128, block_n: 128, warps: 8, stages: 2, mainloop: Mainloop::WgmmaTma, ..base })
        }
        Variant::WgmmaTmaPingPong if case.head_dim <= 128 => Some(KernelSpec {
            block_m: 128,
            block_n: 128,
            warps: 8,
            stages: 2,
            mainloop: Mainloop::WgmmaTmaPingPong,
            ..base
        }),
        Variant::WgmmaTmaOverlap if case.head_dim <= 128 => Some(KernelSpec {
            block_m: 128,
            block_n: 128,
            warps: 8,
            stages: 2,
            mainloop: Mainloop::WgmmaTmaOverlap,
            ..base
        }),
        Variant::WgmmaTmaOverlapSquare if pattern.is_indexed() && case.head_dim <= 128 => Some(KernelSpec {
            block_m: 64,
            block_n: 64,
            warps: 4,
            stages: 2,
            mainloop: Mainloop::WgmmaTmaOverlap,
            ..base
        }),
        Variant::WgmmaTmaSquare if pattern.is_indexed() && case.head_dim <= 128 => {
            Some(KernelSpec { block_m: 64, block_n: 64, warps: 4, stages: 2, mainloop: Mainloop::WgmmaTma, ..base })
        }
        _ => None,
    }
}

/// The variants to test on this device for `pattern`.
pub(super) fn variants(device: &Device, pattern: Pattern) -> Vec<Variant> {
    let mut variants = vec![Variant::Default];
    if pattern.is_indexed() {
        variants.push(Variant::TwoRowBlocks);
    }
    if device.arch() == minf::codegen::Arch::Sm90a {
        variants.push(Variant::Wgmma);
        if pattern.is_indexed() {
            variants.push(Variant::WgmmaTwoRowBlocks);
            variants.push(Variant::WgmmaSquare);
        }
        variants.push(Variant::MmaSync);
        variants.push(Variant::WgmmaTma);
        if pattern.is_indexed() {
            variants.push(Variant::WgmmaTmaTwoRowBlocks);
            variants.push(Variant::WgmmaTmaSquare);
        }
        variants.push(Variant::WgmmaTmaPingPong);
        variants.push(Variant::WgmmaTmaOverlap);
        if pattern.is_indexed() {
            variants.push(Variant::WgmmaTmaOverlapSquare);
        }
    }
    // MINF_TEST_VARIANTS=Default,WgmmaTma,... runs only the variants it names (for a
    // targeted run on a GPU machine; docs/testing.md).
    if let Ok(names) = std::env::var("MINF_TEST_VARIANTS") {
        let names: Vec<&str> = names.split(',').map(str::trim).collect();
        variants.retain(|variant| names.iter().any(|name| name.eq_ignore_ascii_case(&format!("{variant:?}"))));
        println!("MINF_TEST_VARIANTS: running {variants:?}");
    }
    variants
}

/// Host copy of a per-(batch, head, 64-row block) index: a count and a fixed-capacity list.
#[derive(Debug, Clone)]
pub(super) struct HostLists {
    rows: usize,
    capacity: usize,
    counts: Vec<i32>,
    lists: Vec<i32>,
}

impl HostLists {
    fn new(batch: usize, heads: usize, rows: usize, capacity: usize) -> HostLists {
        HostLists {
            rows,
            capacity,
            counts: vec![0; batch * heads * rows],
            lists: vec![0; batch * heads * rows * capacity.max(1)],
        }
    }
    fn slot(&self, b: usize, h: usize, heads: usize, r: usize) -> usize {
        (b * heads + h) * self.rows + r
    }
    fn set(&mut self, at: usize, items: &[i32], count: i32) {
        self.counts[at] = count;
        self.lists[at * self.capacity..][..items.len()].copy_from_slice(items);
    }
    /// Reverses the entries of every list (sorted lists come out descending).
    fn reverse_each(&mut self) {
        for at in 0..self.counts.len() {
            let n = (self.counts[at].max(0) as usize).min(self.capacity);
            self.lists[at * self.capacity..][..n].reverse();
        }
    }
    /// The entries the kernel reads: the count clamped to [0, capacity].
    fn entries(&self, at: usize) -> &[i32] {
        let n = (self.counts[at].max(0) as usize).min(self.capacity);
        &self.lists[at * self.capacity..][..n]
    }
}

/// Cases shared by the sparse patterns: every head dim and length, rotating GQA groupings.
fn cases(head_dim: usize) -> Vec<Case> {
    let groupings = [(32, 8, 2), (28, 4, 1), (32, 32, 1)];
    [1, 63, 64, 65, 1000, 4097]
        .iter()
        .enumerate()
        .map(|(n, &seq)| {
            let (heads, kv_heads, batch) = groupings[n % 3];
            let (heads, kv_heads) = if head_dim == 256 && seq > 1000 { (8, 2) } else { (heads, kv_heads) };
            Case { batch, seq, heads, kv_heads, head_dim, bhsd: n % 2 == 1 }
        })
        .collect()
}

fn report(name: &str, case_desc: String, err: f64, lse_err: f64, failures: &mut Vec<String>) {
    let ok = err <= TOLERANCE && lse_err <= 1e-2;
    println!("{} {name} {case_desc}: rel_l2 {err:.2e}, lse max abs {lse_err:.1e}", if ok { "ok  " } else { "FAIL" });
    if !ok {
        failures.push(format!("{name} {case_desc}"));
    }
}

pub(super) fn packed_offsets(lens: &[usize]) -> Vec<usize> {
    let mut offsets = vec![0];
    for len in lens {
        offsets.push(offsets.last().copied().unwrap_or(0) + len);
    }
    offsets
}

// ---------------------------------------------------------------------------------------------
// A-shape

fn a_shape_for<T: AttentionElement>(device: &Device, failures: &mut Vec<String>) {
    let seed = test_seed(&format!("a_shape {}", T::DTYPE.as_str()));
    // Tiny and huge windows, MInference's default, no sinks, sinks longer than the sequence.
    let shapes = [(4, 64), (128, 3968), (0, 1), (1024, 100_000), (3000, 17)];
    for head_dim in [64, 96, 128, 256] {
        if T::DTYPE == minf::codegen::DType::F16 && head_dim != 128 {
            continue;
        }
        for (n, case) in cases(head_dim).iter().enumerate() {
            let (n_init, n_local) = shapes[n % shapes.len()];
            let visible = move |_: usize, _: usize, i: usize, j: usize| j <= i && (j < n_init || i - j < n_local);
            let args = PatternArgs::AShape(AShape { n_init, n_local });
            let o = check_attention::<T>(
                device,
                case,
                seed + n as u64,
                spec_override::<T>(device, Pattern::AShape, case),
                args,
                None,
                &visible,
            );
            report(
                "a_shape",
                format!("{} n_init={n_init} n_local={n_local}", describe::<T>(case)),
                o.out_error,
                o.lse_error,
                failures,
            );
        }
        // Packed batch of two sequences of different lengths.
        let lens = [1000, 333];
        let offsets = packed_offsets(&lens);
        let cu: Vec<i32> = offsets.iter().map(|&o| o as i32).collect();
        let varlen = Varlen::new(device, &cu, &cu).expect("varlen");
        let case = Case { batch: 1, seq: offsets[2], heads: 8, kv_heads: 2, head_dim, bhsd: false };
        let packed = Packed { varlen: &varlen, offsets };
        let visible = |_: usize, _: usize, i: usize, j: usize| j <= i && (j < 16 || i - j < 200);
        let o = check_attention::<T>(
            device,
            &case,
            seed ^ 7,
            spec_override::<T>(device, Pattern::AShape, &case),
            PatternArgs::AShape(AShape { n_init: 16, n_local: 200 }),
            Some(&packed),
            &visible,
        );
        report("a_shape varlen [1000, 333]", describe::<T>(&case), o.out_error, o.lse_error, failures);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_shape_matches_masked_reference() {
    let device = device();
    let mut failures = Vec::new();
    for variant in variants(&device, Pattern::AShape) {
        println!("variant: {variant:?}");
        VARIANT.set(variant);
        a_shape_for::<bf16>(&device, &mut failures);
        a_shape_for::<f16>(&device, &mut failures);
    }
    VARIANT.set(Variant::Default);
    assert!(failures.is_empty(), "over tolerance: {failures:?}");
}

// ---------------------------------------------------------------------------------------------
// Block-sparse

/// Random sorted key-block lists per query block (always causal: blocks <= the query block),
/// with runs of adjacent blocks so 128-key tiles pair them; `hostile` adds ids out of range.
pub(super) fn block_sparse_index(
    rng: &mut TestRng,
    batch: usize,
    heads: usize,
    lens: &[usize],
    hostile: bool,
) -> HostLists {
    let max_len = lens.iter().copied().max().unwrap_or(0);
    let rows = max_len.div_ceil(64).max(1);
    // A hostile index's lists hold more entries than a 128-row block's tile list (its blocks walk
    // their ranges in the kernel) in about half its rows.
    let listed = rows.min(24) + usize::from(hostile) * 2;
    let capacity = if hostile { listed + 4 * TILE_LIST_CAPACITY as usize } else { listed };
    let mut index = HostLists::new(batch, heads, rows, capacity);
    for (b, &len) in lens.iter().enumerate() {
        let key_blocks = len.div_ceil(64) as i32;
        for h in 0..heads {
            for r in 0..len.div_ceil(64) {
                let mut ids: Vec<i32> = (0..=r as i32).filter(|_| rng.below(3) == 0).collect();
                if rng.below(2) == 0 && !ids.contains(&(r as i32)) {
                    ids.push(r as i32); // the diagonal block, masked causally
                }
                ids.truncate(listed - usize::from(hostile) * 2);
                let mut count = ids.len() as i32;
                if hostile {
                    // Ids before and past the sequence, filling the list, or its first `listed`
                    // entries; a count past capacity.
                    ids.insert(0, -3);
                    let filled = if rng.below(2) == 0 { capacity } else { listed };
                    ids.resize(filled, key_blocks + 5);
                    count = match (filled == capacity, rng.below(2)) {
                        (true, 0) => i32::MAX,
                        _ => filled as i32,
                    };
                }
                let at = index.slot(b, h, heads, r);
                index.set(at, &ids, count);
            }
        }
    }
    index
}

fn block_sparse_for<T: AttentionElement>(device: &Device, failures: &mut Vec<String>) {
    let seed = test_seed(&format!("block_sparse {}", T::DTYPE.as_str()));
    let mut rng = TestRng::new(seed);
    for head_dim in [64, 96, 128, 256] {
        if T::DTYPE == minf::codegen::DType::F16 && head_dim != 128 {
            continue;
        }
        let mut all = cases(head_dim);
        all.push(Case { batch: 1, seq: 3000, heads: 4, kv_heads: 2, head_dim, bhsd: false });
        let hostile_case = all.len() - 1;
        for (n, case) in all.iter().enumerate() {
            let hostile = n == hostile_case;
            let index = block_sparse_index(&mut rng, case.batch, case.heads, &vec![case.seq; case.batch], hostile);
            run_block_sparse::<T>(device, case, seed + n as u64, &index, None, hostile, failures);
        }
        let lens = [1000, 4097];
        let offsets = packed_offsets(&lens);
        let cu: Vec<i32> = offsets.iter().map(|&o| o as i32).collect();
        let varlen = Varlen::new(device, &cu, &cu).expect("varlen");
        let case = Case { batch: 1, seq: offsets[2], heads: 8, kv_heads: 2, head_dim, bhsd: false };
        let index = block_sparse_index(&mut rng, 2, 8, &lens, false);
        let packed = Packed { varlen: &varlen, offsets };
        run_block_sparse::<T>(device, &case, seed ^ 9, &index, Some(&packed), false, failures);
    }
}

pub(super) fn run_block_sparse<T: AttentionElement>(
    device: &Device,
    case: &Case,
    seed: u64,
    index: &HostLists,
    packed: Option<&Packed<'_>>,
    hostile: bool,
    failures: &mut Vec<String>,
) {
    let stream = device.stream();
    let counts = stream.clone_htod(&index.counts).expect("counts");
    let lists = stream.clone_htod(&index.lists).expect("lists");
    let batch = packed.map_or(case.batch, |p| p.offsets.len() - 1);
    let args = PatternArgs::BlockSparse(BlockSparseIndexRef {
        kv_num_blocks: &counts,
        kv_indices: &lists,
        batch,
        heads: case.heads,
        rows: index.rows,
        capacity: index.capacity,
    });
    let heads = case.heads;
    let visible = |b: usize, h: usize, i: usize, j: usize| {
        j <= i && index.entries(index.slot(b, h, heads, i / 64)).contains(&((j / 64) as i32))
    };
    let o = check_attention::<T>(
        device,
        case,
        seed,
        spec_override::<T>(device, Pattern::BlockSparse, case),
        args,
        packed,
        &visible,
    );
    let label = if packed.is_some() {
        "block_sparse varlen"
    } else if hostile {
        "block_sparse hostile"
    } else {
        "block_sparse"
    };
    report(label, describe::<T>(case), o.out_error, o.lse_error, failures);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn block_sparse_matches_masked_reference() {
    let device = device();
    let mut failures = Vec::new();
    for variant in variants(&device, Pattern::BlockSparse) {
        println!("variant: {variant:?}");
        VARIANT.set(variant);
        block_sparse_for::<bf16>(&device, &mut failures);
        block_sparse_for::<f16>(&device, &mut failures);
    }
    VARIANT.set(Variant::Default);
    assert!(failures.is_empty(), "over tolerance: {failures:?}");
}

// ---------------------------------------------------------------------------------------------
// Vertical-slash (kernel on a given converted index; the converter has its own tests)

/// A random index in MInference's converted format: per 64-row block, non-overlapping 64-wide
/// ranges (some adjacent, often the diagonal one) and ascending columns outside them, including
/// columns inside the block itself (which must be masked causally).
pub(super) struct HostVs {
    ranges: HostLists,
    columns: HostLists,
}

pub(super) fn vertical_slash_index(
    rng: &mut TestRng,
    batch: usize,
    heads: usize,
    lens: &[usize],
    hostile: bool,
) -> HostVs {
    let max_len = lens.iter().copied().max().unwrap_or(0);
    let rows = max_len.div_ceil(64).max(1);
    let (nnz_s, nnz_v) = (40, 150);
    let mut ranges = HostLists::new(batch, heads, rows, nnz_s);
    let mut columns = HostLists::new(batch, heads, rows, nnz_v);
    for (b, &len) in lens.iter().enumerate() {
        for h in 0..heads {
            for r in 0..len.div_ceil(64) {
                let end_m = 64 * r + 64;
                let mut starts: Vec<i32> = Vec::new();
                let mut cursor = rng.below(200) as i64 - 20;
                while cursor + 64 <= end_m as i64 && starts.len() < nnz_s - 2 {
                    if cursor >= 0 {
                        starts.push(cursor as i32);
                    }
                    // Adjacent (pairable), a small gap, or a big jump.
                    cursor += match rng.below(3) {
                        0 => 64,
                        1 => 64 + rng.below(50) as i64,
                        _ => 64 + rng.below(3 * end_m / 2 + 1) as i64,
                    };
                }
                if rng.below(3) > 0 && starts.last().is_none_or(|&s| (s as usize) + 64 <= end_m - 64) {
                    starts.push((end_m - 64) as i32); // the local diagonal
                }
                let in_range = |j: usize| starts.iter().any(|&s| (s as usize) <= j && j < s as usize + 64);
                let mut cols: Vec<i32> = (0..rng.below(nnz_v - 4))
                    .map(|_| rng.below(end_m.min(len).max(1)) as i32)
                    .filter(|&j| !in_range(j as usize))
                    .collect();
                cols.sort_unstable();
                cols.dedup();
                let (mut range_count, mut column_count) = (starts.len() as i32, cols.len() as i32);
                if hostile {
                    // Entries before and past the sequence filling both lists; counts past capacity.
                    starts.insert(0, -1000);
                    starts.resize(nnz_s, i32::MAX - 10);
                    cols.insert(0, -5);
                    cols.resize(nnz_v, len as i32 + 3);
                    range_count = if rng.below(2) == 0 { i32::MAX } else { nnz_s as i32 };
                    column_count = i32::MAX;
                }
                let at = ranges.slot(b, h, heads, r);
                ranges.set(at, &starts, range_count);
                columns.set(at, &cols, column_count);
            }
        }
    }
    HostVs { ranges, columns }
}

/// Vertical-slash attention on `index` against the reference, through `choice` (a per-head tile
/// choice over every head) if given, else on the variant's spec.
#[allow(clippy::too_many_arguments)]
pub(super) fn run_vertical_slash<T: AttentionElement>(
    device: &Device,
    case: &Case,
    seed: u64,
    index: &HostVs,
    packed: Option<&Packed<'_>>,
    label: &str,
    failures: &mut Vec<String>,
    choice: Option<&mut TileChoice>,
) {
    let o = vertical_slash_outcome::<T>(device, case, seed, index, packed, choice);
    report(label, describe::<T>(case), o.out_error, o.lse_error, failures);
}

/// Vertical-slash attention on `index` (see `run_vertical_slash`) and its errors against the
/// reference under the index's mask as sets of ranges and columns.
fn vertical_slash_outcome<T: AttentionElement>(
    device: &Device,
    case: &Case,
    seed: u64,
    index: &HostVs,
    packed: Option<&Packed<'_>>,
    choice: Option<&mut TileChoice>,
) -> Outcome {
    let stream = device.stream();
    let block_count = stream.clone_htod(&index.ranges.counts).expect("block_count");
    let block_offset = stream.clone_htod(&index.ranges.lists).expect("block_offset");
    let column_count = stream.clone_htod(&index.columns.counts).expect("column_count");
    let column_index = stream.clone_htod(&index.columns.lists).expect("column_index");
    let batch = packed.map_or(case.batch, |p| p.offsets.len() - 1);
    let args = PatternArgs::VerticalSlash(VerticalSlashIndexRef {
        block_count: &block_count,
        block_offset: &block_offset,
        column_count: &column_count,
        column_index: &column_index,
        batch,
        heads: case.heads,
        rows: index.ranges.rows,
        nnz_s: index.ranges.capacity,
        nnz_v: index.columns.capacity,
    });
    let heads = case.heads;
    let visible = |b: usize, h: usize, i: usize, j: usize| {
        let at = index.ranges.slot(b, h, heads, i / 64);
        j <= i
            && (index.ranges.entries(at).iter().any(|&s| (s as i64) <= j as i64 && (j as i64) < s as i64 + 64)
                || index.columns.entries(at).contains(&(j as i32)))
    };
    let spec = if choice.is_some() { None } else { spec_override::<T>(device, Pattern::VerticalSlash, case) };
    check_attention_with::<T>(device, case, seed, spec, args, packed, &visible, choice)
}

fn vertical_slash_for<T: AttentionElement>(device: &Device, failures: &mut Vec<String>) {
    let seed = test_seed(&format!("vertical_slash {}", T::DTYPE.as_str()));
    let mut rng = TestRng::new(seed);
    for head_dim in [64, 96, 128, 256] {
        if T::DTYPE == minf::codegen::DType::F16 && head_dim != 128 {
            continue;
        }
        let mut all = cases(head_dim);
        all.push(Case { batch: 1, seq: 2500, heads: 4, kv_heads: 1, head_dim, bhsd: false });
        let hostile_case = all.len() - 1;
        for (n, case) in all.iter().enumerate() {
            let hostile = n == hostile_case;
            let index = vertical_slash_index(&mut rng, case.batch, case.heads, &vec![case.seq; case.batch], hostile);
            let label = if hostile { "vertical_slash hostile" } else { "vertical_slash" };
            run_vertical_slash::<T>(device, case, seed + n as u64, &index, None, label, failures, None);
        }
        // Column lists that are not sorted (each row's reversed): no reference applies, since the
        // merge of a 128-row block's two lists then takes other columns than the sets, but every
        // launch must end and write every output (`check_attention_with` panics on an unwritten
        // or NaN element). The error against the sets is printed, not checked.
        if head_dim == 128 {
            let case = Case { batch: 1, seq: 2500, heads: 4, kv_heads: 1, head_dim, bhsd: false };
            let mut index = vertical_slash_index(&mut rng, case.batch, case.heads, &[case.seq], false);
            index.columns.reverse_each();
            let o = vertical_slash_outcome::<T>(device, &case, seed ^ 17, &index, None, None);
            println!(
                "ok   vertical_slash unsorted columns {}: ended, every output written; rel_l2 {:.2e} against the sets",
                describe::<T>(&case),
                o.out_error
            );
        }
        let lens = [4097, 700];
        let offsets = packed_offsets(&lens);
        let cu: Vec<i32> = offsets.iter().map(|&o| o as i32).collect();
        let varlen = Varlen::new(device, &cu, &cu).expect("varlen");
        let case = Case { batch: 1, seq: offsets[2], heads: 8, kv_heads: 2, head_dim, bhsd: false };
        let index = vertical_slash_index(&mut rng, 2, 8, &lens, false);
        let packed = Packed { varlen: &varlen, offsets };
        run_vertical_slash::<T>(
            device,
            &case,
            seed ^ 11,
            &index,
            Some(&packed),
            "vertical_slash varlen",
            failures,
            None,
        );
    }
    // The 32K case (its f64 reference is most of this test's time) runs once, on the default kernel.
    if T::DTYPE == minf::codegen::DType::Bf16 && VARIANT.get() == Variant::Default {
        let case = Case { batch: 1, seq: 32768, heads: 32, kv_heads: 8, head_dim: 128, bhsd: false };
        let index = vertical_slash_index(&mut rng, 1, 32, &[32768], false);
        run_vertical_slash::<T>(device, &case, seed ^ 13, &index, None, "vertical_slash 32K", failures, None);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn vertical_slash_matches_masked_reference() {
    let device = device();
    let mut failures = Vec::new();
    for variant in variants(&device, Pattern::VerticalSlash) {
        println!("variant: {variant:?}");
        VARIANT.set(variant);
        vertical_slash_for::<bf16>(&device, &mut failures);
        vertical_slash_for::<f16>(&device, &mut failures);
    }
    VARIANT.set(Variant::Default);
    assert!(failures.is_empty(), "over tolerance: {failures:?}");
}

/// How a head of [`banded_and_scattered_index`] lists its keys.
#[derive(Clone, Copy)]
pub(super) enum IndexHead {
    /// The nearest `n` ranges of every row block: the two halves of a 128-row block share `n - 1`.
    Banded(usize),
    /// The diagonal range and 12 far diagonals: adjacent row blocks' ranges lie 64 keys apart, so
    /// the halves share almost no key.
    Scattered,
}

/// A vertical-slash index with one head per entry of `heads`; every head also lists three sink
/// columns left of its ranges.
pub(super) fn banded_and_scattered_index(rng: &mut TestRng, seq: usize, heads: &[IndexHead]) -> HostVs {
    let rows = seq.div_ceil(64);
    let widest = heads.iter().map(|head| if let IndexHead::Banded(n) = head { *n } else { 0 }).max().unwrap_or(0);
    let (nnz_s, nnz_v) = (widest.max(13), 3);
    let count = heads.len();
    let mut ranges = HostLists::new(1, count, rows, nnz_s);
    let mut columns = HostLists::new(1, count, rows, nnz_v);
    for (h, head) in heads.iter().enumerate() {
        // Far diagonals at least 128 apart, so each row block's ranges neither touch nor overlap.
        let slashes: Vec<i64> = (0..12).map(|k| 128 + 200 * k as i64 + rng.below(50) as i64).collect();
        for r in 0..rows {
            let end_m = 64 * r as i64 + 64;
            let mut starts: Vec<i32> = match *head {
                IndexHead::Banded(n) => {
                    (1..=n as i64).map(|k| end_m - 64 * k).filter(|&s| s >= 0).map(|s| s as i32).collect()
                }
                IndexHead::Scattered => {
                    let mut far: Vec<i32> =
                        slashes.iter().map(|s| end_m - s - 64).filter(|&s| s >= 0).map(|s| s as i32).collect();
                    far.push((end_m - 64) as i32);
                    far
                }
            };
            starts.sort_unstable();
            let first = starts.first().copied().unwrap_or(0);
            let cols: Vec<i32> = (0..3).filter(|&c| c < first).collect();
            let at = ranges.slot(0, h, count, r);
            ranges.set(at, &starts, starts.len() as i32);
            columns.set(at, &cols, cols.len() as i32);
        }
    }
    HostVs { ranges, columns }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn tile_choice_splits_heads_by_shared_keys_and_work_and_matches_reference() {
    let device = device();
    let seed = test_seed("tile_choice_splits_heads_by_shared_keys_and_work_and_matches_reference");
    let mut rng = TestRng::new(seed);
    let case = Case { batch: 1, seq: 8192, heads: 4, kv_heads: 2, head_dim: 128, bhsd: false };
    // Heads 0 and 3 list about 3860 keys per row (96 ranges, fewer in the first 95 row blocks),
    // head 1 at most 1024: only 0 and 3 have the work per row that 128-row blocks need.
    use IndexHead::{Banded, Scattered};
    let index = banded_and_scattered_index(&mut rng, case.seq, &[Banded(96), Banded(16), Scattered, Banded(96)]);
    // Launch slots in another order than the heads, so a slot/head mix-up shows.
    let slots = [2, 0, 3, 1];
    let mut choice = TileChoice::new(&device, &slots, case.heads).expect("tile choice");
    let has_alternative =
        KernelSpec::default_for(Pattern::VerticalSlash, DType::Bf16, 128, device.arch()).square_alternative().is_some();
    let mut failures = Vec::new();
    // The index has 128 rows: the choice runs when told to choose from 0 rows; by default (fewer
    // rows than TileChoice::choose_from_rows) every head runs on the default tile, unchosen.
    let rows = case.seq / 64;
    assert!(choice.choose_from_rows() > rows, "the default must leave an index of {rows} rows unchosen");
    let per_head: Vec<bool> = slots.iter().map(|&h| h == 0 || h == 3).collect();
    for (choose_from_rows, expected) in [(0, Some(per_head)), (choice.choose_from_rows(), None)] {
        choice.set_choose_from_rows(choose_from_rows);
        for round in 0..2 {
            let label = format!("vertical_slash tile choice from {choose_from_rows} rows");
            run_vertical_slash::<bf16>(
                &device,
                &case,
                seed + round,
                &index,
                None,
                &label,
                &mut failures,
                Some(&mut choice),
            );
        }
        let chosen = choice.last_choice(&device).expect("download the choice");
        println!("tile choice from {choose_from_rows} rows: slots {slots:?} wide {chosen:?}");
        match (has_alternative, &expected) {
            (true, Some(_)) => assert_eq!(
                chosen, expected,
                "busy banded heads 0 and 3 on 128-row blocks, light banded 1 and scattered 2 on 64-row (slots {slots:?})"
            ),
            (true, None) => assert_eq!(chosen, None, "an index of {rows} rows was chosen for from {choose_from_rows}"),
            (false, _) => assert_eq!(chosen, None, "{} has no 64-row alternative, yet a choice was made", device.arch()),
        }
    }
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}

/// Launches of one kernel on the same inputs: each output element and log-sum-exp of every launch
/// after the first, as bits, against the first's. Outputs and LSE are poisoned with NaN before
/// each launch. `None` when all agree, else what differed.
fn repeated_launches_differ<T: AttentionElement>(
    device: &Device,
    (q_len, kv_len, heads, kv_heads, head_dim): (usize, usize, usize, usize, usize),
    seed: u64,
    args: PatternArgs<'_>,
    spec: Option<KernelSpec>,
    causal: bool,
    launches: usize,
) -> Option<String> {
    let stream = device.stream();
    let inputs = |len: usize, rows: usize, salt: u64| -> Vec<T> {
        minf_testkit::reference::random_normal(len * rows * head_dim, seed ^ salt)
            .into_iter()
            .map(T::from_f32)
            .collect()
    };
    let q = stream.clone_htod(&inputs(q_len, heads, 0x51)).expect("q");
    let k = stream.clone_htod(&inputs(kv_len, kv_heads, 0x52)).expect("k");
    let v = stream.clone_htod(&inputs(kv_len, kv_heads, 0x53)).expect("v");
    let mut first: Option<(Vec<T>, Vec<f32>)> = None;
    for launch in 0..launches {
        let got = launch_bshd(device, (&q, &k, &v), (heads, kv_heads, head_dim), args, spec, causal);
        match &first {
            None => first = Some(got),
            Some((out0, lse0)) => {
                let out_diff = got.0.iter().zip(out0).filter(|(a, b)| a.to_f32().to_bits() != b.to_f32().to_bits());
                let lse_diff = got.1.iter().zip(lse0).filter(|(a, b)| a.to_bits() != b.to_bits());
                let (outs, lses) = (out_diff.count(), lse_diff.count());
                if outs + lses > 0 {
                    return Some(format!("launch {launch}: {outs} output elements and {lses} LSE entries differ"));
                }
            }
        }
    }
    None
}

/// Every engine variant gives bit-identical results over repeated launches on the same inputs
/// (dense causal and as a split-KV part, block-sparse): no result depends on timing. racecheck does
/// not watch shared memory that tensor-map or `cp.async` copies write, so a stage reused before
/// its readers finish would show here first.
#[test]
#[ignore = "needs a CUDA GPU"]
fn repeated_launches_are_bit_identical() {
    let device = device();
    let seed = test_seed("repeated launches");
    let launches = 12;
    let mut failures = Vec::new();
    // Dense: a chunk of 700 queries after 5301 keys (the LSE-merge test's shape), causal and as a
    // split-KV part, and a whole prompt that is not a multiple of the tiles.
    for variant in variants(&device, Pattern::Dense) {
        VARIANT.set(variant);
        for (q_len, kv_len, causal) in [(700, 6001, true), (700, 6001, false), (4133, 4133, true)] {
            let case = Case { batch: 1, seq: kv_len, heads: 8, kv_heads: 2, head_dim: 128, bhsd: false };
            let spec = spec_override::<bf16>(&device, Pattern::Dense, &case);
            if variant != Variant::Default && spec.is_none() {
                continue;
            }
            let shape = (q_len, kv_len, 8, 2, 128);
            if let Some(what) =
                repeated_launches_differ::<bf16>(&device, shape, seed, PatternArgs::Dense, spec, causal, launches)
            {
                failures.push(format!("dense {variant:?} {q_len}x{kv_len} causal {causal}: {what}"));
            }
        }
    }
    // Block-sparse on a random index (a third of the causal blocks), every index-driven variant.
    let (seq, heads) = (4133, 8);
    let mut rng = TestRng::new(seed);
    let index = block_sparse_index(&mut rng, 1, heads, &[seq], false);
    let stream = device.stream();
    let counts = stream.clone_htod(&index.counts).expect("counts");
    let lists = stream.clone_htod(&index.lists).expect("lists");
    let args = PatternArgs::BlockSparse(BlockSparseIndexRef {
        kv_num_blocks: &counts,
        kv_indices: &lists,
        batch: 1,
        heads,
        rows: index.rows,
        capacity: index.capacity,
    });
    for variant in variants(&device, Pattern::BlockSparse) {
        VARIANT.set(variant);
        let case = Case { batch: 1, seq, heads, kv_heads: 2, head_dim: 128, bhsd: false };
        let spec = spec_override::<bf16>(&device, Pattern::BlockSparse, &case);
        if variant != Variant::Default && spec.is_none() {
            continue;
        }
        if let Some(what) =
            repeated_launches_differ::<bf16>(&device, (seq, seq, heads, 2, 128), seed, args, spec, true, launches)
        {
            failures.push(format!("block_sparse {variant:?}: {what}"));
        }
    }
    VARIANT.set(Variant::Default);
    println!("repeated launches ({launches} each): {} differing case(s)", failures.len());
    assert!(failures.is_empty(), "results differ between launches on the same inputs: {failures:?}");
}

/// Launches of the persistent kernels ([`KernelSpec::persistent`]) on one and on three blocks
/// (`AttentionOptions::persistent_blocks`), so that each block walks dozens of work items through
/// the carried stage ring and both Q buffers, against the launch on as many blocks as there are
/// items (one each): every output element and log-sum-exp must be equal, bit for bit. A-shape on
/// 128-row blocks, vertical-slash and block-sparse on random indices on 64x64 blocks (two per
/// SM); a spec that is not persistent is left out. What differed, if anything.
fn persistent_walk_differences(device: &Device, seed: u64) -> Vec<String> {
    let (q_len, heads, kv_heads, d) = (1500, 8, 2, 128);
    let stream = device.stream();
    let random =
        |rows: usize, salt: u64| upload::<bf16>(device, &minf_testkit::reference::random_normal(rows * d, seed ^ salt));
    let prompt = (random(q_len * heads, 0x74), random(q_len * kv_heads, 0x75), random(q_len * kv_heads, 0x76));
    let mut rng = TestRng::new(seed);
    let bs = block_sparse_index(&mut rng, 1, heads, &[q_len], false);
    let vs = vertical_slash_index(&mut rng, 1, heads, &[q_len], false);
    let bs_counts = stream.clone_htod(&bs.counts).expect("counts");
    let bs_lists = stream.clone_htod(&bs.lists).expect("lists");
    let block_count = stream.clone_htod(&vs.ranges.counts).expect("block_count");
    let block_offset = stream.clone_htod(&vs.ranges.lists).expect("block_offset");
    let column_count = stream.clone_htod(&vs.columns.counts).expect("column_count");
    let column_index = stream.clone_htod(&vs.columns.lists).expect("column_index");
    let cases = [
        (Pattern::AShape, PatternArgs::AShape(AShape { n_init: 4, n_local: 300 })),
        (
            Pattern::VerticalSlash,
            PatternArgs::VerticalSlash(VerticalSlashIndexRef {
                block_count: &block_count,
                block_offset: &block_offset,
                column_count: &column_count,
                column_index: &column_index,
                batch: 1,
                heads,
                rows: vs.ranges.rows,
                nnz_s: vs.ranges.capacity,
                nnz_v: vs.columns.capacity,
            }),
        ),
        (
            Pattern::BlockSparse,
            PatternArgs::BlockSparse(BlockSparseIndexRef {
                kv_num_blocks: &bs_counts,
                kv_indices: &bs_lists,
                batch: 1,
                heads,
                rows: bs.rows,
                capacity: bs.capacity,
            }),
        ),
    ];
    let mut differences = Vec::new();
    let (q, k, v) = (&prompt.0, &prompt.1, &prompt.2);
    for (pattern, args) in cases {
        let wide = KernelSpec::default_for(pattern, DType::Bf16, d as u32, device.arch());
        for spec in [Some(wide), wide.square_alternative()].into_iter().flatten().filter(KernelSpec::persistent) {
            let launch = |blocks| {
                launch_bshd_on::<bf16>(device, (q, k, v), (heads, kv_heads, d), args, Some(spec), true, blocks)
            };
            // The default grid is one block per item while the device holds them all at once.
            let kernel = device.kernel(&spec).expect("load the kernel");
            let items = q_len.div_ceil(kernel.launch.block_m as usize) * heads;
            assert!(
                items <= kernel.resident_blocks as usize,
                "{}: {items} items, {} resident blocks: the default grid walks items, not one block per item",
                spec.kernel_name(),
                kernel.resident_blocks
            );
            let one_per_item = launch(None);
            for blocks in [1, 3] {
                let walked = launch(Some(blocks));
                let outs = walked.0.iter().zip(&one_per_item.0).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                let lses = walked.1.iter().zip(&one_per_item.1).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                let what = format!("{} on {blocks} block(s)", spec.kernel_name());
                if outs + lses > 0 {
                    println!("FAIL {what}: {outs} output elements and {lses} LSE entries differ");
                    differences.push(what);
                } else {
                    println!("ok   {what}: equal to one block per item");
                }
            }
        }
    }
    differences
}

/// Runs `persistent_walk_differences` on a fresh seed (printed under `label`) and fails on any
/// difference; says it skipped where the device has no persistent kernels.
pub(super) fn assert_persistent_walks_equal(label: &str) {
    let device = device();
    if device.arch() != minf::codegen::Arch::Sm90a {
        println!("skipped: the persistent kernels need sm_90a; the device is {}", device.arch());
        return;
    }
    let seed = test_seed(label);
    let differences = persistent_walk_differences(&device, seed);
    assert!(differences.is_empty(), "persistent launches that differ (seed {seed}): {differences:?}");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn few_persistent_blocks_walk_many_items() {
    assert_persistent_walks_equal("few persistent blocks");
}
