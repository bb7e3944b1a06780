use minf_macros::sparse_attention;

#[sparse_attention(pattern = "dense", head_dim = 128, block_n = 64, block_n = 32)]
struct Twice;

fn main() {}
