use minf::codegen::{Arch, DType, Pattern};
use minf::{sparse_attention, SparseAttentionKernel};

/// Defaults for everything optional.
#[sparse_attention(pattern = "dense", head_dim = 128)]
pub struct Prefill;

/// Every argument given; a struct with fields is fine too.
#[sparse_attention(
    pattern = "dense",
    head_dim = 64,
    dtype = "f16",
    block_m = 64,
    block_n = 32,
    warps = 4,
    stages = 3,
    arch = "sm_86"
)]
#[derive(Debug, Default)]
pub struct Tuned {
    pub calls: u64,
}

fn main() {
    assert_eq!(Prefill::NAME, "Prefill");
    assert_eq!(Prefill::PATTERN, Pattern::Dense);
    assert_eq!(Prefill::spec(Arch::Sm90a).block_n, 128);
    assert_eq!(Tuned::FIXED_ARCH, Some(Arch::Sm86));
    assert_eq!(Tuned::DTYPE, DType::F16);
    assert_eq!(Tuned::spec(Arch::Sm80).arch, Arch::Sm86);
    assert_eq!(Tuned::default().calls, 0);
    assert_eq!(minf::registered().count(), 2);
}
