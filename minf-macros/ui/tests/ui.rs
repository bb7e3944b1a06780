//! Invalid `#[sparse_attention]` declarations fail with messages that point at the offending
//! argument (see `tests/ui/*.stderr`). These cases need only the macro, so they live in this
//! test-only package, whose dependencies are the macro's: trybuild checks them in a target of its
//! own, and a small graph keeps that quick. The valid declarations, which need the `minf` API the
//! expansion refers to, compile as ordinary code in the root package's `tests/registry.rs`.

#[test]
fn invalid_declarations_fail_with_spanned_messages() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/fail_*.rs");
}
