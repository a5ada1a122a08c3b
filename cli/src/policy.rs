//! `ecsmeshctl policy`: service policies (issue #18) on the controller —
//! `list`, `get`, `set`, `update`, `delete`, `watch`, `explain` — and
//! `check`, which validates a policy file offline.
//!
//! A policy is read from `-f FILE` (`-` for stdin) or given inline, in YAML
//! or JSON, and checked here first so that an error points into the file;
//! the controller checks it again. `get` prints the stored policy as JSON
//! (which is YAML) followed by a `# version N` comment, so its output can
//! be edited and passed back to `update --version N`.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, Result, anyhow, bail};
use clap::{Args, Subcommand};
use ecsmesh_policy::{PolicyError, ServicePolicy};
use ecsmesh_proto::v1 as pb;
use pb::policy_admin_client::PolicyAdminClient;
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;

use crate::dtab::{Output, OutputArg, render};
use crate::output::emit;
use crate::remote::{
    ControllerArgs, Target, authorized, connect, input_text, print_updates, version_text,
};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// List the stored policies: prefix and version.
    List {
        #[command(flatten)]
        controller: ControllerArgs,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Print the policy stored under a prefix, then its version.
    Get {
        /// A service-name prefix, e.g. /svc/payments.
        prefix: String,
        #[command(flatten)]
        controller: ControllerArgs,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Store a prefix's policy, creating it or replacing the stored one.
    Set {
        prefix: String,
        #[command(flatten)]
        input: PolicyInput,
        #[command(flatten)]
        controller: ControllerArgs,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Replace a prefix's policy only if it is still at --version.
    Update {
        prefix: String,
        #[command(flatten)]
        input: PolicyInput,
        /// The version `get` printed.
        #[arg(long)]
        version: String,
        #[command(flatten)]
        controller: ControllerArgs,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Delete a prefix's policy (only at --version, when given).
    Delete {
        prefix: String,
        #[arg(long)]
        version: Option<String>,
        #[command(flatten)]
        controller: ControllerArgs,
    },
    /// Print a prefix's policy now and at every change.
    Watch {
        prefix: String,
        /// Stop after this many updates (the first state included).
        #[arg(long)]
        count: Option<usize>,
        #[command(flatten)]
        controller: ControllerArgs,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Which policy applies to a service, and why: every prefix of its
    /// name, most specific first, and the first one with a policy.
    Explain {
        /// A service name, e.g. /svc/payments/v2.
        service: String,
        #[command(flatten)]
        controller: ControllerArgs,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Validate a policy without a controller and print its canonical form.
    Check {
        #[command(flatten)]
        input: PolicyInput,
        #[command(flatten)]
        out: OutputArg,
    },
}

/// The policy: inline, or `-f FILE` / `-f -`.
#[derive(Debug, Args)]
pub struct PolicyInput {
    /// The policy, YAML or JSON (or -f).
    #[arg(required_unless_present = "file")]
    policy: Option<String>,
    /// Read the policy from FILE, or from stdin with `-`.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        conflicts_with = "policy"
    )]
    file: Option<PathBuf>,
}

impl PolicyInput {
    /// The text, validated here so that an error points into it.
    fn read(&self) -> Result<(String, ServicePolicy)> {
        let text = input_text("policy", self.policy.as_deref(), self.file.as_deref())?;
        let policy = ServicePolicy::parse(&text)
            .map_err(|e| anyhow!("{}", pointed(&text, &e)))
            .context("invalid policy")?;
        Ok((text, policy))
    }
}

/// The error; for a syntax error also the line, with a caret under the
/// column.
fn pointed(text: &str, e: &PolicyError) -> String {
    match e {
        PolicyError::Syntax { line, column, .. } if *line > 0 => {
            let shown = text.lines().nth(line - 1).unwrap_or_default();
            let pad: String = shown
                .chars()
                .take(column.saturating_sub(1))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            format!("{e}\n  {shown}\n  {pad}^")
        }
        _ => e.to_string(),
    }
}

/// The canonical JSON, pretty (it reads back as YAML or JSON).
fn pretty(canonical: &str) -> String {
    serde_json::from_str::<Value>(canonical)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| canonical.to_owned())
}

fn policy_json(p: &pb::VersionedPolicy) -> Value {
    json!({
        "prefix": p.prefix,
        "policy": serde_json::from_str::<Value>(&p.policy).unwrap_or(Value::Null),
        "version": version_text(&p.version),
        "exists": p.exists,
    })
}

/// The policy, then `# version N` (a YAML comment, so the text reads back).
fn policy_text(p: &pb::VersionedPolicy) -> String {
    if p.exists {
        format!(
            "{}\n# policy for {}, version {}",
            pretty(&p.policy),
            p.prefix,
            version_text(&p.version)
        )
    } else {
        format!("# no policy is stored for {}", p.prefix)
    }
}

impl PolicyCommand {
    fn controller(&self) -> Option<&ControllerArgs> {
        match self {
            Self::List { controller, .. }
            | Self::Get { controller, .. }
            | Self::Set { controller, .. }
            | Self::Update { controller, .. }
            | Self::Delete { controller, .. }
            | Self::Watch { controller, .. }
            | Self::Explain { controller, .. } => Some(controller),
            Self::Check { .. } => None,
        }
    }

    fn writes(&self) -> bool {
        matches!(
            self,
            Self::Set { .. } | Self::Update { .. } | Self::Delete { .. }
        )
    }
}

/// `policy check`, which needs no controller: `None` for the others.
pub fn run_offline(cmd: &PolicyCommand) -> Result<Option<String>> {
    let PolicyCommand::Check { input, out } = cmd else {
        return Ok(None);
    };
    let (_, policy) = input.read()?;
    let canonical = policy.canonical();
    Ok(Some(render(out.output, &pretty(&canonical), || {
        serde_json::from_str(&canonical).unwrap_or(Value::Null)
    })))
}

/// Runs a controller command, printing as it goes.
pub async fn run(cmd: &PolicyCommand) -> Result<()> {
    let Some(args) = cmd.controller() else {
        bail!("not a controller command");
    };
    let target = args.target(cmd.writes())?;
    let mut api = PolicyAdminClient::new(connect(&target).await?);
    match cmd {
        PolicyCommand::List { out, .. } => {
            let all = api
                .list_policies(pb::ListPoliciesRequest {})
                .await
                .context("list")?
                .into_inner()
                .policies;
            let mut text = String::new();
            for p in &all {
                let _ = writeln!(text, "{}\tversion {}", p.prefix, version_text(&p.version));
            }
            emit(&render(out.output, &text.trim_end(), || {
                Value::Array(all.iter().map(policy_json).collect())
            }))
        }
        PolicyCommand::Get { prefix, out, .. } => {
            let p = api
                .get_policy(pb::GetPolicyRequest {
                    prefix: prefix.clone(),
                })
                .await
                .context("get")?
                .into_inner();
            emit(&render(out.output, &policy_text(&p), || policy_json(&p)))
        }
        PolicyCommand::Set {
            prefix, input, out, ..
        } => {
            let (text, _) = input.read()?;
            let p = set(&mut api, &target, prefix, &text).await?;
            emit(&render(out.output, &policy_text(&p), || policy_json(&p)))
        }
        PolicyCommand::Update {
            prefix,
            input,
            version,
            out,
            ..
        } => {
            let (text, _) = input.read()?;
            let p = api
                .update_policy(authorized(
                    &target,
                    pb::UpdatePolicyRequest {
                        prefix: prefix.clone(),
                        policy: text,
                        expected_version: version.clone().into_bytes(),
                    },
                )?)
                .await
                .context("update")?
                .into_inner();
            emit(&render(out.output, &policy_text(&p), || policy_json(&p)))
        }
        PolicyCommand::Delete {
            prefix, version, ..
        } => {
            api.delete_policy(authorized(
                &target,
                pb::DeletePolicyRequest {
                    prefix: prefix.clone(),
                    expected_version: version.clone().unwrap_or_default().into_bytes(),
                },
            )?)
            .await
            .context("delete")?;
            emit(&format!("deleted the policy for {prefix}"))
        }
        PolicyCommand::Watch {
            prefix, count, out, ..
        } => watch(&mut api, prefix, *count, out.output).await,
        PolicyCommand::Explain { service, out, .. } => {
            let e = api
                .explain_policy(pb::ExplainPolicyRequest {
                    service: service.clone(),
                })
                .await
                .context("explain")?
                .into_inner();
            emit(&render(out.output, &explain_text(&e), || explain_json(&e)))
        }
        PolicyCommand::Check { .. } => bail!("check needs no controller"),
    }
}

async fn watch(
    api: &mut PolicyAdminClient<Channel>,
    prefix: &str,
    count: Option<usize>,
    output: Output,
) -> Result<()> {
    let mut updates = api
        .watch_policy(pb::WatchPolicyRequest {
            prefix: prefix.to_owned(),
        })
        .await
        .context("watch")?
        .into_inner();
    print_updates(&mut updates, count, |p| {
        render(output, &policy_text(p), || policy_json(p))
    })
    .await
}

/// Create, or replace at the current version; a concurrent change between
/// the read and the write is retried a few times.
async fn set(
    api: &mut PolicyAdminClient<Channel>,
    target: &Target,
    prefix: &str,
    policy: &str,
) -> Result<pb::VersionedPolicy> {
    for _ in 0..5 {
        let current = api
            .get_policy(pb::GetPolicyRequest {
                prefix: prefix.to_owned(),
            })
            .await;
        let written = match current {
            Err(s) if s.code() == Code::NotFound => {
                api.create_policy(authorized(
                    target,
                    pb::CreatePolicyRequest {
                        prefix: prefix.to_owned(),
                        policy: policy.to_owned(),
                    },
                )?)
                .await
            }
            Err(s) => return Err(anyhow::Error::new(s).context("set")),
            Ok(current) => {
                api.update_policy(authorized(
                    target,
                    pb::UpdatePolicyRequest {
                        prefix: prefix.to_owned(),
                        policy: policy.to_owned(),
                        expected_version: current.into_inner().version,
                    },
                )?)
                .await
            }
        };
        match written {
            Ok(p) => return Ok(p.into_inner()),
            Err(s) if matches!(s.code(), Code::FailedPrecondition | Code::AlreadyExists) => {}
            Err(s) => return Err(anyhow::Error::new(s).context("set")),
        }
    }
    bail!("set: the policy kept changing underneath; try again")
}

/// `explain`: the applying policy in one line, each prefix looked up, and
/// the policy itself.
fn explain_text(e: &pb::ExplainPolicyResponse) -> String {
    let chosen = e.chosen.as_ref().filter(|c| c.exists);
    let mut text = match chosen {
        Some(c) => format!(
            "{}: the policy for {} (version {}) applies",
            e.service,
            c.prefix,
            version_text(&c.version)
        ),
        None => format!(
            "{}: no policy is stored for it or a prefix of it; the agents' configured defaults apply",
            e.service
        ),
    };
    let mut after_chosen = false;
    for c in &e.candidates {
        let state = if c.chosen {
            after_chosen = true;
            format!("version {}  <- applies", version_text(&c.version))
        } else if c.stored && after_chosen {
            format!(
                "version {}  (less specific: not used)",
                version_text(&c.version)
            )
        } else {
            "no policy".to_owned()
        };
        let _ = write!(text, "\n  {:<32} {state}", c.prefix);
    }
    if let Some(c) = chosen {
        let _ = write!(text, "\n{}", pretty(&c.policy));
    }
    text
}

fn explain_json(e: &pb::ExplainPolicyResponse) -> Value {
    json!({
        "service": e.service,
        "chosen": e.chosen.as_ref().filter(|c| c.exists).map(policy_json),
        "candidates": e.candidates.iter().map(|c| json!({
            "prefix": c.prefix,
            "stored": c.stored,
            "version": version_text(&c.version),
            "chosen": c.chosen,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syntax_error_points_at_its_line_and_column() {
        let text = "timeouts:\n  total: 2s\n  bogus: 1\n";
        let e = ServicePolicy::parse(text).unwrap_err();
        let shown = pointed(text, &e);
        assert!(shown.contains("line 3, column 3"), "{shown}");
        assert!(shown.contains("\n    bogus: 1\n    ^"), "{shown}");
    }
}
