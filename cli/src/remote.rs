//! The commands that talk to a controller over gRPC: the dtab admin API
//! (`ecsmeshctl dtab list|get|set|update|delete|watch|delegate|resolve`)
//! and `ecsmeshctl status`.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use ecsmesh_dtab::{Dtab, Path};
use ecsmesh_proto::v1 as pb;
use ecsmesh_tls::{ClientTls, HttpsConnector, ServerName, TlsFiles};
use pb::dtab_admin_client::DtabAdminClient;
use serde_json::{Value, json};
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::dtab::{DtabCommand, Output, OutputArg, read, render};
use crate::output::emit;

/// Where the controller is, and the token writes present. Each setting
/// not given here comes from ecsmeshctl's settings file ([`crate::config`]).
#[derive(Debug, Default, Args)]
pub struct ControllerArgs {
    /// The controller's gRPC address [default: the settings file's
    /// `controller`, else http://127.0.0.1:4321].
    #[arg(long, env = "ECSMESH_CONTROLLER")]
    pub controller: Option<String>,
    /// Bearer token for writes (the controller's --admin-token-file)
    /// [default: $ECSMESH_TOKEN, then the file $ECSMESH_TOKEN_FILE names,
    /// then the settings file's `token` or `token_file`].
    #[arg(long, conflicts_with = "token_file")]
    pub token: Option<String>,
    /// A file holding the bearer token for writes.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// ecsmeshctl's settings file [default:
    /// $XDG_CONFIG_HOME/ecsmesh/config.yaml, else ~/.config/ecsmesh/config.yaml].
    #[arg(long = "config", env = crate::config::CONFIG_ENV)]
    pub config: Option<PathBuf>,
    /// The CA bundle the controller's certificate is verified against;
    /// TLS is used with it, or with an https:// address.
    #[arg(long = "tls-ca", env = "ECSMESH_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// A client certificate to present (an operator's, such as the admin.pem
    /// `certs init` writes), with --tls-key.
    #[arg(long = "tls-cert", env = "ECSMESH_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long = "tls-key", env = "ECSMESH_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The name the controller's certificate must carry [default: the
    /// address's host].
    #[arg(long = "tls-server-name", env = "ECSMESH_CONTROLLER_SERVER_NAME")]
    pub tls_server_name: Option<String>,
}

/// [`ControllerArgs`] with the settings file and the token looked up.
#[derive(Debug)]
pub(crate) struct Target {
    controller: String,
    /// Looked up for writes only: reads need no token file.
    token: Option<String>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_server_name: Option<String>,
}

impl ControllerArgs {
    /// Flags and environment first, then the settings file, then defaults.
    pub(crate) fn target(&self, writes: bool) -> Result<Target> {
        let env = |k: &str| std::env::var(k).ok();
        let file = crate::config::load(self.config.as_deref(), &env)?;
        let token = if writes {
            crate::config::token(
                self.token.as_deref(),
                self.token_file.as_deref(),
                &env,
                file.as_ref(),
            )?
        } else {
            None
        };
        let conf = file.map(|f| f.config).unwrap_or_default();
        // The certificate and key go together: one from a flag and the
        // other from the file would be a mismatched pair.
        let (tls_cert, tls_key) = match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => (Some(c.clone()), Some(k.clone())),
            _ => (conf.tls.cert, conf.tls.key),
        };
        if tls_cert.is_some() != tls_key.is_some() {
            bail!("the settings file's tls.cert and tls.key go together");
        }
        Ok(Target {
            controller: self
                .controller
                .clone()
                .or(conf.controller)
                .unwrap_or_else(|| "http://127.0.0.1:4321".to_owned()),
            token,
            tls_ca: self.tls_ca.clone().or(conf.tls.ca),
            tls_cert,
            tls_key,
            tls_server_name: self.tls_server_name.clone().or(conf.tls.server_name),
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// List the controller's namespaces.
    List {
        #[command(flatten)]
        controller: ControllerArgs,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Print a namespace's stored dtab, then a comment line with its version.
    Get {
        namespace: String,
        #[command(flatten)]
        controller: ControllerArgs,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Store a namespace's dtab, creating the namespace or replacing its dtab.
    Set {
        namespace: String,
        /// The dtab (or -f).
        #[arg(required_unless_present = "file")]
        dtab: Option<String>,
        #[command(flatten)]
        file: DtabFile,
        #[command(flatten)]
        controller: ControllerArgs,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Replace a namespace's dtab only if it is still at --version.
    Update {
        namespace: String,
        /// The dtab (or -f).
        #[arg(required_unless_present = "file")]
        dtab: Option<String>,
        #[command(flatten)]
        file: DtabFile,
        /// The version `get` printed.
        #[arg(long)]
        version: String,
        #[command(flatten)]
        controller: ControllerArgs,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Delete a namespace's stored dtab (only at --version, when given).
    Delete {
        namespace: String,
        #[arg(long)]
        version: Option<String>,
        #[command(flatten)]
        controller: ControllerArgs,
    },
    /// Print a namespace's stored dtab now and at every change.
    Watch {
        namespace: String,
        /// Stop after this many updates (the first state included).
        #[arg(long)]
        count: Option<usize>,
        #[command(flatten)]
        controller: ControllerArgs,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Bind a path as an agent would, and print the endpoints it reaches.
    Resolve {
        path: String,
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
        /// An extra dtab appended, as an l5d-dtab header would.
        #[arg(long)]
        extra: Option<String>,
        #[command(flatten)]
        controller: ControllerArgs,
        #[command(flatten)]
        out: OutputArg,
    },
}

/// `-f FILE` / `-f -`: the dtab from a file or stdin, for dtabs too long for
/// one command-line argument (Linux caps one at 128 KiB).
#[derive(Debug, Args)]
pub struct DtabFile {
    /// Read the dtab from FILE, or from stdin with `-`.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        conflicts_with = "dtab"
    )]
    pub file: Option<PathBuf>,
}

impl DtabFile {
    /// The dtab text: the positional argument, or the file's (stdin's) content.
    fn text(&self, positional: Option<&str>) -> Result<String> {
        input_text("dtab", positional, self.file.as_deref())
    }
}

/// A document given on the command line, or in a file (`-` for stdin).
pub(crate) fn input_text(
    what: &str,
    positional: Option<&str>,
    file: Option<&std::path::Path>,
) -> Result<String> {
    match (positional, file) {
        (Some(d), _) => Ok(d.to_owned()),
        (None, Some(p)) if p.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .with_context(|| format!("reading the {what} from stdin"))?;
            Ok(text)
        }
        (None, Some(p)) => std::fs::read_to_string(p)
            .with_context(|| format!("reading the {what} from {}", p.display())),
        // clap requires one of the two.
        (None, None) => bail!("give a {what}, or -f FILE"),
    }
}

/// `ecsmeshctl status`: agents and their convergence.
#[derive(Debug, Args)]
pub struct StatusCommand {
    #[command(flatten)]
    controller: ControllerArgs,
    #[command(flatten)]
    out: OutputArg,
}

pub(crate) async fn connect(args: &Target) -> Result<Channel> {
    let url = if args.controller.contains("://") {
        args.controller.clone()
    } else if args.tls_ca.is_some() {
        format!("https://{}", args.controller)
    } else {
        format!("http://{}", args.controller)
    };
    let endpoint = Channel::from_shared(url.clone())
        .with_context(|| format!("invalid controller address {url}"))?;
    let connected = if url.starts_with("https://") {
        let files = TlsFiles {
            ca: Some(
                args.tls_ca
                    .clone()
                    .context("an https:// controller needs --tls-ca (the mesh CA bundle)")?,
            ),
            cert: args.tls_cert.clone(),
            key: args.tls_key.clone(),
        };
        let tls = ClientTls::new(&files, ecsmesh_tls::ALPN_H2)?;
        let name = match &args.tls_server_name {
            Some(n) => n.clone(),
            None => endpoint
                .uri()
                .host()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_owned(),
        };
        let name = ServerName::try_from(name.clone())
            .with_context(|| format!("invalid TLS server name {name:?}"))?;
        endpoint
            .connect_with_connector(HttpsConnector::new(tls, name, None))
            .await
    } else {
        endpoint.connect().await
    };
    connected.with_context(|| format!("connecting to the controller at {url}"))
}

pub(crate) fn authorized<T>(args: &Target, msg: T) -> Result<Request<T>> {
    let mut req = Request::new(msg);
    if let Some(token) = &args.token {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}")
                .parse()
                .context("the token is not a valid header value")?,
        );
    }
    Ok(req)
}

pub(crate) fn version_text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

fn dtab_json(d: &pb::VersionedDtab) -> Value {
    json!({
        "namespace": d.namespace,
        "dtab": d.dtab,
        "version": version_text(&d.version),
        "effective_dtab": d.effective_dtab,
        "exists": d.exists,
    })
}

/// The dtab, then `# version N` (a dtab comment, so the text reads back).
fn dtab_text(d: &pb::VersionedDtab) -> String {
    if d.exists {
        format!("{}\n# version {}", d.dtab, version_text(&d.version))
    } else {
        format!("# namespace {} has no stored dtab", d.namespace)
    }
}

/// Validates a dtab locally first, so the error points into the input.
fn checked_dtab(text: &str) -> Result<String> {
    read("dtab", text, Dtab::read).map(|d| d.to_string())
}

/// Runs a controller command, printing as it goes.
pub async fn run_dtab(cmd: &DtabCommand) -> Result<()> {
    match cmd {
        DtabCommand::Delegate {
            dtab: None,
            path,
            explain,
            namespace,
            extra,
            controller,
            out,
        } => {
            let path = read("path", path, Path::read)?.to_string();
            let mut api = DtabAdminClient::new(connect(&controller.target(false)?).await?);
            let resp = api
                .delegate(pb::DelegateRequest {
                    namespace: namespace.clone().unwrap_or_else(|| "default".to_owned()),
                    path,
                    extra_dtab: extra.clone().unwrap_or_default(),
                })
                .await
                .context("delegate")?
                .into_inner();
            let tree: Value =
                serde_json::from_str(&resp.tree_json).context("the controller's tree")?;
            emit(&match (explain, out.output) {
                (true, Output::Text) => serde_json::to_string_pretty(&tree)?,
                (true, Output::Json) => tree.to_string(),
                (false, Output::Text) => resp.result,
                (false, Output::Json) => json!({ "result": resp.result, "tree": tree }).to_string(),
            })
        }
        DtabCommand::Remote(remote) => run_remote(remote).await,
        _ => bail!("not a controller command"),
    }
}

impl RemoteCommand {
    fn controller(&self) -> &ControllerArgs {
        match self {
            Self::List { controller, .. }
            | Self::Get { controller, .. }
            | Self::Set { controller, .. }
            | Self::Update { controller, .. }
            | Self::Delete { controller, .. }
            | Self::Watch { controller, .. }
            | Self::Resolve { controller, .. } => controller,
        }
    }

    fn writes(&self) -> bool {
        matches!(
            self,
            Self::Set { .. } | Self::Update { .. } | Self::Delete { .. }
        )
    }
}

async fn run_remote(cmd: &RemoteCommand) -> Result<()> {
    let target = cmd.controller().target(cmd.writes())?;
    let controller = &target;
    match cmd {
        RemoteCommand::List { out, .. } => {
            let mut api = DtabAdminClient::new(connect(controller).await?);
            let ns = api
                .list_namespaces(pb::ListNamespacesRequest {})
                .await
                .context("list")?
                .into_inner()
                .namespaces;
            emit(&render(out.output, &ns.join("\n"), || json!(ns)))
        }
        RemoteCommand::Get { namespace, out, .. } => {
            let mut api = DtabAdminClient::new(connect(controller).await?);
            let d = api
                .get_dtab(pb::GetDtabRequest {
                    namespace: namespace.clone(),
                })
                .await
                .context("get")?
                .into_inner();
            emit(&render(out.output, &dtab_text(&d), || dtab_json(&d)))
        }
        RemoteCommand::Set {
            namespace,
            dtab,
            file,
            out,
            ..
        } => {
            let dtab = checked_dtab(&file.text(dtab.as_deref())?)?;
            let mut api = DtabAdminClient::new(connect(controller).await?);
            let d = set(&mut api, controller, namespace, &dtab).await?;
            emit(&render(out.output, &dtab_text(&d), || dtab_json(&d)))
        }
        RemoteCommand::Update {
            namespace,
            dtab,
            file,
            version,
            out,
            ..
        } => {
            let dtab = checked_dtab(&file.text(dtab.as_deref())?)?;
            let size = dtab.len();
            let mut api = DtabAdminClient::new(connect(controller).await?);
            let d = api
                .update_dtab(authorized(
                    controller,
                    pb::UpdateDtabRequest {
                        namespace: namespace.clone(),
                        dtab,
                        expected_version: version.clone().into_bytes(),
                    },
                )?)
                .await
                .map_err(|s| write_failed(s, "update", size))?
                .into_inner();
            emit(&render(out.output, &dtab_text(&d), || dtab_json(&d)))
        }
        RemoteCommand::Delete {
            namespace, version, ..
        } => {
            let mut api = DtabAdminClient::new(connect(controller).await?);
            api.delete_dtab(authorized(
                controller,
                pb::DeleteDtabRequest {
                    namespace: namespace.clone(),
                    expected_version: version.clone().unwrap_or_default().into_bytes(),
                },
            )?)
            .await
            .context("delete")?;
            emit(&format!("deleted {namespace}"))
        }
        RemoteCommand::Watch {
            namespace,
            count,
            out,
            ..
        } => watch(namespace, *count, controller, out.output).await,
        RemoteCommand::Resolve {
            path,
            namespace,
            extra,
            out,
            ..
        } => resolve(path, namespace, extra.as_deref(), controller, out.output).await,
    }
}

/// Prints the namespace's dtab now and at every change (`count` of them at most).
async fn watch(
    namespace: &str,
    count: Option<usize>,
    controller: &Target,
    output: Output,
) -> Result<()> {
    let mut api = DtabAdminClient::new(connect(controller).await?);
    let mut updates = api
        .watch_dtab(pb::WatchDtabRequest {
            namespace: namespace.to_owned(),
        })
        .await
        .context("watch")?
        .into_inner();
    print_updates(&mut updates, count, |d| {
        render(output, &dtab_text(d), || dtab_json(d))
    })
    .await
}

/// Prints each message of a watch stream as `show` renders it, until the
/// stream ends or `count` were printed.
pub(crate) async fn print_updates<T>(
    updates: &mut tonic::Streaming<T>,
    count: Option<usize>,
    show: impl Fn(&T) -> String,
) -> Result<()> {
    let mut seen = 0;
    while count.is_none_or(|c| seen < c) {
        let Some(m) = updates.message().await.context("watch")? else {
            break;
        };
        seen += 1;
        emit(&show(&m))?;
    }
    Ok(())
}

async fn resolve(
    path: &str,
    namespace: &str,
    extra: Option<&str>,
    controller: &Target,
    output: Output,
) -> Result<()> {
    let path = read("path", path, Path::read)?.to_string();
    let mut api = DtabAdminClient::new(connect(controller).await?);
    let r = api
        .resolve(pb::ResolveRequest {
            namespace: namespace.to_owned(),
            path,
            extra_dtab: extra.unwrap_or_default().to_owned(),
        })
        .await
        .context("resolve")?
        .into_inner();
    let endpoints: Vec<(String, String)> = r
        .endpoints
        .iter()
        .filter_map(|e| {
            let addr = e.endpoint.as_ref()?.addr.as_ref()?;
            Some((e.set.clone(), format!("{}:{}", addr.ip, addr.port)))
        })
        .collect();
    let mut text = r.bound.clone();
    for (set, addr) in &endpoints {
        let _ = write!(text, "\n{addr}\t{set}");
    }
    emit(&render(output, &text, || {
        json!({
            "bound": r.bound,
            "endpoints": endpoints.iter().map(|(set, addr)| json!({"set": set, "addr": addr})).collect::<Vec<_>>(),
        })
    }))
}

/// A write's error. A dtab so large that the controller does not even
/// decode the request gets tonic's bare `OUT_OF_RANGE`, which reads like a
/// transport failure: say what it means.
fn write_failed(status: tonic::Status, what: &'static str, dtab_bytes: usize) -> anyhow::Error {
    let too_large =
        status.code() == Code::OutOfRange && status.message().contains("message length too large");
    let err = anyhow::Error::new(status).context(what);
    if too_large {
        err.context(format!(
            "the controller refused the dtab ({dtab_bytes} bytes) as too large (see its --max-dtab-bytes)"
        ))
    } else {
        err
    }
}

/// Create, or replace at the current version; a concurrent change between
/// the read and the write is retried a few times.
async fn set(
    api: &mut DtabAdminClient<Channel>,
    controller: &Target,
    namespace: &str,
    dtab: &str,
) -> Result<pb::VersionedDtab> {
    for _ in 0..5 {
        let current = api
            .get_dtab(pb::GetDtabRequest {
                namespace: namespace.to_owned(),
            })
            .await;
        let written = match current {
            Err(s) if s.code() == Code::NotFound => {
                api.create_dtab(authorized(
                    controller,
                    pb::CreateDtabRequest {
                        namespace: namespace.to_owned(),
                        dtab: dtab.to_owned(),
                    },
                )?)
                .await
            }
            Err(s) => return Err(write_failed(s, "set", dtab.len())),
            Ok(current) => {
                api.update_dtab(authorized(
                    controller,
                    pb::UpdateDtabRequest {
                        namespace: namespace.to_owned(),
                        dtab: dtab.to_owned(),
                        expected_version: current.into_inner().version,
                    },
                )?)
                .await
            }
        };
        match written {
            Ok(d) => return Ok(d.into_inner()),
            Err(s) if matches!(s.code(), Code::FailedPrecondition | Code::AlreadyExists) => {}
            Err(s) => return Err(write_failed(s, "set", dtab.len())),
        }
    }
    bail!("set: the namespace kept changing underneath; try again")
}

pub async fn status(cmd: &StatusCommand) -> Result<()> {
    let r = list_agents(&cmd.controller).await?;
    emit(&match cmd.out.output {
        Output::Json => agents_json(&r).to_string(),
        Output::Text => agents_text(&r),
    })
}

/// The controller's agents and the version they should converge on (also
/// what `deploy status` asks each controller).
pub(crate) async fn list_agents(controller: &ControllerArgs) -> Result<pb::ListAgentsResponse> {
    let channel = connect(&controller.target(false)?).await?;
    Ok(pb::mesh_status_client::MeshStatusClient::new(channel)
        .list_agents(pb::ListAgentsRequest {})
        .await
        .context("status")?
        .into_inner())
}

/// `status -o json`: the version, and each agent with whether it converged.
pub(crate) fn agents_json(r: &pb::ListAgentsResponse) -> Value {
    let converged = r
        .agents
        .iter()
        .filter(|a| a.acked_version == r.version)
        .count();
    let agents: Vec<Value> = r
        .agents
        .iter()
        .map(|a| {
            json!({
                "instance_id": a.instance_id, "host_ip": a.host_ip,
                "availability_zone": a.availability_zone, "namespace": a.namespace,
                "agent_version": a.agent_version, "cluster": a.cluster,
                "sent_version": a.sent_version, "acked_version": a.acked_version,
                "converged": a.acked_version == r.version, "last_nack": a.last_nack,
            })
        })
        .collect();
    json!({ "version": r.version, "epoch": r.epoch, "converged": converged, "agents": agents })
}

/// `status`: a summary line, then one line per agent.
pub(crate) fn agents_text(r: &pb::ListAgentsResponse) -> String {
    let converged = r
        .agents
        .iter()
        .filter(|a| a.acked_version == r.version)
        .count();
    let mut text = format!(
        "mesh version {} (epoch {}): {converged}/{} agents converged\n",
        r.version,
        r.epoch,
        r.agents.len()
    );
    let _ = write!(
        text,
        "{:<22} {:<15} {:<10} {:>6} {:>6}  state",
        "INSTANCE", "HOST IP", "NAMESPACE", "SENT", "ACKED"
    );
    for a in &r.agents {
        let state = if !a.last_nack.is_empty() {
            format!("rejected: {}", a.last_nack)
        } else if a.acked_version == r.version {
            "converged".to_owned()
        } else {
            format!("{} behind", r.version.saturating_sub(a.acked_version))
        };
        let _ = write!(
            text,
            "\n{:<22} {:<15} {:<10} {:>6} {:>6}  {state}",
            a.instance_id, a.host_ip, a.namespace, a.sent_version, a.acked_version
        );
    }
    text
}
