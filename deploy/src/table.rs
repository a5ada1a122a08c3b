//! The DynamoDB table of the controller's dtab store (and its replicas'
//! leader lease), which `up` creates with the DynamoDB store (the default):
//! [`DeployConfig::dynamodb_table`], on-demand capacity, partition key `pk`
//! (a string, as `control-plane/src/store/dynamodb.rs` keys its items),
//! point-in-time recovery on (the overrides are the only state the mesh
//! keeps), tagged `ecsmesh:owner=<cluster>`. The controller gets
//! `ECSMESH_STORE=dynamodb` and `ECSMESH_DYNAMODB_TABLE`; its policy
//! (`iam/controller-policy.json`) allows exactly the item actions the store
//! and the lease use on such tables.
//!
//! A [`Resource`] like every module: observe (`observe_table`), plan
//! (`plan_table`, pure), apply, destroy (only when ours).

use aws_sdk_dynamodb as ddb;
use ddb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, PointInTimeRecoverySpecification,
    ScalarAttributeType, Tag,
};

use crate::config::{DeployConfig, OWNER_TAG};
use crate::error::{DeployError, Result};
use crate::ops::Deployer;
use crate::resource::{Kind, Resource};
use crate::{Action, Step};

/// The step kind of this module's report lines.
const TABLE: &str = "dynamodb-table";
/// The store's partition key (a string).
pub const PARTITION_KEY: &str = "pk";

/// How long `up` waits for a new table to be ACTIVE before turning on
/// point-in-time recovery (AWS: seconds).
const ACTIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_mins(2);
const POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// A table that exists.
#[derive(Clone, Debug)]
pub(crate) struct Table {
    arn: String,
    /// Partition key `pk` of type S and no sort key: what the store needs.
    key_ok: bool,
    on_demand: bool,
    /// `None`: not known (the table is not ACTIVE yet).
    point_in_time_recovery: Option<bool>,
    owned: bool,
}

/// What `up` does to the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TablePlan {
    Create,
    Update(Vec<&'static str>),
    Unchanged,
    /// Not ours: used as is.
    Foreign,
}

/// Compares the table with what `up` makes (no I/O). A key schema the
/// store cannot use is an error: changing it means a new table.
pub(crate) fn plan_table(name: &str, have: Option<&Table>) -> Result<TablePlan> {
    let Some(t) = have else {
        return Ok(TablePlan::Create);
    };
    if !t.key_ok {
        return Err(DeployError::State(format!(
            "DynamoDB table {name} exists with another key schema than the dtab store's \
             (partition key {PARTITION_KEY}, a string, no sort key): delete or rename it"
        )));
    }
    if !t.owned {
        return Ok(TablePlan::Foreign);
    }
    let mut diffs = Vec::new();
    if !t.on_demand {
        diffs.push("on-demand capacity");
    }
    if t.point_in_time_recovery == Some(false) {
        diffs.push("point-in-time recovery");
    }
    Ok(if diffs.is_empty() {
        TablePlan::Unchanged
    } else {
        TablePlan::Update(diffs)
    })
}

/// The dtab store's table (only with the DynamoDB store).
pub(crate) struct DtabTable;

impl Resource for DtabTable {
    const KIND: Kind = Kind::Table;
    type Wanted = ();
    /// The table, when it exists (not looked up without the DynamoDB store).
    type Observed = Option<Table>;
    /// `None`: not this run's store, nothing to do.
    type Plan = Option<TablePlan>;
    type Output = ();

    async fn observe(d: &Deployer, (): &()) -> Result<Option<Table>> {
        if !d.cfg.dynamodb_store() {
            return Ok(None);
        }
        d.observe_table().await
    }

    fn plan(cfg: &DeployConfig, (): &(), have: &Option<Table>) -> Result<Option<TablePlan>> {
        if !cfg.dynamodb_store() {
            return Ok(None);
        }
        plan_table(&cfg.dynamodb_table(), have.as_ref()).map(Some)
    }

    async fn apply(
        d: &Deployer,
        dry_run: bool,
        (): (),
        have: Option<Table>,
        plan: Option<TablePlan>,
        steps: &mut Vec<Step>,
    ) -> Result<()> {
        match plan {
            Some(plan) => d.apply_table(dry_run, have, plan, steps).await,
            None => Ok(()),
        }
    }

    async fn destroy(d: &Deployer, dry_run: bool, steps: &mut Vec<Step>) -> Result<()> {
        d.destroy_table(dry_run, steps).await
    }
}

impl Deployer {
    /// The table, if it exists.
    async fn observe_table(&self) -> Result<Option<Table>> {
        let name = self.cfg.dynamodb_table();
        let out = match self.ddb.describe_table().table_name(&name).send().await {
            Ok(o) => o,
            Err(e)
                if e.as_service_error().is_some_and(
                    ddb::operation::describe_table::DescribeTableError::is_resource_not_found_exception,
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(DeployError::aws("DescribeTable", &name, &e)),
        };
        let Some(t) = out.table() else {
            return Ok(None);
        };
        let arn = t.table_arn().unwrap_or_default().to_owned();
        let key_ok = matches!(t.key_schema(), [k] if k.attribute_name() == PARTITION_KEY
                && k.key_type() == &KeyType::Hash)
            && t.attribute_definitions().iter().any(|a| {
                a.attribute_name() == PARTITION_KEY && a.attribute_type() == &ScalarAttributeType::S
            });
        let on_demand = t
            .billing_mode_summary()
            .and_then(|b| b.billing_mode())
            .is_some_and(|m| m == &BillingMode::PayPerRequest);
        let active = t.table_status() == Some(&ddb::types::TableStatus::Active);
        let point_in_time_recovery = if active {
            let backups = self
                .ddb
                .describe_continuous_backups()
                .table_name(&name)
                .send()
                .await
                .map_err(|e| DeployError::aws("DescribeContinuousBackups", &name, &e))?;
            Some(
                backups
                    .continuous_backups_description()
                    .and_then(|d| d.point_in_time_recovery_description())
                    .and_then(|p| p.point_in_time_recovery_status())
                    == Some(&ddb::types::PointInTimeRecoveryStatus::Enabled),
            )
        } else {
            None
        };
        let tags = self
            .ddb
            .list_tags_of_resource()
            .resource_arn(&arn)
            .send()
            .await
            .map_err(|e| DeployError::aws("ListTagsOfResource", &name, &e))?;
        let owned = tags
            .tags()
            .iter()
            .any(|t| t.key() == OWNER_TAG && t.value() == self.cfg.owner());
        Ok(Some(Table {
            arn,
            key_ok,
            on_demand,
            point_in_time_recovery,
            owned,
        }))
    }

    /// Carries out the table's plan.
    async fn apply_table(
        &self,
        dry_run: bool,
        have: Option<Table>,
        plan: TablePlan,
        steps: &mut Vec<Step>,
    ) -> Result<()> {
        let name = self.cfg.dynamodb_table();
        match plan {
            TablePlan::Create => {
                if !dry_run {
                    self.create_table(&name).await?;
                    self.wait_active(&name).await?;
                    self.enable_point_in_time_recovery(&name).await?;
                }
                let detail =
                    format!("on-demand, partition key {PARTITION_KEY} (S), point-in-time recovery");
                self.push(steps, TABLE, &name, Action::Create, detail);
            }
            TablePlan::Update(diffs) => {
                if !dry_run {
                    if diffs.contains(&"on-demand capacity") {
                        self.ddb
                            .update_table()
                            .table_name(&name)
                            .billing_mode(BillingMode::PayPerRequest)
                            .send()
                            .await
                            .map_err(|e| DeployError::aws("UpdateTable", &name, &e))?;
                        self.wait_active(&name).await?;
                    }
                    if diffs.contains(&"point-in-time recovery") {
                        self.enable_point_in_time_recovery(&name).await?;
                    }
                }
                self.push(steps, TABLE, &name, Action::Update, diffs.join(", "));
            }
            TablePlan::Unchanged => {
                let arn = have.map(|t| t.arn).unwrap_or_default();
                self.push(steps, TABLE, &name, Action::Unchanged, arn);
            }
            TablePlan::Foreign => {
                let detail = "not owned by ecsmesh: used as is";
                self.push(steps, TABLE, &name, Action::Unchanged, detail);
            }
        }
        Ok(())
    }

    async fn create_table(&self, name: &str) -> Result<()> {
        let build = |e: ddb::error::BuildError| {
            DeployError::State(format!("the DynamoDB table's definition: {e}"))
        };
        self.ddb
            .create_table()
            .table_name(name)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(PARTITION_KEY)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(build)?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(PARTITION_KEY)
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(build)?,
            )
            .tags(
                Tag::builder()
                    .key(OWNER_TAG)
                    .value(self.cfg.owner())
                    .build()
                    .map_err(build)?,
            )
            .send()
            .await
            .map_err(|e| DeployError::aws("CreateTable", name, &e))?;
        Ok(())
    }

    async fn wait_active(&self, name: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + ACTIVE_TIMEOUT;
        loop {
            let out = self
                .ddb
                .describe_table()
                .table_name(name)
                .send()
                .await
                .map_err(|e| DeployError::aws("DescribeTable", name, &e))?;
            if out.table().and_then(|t| t.table_status()) == Some(&ddb::types::TableStatus::Active)
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(DeployError::State(format!(
                    "DynamoDB table {name} not ACTIVE after {} s: run up again later",
                    ACTIVE_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn enable_point_in_time_recovery(&self, name: &str) -> Result<()> {
        let spec = PointInTimeRecoverySpecification::builder()
            .point_in_time_recovery_enabled(true)
            .build()
            .map_err(|e| DeployError::State(format!("point-in-time recovery: {e}")))?;
        self.ddb
            .update_continuous_backups()
            .table_name(name)
            .point_in_time_recovery_specification(spec)
            .send()
            .await
            .map_err(|e| DeployError::aws("UpdateContinuousBackups", name, &e))?;
        Ok(())
    }

    /// `down`'s table, whatever this run's store: deleted when ours (the
    /// dtab overrides go with it).
    async fn destroy_table(&self, dry_run: bool, steps: &mut Vec<Step>) -> Result<()> {
        let name = self.cfg.dynamodb_table();
        match self.observe_table().await? {
            Some(t) if t.owned => {
                if !dry_run {
                    self.ddb
                        .delete_table()
                        .table_name(&name)
                        .send()
                        .await
                        .map_err(|e| DeployError::aws("DeleteTable", &name, &e))?;
                }
                self.push(
                    steps,
                    TABLE,
                    &name,
                    Action::Delete,
                    "with the dtab overrides",
                );
            }
            Some(_) => self.push_kept(steps, TABLE, &name),
            None => self.push(steps, TABLE, &name, Action::Absent, ""),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(key_ok: bool, on_demand: bool, pitr: Option<bool>, owned: bool) -> Table {
        Table {
            arn: "arn:aws:dynamodb:r:1:table/t".to_owned(),
            key_ok,
            on_demand,
            point_in_time_recovery: pitr,
            owned,
        }
    }

    #[test]
    fn the_table_is_planned_from_what_exists() {
        assert_eq!(plan_table("t", None).unwrap(), TablePlan::Create);
        let ok = table(true, true, Some(true), true);
        assert_eq!(plan_table("t", Some(&ok)).unwrap(), TablePlan::Unchanged);
        assert_eq!(
            plan_table("t", Some(&table(true, false, Some(false), true))).unwrap(),
            TablePlan::Update(vec!["on-demand capacity", "point-in-time recovery"])
        );
        // Not ACTIVE yet: recovery unknown, not a change.
        assert_eq!(
            plan_table("t", Some(&table(true, true, None, true))).unwrap(),
            TablePlan::Unchanged
        );
        assert_eq!(
            plan_table("t", Some(&table(true, false, Some(false), false))).unwrap(),
            TablePlan::Foreign
        );
        // A key the store cannot use: refused, ours or not.
        let err = plan_table("t", Some(&table(false, true, Some(true), true))).unwrap_err();
        assert!(err.to_string().contains("key schema"), "{err}");
    }

    /// The documented controller policy allows exactly the item actions the
    /// store and the lease use, on the tables `up` names and no others.
    #[test]
    fn the_controller_policy_allows_the_store_s_actions_on_its_tables() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../iam/controller-policy.json")).unwrap();
        let statements: Vec<&serde_json::Value> = doc["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["Action"].to_string().contains("dynamodb:"))
            .collect();
        assert_eq!(statements.len(), 1, "{doc:#}");
        let mut actions: Vec<&str> = statements[0]["Action"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        actions.sort_unstable();
        assert_eq!(
            actions,
            [
                "dynamodb:DeleteItem",
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:Scan",
                "dynamodb:UpdateItem"
            ]
        );
        // One `*` in the table part: the prefix and suffix around it.
        let resource = statements[0]["Resource"].as_str().unwrap();
        let (head, tail) = resource
            .strip_prefix("arn:aws:dynamodb:*:*:table/")
            .and_then(|t| t.split_once('*'))
            .unwrap();
        let cfg = crate::DeployConfig::new("prod-1", "eu-west-1");
        let table = cfg.dynamodb_table();
        assert!(
            table.starts_with(head) && table.ends_with(tail),
            "{resource}"
        );
        assert!(
            !"ecsmesh".ends_with(tail),
            "the controller's own default table is not allowed"
        );
    }
}
