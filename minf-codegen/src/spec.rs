//! Kernel specifications and their validation.
//!
//! A [`KernelSpec`] names everything that changes the generated CUDA source: the attention pattern,
//! the element type, the head dimension, the tile shape, the warp count, the pipeline depth and the
//! target architecture. [`KernelSpec::validate`] is the single place that decides which combinations
//! exist; the macro and the runtime both call it.

use crate::abi;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Errors for a spec field that has a value minf does not support.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A field has a value outside its allowed set.
    #[error("invalid {field} = {value}: allowed {allowed}")]
    Invalid {
        /// Name of the field, as written in the macro and on the command line.
        field: &'static str,
        /// The offending value.
        value: String,
        /// What is allowed instead.
        allowed: String,
    },
    /// A name (pattern, dtype, arch) that is not known; carries the closest known name if any.
    #[error("unknown {field} `{value}`{}; allowed: {allowed}", suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    Unknown {
        /// Name of the field.
        field: &'static str,
        /// The offending value.
        value: String,
        /// The closest known name, when one is close enough to be a likely typo.
        suggestion: Option<String>,
        /// The allowed names.
        allowed: String,
    },
    /// The tile does not fit the shared memory of the target architecture.
    #[error("tile {block_m}x{block_n} with head_dim {head_dim} and {stages} stage(s) needs {needed} bytes of shared memory; {arch} allows {limit} per block (use a smaller block_n, block_m or fewer stages)")]
    SharedMemory {
        /// Query rows per tile.
        block_m: u32,
        /// Keys per tile.
        block_n: u32,
        /// Head dimension.
        head_dim: u32,
        /// Pipeline stages.
        stages: u32,
        /// Bytes the tile needs.
        needed: u32,
        /// Bytes the architecture allows per block.
        limit: u32,
        /// The target architecture.
        arch: Arch,
    },
    /// The per-thread accumulators would not fit in registers.
    #[error("tile {block_m}x{block_n} with head_dim {head_dim} on {warps} warps needs {needed} accumulator registers per thread; at most {limit} fit without spilling (use more warps or a smaller block_n)")]
    Registers {
        /// Query rows per tile.
        block_m: u32,
        /// Keys per tile.
        block_n: u32,
        /// Head dimension.
        head_dim: u32,
        /// Warps per block.
        warps: u32,
        /// Registers needed.
        needed: u32,
        /// The budget.
        limit: u32,
    },
}

/// Closest candidate to `value` by edit distance, when it is close enough to be a typo.
pub fn suggest<'a>(value: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let value = value.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (edit_distance(&value, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.to_string())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident, $field:literal, { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name used in the macro, on the command line and in cache names.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = SpecError;
            fn from_str(s: &str) -> Result<Self, SpecError> {
                $(if s.eq_ignore_ascii_case($text) { return Ok($name::$variant); })+
                let names = [$($text),+];
                Err(SpecError::Unknown {
                    field: $field,
                    value: s.to_string(),
                    suggestion: suggest(s, names),
                    allowed: names.join(", "),
                })
            }
        }
    };
}

named_enum!(
    /// Element type of Q, K, V and O (accumulation is always fp32).
    DType, "dtype", {
        /// bfloat16.
        Bf16 => "bf16",
        /// IEEE half precision.
        F16 => "f16",
    }
);

named_enum!(
    /// Target GPU architecture for NVRTC.
    Arch, "arch", {
        /// A100, A30.
        Sm80 => "sm_80",
        /// RTX 30xx, A10, A40.
        Sm86 => "sm_86",
        /// RTX 40xx, L4, L40.
        Sm89 => "sm_89",
        /// H100/H200 without the architecture-specific instructions.
        Sm90 => "sm_90",
        /// H100/H200 with `wgmma` and `setmaxnreg` available.
        Sm90a => "sm_90a",
    }
);

/// Attention patterns: which key tiles each query block visits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    /// Dense causal attention: every key tile up to the diagonal.
    Dense,
    /// A-shape (MInference `stream_llm`): `n_init` sink tokens plus a local window of `n_local`.
    AShape,
    /// Vertical-slash: listed 64-key ranges (merged diagonals) plus gathered key columns, from
    /// MInference's converted per-64-row-block index.
    VerticalSlash,
    /// Block-sparse: listed 64x64 key blocks per 64-row query block.
    BlockSparse,
}

impl Pattern {
    /// Every implemented pattern.
    pub const ALL: &'static [Pattern] =
        &[Pattern::Dense, Pattern::AShape, Pattern::VerticalSlash, Pattern::BlockSparse];

    /// The name used in the macro, on the command line and in cache names.
    pub fn as_str(self) -> &'static str {
        match self {
            Pattern::Dense => "dense",
            Pattern::AShape => "a_shape",
            Pattern::VerticalSlash => "vertical_slash",
            Pattern::BlockSparse => "block_sparse",
        }
    }

    /// Whether the kernel reads a per-64-row-block index (so its query tile is 64 rows).
    pub fn is_indexed(self) -> bool {
        matches!(self, Pattern::VerticalSlash | Pattern::BlockSparse)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Pattern {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        if let Some(p) = Pattern::ALL.iter().find(|p| s.eq_ignore_ascii_case(p.as_str())) {
            return Ok(*p);
        }
        let names: Vec<&str> = Pattern::ALL.iter().map(|p| p.as_str()).collect();
        Err(SpecError::Unknown {
            field: "pattern",
            value: s.to_string(),
            suggestion: suggest(s, names.iter().copied()),
            allowed: names.join(", "),
        })
    }
}

impl Arch {
    /// Largest dynamic shared memory a block may opt in to, in bytes.
    pub fn max_shared_memory(self) -> u32 {
        match self {
            Arch::Sm80 => 163 * 1024,
            Arch::Sm86 | Arch::Sm89 => 99 * 1024,
            Arch::Sm90 | Arch::Sm90a => 227 * 1024,
        }
    }

    /// Shared memory of one SM, in bytes: what the blocks resident on it share (each also
    /// reserves 1 KiB, which a block's largest opt-in leaves free).
    pub fn shared_memory_per_sm(self) -> u32 {
        self.max_shared_memory() + 1024
    }

    /// The architecture NVRTC should target for a device of compute capability `major.minor`:
    /// Hopper gets `sm_90a` so its own instructions are available.
    pub fn for_compute_capability(major: i32, minor: i32) -> Option<Arch> {
        match (major, minor) {
            (8, 0) => Some(Arch::Sm80),
            (8, 6) | (8, 7) => Some(Arch::Sm86),
            (8, 9) => Some(Arch::Sm89),
            (9, 0) => Some(Arch::Sm90a),
            _ => None,
        }
    }

    /// Whether a kernel compiled for this target runs on a device whose target
    /// ([`Arch::for_compute_capability`]) is `device`: the same target, or `sm_90` code on a Hopper
    /// device (which minf targets as `sm_90a`).
    pub fn runs_on(self, device: Arch) -> bool {
        self == device || (self == Arch::Sm90 && device == Arch::Sm90a)
    }

    /// Compact form for names: `sm90a`.
    pub fn short(self) -> String {
        self.as_str().replace('_', "")
    }
}

/// Supported head dimensions.
pub const HEAD_DIMS: &[u32] = &[64, 96, 128, 256];
/// Supported query-tile heights.
pub const BLOCK_MS: &[u32] = &[64, 128];
/// Supported key-tile widths.
pub const BLOCK_NS: &[u32] = &[32, 64, 128];
/// Supported warps per block.
pub const WARPS: &[u32] = &[4, 8];
/// Supported pipeline depths for K/V tiles.
pub const STAGES: &[u32] = &[1, 2, 3];
/// Accumulator registers per thread above which the kernel would spill.
pub const ACCUMULATOR_REGISTER_BUDGET: u32 = 192;
/// Elements of padding at the end of each shared-memory row (16 bytes), which makes `ldmatrix`
/// reads conflict-free for every supported head dimension.
pub const SMEM_ROW_PAD: u32 = 8;

/// Everything that changes the generated source of one kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KernelSpec {
    /// Which key tiles each query tile visits.
    pub pattern: Pattern,
    /// Element type of Q, K, V and O.
    pub dtype: DType,
    /// Head dimension (64, 96, 128 or 256).
    pub head_dim: u32,
    /// Query rows per block.
    pub block_m: u32,
    /// Keys per tile.
    pub block_n: u32,
    /// Warps per block; each warp owns `block_m / warps` query rows.
    pub warps: u32,
    /// Shared-memory stages of the K/V pipeline.
    pub stages: u32,
    /// Target architecture.
    pub arch: Arch,
    /// How each tile is computed.
    pub mainloop: Mainloop,
}

named_enum!(
    /// How a tile's two matrix products are computed (the "how"; the pattern's schedule is the
    /// "which tiles").
    Mainloop, "mainloop", {
        /// Per-warp `mma.sync` m16n8k16 with `ldmatrix` operands (sm_80 and later); shared-memory
        /// rows are padded by 16 bytes.
        MmaSync => "mma_sync",
        /// Hopper warpgroup `wgmma.mma_async` (sm_90a only), warp-specialised: a producer
        /// warpgroup loads K/V tiles into mbarrier-guarded stages, each consumer warpgroup owns 64
        /// query rows (warps a multiple of 4) and computes S = Q Kᵀ (both operands in shared
        /// memory) and O += P V (P in registers) on 128-byte swizzled tiles; head_dim at most 128.
        Wgmma => "wgmma",
        /// The `wgmma` engine with a tensor-memory-accelerator producer (sm_90a only): Q and every
        /// contiguous K/V run that lies whole inside its sequence arrive by `cp.async.bulk.tensor`
        /// (tensor maps encoded on the host, 128-byte swizzle, completion by mbarrier transaction
        /// counts); gathered columns and edge tiles keep the `cp.async` copies. The producer
        /// warpgroup drops to a small register budget and the consumers get the rest.
        WgmmaTma => "wgmma_tma",
        /// `wgmma_tma` on 128-row blocks whose two consumer warpgroups take turns issuing their
        /// matrix products (named barriers): each turn issues P V of the previous tile and S of
        /// the current one together, and each consumer's softmax runs under the other's products.
        WgmmaTmaPingPong => "wgmma_tma_pingpong",
        /// `wgmma_tma` whose consumers overlap a tile's softmax with the products around it: each
        /// consumer issues S of tile i and P V of tile i - 1 together and runs the mask and softmax
        /// of tile i while P V is in flight (P V of the last tile is issued after the loop).
        WgmmaTmaOverlap => "wgmma_tma_overlap",
    }
);

impl Mainloop {
    /// Whether this is a warp-specialised warpgroup-MMA engine (a producer warpgroup plus 64-row
    /// consumer warpgroups on 128-byte swizzled tiles).
    pub fn is_warpgroup(self) -> bool {
        matches!(self, Mainloop::Wgmma | Mainloop::WgmmaTma | Mainloop::WgmmaTmaPingPong | Mainloop::WgmmaTmaOverlap)
    }

    /// Whether the engine's producer copies through tensor maps (the kernel takes a second,
    /// `__grid_constant__` parameter of [`abi::TensorMaps`]).
    pub fn uses_tensor_maps(self) -> bool {
        matches!(self, Mainloop::WgmmaTma | Mainloop::WgmmaTmaPingPong | Mainloop::WgmmaTmaOverlap)
    }
}

/// A kernel's tile and engine apart from its pattern, element type, head dimension and target: what
/// a caller overrides in a default spec, written `BLOCK_M,BLOCK_N,WARPS,STAGES,MAINLOOP`
/// (e.g. `64,64,4,2,wgmma`). [`KernelSpec::validate`] still decides whether the result is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Tile {
    /// Query rows per block.
    pub block_m: u32,
    /// Keys per tile.
    pub block_n: u32,
    /// Warps per block.
    pub warps: u32,
    /// Pipeline stages.
    pub stages: u32,
    /// How each tile is computed.
    pub mainloop: Mainloop,
}

impl Tile {
    /// 64-row blocks of one `wgmma` consumer warpgroup with 64-key tiles, two blocks per SM: the
    /// alternative the per-head tile choice ([`IndexKernel::TileChoice`]) runs next to 128-row
    /// index-driven blocks. On an H100 they ran a scattered 128K vertical-slash index 1.2x faster
    /// than 128-row blocks pairing ranges, and a banded one 1.17x slower (docs/design.md).
    pub const SQUARE_WGMMA: Tile = Tile { block_m: 64, block_n: 64, warps: 4, stages: 2, mainloop: Mainloop::Wgmma };

    /// `spec` with this tile and engine.
    pub fn apply(self, spec: KernelSpec) -> KernelSpec {
        let Tile { block_m, block_n, warps, stages, mainloop } = self;
        KernelSpec { block_m, block_n, warps, stages, mainloop, ..spec }
    }
}

impl KernelSpec {
    /// The 64-row spec the per-head tile choice runs next to this one: [`Tile::SQUARE_WGMMA`] (on
    /// this spec's engine; `wgmma_tma` for `wgmma_tma_pingpong`, whose turns need two consumers)
    /// when this is an index-driven spec on 128-row warpgroup blocks (whose two halves may share
    /// few keys) and that tile is valid for it; `None` otherwise (every head then runs on this spec).
    pub fn square_alternative(&self) -> Option<KernelSpec> {
        if !self.pattern.is_indexed() || !self.mainloop.is_warpgroup() || self.block_m != 128 {
            return None;
        }
        let mainloop = match self.mainloop {
            Mainloop::WgmmaTmaPingPong => Mainloop::WgmmaTma,
            other => other,
        };
        let square = Tile { mainloop, ..Tile::SQUARE_WGMMA }.apply(*self);
        square.validate().is_ok().then_some(square)
    }
}

impl fmt::Display for Tile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{},{},{},{}", self.block_m, self.block_n, self.warps, self.stages, self.mainloop)
    }
}

impl FromStr for Tile {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let invalid = || SpecError::Invalid {
            field: "tile",
            value: s.to_string(),
            allowed: "BLOCK_M,BLOCK_N,WARPS,STAGES,MAINLOOP, e.g. 64,64,4,2,wgmma or 128,128,8,2,mma_sync".into(),
        };
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let [block_m, block_n, warps, stages, mainloop] = parts[..] else {
            return Err(invalid());
        };
        let number = |text: &str| text.parse::<u32>().map_err(|_| invalid());
        Ok(Tile {
            block_m: number(block_m)?,
            block_n: number(block_n)?,
            warps: number(warps)?,
            stages: number(stages)?,
            mainloop: mainloop.parse()?,
        })
    }
}

/// Launch geometry of one kernel entry point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LaunchShape {
    /// Threads per block.
    pub threads: u32,
    /// Dynamic shared memory per block, in bytes: what every launch passes, or, for an entry whose
    /// need depends on the call (the block selection), the most any launch passes. The runtime
    /// raises the function's dynamic shared-memory limit to it when it loads the entry.
    pub shared_bytes: u32,
    /// Query rows per block of an attention kernel (the grid's x dimension covers
    /// `ceil(seq / block_m)`); 0 for index kernels, whose launchers size their own grids.
    pub block_m: u32,
}

/// One `extern "C"` entry point of a rendered module and how to launch it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryPoint {
    /// The entry point's name.
    pub name: String,
    /// How to launch it.
    pub launch: LaunchShape,
}

impl KernelSpec {
    /// The default tile configuration for a pattern, dtype, head dimension and architecture.
    pub fn default_for(pattern: Pattern, dtype: DType, head_dim: u32, arch: Arch) -> KernelSpec {
        // Measured on an H100 (bf16, d=128, causal, 16K and 64K): 128x128 tiles on 8 warps ran at
        // 283-290 TFLOP/s, 128x32 on 4 warps at 273-276, 128x64 on 8 warps at 207-212
        // (docs/design.md). The 128x128 tile needs more shared memory than sm_8x allows.
        let hopper = matches!(arch, Arch::Sm90 | Arch::Sm90a);
        let (block_m, block_n, warps, stages) = if pattern.is_indexed() {
            // Index-driven kernels read MInference's per-64-row index. On an H100 (vertical-slash,
            // 128K, 10% of tiles): 128-row blocks serving two index rows with 128-key tiles ran at
            // 223 TFLOP/s, 64x64 blocks at 194-205, 64-row blocks with 128-key tiles at 155
            // (docs/design.md). The 128x128 tile needs more shared memory than sm_8x allows.
            match (head_dim, hopper) {
                (256, true) => (64, 64, 4, 2),
                (256, false) => (64, 64, 4, 1),
                (_, true) => (128, 128, 8, 2),
                _ => (64, 64, 4, 2),
            }
        } else {
            match (head_dim, arch) {
                (256, Arch::Sm86 | Arch::Sm89) => (64, 32, 4, 1),
                (256, _) => (64, 32, 4, 2),
                (64, Arch::Sm80) => (128, 128, 8, 2),
                _ if hopper => (128, 128, 8, 2),
                _ => (128, 32, 4, 2),
            }
        };
        // On sm_90a the warp-specialised wgmma engine (swizzled tiles) ran dense at 368-378 TFLOP/s
        // at 16K on an H100 against 273 for mma.sync, and vertical-slash at least as fast
        // (docs/design.md); it takes 64-row warpgroups and head_dim up to 128. Its tensor-map
        // producer ran dense 4-7% and A-shape 6-7% faster (H100), and vertical-slash indices on
        // 128-row blocks 13% (banded) to 19% (scattered) faster, gathered columns 2%. With S issued
        // ahead (its default loop, docs/design.md "Scores ahead") it runs dense 3-4% faster than
        // its overlap form (H100).
        let mainloop = if arch == Arch::Sm90a && head_dim <= 128 && block_m == 128 && warps == 8 {
            Mainloop::WgmmaTma
        } else {
            Mainloop::MmaSync
        };
        KernelSpec { pattern, dtype, head_dim, block_m, block_n, warps, stages, arch, mainloop }
    }

    /// This spec with its tile set by hand (a `#[sparse_attention]` kernel's arguments): the engine
    /// is `mainloop` when given, else this spec's where the tile suits it ([`KernelSpec::validate`]),
    /// else `mma_sync`, which takes every tile.
    pub fn retiled(
        self,
        (block_m, block_n, warps, stages): (u32, u32, u32, u32),
        mainloop: Option<Mainloop>,
    ) -> KernelSpec {
        let spec = KernelSpec { block_m, block_n, warps, stages, mainloop: mainloop.unwrap_or(self.mainloop), ..self };
        let mma_sync = KernelSpec { mainloop: Mainloop::MmaSync, ..spec };
        if mainloop.is_none() && spec.validate().is_err() && mma_sync.validate().is_ok() {
            mma_sync
        } else {
            spec
        }
    }

    /// This spec followed by the others a launch of it may run instead: the 64-row alternative of
    /// the per-head tile choice ([`KernelSpec::square_alternative`]), and the `wgmma` twins of
    /// both tensor-map specs (for calls whose tensors no tensor map can view).
    pub fn with_companions(self) -> Vec<KernelSpec> {
        let square = self.square_alternative();
        let twins = [Some(self), square].into_iter().flatten().filter_map(KernelSpec::cp_async_twin);
        std::iter::once(self).chain(square).chain(twins).collect()
    }

    /// The same tile on the `wgmma` engine's `cp.async` producer, for a tensor-map spec: what a
    /// launch of it runs when no tensor map can view the call's tensors. `None` for other engines.
    pub fn cp_async_twin(self) -> Option<KernelSpec> {
        self.mainloop.uses_tensor_maps().then_some(KernelSpec { mainloop: Mainloop::Wgmma, ..self })
    }

    /// The default spec set for the given architectures: every implemented pattern, dtype and head
    /// dimension, each index-driven default followed by its 64-row alternative where the per-head
    /// tile choice has one ([`KernelSpec::square_alternative`]) and each tensor-map default by its
    /// `wgmma` twin (what a call runs whose tensors no map can view), in a stable order, leaving out the
    /// few combinations that do not fit a target (index-driven kernels with head_dim 256 on the
    /// 99 KiB shared-memory parts). Warming it leaves nothing for a default call to compile.
    pub fn default_set(arches: &[Arch]) -> Vec<KernelSpec> {
        let mut specs = Vec::new();
        for &arch in arches {
            for &pattern in Pattern::ALL {
                for &dtype in DType::ALL {
                    for &head_dim in HEAD_DIMS {
                        let spec = KernelSpec::default_for(pattern, dtype, head_dim, arch);
                        if spec.validate().is_ok() {
                            specs.extend(spec.with_companions());
                        }
                    }
                }
            }
        }
        specs
    }

    /// 16-row MMA fragments each warp owns along the query dimension.
    pub fn m_frags(&self) -> u32 {
        self.block_m / (16 * self.warps)
    }

    /// Elements per shared-memory row: padded by 16 bytes for `mma.sync`; for `wgmma`, whole
    /// 64-element (128-byte) swizzled column blocks.
    pub fn smem_row(&self) -> u32 {
        match self.mainloop {
            Mainloop::MmaSync => self.head_dim + SMEM_ROW_PAD,
            _ => self.head_dim.next_multiple_of(64),
        }
    }

    /// Whether the Q fragments stay in registers for the whole mainloop; when they would push the
    /// accumulators past the register budget, they are re-read from shared memory at every key tile.
    pub fn q_in_registers(&self) -> bool {
        self.accumulator_registers() + self.m_frags() * self.head_dim / 4 <= ACCUMULATOR_REGISTER_BUDGET
    }

    /// fp32 registers per thread that hold the O accumulator and the scores of one key tile.
    pub fn accumulator_registers(&self) -> u32 {
        let m = self.m_frags();
        m * self.head_dim / 2 + m * self.block_n / 2
    }

    /// Threads per block: `warps` computing warps, plus for `wgmma` the producer warpgroup that
    /// loads every tile.
    pub fn threads(&self) -> u32 {
        match self.mainloop {
            Mainloop::MmaSync => self.warps * 32,
            _ => self.warps * 32 + 128,
        }
    }

    /// Dynamic shared memory in bytes: the Q tile, `stages` K and V tiles (padded rows), and per
    /// stage the key index of each tile slot plus the tile's flags; `wgmma` adds its mbarriers (Q
    /// loaded, and per stage a full and an empty barrier for K and for V) and, per stage, the slot
    /// bits of merged column tiles (one bit per slot and 64-row half) and two column counts.
    pub fn shared_bytes(&self) -> u32 {
        self.shared_bytes_with(self.persistent())
    }

    /// [`KernelSpec::shared_bytes`] with one Q buffer, or with two and their barriers (`persistent`).
    fn shared_bytes_with(&self, persistent: bool) -> u32 {
        let row = self.smem_row() * 2;
        let q_buffers = if persistent { 2 } else { 1 };
        let tiles = (q_buffers * self.block_m + 2 * self.stages * self.block_n) * row;
        // Flag words, mbarrier and column-merge bytes, and the alignment in front of the tiles.
        let (flags, barriers, alignment) = match self.mainloop {
            Mainloop::MmaSync => (self.stages, 0, 0),
            // Flags padded to 8 bytes for the mbarriers (Q loaded; K and V full and empty per
            // stage); the swizzled tiles start at a 1024-byte boundary: up to 1008 bytes before them.
            _ => {
                let merge = 4 * self.stages * ((self.block_m / 64) * self.block_n.div_ceil(32) + 2);
                let q_barriers = if persistent { 4 } else { 1 };
                (self.stages.next_multiple_of(2), 8 * (q_barriers + 4 * self.stages) + merge, 1008)
            }
        };
        let metadata = ((self.stages * self.block_n + flags) * 4 + barriers).div_ceil(16) * 16;
        tiles + metadata + alignment
    }

    /// Launch geometry of this spec.
    pub fn launch_shape(&self) -> LaunchShape {
        LaunchShape { threads: self.threads(), shared_bytes: self.shared_bytes(), block_m: self.block_m }
    }

    /// The `setmaxnreg` budget of the `wgmma_tma` producer warpgroup, per thread; the consumers get
    /// the rest of the block's launch registers. Dense and A-shape producers walk a plain cursor and
    /// issue tensor-map copies: 64 (below that ptxas spills some of them: the cp.async fallback for
    /// edge tiles keeps a source address and a step per thread; at 24-40 every dense producer
    /// spills). The index-driven producers still walk range windows (or read the tile list) and
    /// copy gathered columns themselves: they keep the `wgmma` engine's budgets (104 beside two
    /// consumers, 72 beside one 64x64 consumer, 56 beside a 64x128 one), below which they spill.
    /// The 128-row ones that list their tiles keep both the list's window and the walk (for
    /// blocks the list does not hold) in 104, which leaves their consumers the 200 that the
    /// scores-ahead loop needs; the vertical-slash one spills 12 bytes there (three loads and
    /// stores around its merge of the halves' columns, d 128), block-sparse none.
    /// The consumers' code needs 184 registers (128-row blocks; 136 for 64x64) whatever the budget
    /// above that, so what they are given beyond it is headroom, not speed.
    pub fn tma_producer_registers(&self) -> u32 {
        // A persistent block's producer also keeps its place in the work items and the next
        // item's sequence and schedule: 8 registers more on A-shape, 32 beside one 64x64
        // index-driven consumer (with fewer it spills).
        let walk = match (self.persistent(), self.pattern.is_indexed()) {
            (false, _) => 0,
            (true, false) => 8,
            (true, true) => 32,
        };
        walk + match (self.pattern.is_indexed(), self.block_m, self.block_n) {
            (false, _, _) => 64,
            (true, 128, _) => 104,
            (true, _, 64) => 72,
            (true, _, _) => 56,
        }
    }

    /// In how many parts of a tile's keys the warpgroup consumers exponentiate S and issue P V,
    /// each part's products running while the next part's exponentials are computed. Four for
    /// dense and A-shape (dense 557 -> 580 TFLOP/s, A-shape 505 -> 525 at 128K on an H100); two
    /// for the index-driven patterns, whose vertical-slash and block-sparse attention ran 4-7%
    /// faster in two parts than in one, and 1-4% slower in four than in one (`minf bench` at
    /// 128K, H100; docs/design.md).
    pub fn output_parts(&self) -> u32 {
        if self.pattern.is_indexed() {
            2
        } else {
            4
        }
    }

    /// Whether the kernel's blocks walk the launch's work items in turn (a grid of at most as many
    /// blocks as the device holds at once) instead of one block per item: the producer loads the
    /// next item's Q (a second Q buffer) and first tiles while the consumers finish an item and
    /// write its output, which hides the block's launch, Q's load and the first tiles' wait.
    /// A-shape and the 64-row index-driven kernels on the default tensor-map engine (`wgmma_tma`,
    /// the scores-ahead loop), where the second Q buffer still lets as many blocks share an SM as
    /// without it: each consumer issues the next item's first S before it writes an item's output.
    /// Dense (long rows, whose blocks' order the hardware keeps for L2) and the 128-row
    /// index-driven kernels (no registers to spare; the list's pass is written per block) keep a
    /// block per item.
    pub fn persistent(&self) -> bool {
        let blocks_per_sm = if self.warps == 4 { 2 } else { 1 };
        self.mainloop == Mainloop::WgmmaTma
            && !self.lists_tiles()
            && self.pattern != Pattern::Dense
            && self.shared_bytes_with(true) <= self.arch.max_shared_memory()
            && blocks_per_sm * self.shared_bytes_with(true) <= self.arch.shared_memory_per_sm()
    }

    /// Whether the index-driven schedule visits the gathered columns of a 128-row block's two
    /// halves as one merged stream (a column both halves list is loaded once). It needs loader
    /// threads that meet at a barrier of their own while they build a tile: the `wgmma` producer
    /// warpgroup has them; with `mma.sync` every thread loads and computes, and each half's
    /// columns are visited apart.
    pub fn merges_column_lists(&self) -> bool {
        self.is_two_half_warpgroup_index_kernel()
    }

    /// Whether the kernel reads its range tiles from a list that a pass before it writes (the
    /// module's second entry point, [`KernelSpec::tile_list_name`]) instead of walking the
    /// index's ranges in its producer: the 128-row index-driven kernels of the warpgroup engines,
    /// whose producer's time per tile bounds them (docs/design.md, "Listed tiles").
    pub fn lists_tiles(&self) -> bool {
        self.is_two_half_warpgroup_index_kernel()
    }

    /// A 128-row index-driven kernel of a warpgroup engine: a producer warpgroup of its own walks
    /// both 64-row halves' index lists of a block.
    fn is_two_half_warpgroup_index_kernel(&self) -> bool {
        self.pattern.is_indexed() && self.mainloop.is_warpgroup() && self.block_m == 128
    }

    /// The entry point of the tile-list pass of a kernel that lists its tiles.
    pub fn tile_list_name(&self) -> String {
        format!("{}_tile_list", self.kernel_name())
    }

    /// The module's entry points: the kernel, and the tile-list pass where it lists its tiles
    /// (one warp per query block, on the kernel's grid of one block per item).
    pub fn entries(&self) -> Vec<EntryPoint> {
        let mut entries = vec![EntryPoint { name: self.kernel_name(), launch: self.launch_shape() }];
        if self.lists_tiles() {
            entries.push(EntryPoint {
                name: self.tile_list_name(),
                launch: LaunchShape { threads: 32, shared_bytes: 0, block_m: self.block_m },
            });
        }
        entries
    }

    /// The `extern "C"` entry point name of the kernel.
    pub fn kernel_name(&self) -> String {
        format!(
            "minf_{}_{}_d{}_m{}n{}w{}s{}{}",
            self.pattern,
            self.dtype,
            self.head_dim,
            self.block_m,
            self.block_n,
            self.warps,
            self.stages,
            self.engine_suffix("_")
        )
    }

    /// Readable prefix of cache entry names, e.g. `dense-bf16-d128-m128n64-sm90a`.
    pub fn readable_name(&self) -> String {
        format!(
            "{}-{}-d{}-m{}n{}-{}{}",
            self.pattern,
            self.dtype,
            self.head_dim,
            self.block_m,
            self.block_n,
            self.arch.short(),
            self.engine_suffix("-")
        )
    }

    /// Names mark the non-default engine, so `mma_sync` names stay as they were.
    fn engine_suffix(&self, separator: &str) -> String {
        match self.mainloop {
            Mainloop::MmaSync => String::new(),
            Mainloop::Wgmma => format!("{separator}wgmma"),
            Mainloop::WgmmaTma => format!("{separator}wgmma{separator}tma"),
            Mainloop::WgmmaTmaPingPong => format!("{separator}wgmma{separator}tma{separator}pingpong"),
            Mainloop::WgmmaTmaOverlap => format!("{separator}wgmma{separator}tma{separator}overlap"),
        }
    }

    /// Checks every field and the combined resource limits; the error names the field, the value
    /// and what is allowed.
    pub fn validate(&self) -> Result<(), SpecError> {
        fn one_of(field: &'static str, value: u32, allowed: &[u32]) -> Result<(), SpecError> {
            if allowed.contains(&value) {
                Ok(())
            } else {
                Err(SpecError::Invalid {
                    field,
                    value: value.to_string(),
                    allowed: allowed.iter().map(u32::to_string).collect::<Vec<_>>().join(", "),
                })
            }
        }
        one_of("head_dim", self.head_dim, HEAD_DIMS)?;
        one_of("block_m", self.block_m, BLOCK_MS)?;
        one_of("block_n", self.block_n, BLOCK_NS)?;
        one_of("warps", self.warps, WARPS)?;
        one_of("stages", self.stages, STAGES)?;
        if !self.block_m.is_multiple_of(16 * self.warps) || !(1..=2).contains(&self.m_frags()) {
            return Err(SpecError::Invalid {
                field: "warps",
                value: self.warps.to_string(),
                allowed: format!(
                    "a warp count that gives each warp 16 or 32 query rows of block_m = {} ({})",
                    self.block_m,
                    WARPS
                        .iter()
                        .filter(|w| {
                            let rows = self.block_m / **w;
                            self.block_m.is_multiple_of(**w) && (rows == 16 || rows == 32)
                        })
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            });
        }
        if self.pattern.is_indexed() && self.block_n < 64 {
            return Err(SpecError::Invalid {
                field: "block_n",
                value: self.block_n.to_string(),
                allowed: format!("64 or 128 for pattern {} (its key ranges are 64 wide)", self.pattern),
            });
        }
        if self.mainloop.is_warpgroup() {
            let why = if self.arch != Arch::Sm90a {
                Some(format!("arch {} (wgmma needs sm_90a)", self.arch))
            } else if self.m_frags() != 1 || !self.warps.is_multiple_of(4) {
                Some(format!(
                    "{} warps over {} rows (wgmma needs 16 rows per warp in warpgroups of 4)",
                    self.warps, self.block_m
                ))
            } else if self.head_dim > 128 {
                Some(format!("head_dim {} (wgmma needs at most 128)", self.head_dim))
            } else if self.mainloop.uses_tensor_maps() && !self.block_n.is_multiple_of(abi::TMA_BOX_ROWS) {
                Some(format!("block_n {} (its tensor-map boxes are 64-key runs)", self.block_n))
            } else if !(self.block_n / 16).is_multiple_of(self.output_parts()) {
                Some(format!(
                    "block_n {} for pattern {} (its consumers issue P V in {} parts of whole 16-key k-steps)",
                    self.block_n,
                    self.pattern,
                    self.output_parts()
                ))
            } else if self.mainloop == Mainloop::WgmmaTmaPingPong && self.warps != 8 {
                Some(format!("{} warps (ping-pong takes turns between two consumer warpgroups: 8 warps)", self.warps))
            } else if self.stages < 2 {
                // The producer announces a tile only once the next tile's copies are out, into
                // another stage: with one stage it would wait for itself.
                Some(format!(
                    "{} stage (wgmma's producer fills one stage while the consumers read another)",
                    self.stages
                ))
            } else {
                None
            };
            if let Some(why) = why {
                return Err(SpecError::Invalid {
                    field: "mainloop",
                    value: format!("{} with {why}", self.mainloop),
                    allowed: "mma_sync for this tile".into(),
                });
            }
        }
        let needed = self.accumulator_registers();
        if needed > ACCUMULATOR_REGISTER_BUDGET {
            return Err(SpecError::Registers {
                block_m: self.block_m,
                block_n: self.block_n,
                head_dim: self.head_dim,
                warps: self.warps,
                needed,
                limit: ACCUMULATOR_REGISTER_BUDGET,
            });
        }
        let needed = self.shared_bytes();
        let limit = self.arch.max_shared_memory();
        if needed > limit {
            return Err(SpecError::SharedMemory {
                block_m: self.block_m,
                block_n: self.block_n,
                head_dim: self.head_dim,
                stages: self.stages,
                needed,
                limit,
                arch: self.arch,
            });
        }
        Ok(())
    }
}

/// Index kernels: the GPU kernels next to attention, compiled once per architecture: those that
/// build, convert or read sparse indices for the attention kernels, and the log-sum-exp merge of
/// partial attention results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexKernel {
    /// Raw vertical (column) and slash (diagonal) indices to MInference's per-64-row-block
    /// `block_count / block_offset / column_count / column_index` format.
    VerticalSlashConvert,
    /// The vertical and slash scores of MInference's vertical-slash estimate: softmax mass the last
    /// 64 queries put on each key column and each diagonal, on tensor cores (one entry point per
    /// dtype and head_dim: bf16 or f16, head_dim 64, 96, 128 or 256).
    VerticalSlashScores,
    /// The selections of the estimates: the vertical-slash top-k (a radix select spread over
    /// segments of every row, then an ordered compaction; per-head sizes) and the block-sparse
    /// estimate (64-token mean pooling, the block score matrix as tiles, top-k per query block).
    EstimateSelect,
    /// The per-head choice between two tiles of an index-driven pattern: from how many of its keys
    /// the two halves of each 128-row block share, whether a head runs on 128-row or on 64-row
    /// blocks (two head maps, one per launch).
    TileChoice,
    /// The log-sum-exp merge of two partial attention results over disjoint key sets (split-KV,
    /// chunked prefill), in place into the first (one entry point per dtype).
    LseMerge,
}

impl IndexKernel {
    /// Every index kernel.
    pub const ALL: &'static [IndexKernel] = &[
        IndexKernel::VerticalSlashConvert,
        IndexKernel::VerticalSlashScores,
        IndexKernel::EstimateSelect,
        IndexKernel::TileChoice,
        IndexKernel::LseMerge,
    ];

    /// The name used in cache names and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            IndexKernel::VerticalSlashConvert => "vs_convert",
            IndexKernel::VerticalSlashScores => "vs_scores",
            IndexKernel::EstimateSelect => "est_select",
            IndexKernel::TileChoice => "tile_choice",
            IndexKernel::LseMerge => "lse_merge",
        }
    }
}

/// One index kernel for one architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IndexKernelSpec {
    /// Which kernel.
    pub kernel: IndexKernel,
    /// Target architecture.
    pub arch: Arch,
}

impl IndexKernelSpec {
    /// Threads per block of the index kernels other than the selections
    /// ([`abi::INDEX_THREADS`]).
    pub const THREADS: u32 = abi::INDEX_THREADS;

    /// The template file (without `.cu.tera`).
    pub fn template(&self) -> &'static str {
        self.kernel.as_str()
    }

    /// The `extern "C"` entry-point prefix; a template may define several entry points that start
    /// with it (e.g. one per pass).
    pub fn kernel_name(&self) -> String {
        format!("minf_{}", self.kernel.as_str())
    }

    /// Readable prefix of cache entry names, e.g. `vs_convert-sm90a`.
    pub fn readable_name(&self) -> String {
        format!("{}-{}", self.kernel.as_str(), self.arch.short())
    }

    /// The name of entry point `suffix` (`""` for a kernel with one entry point).
    pub fn entry_name(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.kernel_name())
    }

    /// The vertical-slash score passes' entry point for `pass` (`stats` or `accumulate`), element
    /// type `dtype` and head dimension `head_dim`.
    pub fn score_entry_name(&self, pass: &str, dtype: DType, head_dim: u32) -> String {
        self.entry_name(&format!("_{pass}_{dtype}_d{head_dim}"))
    }

    /// Every entry point of the module and its launch geometry.
    pub fn entries(&self) -> Vec<EntryPoint> {
        let entry = |suffix: &str, threads: u32, shared_bytes: u32| EntryPoint {
            name: self.entry_name(suffix),
            launch: LaunchShape { threads, shared_bytes, block_m: 0 },
        };
        match self.kernel {
            IndexKernel::VerticalSlashConvert => {
                vec![
                    entry("_lists", abi::INDEX_THREADS, 0),
                    entry("_rows", abi::INDEX_THREADS, abi::CONVERT_STAGED_INTS * 4),
                ]
            }
            IndexKernel::VerticalSlashScores => {
                let mut entries = vec![entry("_combine", abi::INDEX_THREADS, 0)];
                for &head_dim in HEAD_DIMS {
                    for &dtype in DType::ALL {
                        for (pass, accumulate) in [("stats", false), ("accumulate", true)] {
                            entries.push(EntryPoint {
                                name: self.score_entry_name(pass, dtype, head_dim),
                                launch: LaunchShape {
                                    threads: abi::INDEX_THREADS,
                                    shared_bytes: abi::score_shared_bytes(head_dim, accumulate),
                                    block_m: 0,
                                },
                            });
                        }
                    }
                }
                entries
            }
            IndexKernel::EstimateSelect => {
                vec![
                    entry("_vs_histogram", abi::SELECT_SEGMENT_THREADS, 0),
                    entry("_vs_count", abi::SELECT_SEGMENT_THREADS, 0),
                    entry("_vs_write", abi::SELECT_SEGMENT_THREADS, 0),
                    entry("_block_pool", abi::POOL_THREADS, 0),
                    entry("_block_scores", abi::BLOCK_SCORE_THREADS, 0),
                    entry(
                        "_block_select",
                        abi::SELECT_THREADS,
                        abi::block_select_shared_bytes(abi::MAX_BLOCK_SPARSE_ROWS),
                    ),
                    entry("_block_select_short", abi::SELECT_THREADS, 0),
                    entry("_block_select_stream", abi::SELECT_THREADS, 0),
                ]
            }
            IndexKernel::TileChoice => vec![entry("", abi::INDEX_THREADS, 0)],
            IndexKernel::LseMerge => {
                DType::ALL.iter().map(|dtype| entry(&format!("_{dtype}"), abi::INDEX_THREADS, 0)).collect()
            }
        }
    }
}

/// Anything minf renders and compiles: an attention kernel or an index kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AnyKernel {
    /// An attention kernel.
    Attention(KernelSpec),
    /// An index kernel.
    Index(IndexKernelSpec),
}

impl AnyKernel {
    /// Target architecture.
    pub fn arch(&self) -> Arch {
        match self {
            AnyKernel::Attention(spec) => spec.arch,
            AnyKernel::Index(spec) => spec.arch,
        }
    }

    /// Readable prefix of cache entry names.
    pub fn readable_name(&self) -> String {
        match self {
            AnyKernel::Attention(spec) => spec.readable_name(),
            AnyKernel::Index(spec) => spec.readable_name(),
        }
    }
}

impl From<KernelSpec> for AnyKernel {
    fn from(spec: KernelSpec) -> Self {
        AnyKernel::Attention(spec)
    }
}

impl From<IndexKernelSpec> for AnyKernel {
    fn from(spec: IndexKernelSpec) -> Self {
        AnyKernel::Index(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_set_is_valid_for_every_arch() {
        // Only index-driven kernels with head_dim 256 miss the 99 KiB parts.
        let left_out = |p: Pattern, d: u32, a: Arch| p.is_indexed() && d == 256 && matches!(a, Arch::Sm86 | Arch::Sm89);
        for &arch in Arch::ALL {
            for &pattern in Pattern::ALL {
                for &head_dim in HEAD_DIMS {
                    let spec = KernelSpec::default_for(pattern, DType::Bf16, head_dim, arch);
                    assert_eq!(spec.validate().is_ok(), !left_out(pattern, head_dim, arch), "{spec:?}");
                }
            }
        }
        let specs = KernelSpec::default_set(Arch::ALL);
        // On sm_90a up to head_dim 128 every default is a `wgmma_tma` spec; the two index-driven
        // patterns add their 64-row alternatives, and every tensor-map spec its wgmma twin.
        let tensor_map_defaults = Pattern::ALL.len() * DType::ALL.len() * 3;
        let alternatives = 2 * DType::ALL.len() * 3;
        let twins = tensor_map_defaults + alternatives;
        assert_eq!(
            specs.len(),
            Arch::ALL.len() * DType::ALL.len() * HEAD_DIMS.len() * Pattern::ALL.len() - 8 + alternatives + twins
        );
        assert_eq!(specs.iter().filter(|s| s.block_m == 64 && s.mainloop == Mainloop::WgmmaTma).count(), alternatives);
        assert_eq!(specs.iter().filter(|s| s.block_m == 64 && s.mainloop == Mainloop::Wgmma).count(), alternatives);
        assert_eq!(specs.iter().filter(|s| s.mainloop == Mainloop::WgmmaTma).count(), twins);
        assert_eq!(specs.iter().filter(|s| s.mainloop == Mainloop::WgmmaTmaOverlap).count(), 0);
        assert_eq!(specs.iter().filter(|s| s.mainloop == Mainloop::Wgmma).count(), twins);
        for spec in specs {
            spec.validate().unwrap_or_else(|e| panic!("{spec:?}: {e}"));
        }
    }

    #[test]
    fn tile_lists_are_for_the_128_row_index_driven_warpgroup_kernels() {
        for &pattern in Pattern::ALL {
            for spec in KernelSpec::default_set(&[Arch::Sm80, Arch::Sm90a]).into_iter().filter(|s| s.pattern == pattern)
            {
                let lists = pattern.is_indexed() && spec.mainloop.is_warpgroup() && spec.block_m == 128;
                assert_eq!(spec.lists_tiles(), lists, "{spec:?}");
                let entries = spec.entries();
                assert_eq!(entries[0].name, spec.kernel_name());
                assert_eq!(entries[0].launch, spec.launch_shape());
                if lists {
                    assert_eq!(entries.len(), 2, "{spec:?}");
                    assert_eq!(entries[1].name, format!("{}_tile_list", spec.kernel_name()));
                    assert_eq!((entries[1].launch.threads, entries[1].launch.shared_bytes), (32, 0));
                } else {
                    assert_eq!(entries.len(), 1, "{spec:?}");
                }
            }
        }
        // Their producers keep the list's window beside the walk in the budget that leaves the
        // consumers 200 registers.
        for pattern in [Pattern::VerticalSlash, Pattern::BlockSparse] {
            let spec = KernelSpec::default_for(pattern, DType::Bf16, 128, Arch::Sm90a);
            assert!(spec.lists_tiles(), "{spec:?}");
            assert_eq!(spec.tma_producer_registers(), 104, "{spec:?}");
        }
    }

    #[test]
    fn names_parse_with_suggestions() {
        assert_eq!("bf16".parse::<DType>().unwrap(), DType::Bf16);
        assert_eq!("SM_90A".parse::<Arch>().unwrap(), Arch::Sm90a);
        let err = "vertcal_slash".parse::<Pattern>().unwrap_err();
        assert!(err.to_string().contains("did you mean `vertical_slash`"), "{err}");
        let err = "bf61".parse::<DType>().unwrap_err();
        assert!(matches!(err, SpecError::Unknown { suggestion: Some(ref s), .. } if s == "bf16"), "{err}");
        assert_eq!("A_SHAPE".parse::<Pattern>().unwrap(), Pattern::AShape);
        let base = KernelSpec::default_for(Pattern::VerticalSlash, DType::Bf16, 128, Arch::Sm90a);
        // A 128-row block serves two 64-row index entries.
        KernelSpec { block_m: 128, warps: 8, ..base }.validate().unwrap();
        let err = KernelSpec { block_n: 32, ..base }.validate().unwrap_err();
        assert!(err.to_string().contains("key ranges are 64 wide"), "{err}");
        assert!(matches!("zzzzzz".parse::<Pattern>(), Err(SpecError::Unknown { suggestion: None, .. })));
    }

    #[test]
    fn invalid_fields_name_field_value_and_allowed() {
        let base = KernelSpec::default_for(Pattern::Dense, DType::Bf16, 128, Arch::Sm80);
        let err = KernelSpec { head_dim: 80, ..base }.validate().unwrap_err();
        assert_eq!(err.to_string(), "invalid head_dim = 80: allowed 64, 96, 128, 256");
        let err = KernelSpec { block_n: 48, ..base }.validate().unwrap_err();
        assert!(err.to_string().starts_with("invalid block_n = 48"), "{err}");
        let err = KernelSpec { block_m: 64, warps: 8, ..base }.validate().unwrap_err();
        assert!(err.to_string().contains("warps = 8"), "{err}");
    }

    #[test]
    fn resource_limits_are_enforced() {
        let base = KernelSpec::default_for(Pattern::Dense, DType::F16, 256, Arch::Sm86);
        let err = KernelSpec { block_n: 128, stages: 3, ..base }.validate().unwrap_err();
        assert!(matches!(err, SpecError::SharedMemory { .. }), "{err}");
        let err = KernelSpec { block_m: 128, warps: 4, block_n: 128, head_dim: 128, ..base }.validate().unwrap_err();
        assert!(matches!(err, SpecError::Registers { .. }), "{err}");
    }

    #[test]
    fn wgmma_needs_two_stages() {
        let dense = KernelSpec::default_for(Pattern::Dense, DType::Bf16, 128, Arch::Sm90a);
        assert_eq!(dense.mainloop, Mainloop::WgmmaTma);
        let base = KernelSpec { mainloop: Mainloop::Wgmma, ..dense };
        assert!(KernelSpec { stages: 2, ..base }.validate().is_ok());
        let err = KernelSpec { stages: 1, ..base }.validate().unwrap_err();
        assert!(err.to_string().contains("1 stage"), "{err}");
        assert!(KernelSpec { stages: 1, mainloop: Mainloop::MmaSync, ..base }.validate().is_ok());
    }

    #[test]
    fn hopper_defaults_copy_through_tensor_maps_up_to_head_dim_128() {
        for &pattern in Pattern::ALL {
            for &head_dim in HEAD_DIMS {
                let spec = KernelSpec::default_for(pattern, DType::Bf16, head_dim, Arch::Sm90a);
                let expected = if head_dim <= 128 { Mainloop::WgmmaTma } else { Mainloop::MmaSync };
                assert_eq!(spec.mainloop, expected, "{spec:?}");
                let sm80 = KernelSpec::default_for(pattern, DType::Bf16, head_dim, Arch::Sm80);
                assert_eq!(sm80.mainloop, Mainloop::MmaSync, "{sm80:?}");
            }
        }
    }

    #[test]
    fn retiled_specs_keep_the_default_engine_where_the_tile_suits_it() {
        let dense = KernelSpec::default_for(Pattern::Dense, DType::Bf16, 128, Arch::Sm90a);
        let same = dense.retiled((128, 64, 8, 3), None);
        assert_eq!((same.block_n, same.stages, same.mainloop), (64, 3, Mainloop::WgmmaTma));
        let square = dense.retiled((64, 64, 4, 2), None);
        assert_eq!(square.mainloop, Mainloop::WgmmaTma);
        square.validate().expect("one consumer warpgroup on 64 rows");
        // Tiles no warpgroup engine takes run on mma_sync unless an engine is named: 32-key tiles
        // (no tensor-map box, and fewer k-steps than dense's four P V parts), 32 rows a warp, one stage.
        for tile in [(128, 32, 8, 2), (128, 64, 4, 2), (128, 64, 8, 1)] {
            let spec = dense.retiled(tile, None);
            assert_eq!(spec.mainloop, Mainloop::MmaSync, "{tile:?}");
            spec.validate().expect("mma_sync takes the tile");
        }
        let named = dense.retiled((128, 32, 8, 2), Some(Mainloop::Wgmma));
        assert_eq!(named.mainloop, Mainloop::Wgmma);
        let error = named.validate().map_err(|e| e.to_string()).err().unwrap_or_default();
        assert!(error.contains("P V in 4 parts"), "{error}");
        // A tile no engine takes keeps the engine, and validation says what is wrong.
        let indexed = KernelSpec::default_for(Pattern::VerticalSlash, DType::Bf16, 128, Arch::Sm90a);
        let narrow = indexed.retiled((128, 32, 8, 2), None);
        assert_eq!(narrow.mainloop, Mainloop::WgmmaTma);
        assert!(narrow.validate().is_err());
        let ampere = KernelSpec::default_for(Pattern::Dense, DType::Bf16, 128, Arch::Sm80);
        assert_eq!(ampere.retiled((64, 32, 4, 2), None).mainloop, Mainloop::MmaSync);
    }

    #[test]
    fn hopper_maps_to_sm90a() {
        assert_eq!(Arch::for_compute_capability(9, 0), Some(Arch::Sm90a));
        assert_eq!(Arch::for_compute_capability(7, 5), None);
        assert!(Arch::Sm90.runs_on(Arch::Sm90a) && Arch::Sm90a.runs_on(Arch::Sm90a));
        assert!(!Arch::Sm90a.runs_on(Arch::Sm90) && !Arch::Sm80.runs_on(Arch::Sm86));
    }

    #[test]
    fn tiles_parse_apply_and_print() {
        let tile: Tile = "64,64,4,2,wgmma".parse().unwrap();
        let base = KernelSpec::default_for(Pattern::VerticalSlash, DType::Bf16, 128, Arch::Sm90a);
        let spec = tile.apply(base);
        assert_eq!((spec.block_m, spec.block_n, spec.warps, spec.stages), (64, 64, 4, 2));
        assert_eq!((spec.mainloop, spec.pattern, spec.head_dim), (Mainloop::Wgmma, base.pattern, 128));
        assert_eq!(tile.to_string().parse::<Tile>().unwrap(), tile);
        for bad in ["64,64,4,2", "64,64,4,x,wgmma", "64,64,4,2,wgmmma"] {
            let err = bad.parse::<Tile>().unwrap_err().to_string();
            assert!(err.contains("tile") || err.contains("mainloop"), "{bad}: {err}");
        }
    }

    #[test]
    fn square_alternatives_keep_the_engine_and_ping_pong_falls_back_to_one_consumer() {
        let base = KernelSpec::default_for(Pattern::VerticalSlash, DType::Bf16, 128, Arch::Sm90a);
        for (mainloop, square_engine) in [
            (Mainloop::Wgmma, Mainloop::Wgmma),
            (Mainloop::WgmmaTma, Mainloop::WgmmaTma),
            (Mainloop::WgmmaTmaPingPong, Mainloop::WgmmaTma),
        ] {
            let spec = Tile { block_m: 128, block_n: 128, warps: 8, stages: 2, mainloop }.apply(base);
            spec.validate().unwrap();
            let square = spec.square_alternative().unwrap_or_else(|| panic!("{mainloop} has a square alternative"));
            assert_eq!((square.block_m, square.block_n, square.warps, square.mainloop), (64, 64, 4, square_engine));
            assert!(square.validate().is_ok());
        }
        let dense = KernelSpec::default_for(Pattern::Dense, DType::Bf16, 128, Arch::Sm90a);
        assert_eq!(dense.square_alternative(), None);
    }

    #[test]
    fn default_index_kernels_list_their_tiles_and_square_ones_walk() {
        for &pattern in Pattern::ALL {
            let spec = KernelSpec::default_for(pattern, DType::Bf16, 128, Arch::Sm90a);
            assert_eq!(spec.lists_tiles(), pattern.is_indexed(), "{spec:?}");
            if let Some(square) = spec.square_alternative() {
                assert_eq!(square.block_m, 64, "{square:?}");
                assert!(!square.lists_tiles(), "{square:?}");
            }
        }
    }
}
