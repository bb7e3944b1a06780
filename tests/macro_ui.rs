//! Compile-time behaviour of `#[sparse_attention]`: valid declarations compile, invalid ones fail
//! with messages that point at the offending argument (see `tests/ui/*.stderr`).

#[test]
fn sparse_attention_ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass_*.rs");
    cases.compile_fail("tests/ui/fail_*.rs");
}
