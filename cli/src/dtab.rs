//! `ecsmeshctl dtab …`: the offline dtab tools (parse, path, tree, lookup,
//! delegate with `--dtab`), each printing one answer (one line, except
//! `delegate --explain` in text form), and the controller's dtab API
//! (list, get, set, update, delete, watch, delegate, resolve; see
//! [`crate::remote`]).

use anyhow::{Context as _, Result, anyhow};
use clap::{Args, Subcommand, ValueEnum};
use ecsmesh_dtab::{self as dtab, Dtab, NameTree, ParseError, Path, json};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Finagle's canonical `show` form.
    #[default]
    Text,
    /// JSON (namerd's dtab format; Linkerd's delegator format for --explain).
    Json,
}

#[derive(Debug, Args)]
pub struct OutputArg {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text, global = true)]
    pub output: Output,
}

#[derive(Debug, Subcommand)]
pub enum DtabCommand {
    /// Print a dtab in canonical form.
    Parse {
        /// The dtab, e.g. '/svc => /#/io.l5d.consul/dc1;'
        dtab: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Print a path in canonical form.
    Path {
        path: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Print a name tree in canonical form.
    Tree {
        tree: String,
        /// Print the simplified tree.
        #[arg(long, conflicts_with = "eval")]
        simplify: bool,
        /// Print what the tree evaluates to, as JSON: null for ~ and !, else a list of paths.
        #[arg(long)]
        eval: bool,
        #[command(flatten)]
        out: OutputArg,
    },
    /// One lookup step of a path in a dtab, unsimplified.
    Lookup {
        #[arg(long)]
        dtab: String,
        path: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Rewrite a path through a dtab until only namer names (/#/…, /$/…)
    /// remain: offline with --dtab, else through the controller's namespace
    /// dtab (with the endpoints it knows at each leaf).
    Delegate {
        /// The dtab to delegate with (offline; no controller needed).
        #[arg(long, conflicts_with_all = ["namespace", "extra"])]
        dtab: Option<String>,
        path: String,
        /// Print every step and the dentry behind it.
        #[arg(long)]
        explain: bool,
        /// The controller namespace whose dtab to use (without --dtab).
        #[arg(long, short = 'n')]
        namespace: Option<String>,
        /// An extra dtab appended, as an l5d-dtab header would (without --dtab).
        #[arg(long)]
        extra: Option<String>,
        #[command(flatten)]
        controller: crate::remote::ControllerArgs,
        #[command(flatten)]
        out: OutputArg,
    },
    #[command(flatten)]
    Remote(crate::remote::RemoteCommand),
}

/// Runs an offline command, or says it needs the controller.
pub fn run_offline(cmd: &DtabCommand) -> Result<Option<String>> {
    match cmd {
        DtabCommand::Delegate { dtab: None, .. } | DtabCommand::Remote(_) => Ok(None),
        offline => run(offline).map(Some),
    }
}

fn run(cmd: &DtabCommand) -> Result<String> {
    match cmd {
        DtabCommand::Parse { dtab, out } => {
            let d = read("dtab", dtab, Dtab::read)?;
            Ok(render(out.output, &d, || json::dtab(&d)))
        }
        DtabCommand::Path { path, out } => {
            let p = read("path", path, Path::read)?;
            Ok(render(out.output, &p, || p.to_string().into()))
        }
        DtabCommand::Tree {
            tree,
            simplify,
            eval,
            out,
        } => {
            let t = read("name tree", tree, NameTree::read)?;
            if *eval {
                return Ok(json::eval(&t).to_string());
            }
            let t = if *simplify { t.simplify() } else { t };
            Ok(render(out.output, &t, || json::tree(&t)))
        }
        DtabCommand::Lookup { dtab, path, out } => {
            let d = read("dtab", dtab, Dtab::read)?;
            let p = read("path", path, Path::read)?;
            let t = d.lookup(&p);
            Ok(render(out.output, &t, || json::tree(&t)))
        }
        DtabCommand::Delegate {
            dtab: Some(dtab),
            path,
            explain,
            out,
            ..
        } => {
            let d = read("dtab", dtab, Dtab::read)?;
            let p = read("path", path, Path::read)?;
            let steps = dtab::delegate(&d, &p)?;
            Ok(match (explain, out.output) {
                (true, Output::Text) => steps.explain().trim_end().to_owned(),
                (true, Output::Json) => json::delegation(&steps).to_string(),
                (false, format) => {
                    let t = steps.result();
                    render(format, &t, || json::tree(&t))
                }
            })
        }
        DtabCommand::Delegate { dtab: None, .. } | DtabCommand::Remote(_) => {
            Err(anyhow!("this command needs the controller"))
        }
    }
}

pub(crate) fn render(
    format: Output,
    value: &impl std::fmt::Display,
    as_json: impl FnOnce() -> serde_json::Value,
) -> String {
    match format {
        Output::Text => value.to_string(),
        Output::Json => as_json().to_string(),
    }
}

/// Parses `input`; on failure the error names the offset and shows where.
pub(crate) fn read<T>(
    what: &str,
    input: &str,
    parse: fn(&str) -> Result<T, ParseError>,
) -> Result<T> {
    parse(input)
        .map_err(|e| anyhow!("{}", pointed(input, &e)))
        .with_context(|| format!("invalid {what}"))
}

/// The error, then the input with a caret under the offending character.
fn pointed(input: &str, e: &ParseError) -> String {
    let line_start = input[..e.offset.min(input.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let line_end = input[line_start..]
        .find('\n')
        .map_or(input.len(), |i| line_start + i);
    let line = input[line_start..line_end].trim_end_matches('\r');
    // Tabs stay tabs so that the caret lines up under them.
    let pad: String = input[line_start..e.offset.min(input.len())]
        .chars()
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    format!("{e}\n  {line}\n  {pad}^")
}
