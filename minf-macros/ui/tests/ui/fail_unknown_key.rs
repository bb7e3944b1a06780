use minf_macros::sparse_attention;

#[sparse_attention(pattern = "dense", head_dim = 128, blok_n = 64)]
struct Typo;

fn main() {}
