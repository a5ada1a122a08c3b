//! The leader lease as one item of the dtab store's DynamoDB table,
//! `pk = lease#leader`: the holder's id and address, a heartbeat token the
//! holder replaces at every renewal, and the holder's TTL.
//!
//! Every write is conditional: a renewal or a release only while
//! `holder = me`, a first lease only while the item does not exist, and a
//! takeover only while the heartbeat is the one this replica watched go
//! unchanged for a TTL (two replicas taking over at once: one wins).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb as ddb;
use aws_sdk_dynamodb::types::AttributeValue;

use super::{Attempt, Holder, LeaseError, LeaseSettings};
use crate::metrics::Metrics;
use crate::store::dynamodb::is_condition_failed;

/// The lease's item (the dtab items are `dtab#…`, so scans skip it).
pub const LEASE_KEY: &str = "lease#leader";
const PK: &str = "pk";

/// The lease in one table.
#[derive(Debug)]
pub struct DynamoLease {
    client: ddb::Client,
    table: String,
    settings: LeaseSettings,
    /// Another holder's heartbeat and when this replica first saw it.
    seen: Option<(String, Instant)>,
    metrics: Arc<Metrics>,
}

/// The item as read.
struct Item {
    holder: Holder,
    heartbeat: String,
    ttl: Duration,
}

/// A fresh heartbeat token.
fn heartbeat() -> String {
    format!("{:016x}", fastrand::u64(..))
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn text(item: &HashMap<String, AttributeValue>, name: &str) -> Option<String> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    }
}

impl DynamoLease {
    pub fn new(
        client: ddb::Client,
        table: String,
        settings: LeaseSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            table,
            settings,
            seen: None,
            metrics,
        }
    }

    fn error(&self, e: impl std::fmt::Display) -> LeaseError {
        LeaseError::Dynamo {
            table: self.table.clone(),
            detail: e.to_string(),
        }
    }

    async fn read(&self) -> Result<Option<Item>, LeaseError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(LEASE_KEY))
            .consistent_read(true)
            .send()
            .await;
        self.metrics.api_call("dynamodb", "GetItem", out.is_ok());
        let out = out.map_err(|e| self.error(ddb::error::DisplayErrorContext(e)))?;
        let Some(item) = out.item() else {
            return Ok(None);
        };
        let ttl = match item.get("ttl_ms") {
            Some(AttributeValue::N(n)) => n.parse().ok().map(Duration::from_millis),
            _ => None,
        };
        // An item written by hand (fields missing) is taken over like a
        // silent holder: its heartbeat never moves.
        Ok(Some(Item {
            holder: Holder {
                id: text(item, "holder").unwrap_or_default(),
                address: text(item, "address").unwrap_or_default(),
            },
            heartbeat: text(item, "heartbeat").unwrap_or_default(),
            ttl: ttl.unwrap_or(self.settings.ttl),
        }))
    }

    /// Writes the lease as this replica's; `condition` guards the write.
    /// `Ok(false)` when the condition failed.
    async fn put(
        &mut self,
        condition: &str,
        values: HashMap<String, AttributeValue>,
    ) -> Result<bool, LeaseError> {
        let beat = heartbeat();
        let ttl_ms = u64::try_from(self.settings.ttl.as_millis()).unwrap_or(u64::MAX);
        let mut request = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(PK, s(LEASE_KEY))
            .item("holder", s(&self.settings.me.id))
            .item("address", s(&self.settings.me.address))
            .item("heartbeat", s(&beat))
            .item("ttl_ms", AttributeValue::N(ttl_ms.to_string()))
            .condition_expression(condition);
        if !values.is_empty() {
            request = request.set_expression_attribute_values(Some(values));
        }
        let out = request.send().await;
        self.metrics.api_call("dynamodb", "PutItem", out.is_ok());
        match out {
            Ok(_) => {
                self.seen = None;
                Ok(true)
            }
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(self.error(ddb::error::DisplayErrorContext(e))),
        }
    }

    pub(super) async fn try_acquire(&mut self) -> Result<Attempt, LeaseError> {
        let Some(item) = self.read().await? else {
            return Ok(
                if self.put("attribute_not_exists(pk)", HashMap::new()).await? {
                    Attempt::Acquired
                } else {
                    Attempt::Contended
                },
            );
        };
        if item.holder.id == self.settings.me.id {
            // Ours (a renewal that timed out but landed): keep it.
            return Ok(Attempt::Acquired);
        }
        let now = Instant::now();
        let since = match &self.seen {
            Some((beat, since)) if *beat == item.heartbeat => *since,
            _ => {
                self.seen = Some((item.heartbeat.clone(), now));
                now
            }
        };
        let ttl = item.ttl.max(self.settings.ttl);
        if now.duration_since(since) < ttl {
            return Ok(Attempt::HeldBy(item.holder));
        }
        let values = HashMap::from([(":beat".to_owned(), s(&item.heartbeat))]);
        if self.put("heartbeat = :beat", values).await? {
            tracing::info!(previous = %item.holder.id, silent_for = ?now.duration_since(since),
                "the leader's heartbeat stopped: took the lease over");
            Ok(Attempt::Acquired)
        } else {
            Ok(Attempt::HeldBy(item.holder))
        }
    }

    pub(super) async fn renew(&mut self) -> Result<bool, LeaseError> {
        let beat = heartbeat();
        let ttl_ms = u64::try_from(self.settings.ttl.as_millis()).unwrap_or(u64::MAX);
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(LEASE_KEY))
            .update_expression("SET heartbeat = :beat, address = :address, ttl_ms = :ttl")
            .condition_expression("holder = :me")
            .expression_attribute_values(":beat", s(&beat))
            .expression_attribute_values(":address", s(&self.settings.me.address))
            .expression_attribute_values(":ttl", AttributeValue::N(ttl_ms.to_string()))
            .expression_attribute_values(":me", s(&self.settings.me.id))
            .send()
            .await;
        self.metrics.api_call("dynamodb", "UpdateItem", out.is_ok());
        match out {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(self.error(ddb::error::DisplayErrorContext(e))),
        }
    }

    pub(super) async fn release(&mut self) -> Result<(), LeaseError> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(PK, s(LEASE_KEY))
            .condition_expression("holder = :me")
            .expression_attribute_values(":me", s(&self.settings.me.id))
            .send()
            .await;
        self.metrics.api_call("dynamodb", "DeleteItem", out.is_ok());
        match out {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Ok(()),
            Err(e) => Err(self.error(ddb::error::DisplayErrorContext(e))),
        }
    }
}
