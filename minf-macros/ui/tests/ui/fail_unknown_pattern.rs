use minf_macros::sparse_attention;

#[sparse_attention(pattern = "vertcal_slash", head_dim = 128)]
struct Typo;

#[sparse_attention(pattern = "sliding_window", head_dim = 128)]
struct Unknown;

fn main() {}
