//! The one interface every resource module implements, and the order the
//! driver runs them in.
//!
//! A module is one kind of resource, in the shape of a Terraform provider's
//! resource (read, plan, apply, delete) or a `kube-runtime` reconciler:
//!
//! - [`Resource::observe`] reads what exists (read-only API calls only);
//! - [`Resource::plan`] compares it with what is wanted, without I/O, and
//!   says what to do (create, unchanged, or update with what differs); each
//!   module unit-tests it;
//! - [`Resource::apply`] carries the plan out (create or put right) and
//!   reports each step, or with `dry_run` only reports it: `--dry-run` shows
//!   the plan from the same code;
//! - [`Resource::destroy`] removes what carries the owner tag (and reports
//!   what it leaves).
//!
//! What a module needs from the ones before it (the security group's id for
//! the launch template, the controller role's ARN for its task definition,
//! the balancer's address for the user data and the settings file) is its
//! typed [`Resource::Wanted`], which the driver (`ops`) builds from their
//! [`Resource::Output`]s. [`ORDER`] is the one list `up`, `status` and
//! `down` (backwards) walk; `Kind::needs` are its edges, checked by a
//! test: every kind comes after what it needs.

use crate::Step;
use crate::config::DeployConfig;
use crate::error::Result;
use crate::ops::Deployer;

/// One kind of resource: observe, plan, apply, destroy.
///
/// Associated functions (no `self`): a module has no state of its own, the
/// [`Deployer`] holds the settings and the clients.
pub(crate) trait Resource {
    /// Where it sits in [`ORDER`].
    const KIND: Kind;
    /// What `up` wants of it beyond the settings: earlier modules' outputs.
    type Wanted;
    /// What exists, as [`Resource::observe`] read it.
    type Observed;
    /// What to do, from [`Resource::plan`].
    type Plan;
    /// What later modules need from it.
    type Output;

    /// Reads what exists; calls only read APIs.
    async fn observe(d: &Deployer, want: &Self::Wanted) -> Result<Self::Observed>;

    /// What to do, from what is wanted and what exists; no I/O. An error:
    /// something exists that `up` must not use or change (another owner's
    /// resource of that name, a table with another key).
    fn plan(cfg: &DeployConfig, want: &Self::Wanted, have: &Self::Observed) -> Result<Self::Plan>;

    /// Carries out `plan` (with `dry_run`, calls no mutating API) and
    /// reports each step into `steps`.
    async fn apply(
        d: &Deployer,
        dry_run: bool,
        want: Self::Wanted,
        have: Self::Observed,
        plan: Self::Plan,
        steps: &mut Vec<Step>,
    ) -> Result<Self::Output>;

    /// Removes what carries the owner tag, whatever this run's flags (a
    /// resource an earlier `up` made with other flags goes too); reports
    /// what it deletes, what it keeps (not ours) and what is absent.
    async fn destroy(d: &Deployer, dry_run: bool, steps: &mut Vec<Step>) -> Result<()>;
}

/// The resource kinds, one a module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    /// The VPC, subnets and AMI `up` uses (read only: made by nobody).
    Network,
    /// The SSM parameters (TLS material, tokens).
    Secrets,
    /// The instances' role and profile, the controller's task role.
    Iam,
    /// The security group and its ingress rules.
    SecurityGroup,
    Cluster,
    /// The ECS events queue, dead-letter queue, rule and policy.
    Events,
    /// The dtab store's DynamoDB table.
    Table,
    /// The ECR repositories and the image pushes.
    Images,
    /// The controller's Network Load Balancer.
    LoadBalancer,
    /// The operator's directory and ecsmeshctl's settings file (local).
    Operator,
    TaskDefinitions,
    /// The launch template (or configuration) and the auto scaling group.
    Instances,
    Services,
}

/// `up`'s order (and `status`'s); `down` walks it backwards, so that
/// what uses a resource goes before it.
pub(crate) const ORDER: [Kind; 13] = [
    Kind::Network,
    Kind::Secrets,
    Kind::Iam,
    Kind::SecurityGroup,
    Kind::Cluster,
    Kind::Events,
    Kind::Table,
    Kind::Images,
    Kind::LoadBalancer,
    Kind::Operator,
    Kind::TaskDefinitions,
    Kind::Instances,
    Kind::Services,
];

/// `down`'s order: [`ORDER`] backwards.
pub(crate) fn down_order() -> impl Iterator<Item = Kind> {
    ORDER.into_iter().rev()
}

impl Kind {
    /// The kinds this one must come after in `up`: those whose outputs
    /// its wanted input is built from, and those that must exist before
    /// it is used (the secrets before an instance boots, the table before
    /// the controller runs). The dependency graph [`ORDER`] is checked
    /// against (the driver's code is what follows it).
    #[cfg(test)]
    pub(crate) fn needs(self) -> &'static [Kind] {
        match self {
            Self::Network
            | Self::Secrets
            | Self::Iam
            | Self::Cluster
            | Self::Events
            | Self::Table
            | Self::Images => &[],
            Self::SecurityGroup | Self::LoadBalancer => &[Self::Network],
            // The settings file names the balancer's address.
            Self::Operator => &[Self::Secrets, Self::LoadBalancer],
            // The role, the queue's URL, the images, the controller's address.
            Self::TaskDefinitions => &[Self::Iam, Self::Events, Self::Images, Self::LoadBalancer],
            Self::Instances => &[
                Self::Network,
                Self::Secrets,
                Self::Iam,
                Self::SecurityGroup,
                Self::Cluster,
                Self::Images,
                Self::LoadBalancer,
            ],
            // The revisions, the target group; the cluster and the table in use.
            Self::Services => &[
                Self::Cluster,
                Self::Table,
                Self::LoadBalancer,
                Self::TaskDefinitions,
                Self::Instances,
            ],
        }
    }

    /// The name the driver's errors use.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Network => "network",
            Self::Secrets => "secrets",
            Self::Iam => "iam",
            Self::SecurityGroup => "security-group",
            Self::Cluster => "cluster",
            Self::Events => "events",
            Self::Table => "table",
            Self::Images => "images",
            Self::LoadBalancer => "load-balancer",
            Self::Operator => "operator",
            Self::TaskDefinitions => "task-definitions",
            Self::Instances => "instances",
            Self::Services => "services",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_in_the_order_once() {
        let mut kinds = ORDER.to_vec();
        kinds.sort();
        kinds.dedup();
        assert_eq!(kinds.len(), ORDER.len());
    }

    #[test]
    fn every_kind_comes_after_what_it_needs() {
        for (i, kind) in ORDER.iter().enumerate() {
            for need in kind.needs() {
                let at = ORDER.iter().position(|k| k == need);
                assert!(
                    at.is_some_and(|at| at < i),
                    "{} needs {}, which comes after it",
                    kind.name(),
                    need.name()
                );
            }
        }
    }

    #[test]
    fn down_is_up_backwards() {
        let up: Vec<Kind> = ORDER.to_vec();
        let mut down: Vec<Kind> = down_order().collect();
        assert_eq!(down.first(), Some(&Kind::Services));
        assert_eq!(down.last(), Some(&Kind::Network));
        down.reverse();
        assert_eq!(down, up);
        // What uses a resource is destroyed before it.
        let down: Vec<Kind> = down_order().collect();
        for (i, kind) in down.iter().enumerate() {
            for need in kind.needs() {
                assert!(
                    down[i..].contains(need),
                    "{} before {}",
                    need.name(),
                    kind.name()
                );
            }
        }
    }
}
