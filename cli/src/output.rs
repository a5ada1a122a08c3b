//! Writing answers to stdout. `println!` panics when the reader has gone
//! (`ecsmeshctl … | head`); a closed pipe is a normal end instead.

use std::io::{self, Write as _};

/// Writes `line` and a newline. A closed stdout ends the program quietly.
pub fn emit(line: &str) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    match writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(anyhow::Error::new(e).context("writing the answer")),
    }
}
