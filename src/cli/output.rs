//! What the commands write. Standard output goes through [`outln!`], whose error a command passes
//! up with `?`: when the reader has gone away (`minf cache list | head`), `main` recognises the
//! closed pipe ([`is_closed_pipe`]) and ends quietly instead of panicking as `println!` does.
//! Messages for standard error go through [`errln!`], which drops what cannot be written.

use std::error::Error;
use std::fmt;
use std::io::{self, Write};

/// Writes one line to standard output and returns the write's [`io::Result`].
macro_rules! outln {
    () => {
        $crate::cli::output::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Writes one line to standard error; a message that cannot be written is dropped.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::output::write_stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {errln, outln};

/// Writes `text` to standard output (locked, so lines of parallel writers do not interleave).
pub fn write_stdout(text: fmt::Arguments<'_>) -> io::Result<()> {
    io::stdout().lock().write_fmt(text)
}

/// Writes `text` to standard error, ignoring failure (there is nowhere left to report it).
pub fn write_stderr(text: fmt::Arguments<'_>) {
    let _ignored = io::stderr().lock().write_fmt(text);
}

/// Whether `error`, or an error it wraps, is a write into a pipe whose reader has gone away.
pub fn is_closed_pipe(error: &(dyn Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) {
            return true;
        }
        current = error.source();
    }
    false
}
