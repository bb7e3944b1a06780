//! Per-head choice of the tile of an index-driven launch, made on the device from the index.
//!
//! The default index-driven kernels on sm_90a run 128-row blocks: the two 64-row index rows of a
//! block (its halves) share every key tile, which pays when they list the same keys (a band of
//! diagonals) and wastes a warpgroup when they do not (scattered diagonals, whose ranges for
//! adjacent rows lie 64 keys apart). [`TileChoice::attention`] launches a small kernel that
//! estimates, per head, the share of keys the halves have in common, then both kernels (128-row
//! and [`minf_codegen::Tile::SQUARE_WGMMA`] blocks), each over head maps in which the heads the other launch
//! computes are -1 (those blocks return at once). No host round trip; every head is computed by
//! exactly one of the two launches. The chooser reads the index alone, so a chunk's index (rows of
//! the chunk's queries, absolute keys) is chosen for like a whole sequence's, except that an index
//! of fewer than [`TileChoice::choose_from_rows`] rows is not chosen for (see there).

use crate::attention::{attention_with_spec, launch_spec, AttentionOptions, HeadSubset, PatternArgs};
use crate::device::{Device, KernelArgs};
use crate::error::MinfError;
use crate::tensor::{AttentionElement, TensorMut, TensorRef};
use cudarc::driver::{DevicePtr, DevicePtrMut, PushKernelArg};
use minf_codegen::abi::{ChoiceParams, ConstPtr};
use minf_codegen::{IndexKernel, IndexKernelSpec};

/// A head runs on 128-row blocks when at least `SHARED_NUM / SHARED_DEN` of its index's keys are
/// listed by both halves of their 128-row block. From H100 timings (docs/design.md): per 64x64
/// unit of work, 64-row blocks cost the same on banded and scattered indices, 128-row
/// blocks 0.85 of that on keys both halves list and 1.22 on keys one half lists, so they break even
/// where 0.85 f + 1.22 (1 - f) = 1, f = 0.6.
const SHARED_NUM: i32 = 3;
const SHARED_DEN: i32 = 5;

/// A head runs on 64-row blocks, whatever its halves share, when its index rows list fewer keys
/// than this on average. A block's fixed costs (loading Q, reading its index, the first tile's
/// wait, writing the output) are paid once per block; two 64-row blocks on an SM hide each other's,
/// one 128-row block hides nothing. From H100 timings at 128K x 32 heads, head dim 128
/// (docs/design.md): 64-row blocks won at 256-2945 keys per row (by 40% at 256-307, 5-16% at
/// 1905-2945) and 128-row blocks at 3783 and above where the halves share their keys.
const MIN_WIDE_KEYS: i32 = 3072;

/// Default of [`TileChoice::choose_from_rows`]: 512 index rows, a 32K-token chunk.
pub const CHOOSE_FROM_ROWS: usize = 512;

/// The head maps of the two launches of one group of index-driven heads, kept on the device and
/// rewritten by each [`TileChoice::attention`] call (so a warm call allocates nothing).
#[derive(Debug)]
pub struct TileChoice {
    /// The group's heads, one per launch slot: the chooser reads them, and the launch uses them
    /// where the spec has no 64-row alternative.
    all: HeadSubset,
    /// Head map of the 128-row launch: a slot's head, or -1 where the 64-row launch computes it.
    wide: HeadSubset,
    /// Head map of the 64-row launch, the complement of `wide`.
    square: HeadSubset,
    /// Indices of fewer index rows than this (batch x rows per head) run every head on the
    /// default tile, with no choice.
    choose_from_rows: usize,
    /// Whether the last call chose (its spec had a 64-row alternative).
    chosen: bool,
}

impl TileChoice {
    /// Head maps for the query heads `heads` (checked as for [`HeadSubset::new`]) of a layer of
    /// `head_count` heads.
    pub fn new(device: &Device, heads: &[usize], head_count: usize) -> Result<TileChoice, MinfError> {
        Ok(TileChoice {
            all: HeadSubset::new(device, heads, head_count)?,
            wide: HeadSubset::new(device, heads, head_count)?,
            square: HeadSubset::new(device, heads, head_count)?,
            choose_from_rows: CHOOSE_FROM_ROWS,
            chosen: false,
        })
    }

    /// The fewest index rows (64-row query blocks, over the batch) for which the choice runs; an
    /// index of fewer rows (a short chunk's) runs every head on the default tile in one launch.
    /// On a short index, the choice's fixed costs (the chooser, which samples every head's rows
    /// whatever their number, and the last, partly filled wave of each of two launches) do not
    /// shrink with the work, while what the better tile saves does: on 8K-token chunks (128
    /// rows) of the Llama-3-8B-262K layer 16 at 128K (H100), attention over the 16 chunks took
    /// 25.3 ms with heads split per head, 24.2 ms with every head on the tile that the heads
    /// listing the most keys chose, and 22.9 ms with no choice (docs/design.md). Default
    /// [`CHOOSE_FROM_ROWS`].
    pub fn choose_from_rows(&self) -> usize {
        self.choose_from_rows
    }

    /// Sets [`TileChoice::choose_from_rows`]: 0 chooses on every index, `usize::MAX` never.
    pub fn set_choose_from_rows(&mut self, rows: usize) {
        self.choose_from_rows = rows;
    }

    /// The query heads of the group, in launch-slot order.
    pub fn heads(&self) -> &[usize] {
        self.all.heads()
    }

    /// Downloads the last choice (waits for the device): per head of [`TileChoice::heads`], `true`
    /// where it ran on 128-row blocks; `None` if the last call did not choose (none made, the spec
    /// had no 64-row alternative, or the index had fewer rows than [`TileChoice::choose_from_rows`]).
    pub fn last_choice(&self, device: &Device) -> Result<Option<Vec<bool>>, MinfError> {
        if !self.chosen {
            return Ok(None);
        }
        let wide = device
            .stream()
            .clone_dtoh(self.wide.device_heads())
            .map_err(MinfError::driver("downloading the tile choice"))?;
        Ok(Some(wide.into_iter().map(|head| head >= 0).collect()))
    }

    /// Attention of an index-driven pattern over this group's heads (`options.heads` must be
    /// `None`): when `options.spec` (or the device default) has a 64-row alternative
    /// ([`KernelSpec::square_alternative`](minf_codegen::KernelSpec::square_alternative)) and the
    /// index has at least [`TileChoice::choose_from_rows`] rows, the chooser picks one of the two
    /// per head and both are launched; otherwise this is one launch of that spec over the group.
    #[allow(clippy::too_many_arguments)]
    pub fn attention<T: AttentionElement>(
        &mut self,
        device: &Device,
        q: TensorRef<'_, T>,
        k: TensorRef<'_, T>,
        v: TensorRef<'_, T>,
        out: TensorMut<'_, T>,
        args: PatternArgs<'_>,
        mut options: AttentionOptions<'_>,
    ) -> Result<(), MinfError> {
        if options.heads.is_some() {
            return Err(MinfError::Shape(
                "tile choice: the choice's own heads replace options.heads; pass None".into(),
            ));
        }
        let wide_spec = launch_spec(device, args.pattern(), T::DTYPE, q.layout.shape[3], options.spec, None);
        // Each launch takes the caller's options but its own spec and head map (and the lse in turn).
        let mut lse = options.lse.take();
        let short =
            args.index_dims().is_some_and(|(batch, _, rows)| batch.saturating_mul(rows) < self.choose_from_rows);
        let Some(square_spec) = wide_spec.square_alternative().filter(|_| !short) else {
            self.chosen = false;
            let options = AttentionOptions { lse, spec: Some(wide_spec), heads: Some(&self.all), ..options };
            return attention_with_spec(device, &wide_spec, q, k, v, out, args, options);
        };
        self.choose(device, &args)?;
        self.chosen = true;
        let wide_options =
            AttentionOptions { lse: lse.as_deref_mut(), spec: Some(wide_spec), heads: Some(&self.wide), ..options };
        let wide_out = TensorMut { data: &mut *out.data, layout: out.layout };
        attention_with_spec(device, &wide_spec, q, k, v, wide_out, args, wide_options)?;
        let square_options = AttentionOptions { lse, spec: Some(square_spec), heads: Some(&self.square), ..options };
        attention_with_spec(device, &square_spec, q, k, v, out, args, square_options)
    }

    /// Launches the chooser on `args`'s index, rewriting both head maps.
    fn choose(&mut self, device: &Device, args: &PatternArgs<'_>) -> Result<(), MinfError> {
        let head_count = self.all.head_count();
        let (count, list, columns, (batch, heads, rows), list_capacity, range_scale) = match args {
            PatternArgs::VerticalSlash(index) => (
                index.block_count,
                index.block_offset,
                Some((index.column_count, index.column_index, index.nnz_v)),
                (index.batch, index.heads, index.rows),
                index.nnz_s,
                1,
            ),
            PatternArgs::BlockSparse(index) => (
                index.kv_num_blocks,
                index.kv_indices,
                None,
                (index.batch, index.heads, index.rows),
                index.capacity,
                64,
            ),
            PatternArgs::Dense | PatternArgs::AShape(_) => {
                return Err(MinfError::Shape(format!(
                    "tile choice: pattern {} has no index to choose from; allowed vertical_slash, block_sparse",
                    args.pattern()
                )))
            }
        };
        if heads != head_count {
            return Err(MinfError::Shape(format!(
                "tile choice: the index is for {heads} query heads but the choice was made for {head_count}"
            )));
        }
        let entries = batch
            .checked_mul(heads)
            .and_then(|n| n.checked_mul(rows))
            .ok_or_else(|| MinfError::Shape(format!("tile choice: index {batch} x {heads} x {rows} overflows")))?;
        let check = |name: &str, len: usize, per_row: usize| -> Result<i32, MinfError> {
            let needed = entries.checked_mul(per_row);
            if needed.is_none_or(|needed| len < needed) || i32::try_from(per_row).is_err() {
                return Err(MinfError::Shape(format!(
                    "tile choice: {name} holds {len} entries but [batch {batch}, heads {heads}, rows {rows}, \
                     {per_row}] are needed"
                )));
            }
            Ok(per_row as i32)
        };
        check("the counts", count.len(), 1)?;
        let list_capacity = check("the list", list.len(), list_capacity)?;
        let column_capacity = match columns {
            Some((column_count, column_index, capacity)) => {
                check("column_count", column_count.len(), 1)?;
                check("column_index", column_index.len(), capacity)?
            }
            None => 0,
        };
        let as_i32 = |what: &str, n: usize| {
            i32::try_from(n).map_err(|_| MinfError::Shape(format!("tile choice: {what} {n} does not fit 32 bits")))
        };
        let slots = self.all.heads().len();
        let spec = IndexKernelSpec { kernel: IndexKernel::TileChoice, arch: device.arch() };
        let kernel = device.index_kernel(&spec, &spec.entry_name(""))?;
        let stream = device.stream();
        let (count_ptr, _count_sync) = count.device_ptr(stream);
        let (list_ptr, _list_sync) = list.device_ptr(stream);
        let column_ptrs = columns
            .map(|(column_count, column_index, _)| (column_count.device_ptr(stream), column_index.device_ptr(stream)));
        let (column_count_ptr, column_index_ptr) =
            column_ptrs.as_ref().map_or((ConstPtr::NULL, ConstPtr::NULL), |((count, _), (index, _))| {
                (ConstPtr::new(*count), ConstPtr::new(*index))
            });
        let (slots_ptr, _slots_sync) = self.all.device_heads().device_ptr(stream);
        let (wide_ptr, _wide_sync) = self.wide.device_heads_mut().device_ptr_mut(stream);
        let (square_ptr, _square_sync) = self.square.device_heads_mut().device_ptr_mut(stream);
        let params = KernelArgs(ChoiceParams {
            count: count_ptr.into(),
            list: list_ptr.into(),
            column_count: column_count_ptr,
            column_index: column_index_ptr,
            slot_heads: slots_ptr.into(),
            wide: wide_ptr.into(),
            square: square_ptr.into(),
            batch: as_i32("batch", batch)?,
            heads: as_i32("heads", heads)?,
            rows: as_i32("rows", rows)?,
            list_capacity,
            column_capacity,
            range_scale,
            slots: as_i32("slots", slots)?,
            shared_num: SHARED_NUM,
            shared_den: SHARED_DEN,
            min_wide_keys: MIN_WIDE_KEYS,
        });
        let config = kernel.config((slots as u32, 1, 1));
        let mut launch = stream.launch_builder(&kernel.function);
        launch.arg(&params);
        // SAFETY: the parameter block matches the kernel's declaration; every index buffer was
        // checked above to hold [batch, heads, rows, capacity] entries, the kernel clamps each
        // count to its capacity, and it writes one entry per slot of the two head maps.
        unsafe { launch.launch(config) }.map_err(MinfError::driver(format!("launching {}", spec.kernel_name())))?;
        Ok(())
    }
}
