//! The block-sparse index: per 64-row query block, the 64-key blocks it visits, in the layout
//! [`BlockSparseIndexRef`] reads. [`BlockSparseIndex`] holds it on the device (built on the GPU by
//! [`estimate_block_sparse_gpu`](crate::estimate::gpu::estimate_block_sparse_gpu));
//! [`HostBlockSparseIndex`] is the same layout in host memory.

use crate::attention::BlockSparseIndexRef;
use crate::device::Device;
use crate::error::MinfError;
use crate::estimate::BLOCK;
use cudarc::driver::CudaSlice;

/// A block-sparse index on the device: `kv_num_blocks` `[batch, heads, rows]` and `kv_indices`
/// `[batch, heads, rows, capacity]` (`i32`, ascending within each list, zero after the count).
#[derive(Debug)]
pub struct BlockSparseIndex {
    batch: usize,
    heads: usize,
    rows: usize,
    capacity: usize,
    kv_num_blocks: CudaSlice<i32>,
    kv_indices: CudaSlice<i32>,
}

impl BlockSparseIndex {
    /// A zeroed index of `batch` sequences, `heads` query heads, `rows` 64-row query blocks per
    /// head and `capacity` (at least 1) key blocks per list, allocated on the device's stream.
    pub fn zeros(device: &Device, batch: usize, heads: usize, rows: usize, capacity: usize) -> Result<Self, MinfError> {
        let overflow = || {
            MinfError::Shape(format!(
                "block-sparse index [batch {batch}, heads {heads}, rows {rows}, capacity {capacity}] overflows usize"
            ))
        };
        let fits = |x: usize| (1..=i32::MAX as usize).contains(&x);
        if !(fits(batch) && fits(heads) && fits(rows) && fits(capacity)) {
            return Err(MinfError::Shape(format!(
                "block-sparse index [batch {batch}, heads {heads}, rows {rows}, capacity {capacity}]: each must be \
                 from 1 to {}",
                i32::MAX
            )));
        }
        let counts = batch.checked_mul(heads).and_then(|x| x.checked_mul(rows)).ok_or_else(overflow)?;
        let lists = counts.checked_mul(capacity).ok_or_else(overflow)?;
        let stream = device.stream();
        let alloc = |n: usize, what: &str| {
            stream.alloc_zeros::<i32>(n).map_err(MinfError::driver(format!("allocating {what} ({n} x i32)")))
        };
        let kv_num_blocks = alloc(counts, "kv_num_blocks")?;
        let kv_indices = alloc(lists, "kv_indices")?;
        Ok(BlockSparseIndex { batch, heads, rows, capacity, kv_num_blocks, kv_indices })
    }

    /// A view for [`crate::block_sparse_attention`].
    pub fn as_ref(&self) -> BlockSparseIndexRef<'_> {
        BlockSparseIndexRef {
            kv_num_blocks: &self.kv_num_blocks,
            kv_indices: &self.kv_indices,
            batch: self.batch,
            heads: self.heads,
            rows: self.rows,
            capacity: self.capacity,
        }
    }

    /// `(batch, heads, rows, capacity)`.
    pub fn dims(&self) -> (usize, usize, usize, usize) {
        (self.batch, self.heads, self.rows, self.capacity)
    }

    pub(crate) fn buffers_mut(&mut self) -> (&mut CudaSlice<i32>, &mut CudaSlice<i32>) {
        (&mut self.kv_num_blocks, &mut self.kv_indices)
    }

    /// Downloads the index (synchronises with the stream the buffers belong to).
    pub fn to_host(&self) -> Result<HostBlockSparseIndex, MinfError> {
        let download = |buffer: &CudaSlice<i32>, what: &str| {
            buffer.stream().clone_dtoh(buffer).map_err(MinfError::driver(format!("downloading {what}")))
        };
        Ok(HostBlockSparseIndex {
            batch: self.batch,
            heads: self.heads,
            rows: self.rows,
            capacity: self.capacity,
            kv_num_blocks: download(&self.kv_num_blocks, "kv_num_blocks")?,
            kv_indices: download(&self.kv_indices, "kv_indices")?,
        })
    }
}

/// A block-sparse index in host memory, in the layout of [`BlockSparseIndexRef`] (and of
/// [`BlockSparseIndex`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBlockSparseIndex {
    /// Sequences.
    pub batch: usize,
    /// Query heads.
    pub heads: usize,
    /// 64-row query blocks per head, `ceil(N / 64)`.
    pub rows: usize,
    /// Slots per list.
    pub capacity: usize,
    /// `[batch, heads, rows]`: listed key blocks per query block.
    pub kv_num_blocks: Vec<i32>,
    /// `[batch, heads, rows, capacity]`: key block ids, ascending, zero after the count.
    pub kv_indices: Vec<i32>,
}

impl HostBlockSparseIndex {
    /// The key blocks query block `r` of (`b`, `h`) visits; empty outside the index.
    pub fn blocks(&self, b: usize, h: usize, r: usize) -> &[i32] {
        if b >= self.batch || h >= self.heads || r >= self.rows {
            return &[];
        }
        let row = (b * self.heads + h) * self.rows + r;
        let count = self.kv_num_blocks.get(row).map_or(0, |&c| usize::try_from(c).unwrap_or(0).min(self.capacity));
        self.kv_indices.get(row * self.capacity..row * self.capacity + count).unwrap_or(&[])
    }

    /// Whether query `i` of (`b`, `h`) keeps key `j`: `j <= i` in a listed block.
    pub fn contains(&self, b: usize, h: usize, i: usize, j: usize) -> bool {
        let Ok(block) = i32::try_from(j / BLOCK) else {
            return false;
        };
        j <= i && self.blocks(b, h, i / BLOCK).binary_search(&block).is_ok()
    }
}
