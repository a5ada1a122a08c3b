//! The operator's half of the mesh's secrets, in a local directory
//! ([`DeployConfig::secrets_dir`]): what module `secrets` wrote there (the
//! CA and its key, the admin certificate and token), the user's CA when
//! they bring their own TLS, and ecsmeshctl's settings file
//! ([`CTL_SETTINGS_FILE`]). It comes after the controller's load balancer:
//! the settings file names where the controller is reached, the balancer's
//! address when `up` made one.
//!
//! A [`Resource`] like every module: observe (which files are there, the
//! settings file's text), plan (`plan_operator`, pure: missing material is
//! reported, never regenerated, since the parameters it matches are in
//! use; the settings file is written when missing, and its `controller`
//! line put right when `up` wrote the file and the address changed), apply,
//! destroy (nothing: the directory holds the CA's key, `down` leaves it).

use std::collections::BTreeSet;
use std::path::PathBuf;

use ecsmesh_tls::generate::{CA_CERT, CA_KEY, write_file};

use crate::config::{
    ADMIN_TOKEN_PARAMETER, CTL_SETTINGS_FILE, DeployConfig, TLS_CONTROLLER_SERVER_NAME,
};
use crate::error::{DeployError, Result};
use crate::ops::Deployer;
use crate::resource::{Kind, Resource};
use crate::secrets::{ADMIN_CERT, ADMIN_KEY, prepare_dir};
use crate::{Action, Step};

/// The step kind of this module's report lines.
const OPERATOR: &str = "operator-secrets";

/// How the settings file `up` writes begins: a file without it is the
/// operator's own, never changed.
const SETTINGS_HEADER: &str = "# ecsmeshctl settings for the ecsmesh cluster ";

/// What the driver gives [`Operator`].
#[derive(Clone, Debug)]
pub(crate) struct Wanted {
    /// What module `secrets` wrote (or, dry, would write) this run; `None`
    /// with `--insecure` (nothing to do).
    pub(crate) written: Option<BTreeSet<String>>,
    /// Where ecsmeshctl reaches the controller: the balancer `up` made, or
    /// the address agents are given.
    pub(crate) controller: String,
}

/// The directory as it is.
#[derive(Clone, Debug, Default)]
pub(crate) struct ObservedDir {
    /// The operator's files (of [`needed_files`] and the CA) that exist.
    files: BTreeSet<String>,
    /// The settings file's text, when it exists.
    settings: Option<String>,
}

/// What `up` does to the settings file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SettingsPlan {
    Unchanged,
    Create(String),
    /// `up`'s own file, naming another controller address: that line put
    /// right (the rest as the operator left it).
    Update {
        from: String,
        text: String,
    },
}

/// What `up` does to the operator's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum OperatorPlan {
    /// `--insecure`: nothing.
    Skip,
    /// No directory given: not checked.
    NoDir,
    /// Material the parameters came from is missing: reported only.
    Missing(Vec<&'static str>),
    /// Everything there (the files checked).
    Unchanged(Vec<&'static str>),
    Write {
        /// The files created this run (with what `secrets` wrote), sorted.
        files: Vec<String>,
        /// The user's CA to copy from SSM (its parameter's name).
        user_ca: Option<String>,
        settings: SettingsPlan,
    },
}

/// The files the directory must hold once the parameters exist.
fn needed_files(cfg: &DeployConfig) -> Vec<&'static str> {
    let mut needed = vec![ADMIN_TOKEN_PARAMETER];
    if cfg.managed_tls() {
        needed.extend([CA_CERT, CA_KEY, ADMIN_CERT, ADMIN_KEY]);
    }
    needed
}

/// The ecsmeshctl settings file (cli/src/config.rs's format; paths
/// relative to the file).
pub(crate) fn ctl_settings(cfg: &DeployConfig, has_ca: bool, controller: &str) -> String {
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
        "{SETTINGS_HEADER}{cluster}, written by `ecsmeshctl deploy up`:\n\
         #   ECSMESH_CTL_CONFIG=<this file> ecsmeshctl dtab get default\n\
         # `controller` is where the controller is reached (its load balancer when\n\
         # `up` made one): from inside the VPC; a loopback one is the controller's\n\
         # instance only (reach it through a tunnel, or pass --controller).\n\
         {controller_line}\n\
         token_file: {ADMIN_TOKEN_PARAMETER}\n\
         tls:\n{tls}\n",
        cluster = cfg.cluster,
        controller_line = controller_line(controller),
        tls = tls.join("\n"),
    )
}

fn controller_line(controller: &str) -> String {
    format!("controller: \"{controller}\"")
}

/// The settings file: written when missing; `up`'s own with another
/// controller address gets that line put right (no I/O).
pub(crate) fn plan_settings(have: Option<&str>, want: String, controller: &str) -> SettingsPlan {
    let Some(text) = have else {
        return SettingsPlan::Create(want);
    };
    if !text.starts_with(SETTINGS_HEADER) {
        return SettingsPlan::Unchanged;
    }
    let line = controller_line(controller);
    let Some(old) = text.lines().find(|l| l.starts_with("controller:")) else {
        // Taken out by the operator: left so.
        return SettingsPlan::Unchanged;
    };
    if old == line {
        return SettingsPlan::Unchanged;
    }
    let from = old
        .trim_start_matches("controller:")
        .trim()
        .trim_matches('"');
    let mut out: String = text
        .lines()
        .map(|l| if l == old { line.as_str() } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    if text.ends_with('\n') {
        out.push('\n');
    }
    SettingsPlan::Update {
        from: from.to_owned(),
        text: out,
    }
}

/// What `up` does to the operator's directory (no I/O); `have`: `None`
/// when no directory is given.
pub(crate) fn plan_operator(
    cfg: &DeployConfig,
    want: &Wanted,
    have: Option<&ObservedDir>,
) -> OperatorPlan {
    let Some(written) = &want.written else {
        return OperatorPlan::Skip;
    };
    let Some(have) = have else {
        return OperatorPlan::NoDir;
    };
    let needed = needed_files(cfg);
    let missing: Vec<&str> = needed
        .iter()
        .filter(|f| !written.contains(**f) && !have.files.contains(**f))
        .copied()
        .collect();
    if !missing.is_empty() {
        return OperatorPlan::Missing(missing);
    }
    let mut files: Vec<String> = written.iter().cloned().collect();
    // With the user's own TLS, the CA they put in SSM, for ecsmeshctl.
    let user_ca = match &cfg.tls_ssm_prefix {
        Some(prefix) if !have.files.contains(CA_CERT) => {
            files.push(CA_CERT.to_owned());
            Some(format!("{prefix}/{CA_CERT}"))
        }
        _ => None,
    };
    let has_ca = have.files.contains(CA_CERT) || files.iter().any(|f| f == CA_CERT);
    let settings = plan_settings(
        have.settings.as_deref(),
        ctl_settings(cfg, has_ca, &want.controller),
        &want.controller,
    );
    if matches!(settings, SettingsPlan::Create(_)) {
        files.push(CTL_SETTINGS_FILE.to_owned());
    }
    if files.is_empty() && settings == SettingsPlan::Unchanged {
        return OperatorPlan::Unchanged(needed);
    }
    files.sort();
    OperatorPlan::Write {
        files,
        user_ca,
        settings,
    }
}

/// The operator's directory and ecsmeshctl's settings file.
pub(crate) struct Operator;

impl Resource for Operator {
    const KIND: Kind = Kind::Operator;
    type Wanted = Wanted;
    /// `None`: no directory given, or `--insecure` (not looked at).
    type Observed = Option<ObservedDir>;
    type Plan = OperatorPlan;
    type Output = ();

    async fn observe(d: &Deployer, want: &Wanted) -> Result<Self::Observed> {
        let (Some(_), Some(dir)) = (&want.written, &d.cfg.secrets_dir) else {
            return Ok(None);
        };
        let files = [
            ADMIN_TOKEN_PARAMETER,
            CA_CERT,
            CA_KEY,
            ADMIN_CERT,
            ADMIN_KEY,
        ]
        .into_iter()
        .filter(|f| dir.join(f).exists())
        .map(str::to_owned)
        .collect();
        let path = dir.join(CTL_SETTINGS_FILE);
        let settings = if path.exists() {
            Some(std::fs::read_to_string(&path).map_err(DeployError::local(&path))?)
        } else {
            None
        };
        Ok(Some(ObservedDir { files, settings }))
    }

    fn plan(cfg: &DeployConfig, want: &Wanted, have: &Self::Observed) -> Result<OperatorPlan> {
        Ok(plan_operator(cfg, want, have.as_ref()))
    }

    async fn apply(
        d: &Deployer,
        dry_run: bool,
        _: Wanted,
        _: Self::Observed,
        plan: OperatorPlan,
        steps: &mut Vec<Step>,
    ) -> Result<()> {
        let cfg = &d.cfg;
        let dir: PathBuf = cfg.secrets_dir.clone().unwrap_or_default();
        let shown = dir.display().to_string();
        match plan {
            OperatorPlan::Skip => {}
            OperatorPlan::NoDir => d.push(
                steps,
                OPERATOR,
                "-",
                Action::Absent,
                "no directory given (--secrets-dir): the operator's material is not checked",
            ),
            OperatorPlan::Missing(missing) => d.push(
                steps,
                OPERATOR,
                shown,
                Action::Absent,
                format!(
                    "missing {}: the parameters exist, so nothing is regenerated; copy them from \
                     where the first `up` ran (the admin token is also the SSM parameter {}/{})",
                    missing.join(", "),
                    cfg.managed_prefix(),
                    ADMIN_TOKEN_PARAMETER
                ),
            ),
            OperatorPlan::Unchanged(needed) => d.push(
                steps,
                OPERATOR,
                shown,
                Action::Unchanged,
                format!("{} and {CTL_SETTINGS_FILE} present", needed.join(", ")),
            ),
            OperatorPlan::Write {
                files,
                user_ca,
                settings,
            } => {
                if !dry_run {
                    prepare_dir(&dir)?;
                    if let Some(name) = &user_ca {
                        let ca = d.parameter_value(name).await?;
                        write_file(&dir.join(CA_CERT), &ca, true)?;
                    }
                    if let SettingsPlan::Create(text) | SettingsPlan::Update { text, .. } =
                        &settings
                    {
                        write_file(&dir.join(CTL_SETTINGS_FILE), text, true)?;
                    }
                }
                let mut details = Vec::new();
                if !files.is_empty() {
                    details.push(format!("{} (0600)", files.join(", ")));
                }
                if let SettingsPlan::Update { from, .. } = &settings {
                    let to = settings_controller(&settings).unwrap_or_default();
                    details.push(format!("{CTL_SETTINGS_FILE}: controller {from} -> {to}"));
                }
                let action = if files.is_empty() {
                    Action::Update
                } else {
                    Action::Create
                };
                d.push(steps, OPERATOR, shown, action, details.join("; "));
            }
        }
        Ok(())
    }

    /// The directory holds the CA's key: `down` leaves it alone.
    async fn destroy(_: &Deployer, _: bool, _: &mut Vec<Step>) -> Result<()> {
        Ok(())
    }
}

/// The controller address an updated settings file names.
fn settings_controller(plan: &SettingsPlan) -> Option<&str> {
    let SettingsPlan::Update { text, .. } = plan else {
        return None;
    };
    text.lines()
        .find_map(|l| l.strip_prefix("controller:"))
        .map(|v| v.trim().trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOPBACK: &str = "https://127.0.0.1:4321";
    const NLB: &str = "https://ecsmesh-c-0123.elb.eu-west-1.amazonaws.com:4321";

    fn written(files: &[&str]) -> BTreeSet<String> {
        files.iter().map(|f| (*f).to_owned()).collect()
    }

    fn want(files: &[&str], controller: &str) -> Wanted {
        Wanted {
            written: Some(written(files)),
            controller: controller.to_owned(),
        }
    }

    /// Everything a first `up` wrote, and its settings file for `controller`.
    fn all_there(cfg: &DeployConfig, controller: &str) -> ObservedDir {
        ObservedDir {
            files: needed_files(cfg).into_iter().map(str::to_owned).collect(),
            settings: Some(ctl_settings(cfg, true, controller)),
        }
    }

    #[test]
    fn a_first_up_writes_the_settings_with_the_balancer_s_address() {
        let cfg = DeployConfig::new("c", "r");
        let first = [
            CA_CERT,
            CA_KEY,
            ADMIN_CERT,
            ADMIN_KEY,
            ADMIN_TOKEN_PARAMETER,
        ];
        let plan = plan_operator(&cfg, &want(&first, NLB), Some(&ObservedDir::default()));
        let OperatorPlan::Write {
            files,
            user_ca: None,
            settings: SettingsPlan::Create(text),
        } = plan
        else {
            panic!("{plan:?}");
        };
        assert_eq!(
            files,
            [
                "admin-key.pem",
                "admin-token",
                "admin.pem",
                "ca-key.pem",
                "ca.pem",
                CTL_SETTINGS_FILE
            ]
        );
        assert!(text.starts_with(SETTINGS_HEADER), "{text}");
        for line in [
            &format!("controller: \"{NLB}\""),
            "token_file: admin-token",
            "  ca: ca.pem",
            "  cert: admin.pem",
            "  server_name: ecsmesh-controller",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}: {text}");
        }
    }

    #[test]
    fn a_second_up_changes_nothing() {
        let cfg = DeployConfig::new("c", "r");
        let have = all_there(&cfg, NLB);
        assert_eq!(
            plan_operator(&cfg, &want(&[], NLB), Some(&have)),
            OperatorPlan::Unchanged(needed_files(&cfg))
        );
    }

    #[test]
    fn an_older_settings_file_gets_the_balancer_s_address() {
        let cfg = DeployConfig::new("c", "r");
        let mut have = all_there(&cfg, LOOPBACK);
        // The operator's own line stays.
        if let Some(text) = &mut have.settings {
            text.push_str("timeout: 5s\n");
        }
        let plan = plan_operator(&cfg, &want(&[], NLB), Some(&have));
        let OperatorPlan::Write {
            files,
            settings: settings @ SettingsPlan::Update { .. },
            ..
        } = plan
        else {
            panic!("{plan:?}");
        };
        assert!(files.is_empty());
        assert_eq!(settings_controller(&settings), Some(NLB));
        let SettingsPlan::Update { from, text } = settings else {
            unreachable!()
        };
        assert_eq!(from, LOOPBACK);
        let expected = format!("{}timeout: 5s\n", ctl_settings(&cfg, true, NLB));
        assert_eq!(text, expected);
    }

    #[test]
    fn the_operator_s_own_settings_file_is_left_alone() {
        let own = "controller: \"https://10.0.0.5:4321\"\n";
        assert_eq!(
            plan_settings(Some(own), String::new(), NLB),
            SettingsPlan::Unchanged
        );
        let cfg = DeployConfig::new("c", "r");
        let no_line = ctl_settings(&cfg, true, NLB).replace(&controller_line(NLB), "");
        assert_eq!(
            plan_settings(Some(&no_line), String::new(), LOOPBACK),
            SettingsPlan::Unchanged
        );
    }

    #[test]
    fn missing_material_is_reported_not_regenerated() {
        let cfg = DeployConfig::new("c", "r");
        let plan = plan_operator(&cfg, &want(&[], NLB), Some(&ObservedDir::default()));
        assert_eq!(
            plan,
            OperatorPlan::Missing(vec![
                ADMIN_TOKEN_PARAMETER,
                CA_CERT,
                CA_KEY,
                ADMIN_CERT,
                ADMIN_KEY
            ])
        );
        assert_eq!(
            plan_operator(&cfg, &want(&[], NLB), None),
            OperatorPlan::NoDir
        );
        let insecure = Wanted {
            written: None,
            controller: LOOPBACK.to_owned(),
        };
        assert_eq!(plan_operator(&cfg, &insecure, None), OperatorPlan::Skip);
    }

    #[test]
    fn the_user_s_ca_is_copied_for_ecsmeshctl() {
        let mut cfg = DeployConfig::new("c", "r");
        cfg.tls_ssm_prefix = Some("/mine/tls".to_owned());
        let plan = plan_operator(
            &cfg,
            &want(&[ADMIN_TOKEN_PARAMETER], LOOPBACK),
            Some(&ObservedDir::default()),
        );
        let OperatorPlan::Write {
            files,
            user_ca,
            settings: SettingsPlan::Create(text),
        } = plan
        else {
            panic!("{plan:?}");
        };
        assert_eq!(files, ["admin-token", "ca.pem", CTL_SETTINGS_FILE]);
        assert_eq!(user_ca.as_deref(), Some("/mine/tls/ca.pem"));
        assert!(
            text.contains("  ca: ca.pem") && !text.contains("admin.pem"),
            "{text}"
        );
    }
}
