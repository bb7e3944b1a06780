use minf_macros::sparse_attention;

// 429 KiB of shared memory: too large for every target.
#[sparse_attention(pattern = "dense", head_dim = 256, block_n = 128, stages = 3)]
struct TooLarge;

// 170 KiB: fits sm_90a (227 KiB) but not sm_80 (163 KiB), one of the default targets.
#[sparse_attention(pattern = "dense", head_dim = 128, block_n = 128, warps = 8)]
struct TooLargeForAmpere;

// Pinned to sm_86 (99 KiB): the error names that target.
#[sparse_attention(pattern = "dense", head_dim = 256, stages = 3, arch = "sm_86")]
struct TooLargeForSm86;

// 4 warps own 32 rows each: 256 accumulator registers per thread.
#[sparse_attention(pattern = "dense", head_dim = 128, block_n = 128, warps = 4)]
struct TooManyRegisters;

fn main() {}
