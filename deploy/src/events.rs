//! ECS events as the controller's fast path, which `up` sets up unless
//! `--no-events`: an SQS queue ([`DeployConfig::events_queue_name`]) with a
//! dead-letter queue, an EventBridge rule on the default bus that sends the
//! cluster's task and container instance changes to it, and a queue policy
//! that lets only that rule send. The controller long-polls the queue
//! (`ECSMESH_ECS_EVENTS_QUEUE_URL`, see control-plane's `ecs_events`).
//!
//! A [`Resource`] like every module: observe (`find_queue`, `find_rule`),
//! plan (`plan_events`, pure: each piece compared with what `up` would
//! make, the ARNs it names made from the account and region of what
//! exists), apply, destroy. A second `up` changes nothing and drift (a
//! changed pattern, a missing target or policy, other queue attributes) is
//! put right and reported. The queues and the rule carry the owner tag;
//! `down` deletes only those.

use std::collections::HashMap;

use aws_sdk_eventbridge as eventbridge;
use aws_sdk_sqs as sqs;
use serde_json::{Value, json};
use sqs::types::QueueAttributeName as Attr;

use crate::config::{DeployConfig, EVENTS_MAX_RECEIVE_COUNT, OWNER_TAG};
use crate::error::{DeployError, Result};
use crate::ops::Deployer;
use crate::resource::{Kind, Resource};
use crate::{Action, Step};

/// The step kinds of this module's report lines.
const QUEUE: &str = "sqs-queue";
const POLICY: &str = "sqs-queue-policy";
const RULE: &str = "event-rule";
const TARGET: &str = "event-target";

/// The events the controller applies (the rest it would only delete).
pub const EVENT_DETAIL_TYPES: [&str; 2] = [
    "ECS Task State Change",
    "ECS Container Instance State Change",
];

/// The queue's id among the rule's targets.
const TARGET_ID: &str = "ecsmesh-events-queue";

/// One day: an older change is long covered by the full resync (5 min).
const QUEUE_RETENTION_S: u32 = 86_400;
/// A message the controller could not apply comes back after this; with
/// [`EVENTS_MAX_RECEIVE_COUNT`] receives it reaches the dead-letter queue
/// after about five minutes, when the full resync has covered it.
const QUEUE_VISIBILITY_S: u32 = 60;
/// SQS's longest: what failed stays there to be looked at.
const DLQ_RETENTION_S: u32 = 1_209_600;

/// SQS refuses to create a queue for 60 s after one of that name was
/// deleted (`down` then `up`): `up` waits that out.
const QUEUE_RECREATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(75);
const QUEUE_RECREATE_POLL: std::time::Duration = std::time::Duration::from_secs(5);

/// A queue that exists.
#[derive(Debug)]
struct Queue {
    url: String,
    arn: String,
    attributes: HashMap<Attr, String>,
    /// Tagged `ecsmesh:owner=<cluster>`: ours to delete.
    owned: bool,
}

/// The rule, when it exists.
#[derive(Debug)]
struct Rule {
    arn: String,
    pattern: Option<String>,
    enabled: bool,
    owned: bool,
    /// Its targets: id -> ARN.
    targets: HashMap<String, String>,
}

/// The partition, region and account of an ARN (`arn:P:service:R:A:...`):
/// the ARNs of the cluster, and of what a dry run has not created, follow.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ArnBase {
    partition: String,
    region: String,
    account: String,
}

impl ArnBase {
    fn parse(arn: &str) -> Option<Self> {
        let mut parts = arn.splitn(6, ':');
        if parts.next()? != "arn" {
            return None;
        }
        let partition = parts.next()?;
        let _service = parts.next()?;
        let (region, account) = (parts.next()?, parts.next()?);
        parts.next()?;
        (!partition.is_empty() && !region.is_empty() && !account.is_empty()).then(|| Self {
            partition: partition.to_owned(),
            region: region.to_owned(),
            account: account.to_owned(),
        })
    }

    fn arn(&self, service: &str, resource: &str) -> String {
        format!(
            "arn:{}:{service}:{}:{}:{resource}",
            self.partition, self.region, self.account
        )
    }
}

/// The rule's pattern: the two kinds of change, of this cluster only (ECS
/// puts the cluster's ARN in every event's `detail.clusterArn`).
fn event_pattern(cluster_arn: &str) -> Value {
    json!({
        "source": ["aws.ecs"],
        "detail-type": EVENT_DETAIL_TYPES,
        "detail": { "clusterArn": [cluster_arn] },
    })
}

/// The queue policy: EventBridge may send, and only for this rule (without
/// the condition any rule in any account could fill the queue).
fn queue_policy(queue_arn: &str, rule_arn: &str) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "EcsmeshEcsEventsFromTheRule",
            "Effect": "Allow",
            "Principal": { "Service": "events.amazonaws.com" },
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": { "ArnEquals": { "aws:SourceArn": rule_arn } },
        }],
    })
}

fn dlq_attributes() -> Vec<(Attr, String)> {
    vec![
        (Attr::SqsManagedSseEnabled, "true".to_owned()),
        (Attr::MessageRetentionPeriod, DLQ_RETENTION_S.to_string()),
    ]
}

fn queue_attributes(dlq_arn: &str) -> Vec<(Attr, String)> {
    let redrive = json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": EVENTS_MAX_RECEIVE_COUNT,
    });
    vec![
        (Attr::SqsManagedSseEnabled, "true".to_owned()),
        (Attr::MessageRetentionPeriod, QUEUE_RETENTION_S.to_string()),
        (Attr::VisibilityTimeout, QUEUE_VISIBILITY_S.to_string()),
        (Attr::RedrivePolicy, redrive.to_string()),
    ]
}

/// A JSON document in the form AWS may give it back in: one-element arrays
/// as their element (`"Action": ["x"]` is `"Action": "x"`) and a redrive
/// policy's count as a number.
fn normalize(v: Value) -> Value {
    match v {
        Value::Array(mut items) if items.len() == 1 => normalize(items.remove(0)),
        Value::Array(items) => Value::Array(items.into_iter().map(normalize).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("maxReceiveCount", Value::String(s)) => {
                            s.parse::<u64>().map_or(Value::String(s), Value::from)
                        }
                        (_, v) => normalize(v),
                    };
                    (k, v)
                })
                .collect(),
        ),
        v => v,
    }
}

/// Whether a document AWS holds says what `want` says.
fn same_json(have: Option<&str>, want: &Value) -> bool {
    have.and_then(|h| serde_json::from_str::<Value>(h).ok())
        .is_some_and(|h| normalize(h) == normalize(want.clone()))
}

/// The attributes whose values differ from `want` (JSON ones compared as
/// documents), by name.
fn attribute_diffs(have: &HashMap<Attr, String>, want: &[(Attr, String)]) -> Vec<String> {
    want.iter()
        .filter(|(name, value)| {
            let have = have.get(name).map(String::as_str);
            match name {
                Attr::RedrivePolicy | Attr::Policy => serde_json::from_str::<Value>(value)
                    .map_or(true, |want| !same_json(have, &want)),
                _ => have != Some(value.as_str()),
            }
        })
        .map(|(name, _)| name.as_str().to_owned())
        .collect()
}

fn owner_tag(cfg_owner: &str) -> Result<eventbridge::types::Tag> {
    eventbridge::types::Tag::builder()
        .key(OWNER_TAG)
        .value(cfg_owner)
        .build()
        .map_err(|e| DeployError::State(format!("tagging the events rule: {e}")))
}

/// The queues and the rule as they are.
#[derive(Debug, Default)]
pub(crate) struct ObservedEvents {
    dlq: Option<Queue>,
    queue: Option<Queue>,
    rule: Option<Rule>,
}

impl ObservedEvents {
    /// The account and region of what exists (none when nothing does).
    fn arn_base(&self) -> Option<ArnBase> {
        [&self.dlq, &self.queue]
            .into_iter()
            .flatten()
            .map(|q| q.arn.as_str())
            .chain(self.rule.as_ref().map(|r| r.arn.as_str()))
            .find_map(ArnBase::parse)
    }
}

/// What `up` does to a queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum QueuePlan {
    Create,
    Unchanged,
    /// The attributes that differ, by name.
    Update(Vec<String>),
}

/// What `up` does to the rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RulePlan {
    Create,
    Unchanged,
    /// What differs: the pattern, the state.
    Update(Vec<&'static str>),
}

/// What `up` does to the events plumbing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EventsPlan {
    dlq: QueuePlan,
    queue: QueuePlan,
    rule: RulePlan,
    /// The rule's target: create, update or unchanged.
    target: Action,
    /// The queue's policy: create, update or unchanged.
    policy: Action,
    /// Whether the queue's attributes and its policy are set (one call).
    set_queue_attributes: bool,
}

fn plan_queue(have: Option<&Queue>, want: &[(Attr, String)]) -> QueuePlan {
    let Some(q) = have else {
        return QueuePlan::Create;
    };
    let diffs = attribute_diffs(&q.attributes, want);
    if diffs.is_empty() {
        QueuePlan::Unchanged
    } else {
        QueuePlan::Update(diffs)
    }
}

/// Compares the queues, the rule, its target and the queue's policy with
/// what `up` makes (no I/O). The ARNs they name are those of what exists,
/// else made from the account and region of what exists; when nothing
/// exists everything is created.
pub(crate) fn plan_events(cfg: &DeployConfig, have: &ObservedEvents) -> EventsPlan {
    let base = have.arn_base();
    let arn = |q: Option<&Queue>, service: &str, resource: String| {
        q.map(|q| q.arn.clone())
            .or_else(|| base.as_ref().map(|b| b.arn(service, &resource)))
    };
    let dlq_arn = arn(have.dlq.as_ref(), "sqs", cfg.events_dlq_name());
    let queue_arn = arn(have.queue.as_ref(), "sqs", cfg.events_queue_name());
    let rule_arn = have.rule.as_ref().map(|r| r.arn.clone()).or_else(|| {
        let name = cfg.events_rule_name();
        base.as_ref()
            .map(|b| b.arn("events", &format!("rule/{name}")))
    });
    let cluster_arn = base
        .as_ref()
        .map(|b| b.arn("ecs", &format!("cluster/{}", cfg.cluster)));

    let want = queue_attributes(dlq_arn.as_deref().unwrap_or_default());
    let rule = match &have.rule {
        None => RulePlan::Create,
        Some(r) => {
            let pattern = event_pattern(cluster_arn.as_deref().unwrap_or_default());
            let mut diffs = Vec::new();
            if cluster_arn.is_none() || !same_json(r.pattern.as_deref(), &pattern) {
                diffs.push("event pattern");
            }
            if !r.enabled {
                diffs.push("state (disabled)");
            }
            if diffs.is_empty() {
                RulePlan::Unchanged
            } else {
                RulePlan::Update(diffs)
            }
        }
    };
    let have_target = have.rule.as_ref().and_then(|r| r.targets.get(TARGET_ID));
    let target = match have_target {
        Some(t) if queue_arn.as_ref() == Some(t) => Action::Unchanged,
        Some(_) => Action::Update,
        None => Action::Create,
    };
    let have_attributes = have.queue.as_ref().map(|q| &q.attributes);
    let have_policy = have_attributes.and_then(|a| a.get(&Attr::Policy));
    let policy_ok = rule_arn.as_deref().is_some_and(|rule_arn| {
        let policy = queue_policy(queue_arn.as_deref().unwrap_or_default(), rule_arn);
        same_json(have_policy.map(String::as_str), &policy)
    });
    let attributes_ok = have_attributes.is_some_and(|a| attribute_diffs(a, &want).is_empty());
    EventsPlan {
        dlq: plan_queue(have.dlq.as_ref(), &dlq_attributes()),
        queue: plan_queue(have.queue.as_ref(), &want),
        rule,
        target,
        policy: match (policy_ok, have_policy) {
            (true, _) => Action::Unchanged,
            (false, Some(_)) => Action::Update,
            (false, None) => Action::Create,
        },
        set_queue_attributes: !(policy_ok && attributes_ok),
    }
}

/// The ECS events queue, its dead-letter queue, the rule and its target,
/// and the queue's policy (unless `--no-events`).
pub(crate) struct EcsEvents;

impl Resource for EcsEvents {
    const KIND: Kind = Kind::Events;
    type Wanted = ();
    /// `None`: `--no-events` (not looked up).
    type Observed = Option<ObservedEvents>;
    type Plan = Option<EventsPlan>;
    /// The queue's URL for the controller's task definition (`None` with
    /// `--no-events`, or in a dry run before the queue exists).
    type Output = Option<String>;

    async fn observe(d: &Deployer, (): &()) -> Result<Self::Observed> {
        let cfg = &d.cfg;
        if !cfg.ecs_events {
            return Ok(None);
        }
        Ok(Some(ObservedEvents {
            dlq: d.find_queue(&cfg.events_dlq_name()).await?,
            queue: d.find_queue(&cfg.events_queue_name()).await?,
            rule: d.find_rule(&cfg.events_rule_name()).await?,
        }))
    }

    fn plan(cfg: &DeployConfig, (): &(), have: &Self::Observed) -> Result<Self::Plan> {
        Ok(have.as_ref().map(|h| plan_events(cfg, h)))
    }

    async fn apply(
        d: &Deployer,
        dry_run: bool,
        (): (),
        have: Self::Observed,
        plan: Self::Plan,
        steps: &mut Vec<Step>,
    ) -> Result<Option<String>> {
        match (have, plan) {
            (Some(have), Some(plan)) => d.apply_events(dry_run, have, plan, steps).await,
            _ => Ok(None),
        }
    }

    async fn destroy(d: &Deployer, dry_run: bool, steps: &mut Vec<Step>) -> Result<()> {
        d.destroy_events(dry_run, steps).await
    }
}

impl Deployer {
    /// The queue of that name, if it exists.
    async fn find_queue(&self, name: &str) -> Result<Option<Queue>> {
        let url = match self.sqs.get_queue_url().queue_name(name).send().await {
            Ok(out) => out.queue_url().unwrap_or_default().to_owned(),
            Err(e) => {
                let missing = e.as_service_error().is_some_and(
                    sqs::operation::get_queue_url::GetQueueUrlError::is_queue_does_not_exist,
                );
                let err = DeployError::aws("GetQueueUrl", name, &e);
                // The query protocol's code, which some endpoints still send.
                if missing || err.aws_code() == Some("AWS.SimpleQueueService.NonExistentQueue") {
                    return Ok(None);
                }
                return Err(err);
            }
        };
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(Attr::All)
            .send()
            .await
            .map_err(|e| DeployError::aws("GetQueueAttributes", name, &e))?
            .attributes()
            .cloned()
            .unwrap_or_default();
        let arn = attributes.get(&Attr::QueueArn).cloned().ok_or_else(|| {
            DeployError::State(format!(
                "GetQueueAttributes {name}: no QueueArn in the answer"
            ))
        })?;
        let tags = self
            .sqs
            .list_queue_tags()
            .queue_url(&url)
            .send()
            .await
            .map_err(|e| DeployError::aws("ListQueueTags", name, &e))?;
        let owned = tags
            .tags()
            .and_then(|t| t.get(OWNER_TAG))
            .is_some_and(|v| v == self.cfg.owner());
        Ok(Some(Queue {
            url,
            arn,
            attributes,
            owned,
        }))
    }

    /// The rule of that name on the default bus, if it exists, with its
    /// targets and whether it is ours.
    async fn find_rule(&self, name: &str) -> Result<Option<Rule>> {
        let out = match self.events.describe_rule().name(name).send().await {
            Ok(out) => out,
            Err(e)
                if e.as_service_error().is_some_and(
                    eventbridge::operation::describe_rule::DescribeRuleError::is_resource_not_found_exception,
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(DeployError::aws("DescribeRule", name, &e)),
        };
        let arn = out.arn().unwrap_or_default().to_owned();
        let tags = self
            .events
            .list_tags_for_resource()
            .resource_arn(&arn)
            .send()
            .await
            .map_err(|e| DeployError::aws("ListTagsForResource", name, &e))?;
        let owned = tags
            .tags()
            .iter()
            .any(|t| t.key() == OWNER_TAG && t.value() == self.cfg.owner());
        // At most 5 targets a rule: one page.
        let targets = self
            .events
            .list_targets_by_rule()
            .rule(name)
            .send()
            .await
            .map_err(|e| DeployError::aws("ListTargetsByRule", name, &e))?
            .targets()
            .iter()
            .map(|t| (t.id().to_owned(), t.arn().to_owned()))
            .collect();
        Ok(Some(Rule {
            arn,
            pattern: out.event_pattern().map(str::to_owned),
            enabled: out.state() == Some(&eventbridge::types::RuleState::Enabled),
            owned,
            targets,
        }))
    }

    /// Creates a queue tagged as ours, waiting out SQS's minute after a
    /// deletion of the same name. Returns its URL and ARN.
    async fn create_queue(
        &self,
        name: &str,
        attributes: &[(Attr, String)],
    ) -> Result<(String, String)> {
        let deadline = tokio::time::Instant::now() + QUEUE_RECREATE_TIMEOUT;
        let url = loop {
            let sent = self
                .sqs
                .create_queue()
                .queue_name(name)
                .set_attributes(Some(attributes.iter().cloned().collect()))
                .tags(OWNER_TAG, self.cfg.owner())
                .send()
                .await;
            match sent {
                Ok(out) => break out.queue_url().unwrap_or_default().to_owned(),
                Err(e) => {
                    let recent = e.as_service_error().is_some_and(
                        sqs::operation::create_queue::CreateQueueError::is_queue_deleted_recently,
                    );
                    if !recent || tokio::time::Instant::now() >= deadline {
                        return Err(DeployError::aws("CreateQueue", name, &e));
                    }
                    self.progress_only(
                        QUEUE,
                        name,
                        Action::Create,
                        "deleted less than a minute ago: waiting until SQS allows the name again",
                    );
                }
            }
            tokio::time::sleep(QUEUE_RECREATE_POLL).await;
        };
        let arn = self
            .sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(Attr::QueueArn)
            .send()
            .await
            .map_err(|e| DeployError::aws("GetQueueAttributes", name, &e))?
            .attributes()
            .and_then(|a| a.get(&Attr::QueueArn))
            .cloned()
            .ok_or_else(|| {
                DeployError::State(format!(
                    "GetQueueAttributes {name}: no QueueArn in the answer"
                ))
            })?;
        Ok((url, arn))
    }

    /// Carries out the events plan, in dependency order: the dead-letter
    /// queue, the queue, the rule (its pattern names the cluster), the
    /// rule's target (the queue) and the queue's policy (it names the
    /// rule). The ARNs are those of what exists or was made, else made from
    /// the account and region of what exists. Returns the queue's URL for
    /// the controller's task definition (`None` in a dry run before the
    /// queue exists).
    async fn apply_events(
        &self,
        dry_run: bool,
        have: ObservedEvents,
        plan: EventsPlan,
        steps: &mut Vec<Step>,
    ) -> Result<Option<String>> {
        let cfg = &self.cfg;
        let (dlq_name, queue_name) = (cfg.events_dlq_name(), cfg.events_queue_name());
        let mut base = have.arn_base();

        // 1. The dead-letter queue.
        let dlq_want = dlq_attributes();
        let made = self
            .apply_queue(
                dry_run,
                &dlq_name,
                have.dlq.as_ref(),
                &dlq_want,
                plan.dlq,
                steps,
            )
            .await?;
        let dlq_arn = made.map(|(_, arn)| arn);
        base = base.or_else(|| dlq_arn.as_deref().and_then(ArnBase::parse));
        let dlq_arn = dlq_arn.or_else(|| base.as_ref().map(|b| b.arn("sqs", &dlq_name)));
        let want = queue_attributes(dlq_arn.as_deref().unwrap_or_default());

        // 2. The queue. A change to an existing one is applied with the
        // policy (step 5), which names the rule made in between.
        let made = self
            .apply_queue(
                dry_run,
                &queue_name,
                have.queue.as_ref(),
                &want,
                plan.queue,
                steps,
            )
            .await?;
        let (queue_url, queue_arn) = made.unzip();
        base = base.or_else(|| queue_arn.as_deref().and_then(ArnBase::parse));
        let queue_arn = queue_arn.or_else(|| base.as_ref().map(|b| b.arn("sqs", &queue_name)));

        // 3. The rule, and 4. its target.
        let cluster_arn = base
            .as_ref()
            .map(|b| b.arn("ecs", &format!("cluster/{}", cfg.cluster)));
        let rule_arn = self
            .apply_rule(
                dry_run,
                have.rule.as_ref(),
                cluster_arn.as_deref(),
                plan.rule,
                steps,
            )
            .await?
            .or_else(|| {
                let name = cfg.events_rule_name();
                base.as_ref()
                    .map(|b| b.arn("events", &format!("rule/{name}")))
            });
        self.apply_target(dry_run, plan.target, queue_arn.as_deref(), steps)
            .await?;

        // 5. The queue's policy, with the queue's other attributes.
        if plan.set_queue_attributes && !dry_run {
            let policy = queue_policy(
                queue_arn.as_deref().unwrap_or_default(),
                rule_arn.as_deref().unwrap_or_default(),
            );
            let mut all = want;
            // All of them in one call: some emulators reset what is left out.
            all.push((Attr::Policy, policy.to_string()));
            let url = queue_url.as_deref().unwrap_or_default();
            self.set_queue_attributes(url, &queue_name, all).await?;
        }
        let detail = format!(
            "sqs:SendMessage from events.amazonaws.com for {}",
            rule_arn.as_deref().unwrap_or("the rule")
        );
        self.push(steps, POLICY, &queue_name, plan.policy, detail);
        Ok(queue_url)
    }

    /// A queue's plan: created (with `want`, tagged), or reported. A
    /// dead-letter queue that differs is updated here; the events queue is
    /// updated with its policy ([`Self::apply_events`]). Its URL and ARN
    /// (none in a dry run before it exists).
    async fn apply_queue(
        &self,
        dry_run: bool,
        name: &str,
        have: Option<&Queue>,
        want: &[(Attr, String)],
        plan: QueuePlan,
        steps: &mut Vec<Step>,
    ) -> Result<Option<(String, String)>> {
        let dead_letter = name == self.cfg.events_dlq_name();
        let q = match (plan, have) {
            (QueuePlan::Create, _) | (_, None) => {
                let made = if dry_run {
                    None
                } else {
                    Some(self.create_queue(name, want).await?)
                };
                let detail = if dead_letter {
                    format!("dead-letter queue, SSE, retention {DLQ_RETENTION_S} s")
                } else {
                    format!(
                        "SSE, retention {QUEUE_RETENTION_S} s, visibility {QUEUE_VISIBILITY_S} \
                         s, to {} after {EVENTS_MAX_RECEIVE_COUNT} receives",
                        self.cfg.events_dlq_name()
                    )
                };
                self.push(steps, QUEUE, name, Action::Create, detail);
                return Ok(made);
            }
            (QueuePlan::Unchanged, Some(q)) => {
                self.push(steps, QUEUE, name, Action::Unchanged, &q.url);
                q
            }
            (QueuePlan::Update(diffs), Some(q)) => {
                if dead_letter && !dry_run {
                    self.set_queue_attributes(&q.url, name, want.to_vec())
                        .await?;
                }
                self.push(steps, QUEUE, name, Action::Update, diffs.join(", "));
                q
            }
        };
        Ok(Some((q.url.clone(), q.arn.clone())))
    }

    /// The rule's plan: this cluster's task and container instance changes
    /// (`cluster_arn` unknown only in a dry run before anything exists).
    /// Its ARN, when it exists or was made.
    async fn apply_rule(
        &self,
        dry_run: bool,
        have: Option<&Rule>,
        cluster_arn: Option<&str>,
        plan: RulePlan,
        steps: &mut Vec<Step>,
    ) -> Result<Option<String>> {
        let cfg = &self.cfg;
        let name = cfg.events_rule_name();
        let (action, detail) = match plan {
            RulePlan::Unchanged => {
                let detail = cluster_arn.unwrap_or_default();
                self.push(steps, RULE, &name, Action::Unchanged, detail);
                return Ok(have.map(|r| r.arn.clone()));
            }
            RulePlan::Update(diffs) => (Action::Update, diffs.join(", ")),
            RulePlan::Create => (
                Action::Create,
                format!(
                    "{}: {}",
                    EVENT_DETAIL_TYPES.join(", "),
                    cluster_arn.unwrap_or("the cluster")
                ),
            ),
        };
        let mut made = None;
        if !dry_run {
            let pattern = event_pattern(cluster_arn.unwrap_or_default());
            let mut req = self
                .events
                .put_rule()
                .name(&name)
                .event_pattern(pattern.to_string())
                .state(eventbridge::types::RuleState::Enabled)
                .description(format!(
                    "ecsmesh cluster {}: ECS task and container instance changes to {}",
                    cfg.cluster,
                    cfg.events_queue_name()
                ));
            // PutRule applies tags to a new rule only.
            if have.is_none() {
                req = req.tags(owner_tag(cfg.owner())?);
            }
            let out = req
                .send()
                .await
                .map_err(|e| DeployError::aws("PutRule", &name, &e))?;
            made = out.rule_arn().map(str::to_owned);
        }
        self.push(steps, RULE, &name, action, detail);
        Ok(made.or_else(|| have.map(|r| r.arn.clone())))
    }

    /// The rule's target, the queue (other targets someone added are
    /// left): `action` from the plan.
    async fn apply_target(
        &self,
        dry_run: bool,
        action: Action,
        queue_arn: Option<&str>,
        steps: &mut Vec<Step>,
    ) -> Result<()> {
        let (name, queue_name) = (self.cfg.events_rule_name(), self.cfg.events_queue_name());
        if action.is_change() && !dry_run {
            let target = eventbridge::types::Target::builder()
                .id(TARGET_ID)
                .arn(queue_arn.unwrap_or_default())
                .build()
                .map_err(|e| DeployError::State(format!("the events rule's target: {e}")))?;
            let out = self
                .events
                .put_targets()
                .rule(&name)
                .targets(target)
                .send()
                .await
                .map_err(|e| DeployError::aws("PutTargets", &name, &e))?;
            // PutTargets answers a refused target in its body, not as an error.
            if let Some(f) = out.failed_entries().first() {
                return Err(DeployError::Aws {
                    operation: "PutTargets",
                    resource: name,
                    code: f.error_code().map(str::to_owned),
                    message: f.error_message().unwrap_or("target refused").to_owned(),
                });
            }
        }
        self.push(steps, TARGET, &name, action, &queue_name);
        Ok(())
    }

    async fn set_queue_attributes(
        &self,
        url: &str,
        name: &str,
        attributes: Vec<(Attr, String)>,
    ) -> Result<()> {
        self.sqs
            .set_queue_attributes()
            .queue_url(url)
            .set_attributes(Some(attributes.into_iter().collect()))
            .send()
            .await
            .map_err(|e| DeployError::aws("SetQueueAttributes", name, &e))?;
        Ok(())
    }

    /// `down`'s events plumbing, whatever this run's `--no-events`: the
    /// rule's targets and the rule, then the queue and its dead-letter
    /// queue, each only when tagged ours.
    async fn destroy_events(&self, dry_run: bool, steps: &mut Vec<Step>) -> Result<()> {
        let cfg = &self.cfg;
        let rule_name = cfg.events_rule_name();
        match self.find_rule(&rule_name).await? {
            Some(rule) if rule.owned => {
                // EventBridge refuses to delete a rule that has targets.
                let mut ids: Vec<String> = rule.targets.into_keys().collect();
                ids.sort();
                if !ids.is_empty() {
                    if !dry_run {
                        self.events
                            .remove_targets()
                            .rule(&rule_name)
                            .set_ids(Some(ids.clone()))
                            .send()
                            .await
                            .map_err(|e| DeployError::aws("RemoveTargets", &rule_name, &e))?;
                    }
                    self.push(steps, TARGET, &rule_name, Action::Delete, ids.join(","));
                }
                if !dry_run {
                    self.events
                        .delete_rule()
                        .name(&rule_name)
                        .send()
                        .await
                        .map_err(|e| DeployError::aws("DeleteRule", &rule_name, &e))?;
                }
                self.push(steps, RULE, &rule_name, Action::Delete, "");
            }
            Some(_) => self.push_kept(steps, RULE, &rule_name),
            None => self.push(steps, RULE, &rule_name, Action::Absent, ""),
        }
        // The queue before the dead-letter queue its redrive policy names.
        for name in [cfg.events_queue_name(), cfg.events_dlq_name()] {
            match self.find_queue(&name).await? {
                Some(q) if q.owned => {
                    if !dry_run {
                        self.sqs
                            .delete_queue()
                            .queue_url(&q.url)
                            .send()
                            .await
                            .map_err(|e| DeployError::aws("DeleteQueue", &name, &e))?;
                    }
                    self.push(steps, QUEUE, name, Action::Delete, "");
                }
                Some(_) => self.push_kept(steps, QUEUE, name),
                None => self.push(steps, QUEUE, name, Action::Absent, ""),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUEUE_ARN: &str = "arn:aws:sqs:eu-west-1:123456789012:ecsmesh-prod-events";

    #[test]
    fn arns_follow_the_queue_s_account_and_region() {
        let base = ArnBase::parse(QUEUE_ARN).unwrap();
        assert_eq!(
            base.arn("ecs", "cluster/prod"),
            "arn:aws:ecs:eu-west-1:123456789012:cluster/prod"
        );
        assert_eq!(
            ArnBase::parse("arn:aws-cn:events:cn-north-1:1:rule/r")
                .unwrap()
                .arn("sqs", "q"),
            "arn:aws-cn:sqs:cn-north-1:1:q"
        );
        for bad in ["", "arn:aws:sqs", "arn:aws:sqs:r::q", "urn:a:b:c:d:e"] {
            assert!(ArnBase::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn documents_compare_as_aws_gives_them_back() {
        let policy = queue_policy(QUEUE_ARN, "arn:aws:events:eu-west-1:123456789012:rule/r");
        // As AWS may store it: arrays of one, other key order, no spaces.
        let stored = r#"{"Statement":[{"Condition":{"ArnEquals":{"aws:SourceArn":["arn:aws:events:eu-west-1:123456789012:rule/r"]}},
            "Resource":"arn:aws:sqs:eu-west-1:123456789012:ecsmesh-prod-events","Action":["sqs:SendMessage"],
            "Principal":{"Service":["events.amazonaws.com"]},"Effect":"Allow","Sid":"EcsmeshEcsEventsFromTheRule"}],
            "Version":"2012-10-17"}"#;
        assert!(same_json(Some(stored), &policy));
        // Another rule may not send.
        let other = queue_policy(
            QUEUE_ARN,
            "arn:aws:events:eu-west-1:123456789012:rule/other",
        );
        assert!(!same_json(Some(stored), &other));
        assert!(!same_json(None, &policy));
        assert!(!same_json(Some("not json"), &policy));

        let want = queue_attributes("arn:aws:sqs:eu-west-1:123456789012:dlq");
        let mut have: HashMap<Attr, String> = want.iter().cloned().collect();
        have.insert(
            Attr::RedrivePolicy,
            r#"{"maxReceiveCount":"5","deadLetterTargetArn":"arn:aws:sqs:eu-west-1:123456789012:dlq"}"#
                .to_owned(),
        );
        have.insert(Attr::ApproximateNumberOfMessages, "3".to_owned());
        assert!(attribute_diffs(&have, &want).is_empty());
        have.insert(Attr::VisibilityTimeout, "30".to_owned());
        have.remove(&Attr::SqsManagedSseEnabled);
        assert_eq!(
            attribute_diffs(&have, &want),
            ["SqsManagedSseEnabled", "VisibilityTimeout"]
        );
    }

    #[test]
    fn the_pattern_names_the_cluster_and_the_kinds_the_controller_applies() {
        let p = event_pattern("arn:aws:ecs:eu-west-1:1:cluster/prod");
        assert_eq!(p["source"], json!(["aws.ecs"]));
        assert_eq!(
            p["detail-type"],
            json!([
                "ECS Task State Change",
                "ECS Container Instance State Change"
            ])
        );
        assert_eq!(
            p["detail"]["clusterArn"],
            json!(["arn:aws:ecs:eu-west-1:1:cluster/prod"])
        );
    }

    /// Whether an IAM resource pattern (`*` any run, `?` one character)
    /// matches `arn`.
    fn iam_match(pattern: &str, arn: &str) -> bool {
        match pattern.chars().next() {
            None => arn.is_empty(),
            Some('*') => (0..=arn.len())
                .filter(|i| arn.is_char_boundary(*i))
                .any(|i| iam_match(&pattern[1..], &arn[i..])),
            Some(c) => {
                arn.chars().next().is_some_and(|a| a == c || c == '?')
                    && iam_match(&pattern[c.len_utf8()..], &arn[c.len_utf8()..])
            }
        }
    }

    /// The documented controller policy lets the controller read and delete
    /// from every cluster's events queue, and nothing else of SQS.
    #[test]
    fn the_controller_policy_allows_the_events_queue_only() {
        let doc: Value =
            serde_json::from_str(include_str!("../iam/controller-policy.json")).unwrap();
        let statements = doc["Statement"].as_array().unwrap();
        let sqs: Vec<&Value> = statements
            .iter()
            .filter(|s| {
                s["Action"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| a.as_str().unwrap().starts_with("sqs:"))
            })
            .collect();
        assert_eq!(sqs.len(), 1, "{doc:#}");
        let mut actions: Vec<&str> = sqs[0]["Action"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        actions.sort_unstable();
        assert_eq!(
            actions,
            [
                "sqs:DeleteMessage",
                "sqs:GetQueueAttributes",
                "sqs:ReceiveMessage"
            ]
        );
        let resource = sqs[0]["Resource"].as_str().unwrap();
        let mut cfg = crate::DeployConfig::new("prod-1", "eu-west-1");
        let arn = |name: String| format!("arn:aws:sqs:eu-west-1:123456789012:{name}");
        assert!(iam_match(resource, &arn(cfg.events_queue_name())));
        assert!(!iam_match(resource, &arn(cfg.events_dlq_name())));
        assert!(!iam_match(resource, &arn("orders".to_owned())));
        cfg.cluster = "a_b".to_owned();
        assert!(iam_match(resource, &arn(cfg.events_queue_name())));
    }

    const BASE: &str = "arn:aws:sqs:eu-west-1:123456789012:";

    /// Everything as `up` makes it for `cfg`.
    fn in_sync(cfg: &DeployConfig) -> ObservedEvents {
        let dlq_arn = format!("{BASE}{}", cfg.events_dlq_name());
        let queue_arn = format!("{BASE}{}", cfg.events_queue_name());
        let rule_arn = format!(
            "arn:aws:events:eu-west-1:123456789012:rule/{}",
            cfg.events_rule_name()
        );
        let cluster_arn = format!("arn:aws:ecs:eu-west-1:123456789012:cluster/{}", cfg.cluster);
        let mut attributes: HashMap<Attr, String> =
            queue_attributes(&dlq_arn).into_iter().collect();
        attributes.insert(
            Attr::Policy,
            queue_policy(&queue_arn, &rule_arn).to_string(),
        );
        ObservedEvents {
            dlq: Some(Queue {
                url: "http://sqs/dlq".to_owned(),
                arn: dlq_arn,
                attributes: dlq_attributes().into_iter().collect(),
                owned: true,
            }),
            queue: Some(Queue {
                url: "http://sqs/queue".to_owned(),
                arn: queue_arn.clone(),
                attributes,
                owned: true,
            }),
            rule: Some(Rule {
                arn: rule_arn,
                pattern: Some(event_pattern(&cluster_arn).to_string()),
                enabled: true,
                owned: true,
                targets: HashMap::from([(TARGET_ID.to_owned(), queue_arn)]),
            }),
        }
    }

    #[test]
    fn plan_creates_everything_in_an_empty_account() {
        let cfg = DeployConfig::new("prod", "eu-west-1");
        assert_eq!(
            plan_events(&cfg, &ObservedEvents::default()),
            EventsPlan {
                dlq: QueuePlan::Create,
                queue: QueuePlan::Create,
                rule: RulePlan::Create,
                target: Action::Create,
                policy: Action::Create,
                set_queue_attributes: true,
            }
        );
    }

    #[test]
    fn plan_leaves_plumbing_in_sync() {
        let cfg = DeployConfig::new("prod", "eu-west-1");
        assert_eq!(
            plan_events(&cfg, &in_sync(&cfg)),
            EventsPlan {
                dlq: QueuePlan::Unchanged,
                queue: QueuePlan::Unchanged,
                rule: RulePlan::Unchanged,
                target: Action::Unchanged,
                policy: Action::Unchanged,
                set_queue_attributes: false,
            }
        );
    }

    #[test]
    fn plan_puts_drift_right() {
        let cfg = DeployConfig::new("prod", "eu-west-1");
        let mut have = in_sync(&cfg);
        if let Some(rule) = &mut have.rule {
            rule.enabled = false;
            rule.pattern = Some(event_pattern("arn:aws:ecs:eu-west-1:1:cluster/other").to_string());
            rule.targets.clear();
        }
        if let Some(q) = &mut have.queue {
            q.attributes
                .insert(Attr::VisibilityTimeout, "30".to_owned());
            let other = queue_policy(&q.arn, "arn:aws:events:eu-west-1:123456789012:rule/x");
            q.attributes.insert(Attr::Policy, other.to_string());
        }
        if let Some(q) = &mut have.dlq {
            q.attributes.remove(&Attr::SqsManagedSseEnabled);
        }
        assert_eq!(
            plan_events(&cfg, &have),
            EventsPlan {
                dlq: QueuePlan::Update(vec!["SqsManagedSseEnabled".to_owned()]),
                queue: QueuePlan::Update(vec!["VisibilityTimeout".to_owned()]),
                rule: RulePlan::Update(vec!["event pattern", "state (disabled)"]),
                target: Action::Create,
                policy: Action::Update,
                set_queue_attributes: true,
            }
        );
    }

    #[test]
    fn plan_after_an_up_cut_short_names_what_exists() {
        // Only the dead-letter queue: the rest is created, and the queue's
        // target and policy follow its account and region.
        let cfg = DeployConfig::new("prod", "eu-west-1");
        let mut have = in_sync(&cfg);
        have.queue = None;
        have.rule = None;
        let plan = plan_events(&cfg, &have);
        assert_eq!(plan.dlq, QueuePlan::Unchanged);
        assert_eq!(
            (plan.queue, plan.rule, plan.target, plan.policy),
            (
                QueuePlan::Create,
                RulePlan::Create,
                Action::Create,
                Action::Create
            )
        );
        // A target that names another queue is updated.
        let mut have = in_sync(&cfg);
        if let Some(rule) = &mut have.rule {
            rule.targets
                .insert(TARGET_ID.to_owned(), format!("{BASE}other"));
        }
        assert_eq!(plan_events(&cfg, &have).target, Action::Update);
    }
}
