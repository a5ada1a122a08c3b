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

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use aws_sdk_ssm as ssm;
use ecsmesh_tls::generate::{CA_CERT, CA_KEY, MeshCertsSpec, write_file, write_mesh_certs};

use crate::config::{
    ADMIN_TOKEN_PARAMETER, AGENT_TOKEN_PARAMETER, CTL_SETTINGS_FILE, DeployConfig, OWNER_TAG,
    TLS_ADMIN_IDENTITY, TLS_CONTROLLER_SERVER_NAME, TLS_PARAMETERS,
};
use crate::error::{DeployError, Result};
use crate::ops::Deployer;
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
const ADMIN_CERT: &str = "admin.pem";
const ADMIN_KEY: &str = "admin-key.pem";

/// Bytes of randomness in a token (written as hex: twice as many characters).
const TOKEN_BYTES: usize = 32;

/// The step kinds of this module's report lines.
const PARAMETER: &str = "ssm-parameter";
const OPERATOR: &str = "operator-secrets";

/// A parameter under the managed prefix that exists.
#[derive(Debug)]
struct Existing {
    /// Tagged `ecsmesh:owner=<cluster>`: ours to delete.
    owned: bool,
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
    async fn parameter_value(&self, name: &str) -> Result<String> {
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

    fn push_existing(&self, steps: &mut Vec<Step>, name: &str, existing: &Existing) {
        let detail = if existing.owned {
            "kept"
        } else {
            "not owned by ecsmesh: used as is, kept"
        };
        self.push(steps, PARAMETER, name, Action::Unchanged, detail);
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

    /// `up`'s secrets: the parameters created when missing, the operator's
    /// material written when generated. Nothing with `insecure`.
    pub(crate) async fn up_secrets(&self, dry_run: bool, steps: &mut Vec<Step>) -> Result<()> {
        let cfg = &self.cfg;
        if !cfg.managed_tokens() {
            return Ok(());
        }
        let prefix = cfg.managed_prefix();
        let existing = self
            .existing_parameters(&Self::all_managed_parameters(cfg))
            .await?;
        // The operator's files written (or, dry, to be written) this run.
        let mut written: BTreeSet<String> = BTreeSet::new();

        if cfg.managed_tls() {
            self.up_tls(dry_run, &prefix, &existing, &mut written, steps)
                .await?;
        }

        for (param, what) in [
            (ADMIN_TOKEN_PARAMETER, "the admin token (dtab writes)"),
            (AGENT_TOKEN_PARAMETER, "the agent token (the mesh stream)"),
        ] {
            let name = format!("{prefix}/{param}");
            if let Some(e) = existing.get(&name) {
                self.push_existing(steps, &name, e);
                continue;
            }
            let admin = param == ADMIN_TOKEN_PARAMETER;
            if admin {
                written.insert(ADMIN_TOKEN_PARAMETER.to_owned());
                if !dry_run {
                    // The operator's copy first (see the module's comment).
                    let dir = self.secrets_dir()?;
                    let token = random_token()?;
                    prepare_dir(dir)?;
                    write_file(&dir.join(ADMIN_TOKEN_PARAMETER), &token, true)?;
                    self.put_parameter(&name, &token, what).await?;
                }
            } else if !dry_run {
                self.put_parameter(&name, &random_token()?, what).await?;
            }
            self.push(steps, PARAMETER, name, Action::Create, "SecureString");
        }

        self.up_operator(dry_run, &written, steps).await
    }

    /// The TLS parameters: generated as `certs init` makes them (into the
    /// operator's directory, reusing a CA there), or completed from that
    /// directory after an `up` cut short, or kept.
    async fn up_tls(
        &self,
        dry_run: bool,
        prefix: &str,
        existing: &BTreeMap<String, Existing>,
        written: &mut BTreeSet<String>,
        steps: &mut Vec<Step>,
    ) -> Result<()> {
        let names: Vec<(String, &str)> = TLS_SOURCES
            .iter()
            .map(|(param, file)| (format!("{prefix}/tls/{param}"), *file))
            .collect();
        let present: Vec<&str> = names
            .iter()
            .filter(|(n, _)| existing.contains_key(n))
            .map(|(n, _)| n.as_str())
            .collect();
        if present.len() == names.len() {
            for (name, _) in &names {
                if let Some(e) = existing.get(name) {
                    self.push_existing(steps, name, e);
                }
            }
            return Ok(());
        }
        if present.is_empty() {
            written.extend([CA_CERT, CA_KEY, ADMIN_CERT, ADMIN_KEY].map(str::to_owned));
            if !dry_run {
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
        } else {
            // Some parameters exist: the rest may only come from the same
            // local files, or the mesh would mix two CAs' certificates.
            let dir = self.secrets_dir()?;
            for name in &present {
                let file = names
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or("", |(_, f)| *f);
                let local = std::fs::read_to_string(dir.join(file)).ok();
                if local.as_deref() != Some(self.parameter_value(name).await?.as_str()) {
                    return Err(DeployError::State(format!(
                        "SSM holds only some of the mesh's TLS parameters ({}), and {} does not \
                         hold the files they came from ({file} differs or is missing): delete \
                         the ones under {prefix}/tls (they are the cluster's own, `down` removes \
                         them) or put the rest by hand",
                        present.join(", "),
                        dir.display()
                    )));
                }
            }
        }
        for (name, file) in &names {
            if let Some(e) = existing.get(name) {
                self.push_existing(steps, name, e);
                continue;
            }
            if !dry_run {
                let path = self.secrets_dir()?.join(file);
                let value = std::fs::read_to_string(&path).map_err(DeployError::local(&path))?;
                self.put_parameter(name, &value, "mesh TLS material")
                    .await?;
            }
            self.push(
                steps,
                PARAMETER,
                name.as_str(),
                Action::Create,
                "SecureString",
            );
        }
        Ok(())
    }

    /// The operator's directory: what was written, or whether what it
    /// should hold is there (missing material is reported, never
    /// regenerated: the parameters it matches are in use), and the
    /// ecsmeshctl settings file.
    async fn up_operator(
        &self,
        dry_run: bool,
        written: &BTreeSet<String>,
        steps: &mut Vec<Step>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let Some(dir) = cfg.secrets_dir.as_deref() else {
            self.push(
                steps,
                OPERATOR,
                "-",
                Action::Absent,
                "no directory given (--secrets-dir): the operator's material is not checked",
            );
            return Ok(());
        };
        let mut needed = vec![ADMIN_TOKEN_PARAMETER];
        if cfg.managed_tls() {
            needed.extend([CA_CERT, CA_KEY, ADMIN_CERT, ADMIN_KEY]);
        }
        let missing: Vec<&str> = needed
            .iter()
            .filter(|f| !written.contains(**f) && !dir.join(f).exists())
            .copied()
            .collect();
        if !missing.is_empty() {
            self.push(
                steps,
                OPERATOR,
                dir.display().to_string(),
                Action::Absent,
                format!(
                    "missing {}: the parameters exist, so nothing is regenerated; copy them from \
                     where the first `up` ran (the admin token is also the SSM parameter {}/{})",
                    missing.join(", "),
                    cfg.managed_prefix(),
                    ADMIN_TOKEN_PARAMETER
                ),
            );
            return Ok(());
        }
        let mut written: Vec<String> = written.iter().cloned().collect();
        // With the user's own TLS, the CA they put in SSM, for ecsmeshctl.
        let user_ca = match &cfg.tls_ssm_prefix {
            Some(prefix) if !dir.join(CA_CERT).exists() => {
                written.push(CA_CERT.to_owned());
                Some(format!("{prefix}/{CA_CERT}"))
            }
            _ => None,
        };
        let settings = dir.join(CTL_SETTINGS_FILE);
        if !settings.exists() {
            written.push(CTL_SETTINGS_FILE.to_owned());
        }
        if written.is_empty() {
            self.push(
                steps,
                OPERATOR,
                dir.display().to_string(),
                Action::Unchanged,
                format!("{} and {CTL_SETTINGS_FILE} present", needed.join(", ")),
            );
            return Ok(());
        }
        if !dry_run {
            prepare_dir(dir)?;
            if let Some(name) = &user_ca {
                let ca = self.parameter_value(name).await?;
                write_file(&dir.join(CA_CERT), &ca, true)?;
            }
            if !settings.exists() {
                let has_ca = dir.join(CA_CERT).exists();
                write_file(&settings, &self.ctl_settings(has_ca), true)?;
            }
        }
        written.sort();
        self.push(
            steps,
            OPERATOR,
            dir.display().to_string(),
            Action::Create,
            format!("{} (0600)", written.join(", ")),
        );
        Ok(())
    }

    /// The ecsmeshctl settings file (cli/src/config.rs's format; paths
    /// relative to the file).
    fn ctl_settings(&self, has_ca: bool) -> String {
        let cfg = &self.cfg;
        let mut tls = Vec::new();
        if has_ca {
            tls.push(format!("  ca: {CA_CERT}"));
        }
        if cfg.managed_tls() {
            tls.push(format!("  cert: {ADMIN_CERT}"));
            tls.push(format!("  key: {ADMIN_KEY}"));
        }
        tls.push(format!("  server_name: {TLS_CONTROLLER_SERVER_NAME}"));
        format!(
            "# ecsmeshctl settings for the ecsmesh cluster {cluster}, written by \
             `ecsmeshctl deploy up`:\n\
             #   ECSMESH_CTL_CONFIG=<this file> ecsmeshctl dtab get default\n\
             # `controller` is the address agents dial; a loopback one is the\n\
             # controller's instance only (reach it through a tunnel, or pass --controller).\n\
             controller: \"{controller}\"\n\
             token_file: {ADMIN_TOKEN_PARAMETER}\n\
             tls:\n{tls}\n",
            cluster = cfg.cluster,
            controller = cfg.agent_controller_address(),
            tls = tls.join("\n"),
        )
    }

    /// `down`'s secrets: every managed parameter tagged ours is deleted,
    /// any other is kept. The operator's directory is left alone (it holds
    /// the CA's key).
    pub(crate) async fn down_secrets(&self, dry_run: bool, steps: &mut Vec<Step>) -> Result<()> {
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
fn prepare_dir(dir: &Path) -> Result<()> {
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
}
