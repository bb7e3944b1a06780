use minf_macros::sparse_attention;

// Index-driven patterns visit 64-key ranges.
#[sparse_attention(pattern = "vertical_slash", head_dim = 128, block_n = 32)]
struct NarrowVerticalSlash;

#[sparse_attention(pattern = "block_sparse", head_dim = 128, block_n = 32)]
struct NarrowBlockSparse;

fn main() {}
