use minf::sparse_attention;

#[sparse_attention(pattern = "a_shape", head_dim = 128, block_n = 64)]
struct Planned;

fn main() {}
