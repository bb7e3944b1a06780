//! The kernel ABI, declared once: every parameter struct a kernel takes by value and every constant
//! the host and the kernels share.
//!
//! `kernel_params!` declares a struct once and produces both its `#[repr(C)]` Rust definition
//! (which the runtime fills and passes to the launch) and its C declaration (which the templates get
//! through the render context), so the two cannot drift apart. `kernel_constants!` does the same
//! for constants, rendered as `#define`s. Device pointers are [`ConstPtr`] and [`MutPtr`], 64-bit
//! addresses that carry the C type they point to.

use std::fmt::Write;
use std::marker::PhantomData;

/// A type the kernels' C sees with the same size and alignment as Rust does.
pub trait CType {
    /// The C type written in front of a field name (`i32`, `const u16*`, ...); the templates'
    /// common header defines the fixed-width names.
    fn c_type() -> String;
    /// What follows the field name: array extents, outermost first (`[4][3]`), or nothing.
    fn c_suffix() -> String {
        String::new()
    }
    /// Size in bytes under the C layout rules.
    fn c_size() -> usize;
    /// Alignment in bytes under the C layout rules.
    fn c_align() -> usize;
}

macro_rules! scalar_c_types {
    ($($rust:ty => $c:literal),+ $(,)?) => {$(
        impl CType for $rust {
            fn c_type() -> String {
                $c.to_string()
            }
            fn c_size() -> usize {
                std::mem::size_of::<$rust>()
            }
            fn c_align() -> usize {
                std::mem::size_of::<$rust>()
            }
        }
    )+};
}

scalar_c_types!(u8 => "u8", u16 => "u16", i32 => "i32", u32 => "u32", i64 => "i64", u64 => "u64", f32 => "float");

impl<T: CType, const N: usize> CType for [T; N] {
    fn c_type() -> String {
        T::c_type()
    }
    fn c_suffix() -> String {
        format!("[{N}]{}", T::c_suffix())
    }
    fn c_size() -> usize {
        N * T::c_size()
    }
    fn c_align() -> usize {
        T::c_align()
    }
}

macro_rules! device_pointer {
    ($(#[$meta:meta])* $name:ident, $qualifier:literal) => {
        $(#[$meta])*
        #[repr(transparent)]
        pub struct $name<T> {
            address: u64,
            pointee: PhantomData<fn() -> T>,
        }

        impl<T> $name<T> {
            /// The null pointer (an optional input the kernel skips).
            pub const NULL: Self = Self::new(0);

            /// The pointer at device address `address`.
            pub const fn new(address: u64) -> Self {
                Self { address, pointee: PhantomData }
            }

            /// The device address.
            pub const fn address(self) -> u64 {
                self.address
            }
        }

        impl<T> From<u64> for $name<T> {
            fn from(address: u64) -> Self {
                Self::new(address)
            }
        }

        impl<T> Clone for $name<T> {
            fn clone(&self) -> Self {
                *self
            }
        }

        impl<T> Copy for $name<T> {}

        impl<T> Default for $name<T> {
            fn default() -> Self {
                Self::NULL
            }
        }

        impl<T> PartialEq for $name<T> {
            fn eq(&self, other: &Self) -> bool {
                self.address == other.address
            }
        }

        impl<T> std::fmt::Debug for $name<T> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{:#x}", self.address)
            }
        }

        impl<T: CType> CType for $name<T> {
            fn c_type() -> String {
                format!(concat!($qualifier, "{}*"), T::c_type())
            }
            fn c_size() -> usize {
                8
            }
            fn c_align() -> usize {
                8
            }
        }
    };
}

device_pointer!(
    /// A device address the kernel reads through (`const T*` in C).
    ConstPtr,
    "const "
);
device_pointer!(
    /// A device address the kernel writes through (`T*` in C).
    MutPtr,
    ""
);

/// One field of a parameter struct, as the C declaration and the layout tests see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The field's name, the same in Rust and C.
    pub name: &'static str,
    /// Its C type ([`CType::c_type`]).
    pub c_type: String,
    /// Its array extents ([`CType::c_suffix`]).
    pub c_suffix: String,
    /// Its doc comment, rendered as the C comment.
    pub doc: &'static str,
    /// Its byte offset in the Rust struct.
    pub offset: usize,
    /// Its size in bytes under the C rules.
    pub c_size: usize,
    /// Its alignment in bytes under the C rules.
    pub c_align: usize,
}

/// A kernel parameter struct declared by `kernel_params!`.
///
/// # Safety
///
/// Implementors are `#[repr(C)]` plain-old-data whose fields are exactly [`KernelParams::fields`],
/// so that passing the bytes of a value matches the C declaration [`KernelParams::c_declaration`]
/// renders. Only `kernel_params!` implements it.
pub unsafe trait KernelParams: Copy + 'static {
    /// The struct's name, the same in Rust and C.
    const NAME: &'static str;
    /// What the struct is for, rendered as the comment above the C declaration.
    const DOC: &'static str;
    /// The fields in declaration order.
    fn fields() -> Vec<Field>;

    /// The C declaration the templates include.
    fn c_declaration() -> String {
        let mut text = String::new();
        for line in Self::DOC.lines() {
            let _ = writeln!(text, "//{}", line.trim_end());
        }
        let _ = writeln!(text, "struct {} {{", Self::NAME);
        for field in Self::fields() {
            for line in field.doc.lines() {
                let _ = writeln!(text, "    //{}", line.trim_end());
            }
            let _ = writeln!(text, "    {} {}{};", field.c_type, field.name, field.c_suffix);
        }
        text.push_str("};\n");
        text
    }
}

/// Declares a kernel parameter struct once: its `#[repr(C)]` Rust definition and its
/// [`KernelParams`] implementation, from which the C declaration is rendered. Field types implement
/// [`CType`]; doc comments become the C comments.
macro_rules! kernel_params {
    (
        $(#[doc = $doc:literal])*
        pub struct $name:ident {
            $( $(#[doc = $field_doc:literal])* pub $field:ident : $ty:ty ),+ $(,)?
        }
    ) => {
        $(#[doc = $doc])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, Default, PartialEq)]
        pub struct $name {
            $( $(#[doc = $field_doc])* pub $field: $ty ),+
        }

        // SAFETY: `#[repr(C)]` with exactly these fields, each a `CType` of C layout.
        unsafe impl KernelParams for $name {
            const NAME: &'static str = stringify!($name);
            const DOC: &'static str = concat!($($doc, "\n"),*);
            fn fields() -> Vec<Field> {
                vec![$(Field {
                    name: stringify!($field),
                    c_type: <$ty as CType>::c_type(),
                    c_suffix: <$ty as CType>::c_suffix(),
                    doc: concat!($($field_doc, "\n"),*),
                    offset: std::mem::offset_of!($name, $field),
                    c_size: <$ty as CType>::c_size(),
                    c_align: <$ty as CType>::c_align(),
                }),+]
            }
        }
    };
}

kernel_params! {
    /// Parameters of every attention kernel, passed by value. A sequence has `q_len <= kv_len`;
    /// its query row `i` sits at absolute position `q_offset + i`, `q_offset = kv_len - q_len`
    /// (the causal diagonal aligned bottom-right), and keys are the absolute positions
    /// `[0, kv_len)`.
    pub struct AttentionParams {
        /// `[batch, q_rows, heads, head_dim]` queries.
        pub q: ConstPtr<u16>,
        /// `[batch, kv_rows, kv_heads, head_dim]` keys.
        pub k: ConstPtr<u16>,
        /// `[batch, kv_rows, kv_heads, head_dim]` values.
        pub v: ConstPtr<u16>,
        /// `[batch, q_rows, heads, head_dim]` output.
        pub o: MutPtr<u16>,
        /// `[batch, heads, q_rows]` (`[heads, q_rows]` with cu_seqlens) log-sum-exp, or null.
        pub lse: MutPtr<f32>,
        /// `[batch + 1]` start rows of packed query sequences, or null (then cu_seqlens_k is null).
        pub cu_seqlens_q: ConstPtr<i32>,
        /// `[batch + 1]` start rows of packed key/value sequences, or null.
        pub cu_seqlens_k: ConstPtr<i32>,
        /// Per (batch, head, 64-row block): vertical-slash block_count / block-sparse count.
        pub index_count: ConstPtr<i32>,
        /// Vertical-slash block_offset / block-sparse key-block ids, `list_capacity` per row block.
        pub index_list: ConstPtr<i32>,
        /// Vertical-slash column_count.
        pub column_count: ConstPtr<i32>,
        /// Vertical-slash column_index, `column_capacity` per row block.
        pub column_index: ConstPtr<i32>,
        /// (batch, seq, head) element strides of q, k, v, o.
        pub strides: [[i64; 3]; 4],
        /// Query rows per sequence (total packed query rows with cu_seqlens).
        pub q_rows: i32,
        /// Key/value rows per sequence (total packed key/value rows with cu_seqlens).
        pub kv_rows: i32,
        /// Query heads.
        pub heads: i32,
        /// Query heads per key/value head.
        pub kv_group: i32,
        /// Softmax scale * log2(e).
        pub scale_log2: f32,
        /// Softmax scale.
        pub scale: f32,
        /// 64-row blocks per (batch, head) in the index tensors.
        pub index_rows: i32,
        /// Entries per row block of `index_list`.
        pub list_capacity: i32,
        /// Entries per row block of `column_index`.
        pub column_capacity: i32,
        /// A-shape sink tokens.
        pub n_init: i32,
        /// A-shape local window.
        pub n_local: i32,
        /// 1: key j is visible to the query at position p only if j <= p; 0: every key (dense).
        pub causal: i32,
        /// Launch slot (grid y) -> query head, or null: slot y is head y.
        pub head_index: ConstPtr<i32>,
        /// The launch's work items: query blocks, head slots and sequences (the grid of a kernel
        /// with one block per item; the warpgroup engines' blocks walk them in turn).
        pub work: [i32; 3],
        /// Kernels that list their tiles ([`crate::KernelSpec::lists_tiles`]): per (batch, head,
        /// query block), a record of the block's range tiles in walk order, `TILE_LIST_CAPACITY`
        /// tiles' two 64-key runs as index entries (`int2`: start columns or key-block ids, the
        /// second unused for a tile of one run), then a byte per tile: its halves (bits 0-1) and
        /// whether it holds two runs (bit 2).
        pub tile_list: MutPtr<u8>,
        /// Per (batch, head, query block): how many range tiles the list holds, or -1 where the
        /// block has more than `TILE_LIST_CAPACITY` (the kernel then walks its index itself).
        pub tile_count: MutPtr<i32>,
        /// Query blocks per (batch, head) in the tile list.
        pub tile_blocks: i32,
    }
}

/// A CUDA tensor map (`CUtensorMap`): 128 opaque bytes, 64-byte aligned, encoded on the host by
/// the driver (`cuTensorMapEncodeTiled`) and read by `cp.async.bulk.tensor` from the kernel's
/// parameter space (a `__grid_constant__` parameter). The kernels see it as `TensorMap`, declared by
/// [`TensorMap::C_DECLARATION`].
#[repr(C, align(64))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TensorMap {
    /// The encoded descriptor, as the driver wrote it.
    pub opaque: [u64; 16],
}

impl TensorMap {
    /// The C declaration the templates include before any struct that holds a tensor map.
    pub const C_DECLARATION: &'static str =
        "// A CUDA tensor map (CUtensorMap), encoded on the host.\nstruct alignas(64) TensorMap {\n    u64 opaque[16];\n};\n";
}

impl CType for TensorMap {
    fn c_type() -> String {
        "TensorMap".to_string()
    }
    fn c_size() -> usize {
        128
    }
    fn c_align() -> usize {
        64
    }
}

kernel_params! {
    /// The tensor maps of the `wgmma_tma` engine, passed by value as a second, `__grid_constant__`
    /// parameter (the copy engine reads them where the launch put them). Each map views its tensor
    /// `[batch, rows, heads, head_dim]` with the call's strides as the 4-d box grid
    /// (head_dim, rows, heads, batch), boxes of `TMA_BOX_COLUMNS` x `TMA_BOX_ROWS` elements,
    /// 128-byte swizzle; elements outside the tensor read as zero.
    pub struct TensorMaps {
        /// The queries.
        pub q: TensorMap,
        /// The keys.
        pub k: TensorMap,
        /// The values.
        pub v: TensorMap,
    }
}

kernel_params! {
    /// Parameters of both passes of the vertical-slash converter (`vs_convert`), passed by value.
    pub struct ConvertParams {
        /// `[batch]` sequence lengths (keys, kv_len).
        pub seqlens: ConstPtr<i32>,
        /// `[batch]` query rows of each sequence's chunk (clamped to [0, seqlen]), or null: q_len = seqlen.
        pub q_lens: ConstPtr<i32>,
        /// `[batch, heads, nnz_v]` key columns, any order.
        pub vertical: ConstPtr<i32>,
        /// `[batch, heads, nnz_s]` diagonal offsets (j = p - s at absolute position p), any order.
        pub slash: ConstPtr<i32>,
        /// `[batch, heads, rows]`.
        pub block_count: MutPtr<i32>,
        /// `[batch, heads, rows, nnz_s]`.
        pub block_offset: MutPtr<i32>,
        /// `[batch, heads, rows]`.
        pub column_count: MutPtr<i32>,
        /// `[batch, heads, rows, nnz_v]`.
        pub column_index: MutPtr<i32>,
        /// `[batch * heads, words]`, zero on entry.
        pub v_bits: MutPtr<u32>,
        /// `[batch * heads, words]`, zero on entry.
        pub s_bits: MutPtr<u32>,
        /// `[batch * heads, nnz_v]` ascending unique verticals in [0, length).
        pub v_list: MutPtr<i32>,
        /// `[batch * heads, nnz_s]` ascending unique slashes in [0, length).
        pub s_list: MutPtr<i32>,
        /// `[batch * heads, nnz_s]` for each slash of `s_list`, the index of the first slash of its
        /// run: the stretch of the list, ending at it, whose neighbours lie at most `INDEX_BLOCK`
        /// apart.
        pub s_run: MutPtr<i32>,
        /// `[batch * heads, 2]` lengths of the two lists.
        pub list_len: MutPtr<i32>,
        /// Query heads.
        pub heads: i32,
        /// Index rows: ceil(longest q_len / 64).
        pub rows: i32,
        /// Maximum sequence length; longer seqlens are clamped to it.
        pub context: i32,
        /// Bitmap words per (batch, head), at least ceil(context / 32).
        pub words: i32,
        /// Capacity of each row block's column list.
        pub nnz_v: i32,
        /// Capacity of each row block's range list.
        pub nnz_s: i32,
        /// 1: the rows pass first copies both lists of its (batch, head) into dynamic shared
        /// memory (`nnz_v + nnz_s` ints, at most [`CONVERT_STAGED_INTS`]); 0: it reads them from
        /// global memory.
        pub stage_lists: i32,
        /// Threads that convert one row block together in the rows pass: 1, 2, 4, 8, 16 or 32
        /// (each walks the row's lists; together they store its entries).
        pub row_lanes: i32,
    }
}

kernel_params! {
    /// Parameters of the per-head tile choice (`tile_choice`), passed by value.
    pub struct ChoiceParams {
        /// `[batch, heads, rows]` ranges (or key blocks) per index row.
        pub count: ConstPtr<i32>,
        /// `[batch, heads, rows, list_capacity]` range starts (or key block ids).
        pub list: ConstPtr<i32>,
        /// `[batch, heads, rows]`, or null.
        pub column_count: ConstPtr<i32>,
        /// `[batch, heads, rows, column_capacity]`, or null.
        pub column_index: ConstPtr<i32>,
        /// `[slots]` query head of each launch slot, or null (slot = head).
        pub slot_heads: ConstPtr<i32>,
        /// `[slots]` out: the head if the 128-row launch computes it, else -1.
        pub wide: MutPtr<i32>,
        /// `[slots]` out: the head if the 64-row launch computes it, else -1.
        pub square: MutPtr<i32>,
        /// Batch entries of the index.
        pub batch: i32,
        /// Query heads of the index.
        pub heads: i32,
        /// Index rows (64-row query blocks) per (batch, head).
        pub rows: i32,
        /// Entries per row of `list`.
        pub list_capacity: i32,
        /// Entries per row of `column_index`.
        pub column_capacity: i32,
        /// 1: entries are start columns; 64: key block ids.
        pub range_scale: i32,
        /// Launch slots.
        pub slots: i32,
        /// Wide iff shared keys * shared_den >= all keys * shared_num.
        pub shared_num: i32,
        /// See shared_num.
        pub shared_den: i32,
        /// Heads whose index rows list fewer keys than this on average run on 64-row blocks.
        pub min_wide_keys: i32,
    }
}

kernel_params! {
    /// Parameters of the three vertical-slash score passes (`vs_scores`), passed by value.
    pub struct ScoresParams {
        /// `[batch, q_seq, heads, head_dim]` at q_stride (head_dim contiguous).
        pub q: ConstPtr<u16>,
        /// `[batch, seq, kv_heads, head_dim]` at k_stride (head_dim contiguous).
        pub k: ConstPtr<u16>,
        /// `[batch, heads, seq]`.
        pub vertical: MutPtr<f32>,
        /// `[batch, heads, seq]`, zero on entry.
        pub slash: MutPtr<f32>,
        /// `[batch * heads, chunks, LAST_Q, 2]` per-chunk (max, sum of exp2) of each row.
        pub partial: MutPtr<f32>,
        /// `[batch * heads, LAST_Q, 2]` per-row (max, 1 / sum of exp2).
        pub stats: MutPtr<f32>,
        /// `[heads, 2]` (vertical, slash) sizes; a head with vertical 0 is skipped; null: all.
        pub head_sizes: ConstPtr<i32>,
        /// Element strides of q's batch, seq, head.
        pub q_stride: [i64; 3],
        /// Element strides of k's batch, seq, head.
        pub k_stride: [i64; 3],
        /// Keys per sequence (kv_len); query row i sits at absolute position seq - q_seq + i.
        pub seq: i32,
        /// Query rows per sequence (the chunk's q_len, at most seq).
        pub q_seq: i32,
        /// Query heads.
        pub heads: i32,
        /// Query heads per key head.
        pub group: i32,
        /// Blocks per KV group: ceil(group / SCORE_HEADS_PER_BLOCK).
        pub pairs: i32,
        /// min(LAST_Q, q_seq).
        pub last_q: i32,
        /// ceil(seq / SCORE_CHUNK_KEYS).
        pub chunks: i32,
        /// log2(e) / sqrt(head_dim): scores in the log2 domain.
        pub scale_log2: f32,
    }
}

kernel_params! {
    /// Parameters of the vertical-slash top-k (`est_select`), passed by value.
    pub struct SelectParams {
        /// `[batch, heads, seq]` column scores.
        pub vertical: ConstPtr<f32>,
        /// `[batch, heads, seq]` diagonal scores.
        pub slash: ConstPtr<f32>,
        /// `[heads, 2]` clamped (vertical, slash) sizes, 0 for heads not estimated.
        pub head_sizes: ConstPtr<i32>,
        /// `[batch, heads, capacity_v]`.
        pub out_vertical: MutPtr<i32>,
        /// `[batch, heads, capacity_s]`.
        pub out_slash: MutPtr<i32>,
        /// `[batch, heads, 2, RADIX_BINS]` digit counts of each selection (vertical, slash), zero
        /// on entry to the first histogram pass; each pass's last block leaves them zero again.
        pub histograms: MutPtr<i32>,
        /// `[batch, heads, 2, SELECT_STATE_INTS]` per selection: threshold prefix, candidates equal
        /// to it still to take, blocks of the pass arrived, unused; zero on entry to the first
        /// histogram pass.
        pub states: MutPtr<i32>,
        /// `[batch, heads, 2, segments, 2]` per segment: keys above the threshold, keys equal to it.
        pub segment_counts: MutPtr<i32>,
        /// Sequence length.
        pub seq: i32,
        /// Query heads.
        pub heads: i32,
        /// Entries per (batch, head) of out_vertical.
        pub capacity_v: i32,
        /// Entries per (batch, head) of out_slash.
        pub capacity_s: i32,
        /// ceil(seq / SELECT_SEGMENT_KEYS): blocks per selection.
        pub segments: i32,
        /// Histogram pass 0, 1 or 2 (digits of 11, 11 and 10 bits, most significant first).
        pub pass: i32,
    }
}

kernel_params! {
    /// Parameters of the block-sparse estimate's pooling and selection (`est_select`), passed by
    /// value.
    pub struct BlockParams {
        /// `[batch, q_seq, heads, head_dim]` at q_stride.
        pub q: ConstPtr<u16>,
        /// `[batch, seq, kv_heads, head_dim]` at k_stride.
        pub k: ConstPtr<u16>,
        /// `[jobs, 2]`: (0 = q / 1 = k, head) pooled by block_pool.
        pub jobs: ConstPtr<i32>,
        /// `[entries, 3]`: (query head, its q job, its k job) for block_scores and block_select.
        pub entries: ConstPtr<i32>,
        /// `[jobs, batch, rows, head_dim]`.
        pub pooled: MutPtr<f32>,
        /// `[pairs of the launch, block_score_keys(seq, q_seq)]`: per (batch, entry) pair of the
        /// launch, the order-preserving keys of every query block's candidate scores, query block r
        /// at block_score_offset(seq, q_seq, r), written by block_scores, read by block_select.
        pub scores: MutPtr<u32>,
        /// Keys the scores buffer holds (every write is checked against it).
        pub scores_len: i64,
        /// `[batch, heads, q_rows]`, zero on entry.
        pub kv_num_blocks: MutPtr<i32>,
        /// `[batch, heads, q_rows, capacity]`, zero on entry.
        pub kv_indices: MutPtr<i32>,
        /// Element strides of q's batch, seq, head.
        pub q_stride: [i64; 3],
        /// Element strides of k's batch, seq, head.
        pub k_stride: [i64; 3],
        /// Keys per sequence (kv_len); query row i sits at absolute position seq - q_seq + i.
        pub seq: i32,
        /// Query rows per sequence (the chunk's q_len, at most seq).
        pub q_seq: i32,
        /// Query heads.
        pub heads: i32,
        /// Key/value heads.
        pub kv_heads: i32,
        /// Head dimension.
        pub head_dim: i32,
        /// ceil(seq / 64): key blocks, and the pooled rows of every job.
        pub rows: i32,
        /// ceil(q_seq / 64): query blocks, the index rows.
        pub q_rows: i32,
        /// Pooling jobs.
        pub jobs_count: i32,
        /// min(top_k, rows).
        pub top_k: i32,
        /// Slots per list, >= top_k.
        pub capacity: i32,
        /// 1 for f16 inputs, 0 for bf16.
        pub is_f16: i32,
        /// Batch size (sequences of q and k).
        pub batch: i32,
        /// Entries (listed query heads): pair `batch_index * entries_count + entry`.
        pub entries_count: i32,
        /// The first (batch, entry) pair of a block_scores or block_select launch; the launch's
        /// grid y counts its pairs, and pair `pair_begin + y` owns slot y of the scores buffer.
        pub pair_begin: i32,
    }
}

kernel_params! {
    /// Parameters of the log-sum-exp merge (`lse_merge`), passed by value: `(out_a, lse_a)` and
    /// `(out_b, lse_b)`, attention over two disjoint key sets, become the attention over their
    /// union, written in place into `(out_a, lse_a)`.
    pub struct MergeParams {
        /// `[batch, rows, heads, head_dim]` at a_strides: part a's output, overwritten.
        pub out_a: MutPtr<u16>,
        /// `[batch, heads, rows]`: part a's log-sum-exp, overwritten.
        pub lse_a: MutPtr<f32>,
        /// `[batch, rows, heads, head_dim]` at b_strides.
        pub out_b: ConstPtr<u16>,
        /// `[batch, heads, rows]`.
        pub lse_b: ConstPtr<f32>,
        /// Element strides of out_a's batch, row, head.
        pub a_strides: [i64; 3],
        /// Element strides of out_b's batch, row, head.
        pub b_strides: [i64; 3],
        /// Batch entries.
        pub batch: i32,
        /// Rows per batch entry.
        pub rows: i32,
        /// Heads.
        pub heads: i32,
        /// Head dimension, a multiple of 8.
        pub head_dim: i32,
    }
}

/// A constant shared by the host and the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Constant {
    /// Its name, the same in Rust and C.
    pub name: &'static str,
    /// Its value.
    pub value: i64,
    /// Its doc comment.
    pub doc: &'static str,
}

impl Constant {
    /// The C `#define` the templates include, with its doc as a comment.
    pub fn c_declaration(&self) -> String {
        let mut text = String::new();
        for line in self.doc.lines() {
            let _ = writeln!(text, "//{}", line.trim_end());
        }
        let _ = writeln!(text, "#define {} {}", self.name, self.value);
        text
    }
}

/// Declares constants shared by the host and the kernels once: a Rust `pub const` each and the
/// list [`CONSTANTS`] from which their C `#define`s are rendered.
macro_rules! kernel_constants {
    ($( $(#[doc = $doc:literal])* pub const $name:ident : $ty:ty = $value:expr; )+) => {
        $( $(#[doc = $doc])* pub const $name: $ty = $value; )+

        /// Every shared constant, in declaration order.
        pub const CONSTANTS: &[Constant] = &[$(Constant {
            name: stringify!($name),
            value: $name as i64,
            doc: concat!($($doc, "\n"),*),
        }),+];
    };
}

kernel_constants! {
    /// Most range tiles the tile list holds per query block ([`crate::KernelSpec::lists_tiles`]);
    /// a block with more walks its index in the kernel.
    pub const TILE_LIST_CAPACITY: u32 = 256;
    /// Bytes of a query block's record in the tile list: `TILE_LIST_CAPACITY` tiles' two run
    /// entries (`int2`), then as many bytes of their halves and widths.
    pub const TILE_LIST_RECORD_BYTES: u32 = TILE_LIST_CAPACITY * 9;
    /// Rows of one tensor-map box of the `wgmma_tma` engine: a 64-key run of K or V, or 64 query
    /// rows of Q.
    pub const TMA_BOX_ROWS: u32 = 64;
    /// Elements per row of one tensor-map box: one 128-byte swizzled column block of a tile.
    pub const TMA_BOX_COLUMNS: u32 = 64;
    /// Rows per query block of an index, keys per vertical-slash range and per block-sparse key
    /// block, tokens per pooled block of the block-sparse estimate: fixed by MInference's formats.
    pub const INDEX_BLOCK: u32 = 64;
    /// Threads per block of the index kernels other than the selections.
    pub const INDEX_THREADS: u32 = 256;
    /// Most list entries (columns and diagonals of one head) the converter's rows pass stages in
    /// shared memory (64 KiB); longer lists are read from global memory.
    pub const CONVERT_STAGED_INTS: u32 = 16_384;
    /// Query rows (the last ones) the vertical-slash estimate scores: min(LAST_Q, seq).
    pub const LAST_Q: u32 = 64;
    /// Keys each block of the vertical-slash score passes covers.
    pub const SCORE_CHUNK_KEYS: u32 = 1024;
    /// Query heads of one KV group that share a score block's K tiles.
    pub const SCORE_HEADS_PER_BLOCK: u32 = 2;
    /// Key columns 0 .. FORCED_COLUMNS rank above every scored column.
    pub const FORCED_COLUMNS: u32 = 30;
    /// Diagonal offsets 0 .. FORCED_DIAGONALS rank above every scored diagonal.
    pub const FORCED_DIAGONALS: u32 = 100;
    /// Threads per block of the block selection.
    pub const SELECT_THREADS: u32 = 256;
    /// Most candidate blocks of the short block selection (`_block_select_short`, a warp per query
    /// block, 64 keys per lane), which the launcher picks for a k the streaming selection does not
    /// hold on prompts of up to this many key blocks (128K tokens).
    pub const SELECT_SHORT_ROWS: u32 = 2048;
    /// Top bits of the block selection's threshold counted over every candidate; the lower bits
    /// are counted over the candidates that share them.
    pub const SELECT_PREFIX_BITS: u32 = 12;
    /// Candidates sharing the threshold's prefix that each lane of the block selection holds in
    /// registers: up to 32 times this many, every warp counts all of them for the low bits; more
    /// (heavy ties) are shared out over the block and counted block-wide.
    pub const SELECT_HELD_SURVIVORS: u32 = 4;
    /// Candidates the streaming block selection (`_block_select_stream`, a warp per query block)
    /// buffers in shared memory: the best so far, which a new chunk joins when it reaches their
    /// k-th largest key.
    pub const SELECT_STREAM_BUFFER: u32 = 512;
    /// Candidates per chunk of the streaming block selection (8 per lane), read from the causal
    /// edge back; it takes k up to SELECT_STREAM_BUFFER - SELECT_STREAM_CHUNK.
    pub const SELECT_STREAM_CHUNK: u32 = 256;
    /// Scores each block of the vertical-slash top-k passes covers (a segment of one selection).
    pub const SELECT_SEGMENT_KEYS: u32 = 4096;
    /// Threads per block of the vertical-slash top-k passes.
    pub const SELECT_SEGMENT_THREADS: u32 = 256;
    /// Bins of a radix-select histogram: digits of up to 11 bits.
    pub const RADIX_BINS: u32 = 2048;
    /// Ints of one vertical-slash top-k selection's state: threshold prefix, keys equal to it
    /// still to take, blocks of the pass arrived, unused.
    pub const SELECT_STATE_INTS: u32 = 4;
    /// Threads per block of the block-sparse pooling.
    pub const POOL_THREADS: u32 = 256;
    /// Most 64-row query blocks of a block-sparse estimate: a query block's selection holds the
    /// key of every candidate block in registers (64 per thread; 16384 blocks = 1M tokens).
    pub const MAX_BLOCK_SPARSE_ROWS: u32 = 16_384;
    /// Query blocks and key blocks of one block_scores tile (a square of the score matrix).
    pub const BLOCK_SCORE_TILE: u32 = 128;
    /// Threads per block of block_scores: 16 x 16, each an 8 x 8 piece of the tile.
    pub const BLOCK_SCORE_THREADS: u32 = 256;
}

/// Looks up a shared constant by name.
pub fn constant(name: &str) -> Option<&'static Constant> {
    CONSTANTS.iter().find(|c| c.name == name)
}

/// Dynamic shared memory of the block selection for `rows` key blocks: a key per candidate block
/// (the candidates that share the threshold's prefix, at most all of them).
pub fn block_select_shared_bytes(rows: u32) -> u32 {
    rows * 4
}

/// Candidate key blocks of query block `r` of a block-sparse estimate whose `q_seq` queries are the
/// last of `seq` keys: the blocks `0 ..` holding a key at or before the block's last absolute
/// position, `min(ceil((seq - q_seq) / 64) + r + 1, ceil(seq / 64))` (`r < ceil(q_seq / 64)`).
pub fn block_candidates(seq: u64, q_seq: u64, r: u64) -> u64 {
    let block = u64::from(INDEX_BLOCK);
    ((seq - q_seq).div_ceil(block) + r + 1).min(seq.div_ceil(block))
}

/// Where query block `r`'s candidate keys start in a (batch, entry) pair's slot of the block
/// scores: the candidates of the query blocks before it, in closed form.
pub fn block_score_offset(seq: u64, q_seq: u64, r: u64) -> u64 {
    let block = u64::from(INDEX_BLOCK);
    let (base, rows) = ((seq - q_seq).div_ceil(block), seq.div_ceil(block));
    // Query blocks below `unclamped` have base + i + 1 <= rows candidates, the others rows.
    let unclamped = rows.saturating_sub(base).min(r);
    unclamped * base + unclamped * (unclamped + 1) / 2 + (r - unclamped) * rows
}

/// Keys of one (batch, entry) pair's slot of the block scores: every candidate of every query
/// block, at most `rows * (rows + 1) / 2` for `rows = ceil(seq / 64)`.
pub fn block_score_keys(seq: u64, q_seq: u64) -> u64 {
    block_score_offset(seq, q_seq, q_seq.div_ceil(u64::from(INDEX_BLOCK)))
}

/// Tiles of a block_scores launch per (batch, entry) pair (its grid x): query tile `i` (query
/// blocks `128i ..`) takes key tiles `0 ..= i + ceil(ceil((seq - q_seq) / 64) / 128)`, the tiles
/// its candidates can reach; a tile past a query tile's last candidate exits at once.
pub fn block_score_tiles(seq: u64, q_seq: u64) -> u64 {
    let tile = u64::from(BLOCK_SCORE_TILE);
    let query_tiles = q_seq.div_ceil(u64::from(INDEX_BLOCK)).div_ceil(tile);
    let base_tiles = (seq - q_seq).div_ceil(u64::from(INDEX_BLOCK)).div_ceil(tile);
    query_tiles * (base_tiles + 1) + query_tiles * query_tiles.saturating_sub(1) / 2
}

/// Keys per K tile of the vertical-slash score passes at head dimension `head_dim`.
pub fn score_tile_keys(head_dim: u32) -> u32 {
    if head_dim == 256 {
        32
    } else {
        64
    }
}

/// Dynamic shared memory of a vertical-slash score pass: two K stages of padded rows, and for the
/// accumulating pass the probability tile of every head of the block and the chunk's diagonal sums.
pub fn score_shared_bytes(head_dim: u32, accumulate: bool) -> u32 {
    let tile_keys = score_tile_keys(head_dim);
    let k_stages = 2 * tile_keys * (head_dim + 8) * 2;
    if !accumulate {
        return k_stages;
    }
    let probabilities = SCORE_HEADS_PER_BLOCK * LAST_Q * (tile_keys + 4) * 4;
    let diagonals = SCORE_HEADS_PER_BLOCK * (SCORE_CHUNK_KEYS + LAST_Q - 1) * 4;
    k_stages + probabilities + diagonals
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_struct() -> Vec<(&'static str, String, Vec<Field>, usize, usize)> {
        fn entry<P: KernelParams>() -> (&'static str, String, Vec<Field>, usize, usize) {
            (P::NAME, P::c_declaration(), P::fields(), std::mem::size_of::<P>(), std::mem::align_of::<P>())
        }
        vec![
            entry::<AttentionParams>(),
            entry::<ConvertParams>(),
            entry::<ChoiceParams>(),
            entry::<ScoresParams>(),
            entry::<SelectParams>(),
            entry::<BlockParams>(),
            entry::<MergeParams>(),
            entry::<TensorMaps>(),
        ]
    }

    #[test]
    fn declarations_list_every_field_in_order() {
        for (name, declaration, fields, _, _) in every_struct() {
            assert!(declaration.contains(&format!("struct {name} {{")), "{declaration}");
            let mut rest = declaration.as_str();
            for field in &fields {
                let line = format!("    {} {}{};\n", field.c_type, field.name, field.c_suffix);
                let at = rest.find(&line).unwrap_or_else(|| panic!("{name}: `{line}` missing or out of order"));
                rest = &rest[at + line.len()..];
            }
            assert_eq!(rest, "};\n", "{name}: nothing but the closing brace after the last field");
        }
        let attention = AttentionParams::c_declaration();
        assert!(attention.contains("    const u16* q;\n"), "{attention}");
        assert!(attention.contains("    u16* o;\n"), "{attention}");
        assert!(attention.contains("    i64 strides[4][3];\n"), "{attention}");
        assert!(attention.contains("    float scale_log2;\n"), "{attention}");
    }

    #[test]
    fn rust_layout_matches_the_c_layout_rules() {
        for (name, _, fields, size, align) in every_struct() {
            let mut offset = 0usize;
            let mut max_align = 1usize;
            for field in &fields {
                offset = offset.next_multiple_of(field.c_align);
                assert_eq!(field.offset, offset, "{name}.{}", field.name);
                offset += field.c_size;
                max_align = max_align.max(field.c_align);
            }
            assert_eq!(size, offset.next_multiple_of(max_align), "{name}: size");
            assert_eq!(align, max_align, "{name}: alignment");
        }
        // Spot checks against hand-computed C offsets.
        assert_eq!(std::mem::offset_of!(AttentionParams, strides), 88);
        assert_eq!(std::mem::offset_of!(AttentionParams, head_index), 232);
        assert_eq!(std::mem::offset_of!(AttentionParams, work), 240);
        // 12 bytes of work counts, padded to the 8-byte alignment of the tile list's pointers.
        assert_eq!(std::mem::offset_of!(AttentionParams, tile_list), 256);
        assert_eq!(std::mem::offset_of!(AttentionParams, tile_blocks), 272);
        assert_eq!(std::mem::size_of::<AttentionParams>(), 280);
        assert_eq!(std::mem::size_of::<ScoresParams>(), 56 + 48 + 32);
        assert_eq!((std::mem::size_of::<TensorMaps>(), std::mem::align_of::<TensorMaps>()), (384, 64));
        assert_eq!(std::mem::offset_of!(TensorMaps, v), 256);
    }

    #[test]
    fn constants_render_as_defines() {
        assert_eq!(constant("LAST_Q").map(|c| c.value), Some(64));
        assert!(
            constant("FORCED_DIAGONALS").is_some_and(|c| c.c_declaration().ends_with("#define FORCED_DIAGONALS 100\n"))
        );
        let names: Vec<_> = CONSTANTS.iter().map(|c| c.name).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
    }

    #[test]
    fn block_score_layout_covers_every_candidate_once() {
        let tile = u64::from(BLOCK_SCORE_TILE);
        for seq in [1u64, 63, 64, 65, 1000, 8191, 8192, 8257, 20_000, 40_000] {
            for q_seq in [1u64, 37, 64, 65, 1000, 8192, 8193, 17_000, seq] {
                if q_seq > seq {
                    continue;
                }
                let (q_rows, rows) = (q_seq.div_ceil(64), seq.div_ceil(64));
                let mut offset = 0;
                let mut tiles_needed = 0;
                for r in 0..q_rows {
                    // The candidates by positions: key blocks holding a key at or before the
                    // query block's last absolute position.
                    let last_position = (seq - q_seq) + ((r + 1) * 64).min(q_seq) - 1;
                    let candidates = (last_position / 64 + 1).min(rows);
                    assert_eq!(block_candidates(seq, q_seq, r), candidates, "seq {seq} q_seq {q_seq} r {r}");
                    assert_eq!(block_score_offset(seq, q_seq, r), offset, "seq {seq} q_seq {q_seq} r {r}");
                    offset += candidates;
                    if r % tile == tile - 1 || r == q_rows - 1 {
                        tiles_needed += candidates.div_ceil(tile);
                    }
                }
                assert_eq!(block_score_keys(seq, q_seq), offset, "seq {seq} q_seq {q_seq}");
                assert!(offset <= rows * (rows + 1) / 2, "seq {seq} q_seq {q_seq}");
                // The enumeration holds every needed tile; the rest (past the causal edge) are few.
                let tiles = block_score_tiles(seq, q_seq);
                assert!(
                    tiles >= tiles_needed && tiles <= tiles_needed + q_rows.div_ceil(tile),
                    "seq {seq} q_seq {q_seq}"
                );
            }
        }
        assert_eq!(block_score_keys(1 << 20, 1 << 20), 16_384 * 16_385 / 2);
    }

    #[test]
    fn score_shared_bytes_fit_every_target() {
        for &head_dim in crate::spec::HEAD_DIMS {
            for accumulate in [false, true] {
                let bytes = score_shared_bytes(head_dim, accumulate);
                assert!(bytes <= crate::Arch::Sm86.max_shared_memory(), "d{head_dim}: {bytes}");
            }
        }
        assert_eq!(score_shared_bytes(128, false), 2 * 64 * 136 * 2);
    }
}
