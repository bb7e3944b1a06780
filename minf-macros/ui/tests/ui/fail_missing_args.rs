use minf_macros::sparse_attention;

#[sparse_attention(head_dim = 128)]
struct NoPattern;

#[sparse_attention(pattern = "dense")]
struct NoHeadDim;

#[sparse_attention]
struct NoArguments;

fn main() {}
