//! ECS events as the fast path (issue #17): EventBridge's "ECS Task State
//! Change" and "ECS Container Instance State Change" events, delivered to
//! an SQS queue the controller long-polls. Each task change is applied to
//! its cluster's view at once ([`super::ecs::EcsSource`]), so a task that
//! starts or stops changes routing within a second, while the full resync
//! stays as the backstop at a long interval.
//!
//! SQS delivers at least once and in no particular order, so a task's
//! change carries ECS's `detail.version` and the source keeps the highest it
//! has applied per task: a duplicate or an older change is dropped. A
//! message is deleted only after its change was applied (or found stale,
//! or not an event this controller follows); one that cannot be applied
//! (its cluster's source failed to describe what it needs) stays in the
//! queue and comes back after its visibility timeout.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ecs::types::{
    Attachment, Container, HealthStatus, KeyValuePair, NetworkBinding, NetworkInterface, Task,
};
use aws_sdk_sqs as sqs;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;

/// One change the queue delivered, parsed.
#[derive(Clone, Debug)]
pub enum Change {
    /// A task's state: the fields routing needs, as DescribeTasks gives them,
    /// its version, and when ECS changed it (`detail.updatedAt`).
    Task {
        task: Box<Task>,
        version: i64,
        updated_at: Option<std::time::SystemTime>,
    },
    /// A container instance's state (registered, draining, deregistered).
    Instance { arn: String, status: String },
}

/// A parsed event and the cluster it belongs to.
#[derive(Clone, Debug)]
pub struct Event {
    pub cluster: String,
    pub change: Change,
}

/// Why a message is not an event this controller follows.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("not an ECS event (source {0:?})")]
    NotEcs(String),
    #[error("an ECS event of another kind ({0:?})")]
    OtherKind(String),
    #[error("missing or malformed field {0}")]
    Field(&'static str),
}

impl EventError {
    /// The metric label of the outcome.
    fn label(&self) -> &'static str {
        match self {
            Self::Json(_) | Self::Field(_) => "malformed",
            Self::NotEcs(_) | Self::OtherKind(_) => "ignored",
        }
    }
}

/// The cluster's name from its ARN (`arn:…:cluster/<name>`).
fn cluster_name(arn: &str) -> &str {
    arn.rsplit_once('/').map_or(arn, |(_, name)| name)
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn int(v: &Value, key: &str) -> Option<i32> {
    v.get(key)
        .and_then(Value::as_i64)
        .and_then(|n| i32::try_from(n).ok())
}

fn array<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v.get(key).and_then(Value::as_array).into_iter().flatten()
}

fn health(v: &Value) -> Option<HealthStatus> {
    text(v, "healthStatus").map(HealthStatus::from)
}

/// Parses one EventBridge event (an SQS message body).
///
/// # Errors
/// Not JSON, not an ECS event, another kind of ECS event, or a field the
/// change needs is missing.
pub fn parse(body: &str) -> Result<Event, EventError> {
    let v: Value = serde_json::from_str(body).map_err(|e| EventError::Json(e.to_string()))?;
    let source = text(&v, "source").unwrap_or_default();
    if source != "aws.ecs" {
        return Err(EventError::NotEcs(source.chars().take(64).collect()));
    }
    let kind = text(&v, "detail-type").unwrap_or_default();
    let detail = v.get("detail").ok_or(EventError::Field("detail"))?;
    let cluster = text(detail, "clusterArn")
        .map(cluster_name)
        .ok_or(EventError::Field("detail.clusterArn"))?
        .to_owned();
    let change = match kind {
        "ECS Task State Change" => Change::Task {
            task: Box::new(task(detail)?),
            version: detail
                .get("version")
                .and_then(Value::as_i64)
                .ok_or(EventError::Field("detail.version"))?,
            updated_at: text(detail, "updatedAt").and_then(timestamp),
        },
        "ECS Container Instance State Change" => Change::Instance {
            arn: text(detail, "containerInstanceArn")
                .ok_or(EventError::Field("detail.containerInstanceArn"))?
                .to_owned(),
            status: text(detail, "status").unwrap_or_default().to_owned(),
        },
        other => return Err(EventError::OtherKind(other.chars().take(64).collect())),
    };
    Ok(Event { cluster, change })
}

/// An event's RFC 3339 time (`2026-12-07T18:00:00.123Z`); `None` if it
/// is not one (the event is then judged by its version alone).
fn timestamp(text: &str) -> Option<std::time::SystemTime> {
    use aws_sdk_ecs::primitives::{DateTime, DateTimeFormat};
    let t = DateTime::from_str(text, DateTimeFormat::DateTime).ok()?;
    std::time::SystemTime::try_from(t).ok()
}

/// The task in an event's `detail`: the fields routing reads (see
/// [`super::ecs::task_endpoints`]), named as in DescribeTasks.
fn task(d: &Value) -> Result<Task, EventError> {
    let arn = text(d, "taskArn").ok_or(EventError::Field("detail.taskArn"))?;
    let containers = array(d, "containers").map(|c| {
        Container::builder()
            .set_name(text(c, "name").map(str::to_owned))
            .set_health_status(health(c))
            .set_network_bindings(Some(
                array(c, "networkBindings")
                    .map(|b| {
                        NetworkBinding::builder()
                            .set_container_port(int(b, "containerPort"))
                            .set_host_port(int(b, "hostPort"))
                            .set_bind_ip(text(b, "bindIP").map(str::to_owned))
                            .build()
                    })
                    .collect(),
            ))
            .set_network_interfaces(Some(
                array(c, "networkInterfaces")
                    .map(|n| {
                        NetworkInterface::builder()
                            .set_private_ipv4_address(
                                text(n, "privateIpv4Address").map(str::to_owned),
                            )
                            .build()
                    })
                    .collect(),
            ))
            .build()
    });
    let attachments = array(d, "attachments").map(|a| {
        Attachment::builder()
            .set_type(text(a, "type").map(str::to_owned))
            .set_details(Some(
                array(a, "details")
                    .map(|kv| {
                        KeyValuePair::builder()
                            .set_name(text(kv, "name").map(str::to_owned))
                            .set_value(text(kv, "value").map(str::to_owned))
                            .build()
                    })
                    .collect(),
            ))
            .build()
    });
    Ok(Task::builder()
        .task_arn(arn)
        .set_cluster_arn(text(d, "clusterArn").map(str::to_owned))
        .set_last_status(text(d, "lastStatus").map(str::to_owned))
        .set_desired_status(text(d, "desiredStatus").map(str::to_owned))
        .set_health_status(health(d))
        .set_group(text(d, "group").map(str::to_owned))
        .set_container_instance_arn(text(d, "containerInstanceArn").map(str::to_owned))
        .set_task_definition_arn(text(d, "taskDefinitionArn").map(str::to_owned))
        .set_availability_zone(text(d, "availabilityZone").map(str::to_owned))
        .set_version(d.get("version").and_then(Value::as_i64))
        .set_containers(Some(containers.collect()))
        .set_attachments(Some(attachments.collect()))
        .build())
}

/// What a cluster's source did with a batch of its events.
#[derive(Debug)]
pub struct Applied {
    /// Whether the batch was applied (else the messages stay queued).
    pub ok: bool,
}

/// A batch of one cluster's events, for its source to apply.
#[derive(Debug)]
pub struct Batch {
    pub events: Vec<Event>,
    pub done: oneshot::Sender<Applied>,
}

/// Long polls the queue forever and hands each cluster's events to its
/// source (`routes`: cluster name → the source's channel); deletes what
/// was applied or is not for this controller.
pub async fn run(
    sqs: sqs::Client,
    queue_url: String,
    routes: BTreeMap<String, mpsc::Sender<Batch>>,
    metrics: Arc<Metrics>,
) {
    let mut failures = 0u32;
    loop {
        match receive_once(&sqs, &queue_url, &routes, &metrics).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures = failures.saturating_add(1);
                let wait = Duration::from_secs(1 << failures.min(6));
                tracing::warn!(queue = %queue_url, error = %e, retry_in = ?wait,
                    "reading ECS events failed; the full resync still runs");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// The longest SQS long poll, seconds.
const WAIT_SECONDS: i32 = 20;

async fn receive_once(
    sqs: &sqs::Client,
    queue_url: &str,
    routes: &BTreeMap<String, mpsc::Sender<Batch>>,
    metrics: &Metrics,
) -> Result<(), String> {
    let out = sqs
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(10)
        .wait_time_seconds(WAIT_SECONDS)
        .send()
        .await;
    metrics.api_call("sqs", "ReceiveMessage", out.is_ok());
    let out = out.map_err(|e| sqs::error::DisplayErrorContext(e).to_string())?;
    let mut done: Vec<String> = Vec::new();
    let mut by_cluster: HashMap<String, (Vec<Event>, Vec<String>)> = HashMap::new();
    for msg in out.messages.unwrap_or_default() {
        let Some(receipt) = msg.receipt_handle else {
            continue;
        };
        match parse(msg.body.as_deref().unwrap_or_default()) {
            Ok(event) if routes.contains_key(&event.cluster) => {
                let entry = by_cluster.entry(event.cluster.clone()).or_default();
                entry.0.push(event);
                entry.1.push(receipt);
            }
            Ok(_) => {
                metrics.ecs_event("other_cluster");
                done.push(receipt);
            }
            Err(e) => {
                tracing::debug!(error = %e, "not an ECS event this controller follows");
                metrics.ecs_event(e.label());
                done.push(receipt);
            }
        }
    }
    for (cluster, (events, receipts)) in by_cluster {
        let Some(route) = routes.get(&cluster) else {
            continue;
        };
        let (tx, rx) = oneshot::channel();
        if route.send(Batch { events, done: tx }).await.is_err() {
            continue;
        }
        if rx.await.is_ok_and(|a| a.ok) {
            done.extend(receipts);
        }
    }
    delete(sqs, queue_url, done, metrics).await
}

async fn delete(
    sqs: &sqs::Client,
    queue_url: &str,
    receipts: Vec<String>,
    metrics: &Metrics,
) -> Result<(), String> {
    for chunk in receipts.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, r)| {
                sqs::types::DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(r)
                    .build()
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = sqs
            .delete_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await;
        metrics.api_call("sqs", "DeleteMessageBatch", out.is_ok());
        out.map_err(|e| sqs::error::DisplayErrorContext(e).to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task_event(version: i64, last: &str) -> String {
        serde_json::json!({
            "version": "0",
            "detail-type": "ECS Task State Change",
            "source": "aws.ecs",
            "detail": {
                "clusterArn": "arn:aws:ecs:us-east-1:123456789012:cluster/prod",
                "taskArn": "arn:aws:ecs:us-east-1:123456789012:task/prod/abc",
                "lastStatus": last,
                "desiredStatus": "RUNNING",
                "group": "service:web",
                "containerInstanceArn": "arn:aws:ecs:us-east-1:123456789012:container-instance/prod/ci1",
                "taskDefinitionArn": "arn:aws:ecs:us-east-1:123456789012:task-definition/web:3",
                "version": version,
                "containers": [{
                    "name": "web",
                    "healthStatus": "HEALTHY",
                    "networkBindings": [{"containerPort": 8080, "hostPort": 49153, "bindIP": "0.0.0.0"}],
                    "networkInterfaces": [{"privateIpv4Address": "10.0.1.7"}]
                }],
                "attachments": [{"type": "ElasticNetworkInterface",
                                 "details": [{"name": "privateIPv4Address", "value": "10.0.1.7"}]}]
            }
        })
        .to_string()
    }

    #[test]
    fn a_task_change_reads_as_describe_tasks_would() {
        let e = parse(&task_event(7, "RUNNING")).unwrap();
        assert_eq!(e.cluster, "prod");
        let Change::Task { task, version, .. } = e.change else {
            panic!("a task change")
        };
        assert_eq!(version, 7);
        assert_eq!(task.version(), 7);
        assert_eq!(task.last_status(), Some("RUNNING"));
        assert_eq!(task.group(), Some("service:web"));
        let c = &task.containers()[0];
        assert_eq!(c.health_status(), Some(&HealthStatus::Healthy));
        assert_eq!(c.network_bindings()[0].host_port(), Some(49153));
        assert_eq!(
            c.network_interfaces()[0].private_ipv4_address(),
            Some("10.0.1.7")
        );
        assert_eq!(task.attachments()[0].details()[0].value(), Some("10.0.1.7"));
    }

    #[test]
    fn other_messages_are_told_apart() {
        assert!(matches!(parse("{"), Err(EventError::Json(_))));
        assert!(matches!(
            parse(r#"{"source":"aws.ec2","detail-type":"x","detail":{}}"#),
            Err(EventError::NotEcs(_))
        ));
        assert!(matches!(
            parse(
                r#"{"source":"aws.ecs","detail-type":"ECS Deployment State Change","detail":{"clusterArn":"c/x"}}"#
            ),
            Err(EventError::OtherKind(_))
        ));
        assert_eq!(
            parse(r#"{"source":"aws.ecs","detail-type":"ECS Task State Change","detail":{"clusterArn":"c/x","version":1}}"#)
                .unwrap_err(),
            EventError::Field("detail.taskArn")
        );
        let instance = parse(
            r#"{"source":"aws.ecs","detail-type":"ECS Container Instance State Change",
                "detail":{"clusterArn":"arn:x:cluster/prod","containerInstanceArn":"arn:ci","status":"DRAINING"}}"#,
        )
        .unwrap();
        assert!(
            matches!(instance.change, Change::Instance { ref status, .. } if status == "DRAINING")
        );
    }
}
