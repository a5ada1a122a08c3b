//! The store on DynamoDB (issue #17): durable across controller moves
//! (the file store lives on one instance's disk) and shared by replicas,
//! with the file and Consul stores' semantics.
//!
//! - One table (on-demand), partition key `pk` (a string). A namespace is
//!   the item `dtab#<namespace>` with `dtab` (its canonical text) and
//!   `version`; a service policy is `policy#<prefix>` with `policy` (its
//!   canonical JSON) and `version`. The item `meta#version` holds the
//!   table's write counter, shared by both kinds.
//! - A write first takes a new version from the counter (an atomic `ADD`),
//!   then writes with a condition: create `attribute_not_exists(pk)`, update
//!   and delete `version = :expected`. So versions only grow, across deletes
//!   and re-creates too, and concurrent writers cannot both win. A refused
//!   write is read back (consistently) to tell `AlreadyExists`, `NotFound`
//!   and `VersionMismatch` apart.
//! - DynamoDB has no watch: every `poll_interval` the follower reads the
//!   counter (one consistent `GetItem`) and only when it moved scans the
//!   table again, so an idle mesh costs one small read a second per kind. A
//!   write moves the counter once more after it landed: a replica that read
//!   the counter between the two, and scanned before the write landed,
//!   sees it move again and rescans. A full rescan every
//!   [`RESCAN_INTERVAL`] is the backstop. A replica sees its own writes at
//!   once (they update its view directly).
//! - An item that is not a valid document (written by hand) is logged and
//!   skipped, as in the Consul store; DynamoDB errors are `StoreError::Io`.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb as ddb;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Document, Entries, StoreError, Stored, check_room};
use crate::metrics::Metrics;

/// The table unless configured otherwise.
pub const DEFAULT_TABLE: &str = "ecsmesh";
const PK: &str = "pk";
const COUNTER: &str = "meta#version";
/// Followers rescan this often even when the counter did not move.
pub const RESCAN_INTERVAL: Duration = Duration::from_mins(1);

/// DynamoDB store settings.
#[derive(Clone, Debug)]
pub struct DynamoStoreSettings {
    pub table: String,
    pub region: Option<String>,
    /// An endpoint override (emulators).
    pub endpoint_url: Option<String>,
    /// How often other replicas' writes are looked for.
    pub poll_interval: Duration,
}

impl Default for DynamoStoreSettings {
    fn default() -> Self {
        Self {
            table: DEFAULT_TABLE.to_owned(),
            region: None,
            endpoint_url: None,
            poll_interval: Duration::from_secs(1),
        }
    }
}

#[derive(Debug)]
pub struct DynamoStore<D: Document> {
    client: ddb::Client,
    table: String,
    tx: watch::Sender<Arc<Entries<D>>>,
    follower: JoinHandle<()>,
    metrics: Arc<Metrics>,
    _kind: PhantomData<D>,
}

impl<D: Document> Drop for DynamoStore<D> {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

fn io<E: std::fmt::Display>(table: &str, e: E) -> StoreError {
    StoreError::Io {
        path: format!("dynamodb table {table}"),
        source: std::io::Error::other(e.to_string()),
    }
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn version_of(item: &HashMap<String, AttributeValue>) -> Option<u64> {
    match item.get("version") {
        Some(AttributeValue::N(v)) => v.parse().ok(),
        _ => None,
    }
}

/// An entry's partition key: `dtab#default`, `policy#/svc/payments`.
fn item_key<D: Document>(key: &str) -> String {
    format!("{}#{key}", D::KIND.field())
}

impl<D: Document> DynamoStore<D> {
    /// Reads the table once (so the store starts with what it holds, and
    /// fails if the table cannot be read), then follows it.
    pub async fn open(
        settings: DynamoStoreSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &settings.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(url) = &settings.endpoint_url {
            loader = loader.endpoint_url(url.clone());
        }
        let client = ddb::Client::new(&loader.load().await);
        Self::with_client(client, &settings, metrics).await
    }

    /// As [`Self::open`], with a client made elsewhere (its own
    /// credentials and endpoint; `settings`' region and endpoint unused).
    pub async fn with_client(
        client: ddb::Client,
        settings: &DynamoStoreSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let counter = read_counter(&client, &settings.table, &metrics).await?;
        let entries = scan::<D>(&client, &settings.table, &metrics).await?;
        tracing::info!(table = %settings.table, entries = entries.len(),
            "{} on DynamoDB opened", D::KIND.store_noun());
        let tx = watch::Sender::new(Arc::new(entries));
        let follower = tokio::spawn(follow(
            client.clone(),
            settings.table.clone(),
            settings.poll_interval,
            counter,
            tx.clone(),
            Arc::clone(&metrics),
        ));
        Ok(Self {
            client,
            table: settings.table.clone(),
            tx,
            follower,
            metrics,
            _kind: PhantomData,
        })
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Entries<D>>> {
        self.tx.subscribe()
    }

    /// The client and table, for the leader lease kept beside the dtabs.
    pub fn table(&self) -> (ddb::Client, String) {
        (self.client.clone(), self.table.clone())
    }

    fn count(&self, operation: &'static str, ok: bool) {
        self.metrics.api_call("dynamodb", operation, ok);
    }

    /// A new version from the table's counter.
    async fn next_version(&self) -> Result<u64, StoreError> {
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(COUNTER))
            .update_expression("ADD version :one")
            .expression_attribute_values(":one", n(1))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await;
        self.count("UpdateItem", out.is_ok());
        let out = out.map_err(|e| io(&self.table, ddb::error::DisplayErrorContext(e)))?;
        out.attributes()
            .and_then(version_of)
            .ok_or_else(|| io(&self.table, "the version counter has no number"))
    }

    /// The namespace as stored now (a consistent read).
    async fn read(&self, namespace: &str) -> Result<Option<u64>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(&item_key::<D>(namespace)))
            .consistent_read(true)
            .send()
            .await;
        self.count("GetItem", out.is_ok());
        let out = out.map_err(|e| io(&self.table, ddb::error::DisplayErrorContext(e)))?;
        Ok(out.item().and_then(version_of))
    }

    /// Why a conditional write was refused.
    async fn refused(&self, namespace: &str, expected: Option<u64>) -> StoreError {
        match self.read(namespace).await {
            Err(e) => e,
            Ok(None) => StoreError::not_found::<D>(namespace),
            Ok(Some(actual)) => match expected {
                None => StoreError::already_exists::<D>(namespace),
                Some(expected) => StoreError::mismatch::<D>(namespace, expected, actual),
            },
        }
    }

    /// Writes `dtab` at a new version: created if `expected` is `None`,
    /// else replacing that version.
    async fn put(
        &self,
        namespace: &str,
        dtab: D,
        expected: Option<u64>,
    ) -> Result<Stored<D>, StoreError> {
        let version = self.next_version().await?;
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(PK, s(&item_key::<D>(namespace)))
            .item(D::KIND.field(), s(&dtab.encode()))
            .item("version", n(version));
        put = match expected {
            None => put.condition_expression("attribute_not_exists(pk)"),
            Some(expected) => put
                .condition_expression("version = :expected")
                .expression_attribute_values(":expected", n(expected)),
        };
        let out = put.send().await;
        self.count("PutItem", out.is_ok());
        if let Err(e) = out {
            return Err(if is_condition_failed(&e) {
                self.refused(namespace, expected).await
            } else {
                io(&self.table, ddb::error::DisplayErrorContext(e))
            });
        }
        self.landed().await;
        let stored = Stored {
            doc: Arc::new(dtab),
            version,
        };
        self.tx.send_modify(|all| {
            let mut next = (**all).clone();
            next.insert(namespace.to_owned(), stored.clone());
            *all = Arc::new(next);
        });
        Ok(stored)
    }

    /// Creates the entry. The limit is checked against this replica's
    /// view: replicas creating at once may pass it by one each.
    pub async fn create(
        &self,
        namespace: &str,
        dtab: D,
        max: usize,
    ) -> Result<Stored<D>, StoreError> {
        check_room(&self.tx.borrow(), namespace, max)?;
        self.put(namespace, dtab, None).await
    }

    pub async fn update(
        &self,
        namespace: &str,
        dtab: D,
        expected: u64,
    ) -> Result<Stored<D>, StoreError> {
        self.put(namespace, dtab, Some(expected)).await
    }

    pub async fn delete(&self, namespace: &str, expected: Option<u64>) -> Result<(), StoreError> {
        // Deletes move the counter too, so that followers notice them.
        self.next_version().await?;
        let mut delete = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(PK, s(&item_key::<D>(namespace)));
        delete = match expected {
            None => delete.condition_expression("attribute_exists(pk)"),
            Some(expected) => delete
                .condition_expression("version = :expected")
                .expression_attribute_values(":expected", n(expected)),
        };
        let out = delete.send().await;
        self.count("DeleteItem", out.is_ok());
        if let Err(e) = out {
            return Err(if is_condition_failed(&e) {
                match self.refused(namespace, expected).await {
                    // A delete with no expectation refused: it was absent.
                    StoreError::AlreadyExists { kind, key } => StoreError::NotFound { kind, key },
                    other => other,
                }
            } else {
                io(&self.table, ddb::error::DisplayErrorContext(e))
            });
        }
        self.landed().await;
        self.tx.send_modify(|all| {
            let mut next = (**all).clone();
            next.remove(namespace);
            *all = Arc::new(next);
        });
        Ok(())
    }

    /// Moves the counter after a write landed (see the module doc); the
    /// write stands either way, so a failure here is only logged.
    async fn landed(&self) {
        if let Err(e) = self.next_version().await {
            tracing::warn!(error = %e, "marking a {} write in the store failed; replicas see it at their next rescan", D::KIND);
        }
    }
}

pub(crate) fn is_condition_failed<R>(
    e: &ddb::error::SdkError<impl ddb::error::ProvideErrorMetadata, R>,
) -> bool {
    use ddb::error::ProvideErrorMetadata as _;
    e.code() == Some("ConditionalCheckFailedException")
}

async fn read_counter(
    client: &ddb::Client,
    table: &str,
    metrics: &Metrics,
) -> Result<u64, StoreError> {
    let out = client
        .get_item()
        .table_name(table)
        .key(PK, s(COUNTER))
        .consistent_read(true)
        .send()
        .await;
    metrics.api_call("dynamodb", "GetItem", out.is_ok());
    let out = out.map_err(|e| io(table, ddb::error::DisplayErrorContext(e)))?;
    Ok(out.item().and_then(version_of).unwrap_or(0))
}

/// Every entry of `D`'s kind in the table (a consistent scan, all pages).
async fn scan<D: Document>(
    client: &ddb::Client,
    table: &str,
    metrics: &Metrics,
) -> Result<Entries<D>, StoreError> {
    let prefix = item_key::<D>("");
    let mut pages = client
        .scan()
        .table_name(table)
        .consistent_read(true)
        .into_paginator()
        .items()
        .send();
    let mut entries = Entries::new();
    while let Some(item) = pages.next().await {
        let item = item.map_err(|e| {
            metrics.api_call("dynamodb", "Scan", false);
            io(table, ddb::error::DisplayErrorContext(e))
        })?;
        let Some(AttributeValue::S(pk)) = item.get(PK) else {
            continue;
        };
        let Some(key) = pk.strip_prefix(&prefix) else {
            continue;
        };
        let kind = D::KIND;
        let (Some(AttributeValue::S(text)), Some(version)) =
            (item.get(kind.field()), version_of(&item))
        else {
            tracing::warn!(
                table,
                key,
                "a {kind} item without its text or version: skipped"
            );
            continue;
        };
        if D::validate_key(key).is_err() {
            tracing::warn!(table, key, "not a valid {kind} key: skipped");
            continue;
        }
        match D::decode(text) {
            Ok(doc) => {
                entries.insert(
                    key.to_owned(),
                    Stored {
                        doc: Arc::new(doc),
                        version,
                    },
                );
            }
            Err(error) => {
                tracing::warn!(table, key, error, "an invalid {kind} in the table: skipped");
            }
        }
    }
    metrics.api_call("dynamodb", "Scan", true);
    Ok(entries)
}

/// Polls the counter; rescans when it moved.
async fn follow<D: Document>(
    client: ddb::Client,
    table: String,
    interval: Duration,
    mut seen: u64,
    tx: watch::Sender<Arc<Entries<D>>>,
    metrics: Arc<Metrics>,
) {
    let mut rescanned = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(interval).await;
        let counter = match read_counter(&client, &table, &metrics).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "reading the {} failed; keeping the last view", D::KIND.store_noun());
                continue;
            }
        };
        if counter == seen && rescanned.elapsed() < RESCAN_INTERVAL {
            continue;
        }
        match scan::<D>(&client, &table, &metrics).await {
            Ok(namespaces) => {
                seen = counter;
                rescanned = tokio::time::Instant::now();
                tx.send_if_modified(|all| {
                    if **all == namespaces {
                        return false;
                    }
                    *all = Arc::new(namespaces);
                    true
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the {} failed; keeping the last view", D::KIND.store_noun());
            }
        }
    }
}
