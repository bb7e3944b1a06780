use minf_macros::sparse_attention;

#[sparse_attention(pattern = "dense", head_dim = 128)]
fn attention() {}

#[sparse_attention(pattern = "dense", head_dim = 128)]
enum Kernels {
    Prefill,
}

#[sparse_attention(pattern = "dense", head_dim = 128)]
struct Generic<T>(T);

fn main() {}
