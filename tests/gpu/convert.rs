//! GPU tests of the vertical-slash index converter (filled in with the converter).
