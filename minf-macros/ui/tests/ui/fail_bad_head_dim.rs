use minf_macros::sparse_attention;

#[sparse_attention(pattern = "dense", head_dim = 80)]
struct Unsupported;

#[sparse_attention(pattern = "dense", head_dim = -64)]
struct Negative;

fn main() {}
