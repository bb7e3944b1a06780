use minf::sparse_attention;

// Index-driven patterns read one index entry per 64 query rows.
#[sparse_attention(pattern = "vertical_slash", head_dim = 128, block_m = 128)]
struct TallVerticalSlash;

// Their key ranges are 64 wide.
#[sparse_attention(pattern = "block_sparse", head_dim = 128, block_n = 32)]
struct NarrowBlockSparse;

fn main() {}
