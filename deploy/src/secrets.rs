//! The mesh's secrets, which `up` manages unless `--insecure`: SecureString
//! parameters under [`DeployConfig::managed_prefix`] tagged
//! `ecsmesh:owner=<cluster>` (the TLS material unless the user brings their
//! own with `--tls-ssm-prefix`, and the admin and agent tokens), and the
//! operator's half in a local directory (the CA and its key, the admin
//! certificate and token, an ecsmeshctl settings file).
//!
//! Created only when missing, never overwritten: a second `up` keeps them.
//! The local files are written before the parameters, so an `up` cut short
//! leaves the operator's material behind, and the next `up` uploads what is
//! still missing from it (or refuses, when it does not match).
//!
//! A [`Resource`] like every module: observe (which parameters exist and
//! are ours; after an `up` cut short, whether the operator's files match
//! them), plan (`plan_secrets`, pure: generate, complete from the
//! operator's files, or keep), apply, destroy (the parameters that are
//! ours). Its output, what it wrote for the operator, goes to the module
//! `operator`, which checks the rest of the directory and writes the
//! settings file once the controller's address is known.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use aws_sdk_ssm as ssm;
use ecsmesh_tls::generate::{CA_CERT, CA_KEY, MeshCertsSpec, write_file, write_mesh_certs};

use crate::config::{
    ADMIN_TOKEN_PARAMETER, AGENT_TOKEN_PARAMETER, DeployConfig, OWNER_TAG, TLS_ADMIN_IDENTITY,
    TLS_PARAMETERS,
};
use crate::error::{DeployError, Result};
use crate::ops::Deployer;
use crate::resource::{Kind, Resource};
use crate::{Action, Step};

/// Each TLS parameter and the `certs init` file (one agent) it is read from.
const TLS_SOURCES: [(&str, &str); 5] = [
    ("ca.pem", CA_CERT),
    ("agent.pem", "agent-1.pem"),
    ("agent-key.pem", "agent-1-key.pem"),
    ("controller.pem", "controller.pem"),
    ("controller-key.pem", "controller-key.pem"),
];

/// The operator's certificate and key, as `certs init` names them.
pub(crate) const ADMIN_CERT: &str = "admin.pem";
pub(crate) const ADMIN_KEY: &str = "admin-key.pem";

/// Bytes of randomness in a token (written as hex: twice as many characters).
const TOKEN_BYTES: usize = 32;

/// The step kind of this module's report lines.
const PARAMETER: &str = "ssm-parameter";

/// A parameter under the managed prefix that exists.
#[derive(Debug)]
struct Existing {
    /// Tagged `ecsmesh:owner=<cluster>`: ours to delete.
    owned: bool,
}

/// The managed parameters as they are.
#[derive(Debug, Default)]
pub(crate) struct ObservedSecrets {
    /// Those that exist, by name.
    existing: BTreeMap<String, Existing>,
    /// When only some of the TLS parameters exist (an `up` cut short):
    /// each of those, the operator's file it came from, and whether that
    /// file holds the same value.
    partial_tls: Vec<(String, &'static str, bool)>,
}

/// Where the TLS parameters come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TlsPlan {
    /// All there.
    Keep,
    /// None there: generated as `certs init` makes them.
    Generate,
    /// Some there: the rest from the operator's files they came from.
    FromDir,
}

/// What a new parameter holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// The operator's file of that name (generated, or from an earlier `up`).
    TlsFile(&'static str),
    AdminToken,
    AgentToken,
}

/// What `up` does to one parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ParameterPlan {
    Keep { owned: bool },
    Create(Source),
}

/// What `up` does to the secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SecretsPlan {
    /// `None`: the user's own TLS (`--tls-ssm-prefix`).
    tls: Option<TlsPlan>,
    /// Each managed parameter, in order: the TLS ones, the admin token,
    /// the agent token.
    parameters: Vec<(String, ParameterPlan)>,
}

impl SecretsPlan {
    /// The operator's files this plan writes.
    fn written(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        if self.tls == Some(TlsPlan::Generate) {
            out.extend([CA_CERT, CA_KEY, ADMIN_CERT, ADMIN_KEY].map(str::to_owned));
        }
        if self
            .parameters
            .iter()
            .any(|(_, p)| *p == ParameterPlan::Create(Source::AdminToken))
        {
            out.insert(ADMIN_TOKEN_PARAMETER.to_owned());
        }
        out
    }
}

/// The TLS parameters' names under the managed prefix, with their files.
fn tls_names(cfg: &DeployConfig) -> Vec<(String, &'static str)> {
    let prefix = cfg.managed_prefix();
    TLS_SOURCES
        .iter()
        .map(|(param, file)| (format!("{prefix}/tls/{param}"), *file))
        .collect()
}

/// What `up` does to the secrets, from what exists (no I/O); `None` with
/// `--insecure`. Some of the TLS parameters without the operator's files
/// they came from is an error: the rest may only come from those, or the
/// mesh would mix two CAs' certificates.
pub(crate) fn plan_secrets(
    cfg: &DeployConfig,
    have: &ObservedSecrets,
) -> Result<Option<SecretsPlan>> {
    if !cfg.managed_tokens() {
        return Ok(None);
    }
    let prefix = cfg.managed_prefix();
    let keep_or = |name: &str, source: Source| match have.existing.get(name) {
        Some(e) => ParameterPlan::Keep { owned: e.owned },
        None => ParameterPlan::Create(source),
    };
    let mut parameters = Vec::new();
    let tls = if cfg.managed_tls() {
        let names = tls_names(cfg);
        let present: Vec<&str> = names
            .iter()
            .filter(|(n, _)| have.existing.contains_key(n))
            .map(|(n, _)| n.as_str())
            .collect();
        let tls = if present.len() == names.len() {
            TlsPlan::Keep
        } else if present.is_empty() {
            TlsPlan::Generate
        } else {
            if let Some((_, file, _)) = have.partial_tls.iter().find(|(_, _, same)| !same) {
                let dir = cfg
                    .secrets_dir
                    .as_deref()
                    .map_or_else(String::new, |d| d.display().to_string());
                return Err(DeployError::State(format!(
                    "SSM holds only some of the mesh's TLS parameters ({}), and {dir} does not \
                     hold the files they came from ({file} differs or is missing): delete the \
                     ones under {prefix}/tls (they are the cluster's own, `down` removes them) \
                     or put the rest by hand",
                    present.join(", "),
                )));
            }
            TlsPlan::FromDir
        };
        for (name, file) in names {
            let p = keep_or(&name, Source::TlsFile(file));
            parameters.push((name, p));
        }
        Some(tls)
    } else {
        None
    };
    for (param, source) in [
        (ADMIN_TOKEN_PARAMETER, Source::AdminToken),
        (AGENT_TOKEN_PARAMETER, Source::AgentToken),
    ] {
        let name = format!("{prefix}/{param}");
        let p = keep_or(&name, source);
        parameters.push((name, p));
    }
    Ok(Some(SecretsPlan { tls, parameters }))
}

/// The mesh's secrets in SSM (unless `--insecure`).
pub(crate) struct Secrets;

impl Resource for Secrets {
    const KIND: Kind = Kind::Secrets;
    type Wanted = ();
    type Observed = ObservedSecrets;
    /// `None`: `--insecure`, nothing to do.
    type Plan = Option<SecretsPlan>;
    /// The operator's files written (or, dry, to be written) this run;
    /// `None` with `--insecure`.
    type Output = Option<BTreeSet<String>>;

    async fn observe(d: &Deployer, (): &()) -> Result<ObservedSecrets> {
        let cfg = &d.cfg;
        if !cfg.managed_tokens() {
            return Ok(ObservedSecrets::default());
        }
        let existing = d
            .existing_parameters(&Deployer::all_managed_parameters(cfg))
            .await?;
        let mut partial_tls = Vec::new();
        let names = tls_names(cfg);
        let present = names
            .iter()
            .filter(|(n, _)| existing.contains_key(n))
            .count();
        if cfg.managed_tls() && present > 0 && present < names.len() {
            let dir = d.secrets_dir()?;
            for (name, file) in names {
                if existing.contains_key(&name) {
                    let local = std::fs::read_to_string(dir.join(file)).ok();
                    let same = local.as_deref() == Some(d.parameter_value(&name).await?.as_str());
                    partial_tls.push((name, file, same));
                }
            }
        }
        Ok(ObservedSecrets {
            existing,
            partial_tls,
        })
    }

    fn plan(cfg: &DeployConfig, (): &(), have: &ObservedSecrets) -> Result<Self::Plan> {
        plan_secrets(cfg, have)
    }

    async fn apply(
        d: &Deployer,
        dry_run: bool,
        (): (),
        _: ObservedSecrets,
        plan: Self::Plan,
        steps: &mut Vec<Step>,
    ) -> Result<Self::Output> {
        let Some(plan) = plan else {
            return Ok(None);
        };
        d.apply_secrets(dry_run, &plan, steps).await?;
        Ok(Some(plan.written()))
    }

    async fn destroy(d: &Deployer, dry_run: bool, steps: &mut Vec<Step>) -> Result<()> {
        d.destroy_secrets(dry_run, steps).await
    }
}

impl Deployer {
    /// Every parameter `up` may own, whatever this run's flags (as `down`
    /// removes every service role).
    fn all_managed_parameters(cfg: &DeployConfig) -> Vec<String> {
        let prefix = cfg.managed_prefix();
        TLS_PARAMETERS
            .iter()
            .map(|n| format!("{prefix}/tls/{n}"))
            .chain([ADMIN_TOKEN_PARAMETER, AGENT_TOKEN_PARAMETER].map(|n| format!("{prefix}/{n}")))
            .collect()
    }

    /// Which of `names` exist, and whether each is ours.
    async fn existing_parameters(&self, names: &[String]) -> Result<BTreeMap<String, Existing>> {
        let mut found = BTreeMap::new();
        // GetParameters takes at most 10 names.
        for batch in names.chunks(10) {
            let out = self
                .ssm
                .get_parameters()
                .set_names(Some(batch.to_vec()))
                .send()
                .await
                .map_err(|e| DeployError::aws("GetParameters", batch.join(","), &e))?;
            for p in out.parameters() {
                let Some(name) = p.name() else { continue };
                let tags = self
                    .ssm
                    .list_tags_for_resource()
                    .resource_type(ssm::types::ResourceTypeForTagging::Parameter)
                    .resource_id(name)
                    .send()
                    .await
                    .map_err(|e| DeployError::aws("ListTagsForResource", name, &e))?;
                let owned = tags
                    .tag_list()
                    .iter()
                    .any(|t| t.key() == OWNER_TAG && t.value() == self.cfg.owner());
                found.insert(name.to_owned(), Existing { owned });
            }
        }
        Ok(found)
    }

    /// A parameter's decrypted value.
    pub(crate) async fn parameter_value(&self, name: &str) -> Result<String> {
        let out = self
            .ssm
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| DeployError::aws("GetParameter", name, &e))?;
        Ok(out
            .parameter()
            .and_then(ssm::types::Parameter::value)
            .unwrap_or_default()
            .to_owned())
    }

    /// Creates a SecureString parameter tagged as ours (never overwrites:
    /// a parameter created meanwhile is an error, not replaced).
    async fn put_parameter(&self, name: &str, value: &str, what: &str) -> Result<()> {
        self.ssm
            .put_parameter()
            .name(name)
            .value(value)
            .r#type(ssm::types::ParameterType::SecureString)
            .description(format!("ecsmesh cluster {}: {what}", self.cfg.cluster))
            .tags(
                ssm::types::Tag::builder()
                    .key(OWNER_TAG)
                    .value(self.cfg.owner())
                    .build()
                    .map_err(|e| DeployError::State(format!("tagging {name}: {e}")))?,
            )
            .send()
            .await
            .map_err(|e| DeployError::aws("PutParameter", name, &e))?;
        Ok(())
    }

    /// The directory for the operator's material, needed as soon as
    /// something is generated.
    fn secrets_dir(&self) -> Result<&Path> {
        self.cfg
            .secrets_dir
            .as_deref()
            .ok_or_else(|| DeployError::Config {
                name: "secrets-dir",
                reason: "up generates the mesh's secrets and needs a directory for the \
                         operator's copy (pass --secrets-dir, or --insecure)"
                    .to_owned(),
            })
    }

    /// Carries out the secrets' plan: the TLS material generated into the
    /// operator's directory, then each missing parameter created (a token:
    /// the operator's copy first, see the module's comment).
    async fn apply_secrets(
        &self,
        dry_run: bool,
        plan: &SecretsPlan,
        steps: &mut Vec<Step>,
    ) -> Result<()> {
        if plan.tls == Some(TlsPlan::Generate) && !dry_run {
            let dir = self.secrets_dir()?;
            prepare_dir(dir)?;
            let spec = MeshCertsSpec {
                agents: 1,
                admin_name: TLS_ADMIN_IDENTITY.to_owned(),
                ..MeshCertsSpec::default()
            };
            for path in write_mesh_certs(dir, &spec)? {
                make_private(&path)?;
            }
        }
        for (name, p) in &plan.parameters {
            let source = match p {
                ParameterPlan::Keep { owned } => {
                    let detail = if *owned {
                        "kept"
                    } else {
                        "not owned by ecsmesh: used as is, kept"
                    };
                    self.push(steps, PARAMETER, name, Action::Unchanged, detail);
                    continue;
                }
                ParameterPlan::Create(source) => source,
            };
            if !dry_run {
                match source {
                    Source::TlsFile(file) => {
                        let path = self.secrets_dir()?.join(file);
                        let value =
                            std::fs::read_to_string(&path).map_err(DeployError::local(&path))?;
                        self.put_parameter(name, &value, "mesh TLS material")
                            .await?;
                    }
                    Source::AdminToken => {
                        let dir = self.secrets_dir()?;
                        let token = random_token()?;
                        prepare_dir(dir)?;
                        write_file(&dir.join(ADMIN_TOKEN_PARAMETER), &token, true)?;
                        let what = "the admin token (dtab writes)";
                        self.put_parameter(name, &token, what).await?;
                    }
                    Source::AgentToken => {
                        let what = "the agent token (the mesh stream)";
                        self.put_parameter(name, &random_token()?, what).await?;
                    }
                }
            }
            self.push(steps, PARAMETER, name, Action::Create, "SecureString");
        }
        Ok(())
    }

    /// `down`'s secrets: every managed parameter tagged ours is deleted,
    /// any other is kept. The operator's directory is left alone (it holds
    /// the CA's key).
    async fn destroy_secrets(&self, dry_run: bool, steps: &mut Vec<Step>) -> Result<()> {
        let names = Self::all_managed_parameters(&self.cfg);
        let existing = self.existing_parameters(&names).await?;
        for name in names {
            match existing.get(&name) {
                Some(e) if e.owned => {
                    if !dry_run {
                        self.ssm
                            .delete_parameter()
                            .name(&name)
                            .send()
                            .await
                            .map_err(|e| DeployError::aws("DeleteParameter", &name, &e))?;
                    }
                    self.push(steps, PARAMETER, name, Action::Delete, "");
                }
                Some(_) => self.push(
                    steps,
                    PARAMETER,
                    name,
                    Action::Unchanged,
                    "not owned by ecsmesh: kept",
                ),
                None => self.push(steps, PARAMETER, name, Action::Absent, ""),
            }
        }
        Ok(())
    }
}

/// Creates the operator's directory, private (0700), if it is missing.
pub(crate) fn prepare_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(DeployError::local(dir))
}

/// 0600: the operator's copy holds the CA's key; certificates go with it.
fn make_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(DeployError::local(path))
}

/// 32 random bytes, as 64 lowercase hex characters.
fn random_token() -> Result<String> {
    use std::fmt::Write as _;
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| DeployError::Random(e.to_string()))?;
    let mut hex = String::with_capacity(TOKEN_BYTES * 2);
    for b in bytes {
        let _ = write!(hex, "{b:02x}");
    }
    Ok(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tls_parameter_has_a_source() {
        let params: Vec<&str> = TLS_SOURCES.iter().map(|(p, _)| *p).collect();
        assert_eq!(params, TLS_PARAMETERS);
    }

    #[test]
    fn tokens_are_64_hex_characters_and_differ() {
        let (a, b) = (random_token().unwrap(), random_token().unwrap());
        assert_eq!(a.len(), 64);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
    }

    fn observed(names: &[String]) -> ObservedSecrets {
        ObservedSecrets {
            existing: names
                .iter()
                .map(|n| (n.clone(), Existing { owned: true }))
                .collect(),
            partial_tls: Vec::new(),
        }
    }

    fn files(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn a_first_up_generates_everything() {
        let cfg = DeployConfig::new("c", "r");
        let plan = plan_secrets(&cfg, &ObservedSecrets::default())
            .unwrap()
            .unwrap();
        assert_eq!(plan.tls, Some(TlsPlan::Generate));
        let names: Vec<&str> = plan.parameters.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, Deployer::all_managed_parameters(&cfg));
        assert_eq!(
            plan.parameters[0].1,
            ParameterPlan::Create(Source::TlsFile(CA_CERT))
        );
        assert_eq!(
            plan.parameters[5..]
                .iter()
                .map(|(_, p)| *p)
                .collect::<Vec<_>>(),
            [
                ParameterPlan::Create(Source::AdminToken),
                ParameterPlan::Create(Source::AgentToken)
            ]
        );
        assert_eq!(
            plan.written(),
            files(&[
                CA_CERT,
                CA_KEY,
                ADMIN_CERT,
                ADMIN_KEY,
                ADMIN_TOKEN_PARAMETER
            ])
        );
    }

    #[test]
    fn a_second_up_keeps_everything() {
        let cfg = DeployConfig::new("c", "r");
        let mut have = observed(&Deployer::all_managed_parameters(&cfg));
        have.existing.insert(
            "/ecsmesh/c/agent-token".to_owned(),
            Existing { owned: false },
        );
        let plan = plan_secrets(&cfg, &have).unwrap().unwrap();
        assert_eq!(plan.tls, Some(TlsPlan::Keep));
        assert!(
            plan.parameters.iter().all(|(n, p)| {
                let ours = !n.ends_with("agent-token");
                *p == ParameterPlan::Keep { owned: ours }
            }),
            "{plan:?}"
        );
        assert!(plan.written().is_empty());
    }

    #[test]
    fn an_up_cut_short_is_completed_from_the_operator_s_files_only() {
        let cfg = DeployConfig::new("c", "r");
        let mut names = Deployer::all_managed_parameters(&cfg);
        names.retain(|n| !n.ends_with("/tls/agent.pem") && !n.ends_with("/admin-token"));
        let mut have = observed(&names);
        have.partial_tls = names
            .iter()
            .filter(|n| n.contains("/tls/"))
            .map(|n| (n.clone(), "x.pem", true))
            .collect();
        let plan = plan_secrets(&cfg, &have).unwrap().unwrap();
        assert_eq!(plan.tls, Some(TlsPlan::FromDir));
        let created: Vec<(&str, Source)> = plan
            .parameters
            .iter()
            .filter_map(|(n, p)| match p {
                ParameterPlan::Create(s) => Some((n.as_str(), *s)),
                ParameterPlan::Keep { .. } => None,
            })
            .collect();
        assert_eq!(
            created,
            [
                ("/ecsmesh/c/tls/agent.pem", Source::TlsFile("agent-1.pem")),
                ("/ecsmesh/c/admin-token", Source::AdminToken)
            ]
        );
        assert_eq!(plan.written(), files(&[ADMIN_TOKEN_PARAMETER]));
        // A file that differs: another CA's, refused.
        have.partial_tls[1].2 = false;
        let err = plan_secrets(&cfg, &have).unwrap_err().to_string();
        assert!(
            err.contains("only some of the mesh's TLS parameters") && err.contains("x.pem"),
            "{err}"
        );
    }

    #[test]
    fn the_user_s_tls_leaves_the_tokens_and_insecure_leaves_all() {
        let mut cfg = DeployConfig::new("c", "r");
        cfg.tls_ssm_prefix = Some("/mine/tls".to_owned());
        let plan = plan_secrets(&cfg, &ObservedSecrets::default())
            .unwrap()
            .unwrap();
        assert_eq!(plan.tls, None);
        let names: Vec<&str> = plan.parameters.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["/ecsmesh/c/admin-token", "/ecsmesh/c/agent-token"]);
        cfg.insecure = true;
        assert_eq!(
            plan_secrets(&cfg, &ObservedSecrets::default()).unwrap(),
            None
        );
    }
}
