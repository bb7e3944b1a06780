use minf_macros::sparse_attention;

#[sparse_attention(pattern = "dense", head_dim = 128, dtype = "bf61", arch = "sm_70")]
struct BadNames;

#[sparse_attention(pattern = "dense", head_dim = 128, block_m = 64)]
struct WarpsDefaultDoesNotFit;

#[sparse_attention(pattern = "dense", head_dim = "128")]
struct QuotedInteger;

#[sparse_attention(pattern = "dense", head_dim = 128, block_n = -64)]
struct NegativeInteger;

fn main() {}
