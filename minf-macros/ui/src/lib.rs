//! Compile-fail tests of `#[sparse_attention]` (`tests/ui.rs`, run by trybuild); no library code.
//! A package of its own so that trybuild builds only the macro's dependencies, and so that its
//! dev-dependencies leave the feature sets of the other packages' builds alone.
