//! `ecsmeshctl`: the ecsmesh command line.

mod dtab;

use std::io::{self, Write as _};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ecsmeshctl",
    version,
    about = "Operate an ecsmesh service mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The dtab playground: parse, print, look up and delegate offline.
    #[command(subcommand)]
    Dtab(dtab::DtabCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dtab(cmd) => dtab::run(&cmd),
    };
    match result {
        Ok(out) => print_line(&out),
        Err(e) => {
            eprintln!("ecsmeshctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes the answer and its newline. `println!` would panic when the reader
/// has gone (`ecsmeshctl … | head`); a closed pipe is a normal end instead.
fn print_line(out: &str) -> ExitCode {
    let mut stdout = io::stdout().lock();
    match writeln!(stdout, "{out}").and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ecsmeshctl: writing the answer: {e}");
            ExitCode::FAILURE
        }
    }
}
