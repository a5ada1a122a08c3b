//! The ECS cluster (tagged `ecsmesh:owner=<cluster>`) and what is
//! registered in it, as a [`Resource`]: observe (`cluster_active`: its tags
//! when ACTIVE), plan (`plan_cluster`, pure), apply (created unless
//! ACTIVE), destroy (when ours, its leftover container instances
//! deregistered and the cluster deleted). Also the lookups `status` and the
//! controller's endpoints use (container instances, their EC2 ids and
//! private IPs).

use std::collections::BTreeMap;

use aws_sdk_ec2 as ec2;
use aws_sdk_ecs as ecs;

use crate::config::{DeployConfig, OWNER_TAG};
use crate::error::{DeployError, Result};
use crate::ops::{Deployer, NOT_OWNED_KEPT, ecs_tag};
use crate::resource::{Kind, Resource};
use crate::{Action, Step};

/// What `up` does to the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClusterPlan {
    Create,
    /// ACTIVE, ours or not: a cluster has no settings `up` puts right, and
    /// one the user made is used as is (`down` leaves it).
    Unchanged,
}

/// Compares the cluster (its tags when ACTIVE) with what `up` makes (no I/O).
pub(crate) fn plan_cluster(have: Option<&BTreeMap<String, String>>) -> ClusterPlan {
    match have {
        None => ClusterPlan::Create,
        Some(_) => ClusterPlan::Unchanged,
    }
}

/// The ECS cluster.
pub(crate) struct Cluster;

impl Resource for Cluster {
    const KIND: Kind = Kind::Cluster;
    type Wanted = ();
    /// Its tags when ACTIVE.
    type Observed = Option<BTreeMap<String, String>>;
    type Plan = ClusterPlan;
    type Output = ();

    async fn observe(d: &Deployer, (): &()) -> Result<Self::Observed> {
        d.cluster_active().await
    }

    fn plan(_: &DeployConfig, (): &(), have: &Self::Observed) -> Result<ClusterPlan> {
        Ok(plan_cluster(have.as_ref()))
    }

    async fn apply(
        d: &Deployer,
        dry_run: bool,
        (): (),
        _: Self::Observed,
        plan: ClusterPlan,
        steps: &mut Vec<Step>,
    ) -> Result<()> {
        d.apply_cluster(dry_run, plan, steps).await
    }

    async fn destroy(d: &Deployer, dry_run: bool, steps: &mut Vec<Step>) -> Result<()> {
        d.destroy_cluster(dry_run, steps).await
    }
}

impl Deployer {
    /// Observe: the cluster's tags when it is ACTIVE.
    pub(crate) async fn cluster_active(&self) -> Result<Option<BTreeMap<String, String>>> {
        let out = self
            .ecs
            .describe_clusters()
            .clusters(&self.cfg.cluster)
            .include(ecs::types::ClusterField::Tags)
            .send()
            .await
            .map_err(|e| DeployError::aws("DescribeClusters", &self.cfg.cluster, &e))?;
        Ok(out
            .clusters()
            .iter()
            .find(|c| c.status() == Some("ACTIVE"))
            .map(|c| {
                c.tags()
                    .iter()
                    .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
                    .collect()
            }))
    }

    /// The EC2 instances registered in the cluster (ACTIVE or DRAINING), by
    /// container instance ARN; none when the cluster is not active.
    pub async fn cluster_instances(&self) -> Result<BTreeMap<String, String>> {
        if self.cluster_active().await?.is_none() {
            return Ok(BTreeMap::new());
        }
        self.registered_instances().await
    }

    /// [`Self::cluster_instances`] of a cluster known to be active.
    async fn registered_instances(&self) -> Result<BTreeMap<String, String>> {
        let mut arns = Vec::new();
        let mut pages = self
            .ecs
            .list_container_instances()
            .cluster(&self.cfg.cluster)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page
                .map_err(|e| DeployError::aws("ListContainerInstances", &self.cfg.cluster, &e))?;
            arns.extend(page.container_instance_arns().iter().cloned());
        }
        self.ec2_instance_ids(arns).await
    }

    /// Container instance ARN -> EC2 instance id.
    pub(crate) async fn ec2_instance_ids(
        &self,
        mut container_instances: Vec<String>,
    ) -> Result<BTreeMap<String, String>> {
        container_instances.sort();
        container_instances.dedup();
        let mut ids = BTreeMap::new();
        for batch in container_instances.chunks(100) {
            let out = self
                .ecs
                .describe_container_instances()
                .cluster(&self.cfg.cluster)
                .set_container_instances(Some(batch.to_vec()))
                .send()
                .await
                .map_err(|e| {
                    DeployError::aws("DescribeContainerInstances", &self.cfg.cluster, &e)
                })?;
            for ci in out.container_instances() {
                if let (Some(arn), Some(iid)) = (ci.container_instance_arn(), ci.ec2_instance_id())
                {
                    ids.insert(arn.to_owned(), iid.to_owned());
                }
            }
        }
        Ok(ids)
    }

    /// EC2 instance id -> private IP.
    pub(crate) async fn private_ips(
        &self,
        mut instance_ids: Vec<String>,
    ) -> Result<BTreeMap<String, String>> {
        instance_ids.sort();
        instance_ids.dedup();
        let mut ips = BTreeMap::new();
        if instance_ids.is_empty() {
            return Ok(ips);
        }
        let resource = instance_ids.join(",");
        let mut pages = self
            .ec2
            .describe_instances()
            .set_instance_ids(Some(instance_ids))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| DeployError::aws("DescribeInstances", &resource, &e))?;
            for i in page
                .reservations()
                .iter()
                .flat_map(ec2::types::Reservation::instances)
            {
                if let (Some(id), Some(ip)) = (i.instance_id(), i.private_ip_address()) {
                    ips.insert(id.to_owned(), ip.to_owned());
                }
            }
        }
        Ok(ips)
    }

    /// `up`'s ECS cluster: created (tagged) unless ACTIVE.
    async fn apply_cluster(
        &self,
        dry_run: bool,
        plan: ClusterPlan,
        steps: &mut Vec<Step>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        match plan {
            ClusterPlan::Unchanged => {
                self.push(steps, "cluster", &cfg.cluster, Action::Unchanged, "ACTIVE");
            }
            ClusterPlan::Create => {
                if !dry_run {
                    self.ecs
                        .create_cluster()
                        .cluster_name(&cfg.cluster)
                        .tags(ecs_tag(OWNER_TAG, &cfg.cluster))
                        .send()
                        .await
                        .map_err(|e| DeployError::aws("CreateCluster", &cfg.cluster, &e))?;
                }
                self.push(steps, "cluster", &cfg.cluster, Action::Create, "");
            }
        }
        Ok(())
    }

    /// `down`'s cluster when ours: ECS refuses to delete one with
    /// registered instances, and terminated instances leave theirs behind
    /// for a while, so they are deregistered.
    async fn destroy_cluster(&self, dry_run: bool, steps: &mut Vec<Step>) -> Result<()> {
        let cfg = &self.cfg;
        let tags = self.cluster_active().await?;
        let owned = tags
            .as_ref()
            .is_some_and(|t| t.get(OWNER_TAG).map(String::as_str) == Some(cfg.owner()));
        if owned {
            // Known ACTIVE (`owned`): no need to ask again.
            for (arn, iid) in self.registered_instances().await? {
                if !dry_run {
                    self.ecs
                        .deregister_container_instance()
                        .cluster(&cfg.cluster)
                        .container_instance(&arn)
                        .force(true)
                        .send()
                        .await
                        .map_err(|e| DeployError::aws("DeregisterContainerInstance", &arn, &e))?;
                }
                self.push(steps, "container-instance", iid, Action::Delete, arn);
            }
            if !dry_run {
                self.ecs
                    .delete_cluster()
                    .cluster(&cfg.cluster)
                    .send()
                    .await
                    .map_err(|e| DeployError::aws("DeleteCluster", &cfg.cluster, &e))?;
            }
            self.push(steps, "cluster", &cfg.cluster, Action::Delete, "");
        } else {
            let state = if tags.is_some() { NOT_OWNED_KEPT } else { "" };
            let action = if state.is_empty() {
                Action::Absent
            } else {
                Action::Unchanged
            };
            self.push(steps, "cluster", &cfg.cluster, action, state);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_creates_an_absent_cluster() {
        assert_eq!(plan_cluster(None), ClusterPlan::Create);
    }

    #[test]
    fn plan_leaves_an_active_cluster() {
        let ours = BTreeMap::from([(OWNER_TAG.to_owned(), "demo".to_owned())]);
        assert_eq!(plan_cluster(Some(&ours)), ClusterPlan::Unchanged);
    }

    #[test]
    fn plan_uses_a_foreign_cluster_as_is() {
        // No owner tag: not ours, but there is nothing to put right either.
        assert_eq!(plan_cluster(Some(&BTreeMap::new())), ClusterPlan::Unchanged);
    }
}
