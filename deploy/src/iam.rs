//! The instances' IAM role and instance profile, which `up` creates when the
//! user names none (`--instance-profile`), so that an account with nothing
//! in it is enough: role and profile [`DeployConfig::instance_role_name`],
//! trusted by EC2 (`iam/ec2-trust-policy.json`), with two inline policies,
//! `iam/instance-policy.json` (the ECS container agent, the secret
//! parameters) and `iam/controller-policy.json` (the controller runs in host
//! network mode with the instance's credentials). Both tagged as ours.
//!
//! The same shape as the other resource modules: observe, a pure plan,
//! apply, destroy. The policies are compared as JSON documents, so a second
//! `up` changes nothing and an edited policy is put back.

use aws_sdk_iam as iam;
use serde_json::Value;

use crate::config::OWNER_TAG;
use crate::error::{DeployError, Result};
use crate::ops::Deployer;
use crate::{Action, Step};

const ROLE: &str = "iam-role";
const POLICY: &str = "iam-role-policy";
const PROFILE: &str = "instance-profile";

const TRUST_POLICY: &str = include_str!("../iam/ec2-trust-policy.json");
/// The role's inline policies: name and document.
const POLICIES: [(&str, &str); 2] = [
    (
        "ecsmesh-instance",
        include_str!("../iam/instance-policy.json"),
    ),
    (
        "ecsmesh-controller",
        include_str!("../iam/controller-policy.json"),
    ),
];

/// The role and profile as they are.
#[derive(Clone, Debug, Default)]
pub(crate) struct Observed {
    /// The role exists; tagged ours.
    role: Option<bool>,
    trust_same: bool,
    /// Inline policy name -> whether its document is the one wanted.
    policies: Vec<(String, bool)>,
    /// The profile exists; tagged ours; the roles in it.
    profile: Option<(bool, Vec<String>)>,
}

/// One thing to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    CreateRole,
    UpdateTrust,
    PutPolicy(&'static str, Action),
    CreateProfile,
    AddRoleToProfile,
}

/// What `up` does, from what is there (no I/O); a role or profile of that
/// name that is not ours is an error (it would be used without being known).
pub(crate) fn plan(name: &str, have: &Observed) -> Result<Vec<Change>> {
    if have.role == Some(false) || have.profile.as_ref().is_some_and(|(owned, _)| !owned) {
        return Err(DeployError::State(format!(
            "IAM role or instance profile {name} exists without the tag {OWNER_TAG}: pass it \
             with --instance-profile to use it, or remove it"
        )));
    }
    let mut changes = Vec::new();
    match have.role {
        None => changes.push(Change::CreateRole),
        Some(_) if !have.trust_same => changes.push(Change::UpdateTrust),
        Some(_) => {}
    }
    for (policy, _) in POLICIES {
        match have.policies.iter().find(|(n, _)| n == policy) {
            None => changes.push(Change::PutPolicy(policy, Action::Create)),
            Some((_, false)) => changes.push(Change::PutPolicy(policy, Action::Update)),
            Some((_, true)) => {}
        }
    }
    match &have.profile {
        None => changes.extend([Change::CreateProfile, Change::AddRoleToProfile]),
        Some((_, roles)) if !roles.iter().any(|r| r == name) => {
            changes.push(Change::AddRoleToProfile);
        }
        Some(_) => {}
    }
    Ok(changes)
}

/// IAM gives documents back URL-encoded (RFC 3986).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            // Two hex digits: at most 255.
            out.push(u8::try_from(h * 16 + l).unwrap_or_default());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a document IAM holds says what `want` says (decoded, parsed;
/// one-element arrays as their element, as IAM may store them).
pub(crate) fn same_document(have: &str, want: &str) -> bool {
    fn norm(v: Value) -> Value {
        match v {
            Value::Array(mut a) if a.len() == 1 => norm(a.remove(0)),
            Value::Array(a) => Value::Array(a.into_iter().map(norm).collect()),
            Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, norm(v))).collect()),
            v => v,
        }
    }
    let parse = |s: &str| serde_json::from_str::<Value>(s).ok().map(norm);
    let have = parse(have).or_else(|| parse(&percent_decode(have)));
    have.is_some() && have == parse(want)
}

fn tag(owner: &str) -> Result<iam::types::Tag> {
    iam::types::Tag::builder()
        .key(OWNER_TAG)
        .value(owner)
        .build()
        .map_err(|e| DeployError::State(format!("tagging the IAM role: {e}")))
}

fn no_such_entity<E: iam::error::ProvideErrorMetadata>(e: &E) -> bool {
    e.code() == Some("NoSuchEntity")
}

impl Deployer {
    /// The role, its inline policies and the profile, as they are.
    pub(crate) async fn observe_iam(&self) -> Result<Observed> {
        let name = self.cfg.instance_role_name();
        let owned = |tags: &[iam::types::Tag]| {
            tags.iter()
                .any(|t| t.key() == OWNER_TAG && t.value() == self.cfg.owner())
        };
        let mut have = Observed::default();
        match self.iam.get_role().role_name(&name).send().await {
            Ok(out) => {
                let role = out.role();
                have.role = Some(role.is_some_and(|r| owned(r.tags())));
                have.trust_same = role
                    .and_then(|r| r.assume_role_policy_document())
                    .is_some_and(|d| same_document(d, TRUST_POLICY));
                for (policy, want) in POLICIES {
                    match self
                        .iam
                        .get_role_policy()
                        .role_name(&name)
                        .policy_name(policy)
                        .send()
                        .await
                    {
                        Ok(p) => have
                            .policies
                            .push((policy.to_owned(), same_document(p.policy_document(), want))),
                        Err(e) if e.as_service_error().is_some_and(no_such_entity) => {}
                        Err(e) => return Err(DeployError::aws("GetRolePolicy", &name, &e)),
                    }
                }
            }
            Err(e) if e.as_service_error().is_some_and(no_such_entity) => {}
            Err(e) => return Err(DeployError::aws("GetRole", &name, &e)),
        }
        match self
            .iam
            .get_instance_profile()
            .instance_profile_name(&name)
            .send()
            .await
        {
            Ok(out) => {
                let p = out.instance_profile();
                let roles = p
                    .map(|p| p.roles().iter().map(|r| r.role_name().to_owned()).collect())
                    .unwrap_or_default();
                have.profile = Some((p.is_some_and(|p| owned(p.tags())), roles));
            }
            Err(e) if e.as_service_error().is_some_and(no_such_entity) => {}
            Err(e) => return Err(DeployError::aws("GetInstanceProfile", &name, &e)),
        }
        Ok(have)
    }

    /// `up`'s role and profile, unless the user named a profile.
    pub(crate) async fn up_iam(&self, dry_run: bool, steps: &mut Vec<Step>) -> Result<()> {
        if !self.cfg.managed_instance_profile() {
            return Ok(());
        }
        let name = self.cfg.instance_role_name();
        let changes = plan(&name, &self.observe_iam().await?)?;
        if changes.is_empty() {
            let detail = "trusted by EC2; ECS agent and controller policies";
            self.push(steps, ROLE, &name, Action::Unchanged, detail);
            self.push(steps, PROFILE, &name, Action::Unchanged, "");
        }
        let new_profile = changes.contains(&Change::CreateProfile);
        for change in changes {
            if !dry_run {
                self.apply_iam(&name, &change).await?;
            }
            // A new profile's role is part of making it: one line.
            if new_profile && change == Change::AddRoleToProfile {
                continue;
            }
            let (kind, item, action, detail) = match change {
                Change::CreateRole => (ROLE, name.clone(), Action::Create, "trusted by EC2"),
                Change::UpdateTrust => (ROLE, name.clone(), Action::Update, "trust policy"),
                Change::PutPolicy(p, action) => (POLICY, format!("{name}/{p}"), action, ""),
                Change::CreateProfile => (PROFILE, name.clone(), Action::Create, "with the role"),
                Change::AddRoleToProfile => (PROFILE, name.clone(), Action::Update, "role added"),
            };
            self.push(steps, kind, item, action, detail);
        }
        Ok(())
    }

    async fn apply_iam(&self, name: &str, change: &Change) -> Result<()> {
        let owner = self.cfg.owner();
        match change {
            Change::CreateRole => {
                self.iam
                    .create_role()
                    .role_name(name)
                    .assume_role_policy_document(TRUST_POLICY)
                    .description(format!("ecsmesh cluster {owner}: its instances"))
                    .tags(tag(owner)?)
                    .send()
                    .await
                    .map_err(|e| DeployError::aws("CreateRole", name, &e))?;
            }
            Change::UpdateTrust => {
                self.iam
                    .update_assume_role_policy()
                    .role_name(name)
                    .policy_document(TRUST_POLICY)
                    .send()
                    .await
                    .map_err(|e| DeployError::aws("UpdateAssumeRolePolicy", name, &e))?;
            }
            Change::PutPolicy(policy, _) => {
                let doc = POLICIES
                    .iter()
                    .find(|(n, _)| n == policy)
                    .map(|(_, d)| *d)
                    .unwrap_or_default();
                self.iam
                    .put_role_policy()
                    .role_name(name)
                    .policy_name(*policy)
                    .policy_document(doc)
                    .send()
                    .await
                    .map_err(|e| DeployError::aws("PutRolePolicy", name, &e))?;
            }
            Change::CreateProfile => {
                self.iam
                    .create_instance_profile()
                    .instance_profile_name(name)
                    .tags(tag(owner)?)
                    .send()
                    .await
                    .map_err(|e| DeployError::aws("CreateInstanceProfile", name, &e))?;
            }
            Change::AddRoleToProfile => {
                self.iam
                    .add_role_to_instance_profile()
                    .instance_profile_name(name)
                    .role_name(name)
                    .send()
                    .await
                    .map_err(|e| DeployError::aws("AddRoleToInstanceProfile", name, &e))?;
            }
        }
        Ok(())
    }

    /// `down`'s role and profile (whatever this run's `--instance-profile`):
    /// the profile emptied and deleted, the role's inline policies, the role;
    /// each only when tagged ours.
    pub(crate) async fn down_iam(&self, dry_run: bool, steps: &mut Vec<Step>) -> Result<()> {
        let name = self.cfg.instance_role_name();
        let have = self.observe_iam().await?;
        match &have.profile {
            Some((true, roles)) => {
                if !dry_run {
                    for role in roles {
                        self.iam
                            .remove_role_from_instance_profile()
                            .instance_profile_name(&name)
                            .role_name(role)
                            .send()
                            .await
                            .map_err(|e| {
                                DeployError::aws("RemoveRoleFromInstanceProfile", &name, &e)
                            })?;
                    }
                    self.iam
                        .delete_instance_profile()
                        .instance_profile_name(&name)
                        .send()
                        .await
                        .map_err(|e| DeployError::aws("DeleteInstanceProfile", &name, &e))?;
                }
                self.push(steps, PROFILE, &name, Action::Delete, "");
            }
            Some((false, _)) => self.push_kept(steps, PROFILE, &name),
            None => self.push(steps, PROFILE, &name, Action::Absent, ""),
        }
        match have.role {
            Some(true) => {
                if !dry_run {
                    for (policy, _) in &have.policies {
                        self.iam
                            .delete_role_policy()
                            .role_name(&name)
                            .policy_name(policy)
                            .send()
                            .await
                            .map_err(|e| DeployError::aws("DeleteRolePolicy", &name, &e))?;
                    }
                    self.iam
                        .delete_role()
                        .role_name(&name)
                        .send()
                        .await
                        .map_err(|e| DeployError::aws("DeleteRole", &name, &e))?;
                }
                self.push(
                    steps,
                    ROLE,
                    &name,
                    Action::Delete,
                    "with its inline policies",
                );
            }
            Some(false) => self.push_kept(steps, ROLE, &name),
            None => self.push(steps, ROLE, &name, Action::Absent, ""),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours() -> Observed {
        Observed {
            role: Some(true),
            trust_same: true,
            policies: POLICIES
                .iter()
                .map(|(n, _)| ((*n).to_owned(), true))
                .collect(),
            profile: Some((true, vec!["r".to_owned()])),
        }
    }

    #[test]
    fn the_role_and_profile_are_planned_from_what_exists() {
        let all = plan("r", &Observed::default()).unwrap();
        assert_eq!(
            all,
            [
                Change::CreateRole,
                Change::PutPolicy("ecsmesh-instance", Action::Create),
                Change::PutPolicy("ecsmesh-controller", Action::Create),
                Change::CreateProfile,
                Change::AddRoleToProfile,
            ]
        );
        assert!(plan("r", &ours()).unwrap().is_empty());
        let mut drift = ours();
        drift.trust_same = false;
        drift.policies[1].1 = false;
        drift.profile = Some((true, Vec::new()));
        assert_eq!(
            plan("r", &drift).unwrap(),
            [
                Change::UpdateTrust,
                Change::PutPolicy("ecsmesh-controller", Action::Update),
                Change::AddRoleToProfile,
            ]
        );
        let mut foreign = ours();
        foreign.role = Some(false);
        assert!(
            plan("r", &foreign)
                .unwrap_err()
                .to_string()
                .contains("--instance-profile")
        );
    }

    #[test]
    fn documents_compare_as_iam_gives_them_back() {
        let encoded = "%7B%22Version%22%3A%222012-10-17%22%2C%22Statement%22%3A%5B%7B%22Effect%22%3A%22Allow%22%2C%22Principal%22%3A%7B%22Service%22%3A%5B%22ec2.amazonaws.com%22%5D%7D%2C%22Action%22%3A%22sts%3AAssumeRole%22%7D%5D%7D";
        assert!(same_document(encoded, TRUST_POLICY));
        assert!(same_document(TRUST_POLICY, TRUST_POLICY));
        assert!(!same_document(encoded, POLICIES[0].1));
        assert!(!same_document("%ZZ", TRUST_POLICY));
    }
}
