//! The IAM roles `up` creates when the user names no instance profile
//! (`--instance-profile`), so that an account with nothing in it is enough:
//! the instances' role and instance profile
//! ([`DeployConfig::instance_role_name`], trusted by EC2,
//! `iam/ec2-trust-policy.json`, inline policy `iam/instance-policy.json`:
//! the ECS container agent, the secret parameters), and the controller's
//! task role ([`DeployConfig::controller_role_name`], trusted by ECS tasks,
//! `iam/ecs-tasks-trust-policy.json`, inline policy
//! `iam/controller-policy.json`: ECS/EC2 reads, the events queue, the dtab
//! table), so that only the controller's task holds the controller's
//! rights. All tagged as ours.
//!
//! A [`Resource`] like every module: observe (`observe_role`), plan
//! (`plan_role`, pure), apply, destroy. The policies are compared as JSON
//! documents, so a second `up` changes nothing and an edited policy is put
//! back.

use aws_sdk_iam as iam;
use serde_json::Value;

use crate::config::{DeployConfig, OWNER_TAG};
use crate::error::{DeployError, Result};
use crate::ops::Deployer;
use crate::resource::{Kind, Resource};
use crate::{Action, Step};

const ROLE: &str = "iam-role";
const POLICY: &str = "iam-role-policy";
const PROFILE: &str = "instance-profile";

const EC2_TRUST: &str = include_str!("../iam/ec2-trust-policy.json");
const TASKS_TRUST: &str = include_str!("../iam/ecs-tasks-trust-policy.json");
/// Each role's inline policy: name and document.
const INSTANCE_POLICIES: &[(&str, &str)] = &[(
    "ecsmesh-instance",
    include_str!("../iam/instance-policy.json"),
)];
/// The controller's policy as documented (every cluster's queue and table,
/// for a role the user attaches it to); `up` narrows it to this cluster's
/// ([`controller_policy`]).
const CONTROLLER_POLICY: &str = include_str!("../iam/controller-policy.json");
const CONTROLLER_POLICY_NAME: &str = "ecsmesh-controller";

/// The controller's policy for this cluster: the events queue's and the
/// dtab table's statements name exactly this cluster's queue and table
/// (in the tool's region), or are left out when `up` makes neither.
pub(crate) fn controller_policy(cfg: &crate::DeployConfig) -> String {
    let Ok(mut doc) = serde_json::from_str::<Value>(CONTROLLER_POLICY) else {
        return CONTROLLER_POLICY.to_owned();
    };
    let region = &cfg.region;
    if let Some(statements) = doc.get_mut("Statement").and_then(Value::as_array_mut) {
        statements.retain_mut(|st| {
            let (keep, resource) = match st.get("Sid").and_then(Value::as_str) {
                Some("EcsmeshEcsEventsQueue") => (
                    cfg.ecs_events,
                    format!("arn:aws:sqs:{region}:*:{}", cfg.events_queue_name()),
                ),
                Some("EcsmeshDtabStoreTable") => (
                    cfg.dynamodb_store(),
                    format!("arn:aws:dynamodb:{region}:*:table/{}", cfg.dynamodb_table()),
                ),
                _ => return true,
            };
            st["Resource"] = Value::String(resource);
            keep
        });
    }
    doc.to_string()
}

/// One role `up` makes.
#[derive(Clone, Debug)]
pub(crate) struct RoleSpec {
    name: String,
    trust: &'static str,
    /// Who may assume it, for the report.
    trusted_by: &'static str,
    policies: Vec<(&'static str, String)>,
    /// With an instance profile of the same name (the instances' role).
    profile: bool,
}

/// The instances' role (with its profile) and the controller's task role.
pub(crate) fn role_specs(cfg: &crate::DeployConfig) -> [RoleSpec; 2] {
    [
        RoleSpec {
            name: cfg.instance_role_name(),
            trust: EC2_TRUST,
            trusted_by: "EC2",
            policies: INSTANCE_POLICIES
                .iter()
                .map(|(n, d)| (*n, (*d).to_owned()))
                .collect(),
            profile: true,
        },
        RoleSpec {
            name: cfg.controller_role_name(),
            trust: TASKS_TRUST,
            trusted_by: "ECS tasks",
            policies: vec![(CONTROLLER_POLICY_NAME, controller_policy(cfg))],
            profile: false,
        },
    ]
}

/// The role and profile as they are.
#[derive(Clone, Debug, Default)]
pub(crate) struct ObservedRole {
    /// The role exists; tagged ours.
    role: Option<bool>,
    arn: Option<String>,
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
pub(crate) fn plan_role(spec: &RoleSpec, have: &ObservedRole) -> Result<Vec<Change>> {
    let name = spec.name.as_str();
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
    for &(policy, _) in &spec.policies {
        match have.policies.iter().find(|(n, _)| n == policy) {
            None => changes.push(Change::PutPolicy(policy, Action::Create)),
            Some((_, false)) => changes.push(Change::PutPolicy(policy, Action::Update)),
            Some((_, true)) => {}
        }
    }
    match &have.profile {
        _ if !spec.profile => {}
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

/// The instances' role and profile and the controller's task role (unless
/// the user names a profile).
pub(crate) struct Roles;

impl Resource for Roles {
    const KIND: Kind = Kind::Iam;
    type Wanted = ();
    /// Each role `up` makes, as it is (none when the user names a profile).
    type Observed = Vec<(RoleSpec, ObservedRole)>;
    /// Each role's changes, in the same order.
    type Plan = Vec<Vec<Change>>;
    /// The controller's task role's ARN, for its task definition (none
    /// when the user names a profile, or in a dry run before it exists).
    type Output = Option<String>;

    async fn observe(d: &Deployer, (): &()) -> Result<Self::Observed> {
        let mut out = Vec::new();
        if d.cfg.managed_instance_profile() {
            for spec in role_specs(&d.cfg) {
                let have = d.observe_role(&spec).await?;
                out.push((spec, have));
            }
        }
        Ok(out)
    }

    fn plan(_: &DeployConfig, (): &(), have: &Self::Observed) -> Result<Self::Plan> {
        have.iter().map(|(spec, h)| plan_role(spec, h)).collect()
    }

    async fn apply(
        d: &Deployer,
        dry_run: bool,
        (): (),
        have: Self::Observed,
        plan: Self::Plan,
        steps: &mut Vec<Step>,
    ) -> Result<Option<String>> {
        let mut controller_role = None;
        for ((spec, have), changes) in have.into_iter().zip(plan) {
            let made = d.apply_role(dry_run, &spec, changes, steps).await?;
            if !spec.profile {
                controller_role = made.or(have.arn);
            }
        }
        Ok(controller_role)
    }

    async fn destroy(d: &Deployer, dry_run: bool, steps: &mut Vec<Step>) -> Result<()> {
        d.destroy_iam(dry_run, steps).await
    }
}

impl Deployer {
    /// The role, its inline policies and its profile, as they are.
    async fn observe_role(&self, spec: &RoleSpec) -> Result<ObservedRole> {
        let name = spec.name.as_str();
        let owned = |tags: &[iam::types::Tag]| {
            tags.iter()
                .any(|t| t.key() == OWNER_TAG && t.value() == self.cfg.owner())
        };
        let mut have = ObservedRole::default();
        match self.iam.get_role().role_name(name).send().await {
            Ok(out) => {
                let role = out.role();
                have.role = Some(role.is_some_and(|r| owned(r.tags())));
                have.arn = role.map(|r| r.arn().to_owned());
                have.trust_same = role
                    .and_then(|r| r.assume_role_policy_document())
                    .is_some_and(|d| same_document(d, spec.trust));
                for (policy, want) in &spec.policies {
                    match self
                        .iam
                        .get_role_policy()
                        .role_name(name)
                        .policy_name(*policy)
                        .send()
                        .await
                    {
                        Ok(p) => have.policies.push((
                            (*policy).to_owned(),
                            same_document(p.policy_document(), want),
                        )),
                        Err(e) if e.as_service_error().is_some_and(no_such_entity) => {}
                        Err(e) => return Err(DeployError::aws("GetRolePolicy", name, &e)),
                    }
                }
            }
            Err(e) if e.as_service_error().is_some_and(no_such_entity) => {}
            Err(e) => return Err(DeployError::aws("GetRole", name, &e)),
        }
        if !spec.profile {
            return Ok(have);
        }
        match self
            .iam
            .get_instance_profile()
            .instance_profile_name(name)
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
            Err(e) => return Err(DeployError::aws("GetInstanceProfile", name, &e)),
        }
        Ok(have)
    }

    /// One role: its changes applied and reported. The ARN of a role made.
    async fn apply_role(
        &self,
        dry_run: bool,
        spec: &RoleSpec,
        changes: Vec<Change>,
        steps: &mut Vec<Step>,
    ) -> Result<Option<String>> {
        let name = spec.name.clone();
        let trusted = format!("trusted by {}", spec.trusted_by);
        if !changes.contains(&Change::CreateRole) {
            self.push(steps, ROLE, &name, Action::Unchanged, &trusted);
        }
        if spec.profile && !changes.contains(&Change::CreateProfile) {
            self.push(steps, PROFILE, &name, Action::Unchanged, "");
        }
        let new_profile = changes.contains(&Change::CreateProfile);
        let mut made = None;
        for change in changes {
            if !dry_run {
                let arn = self.apply_iam(spec, &change).await?;
                made = made.or(arn);
            }
            // A new profile's role is part of making it: one line.
            if new_profile && change == Change::AddRoleToProfile {
                continue;
            }
            let (kind, item, action, detail) = match change {
                Change::CreateRole => (ROLE, name.clone(), Action::Create, trusted.as_str()),
                Change::UpdateTrust => (ROLE, name.clone(), Action::Update, "trust policy"),
                Change::PutPolicy(p, action) => (POLICY, format!("{name}/{p}"), action, ""),
                Change::CreateProfile => (PROFILE, name.clone(), Action::Create, "with the role"),
                Change::AddRoleToProfile => (PROFILE, name.clone(), Action::Update, "role added"),
            };
            self.push(steps, kind, item, action, detail);
        }
        Ok(made)
    }

    /// One change; a new role's ARN.
    async fn apply_iam(&self, spec: &RoleSpec, change: &Change) -> Result<Option<String>> {
        let (owner, name) = (self.cfg.owner(), spec.name.as_str());
        match change {
            Change::CreateRole => {
                let out = self
                    .iam
                    .create_role()
                    .role_name(name)
                    .assume_role_policy_document(spec.trust)
                    .description(format!(
                        "ecsmesh cluster {owner}: assumed by {}",
                        spec.trusted_by
                    ))
                    .tags(tag(owner)?)
                    .send()
                    .await
                    .map_err(|e| DeployError::aws("CreateRole", name, &e))?;
                return Ok(out.role().map(|r| r.arn().to_owned()));
            }
            Change::UpdateTrust => {
                self.iam
                    .update_assume_role_policy()
                    .role_name(name)
                    .policy_document(spec.trust)
                    .send()
                    .await
                    .map_err(|e| DeployError::aws("UpdateAssumeRolePolicy", name, &e))?;
            }
            Change::PutPolicy(policy, _) => {
                let doc = spec
                    .policies
                    .iter()
                    .find(|(n, _)| n == policy)
                    .map(|(_, d)| d.as_str())
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
        Ok(None)
    }

    /// `down`'s role and profile (whatever this run's `--instance-profile`):
    /// the profile emptied and deleted, the role's inline policies, the role;
    /// each only when tagged ours.
    async fn destroy_iam(&self, dry_run: bool, steps: &mut Vec<Step>) -> Result<()> {
        for spec in role_specs(&self.cfg) {
            self.destroy_role(dry_run, &spec, steps).await?;
        }
        Ok(())
    }

    async fn destroy_role(
        &self,
        dry_run: bool,
        spec: &RoleSpec,
        steps: &mut Vec<Step>,
    ) -> Result<()> {
        let name = spec.name.clone();
        let have = self.observe_role(spec).await?;
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
            None if spec.profile => self.push(steps, PROFILE, &name, Action::Absent, ""),
            None => {}
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

    fn specs() -> [RoleSpec; 2] {
        role_specs(&crate::DeployConfig::new("c", "r"))
    }

    fn ours(spec: &RoleSpec) -> ObservedRole {
        ObservedRole {
            role: Some(true),
            arn: Some("arn:aws:iam::1:role/r".to_owned()),
            trust_same: true,
            policies: spec
                .policies
                .iter()
                .map(|(n, _)| ((*n).to_owned(), true))
                .collect(),
            profile: spec.profile.then(|| (true, vec![spec.name.clone()])),
        }
    }

    #[test]
    fn the_roles_and_profile_are_planned_from_what_exists() {
        let [instance, controller] = specs();
        assert_eq!(instance.name, "ecsmesh-c-instance");
        assert_eq!(controller.name, "ecsmesh-c-controller");
        assert_eq!(
            plan_role(&instance, &ObservedRole::default()).unwrap(),
            [
                Change::CreateRole,
                Change::PutPolicy("ecsmesh-instance", Action::Create),
                Change::CreateProfile,
                Change::AddRoleToProfile,
            ]
        );
        // The task role: no profile.
        assert_eq!(
            plan_role(&controller, &ObservedRole::default()).unwrap(),
            [
                Change::CreateRole,
                Change::PutPolicy("ecsmesh-controller", Action::Create),
            ]
        );
        assert!(plan_role(&instance, &ours(&instance)).unwrap().is_empty());
        assert!(
            plan_role(&controller, &ours(&controller))
                .unwrap()
                .is_empty()
        );
        let mut drift = ours(&instance);
        drift.trust_same = false;
        drift.policies[0].1 = false;
        drift.profile = Some((true, Vec::new()));
        assert_eq!(
            plan_role(&instance, &drift).unwrap(),
            [
                Change::UpdateTrust,
                Change::PutPolicy("ecsmesh-instance", Action::Update),
                Change::AddRoleToProfile,
            ]
        );
        let mut foreign = ours(&controller);
        foreign.role = Some(false);
        let err = plan_role(&controller, &foreign).unwrap_err().to_string();
        assert!(err.contains("--instance-profile"), "{err}");
    }

    /// The task role's policy names this cluster's queue and table only,
    /// and drops what `up` does not make.
    #[test]
    fn the_controller_policy_is_narrowed_to_the_cluster() {
        let mut cfg = crate::DeployConfig::new("prod", "eu-west-1");
        let doc: Value = serde_json::from_str(&controller_policy(&cfg)).unwrap();
        let resources: Vec<String> = doc["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["Resource"].to_string())
            .collect();
        assert_eq!(
            resources,
            [
                r#""*""#,
                r#""arn:aws:sqs:eu-west-1:*:ecsmesh-prod-events""#,
                r#""arn:aws:dynamodb:eu-west-1:*:table/ecsmesh-prod-dtabs""#
            ]
        );
        cfg.ecs_events = false;
        cfg.store = crate::StoreKind::File;
        let doc: Value = serde_json::from_str(&controller_policy(&cfg)).unwrap();
        assert_eq!(doc["Statement"].as_array().unwrap().len(), 1, "{doc:#}");
    }

    #[test]
    fn documents_compare_as_iam_gives_them_back() {
        let encoded = "%7B%22Version%22%3A%222012-10-17%22%2C%22Statement%22%3A%5B%7B%22Effect%22%3A%22Allow%22%2C%22Principal%22%3A%7B%22Service%22%3A%5B%22ec2.amazonaws.com%22%5D%7D%2C%22Action%22%3A%22sts%3AAssumeRole%22%7D%5D%7D";
        assert!(same_document(encoded, EC2_TRUST));
        assert!(!same_document(encoded, TASKS_TRUST));
        assert!(!same_document(encoded, INSTANCE_POLICIES[0].1));
        assert!(!same_document("%ZZ", EC2_TRUST));
    }
}
