//! The dtab store on DynamoDB (moto, through the real SDK): the file and
//! Consul stores' semantics (CAS, versions that only grow, typed refusals,
//! the namespace limit), two replicas seeing each other's writes, concurrent
//! writers of which one wins, an invalid item skipped; and a controller
//! "moved" to a fresh disk that keeps every override.

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use common::{Running, channel, emulator_env, free_port};
use ecsmesh_controller::metrics::Metrics;
use ecsmesh_controller::store::StoreError;
use ecsmesh_controller::store::dynamodb::{DynamoStore, DynamoStoreSettings};
use ecsmesh_dtab::Dtab;
use ecsmesh_proto::v1 as pb;
use ecsmesh_test_support::ecs::sdk_config;
use ecsmesh_test_support::moto::MotoServer;

async fn table(endpoint: &str, region: &str, name: &str) -> aws_sdk_dynamodb::Client {
    let conf = sdk_config(endpoint, region).await;
    let client = aws_sdk_dynamodb::Client::new(&conf);
    client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    client
}

async fn open(endpoint: &str, region: &str, name: &str) -> DynamoStore<ecsmesh_dtab::Dtab> {
    let client = aws_sdk_dynamodb::Client::new(&sdk_config(endpoint, region).await);
    DynamoStore::with_client(
        client,
        &DynamoStoreSettings {
            table: name.to_owned(),
            poll_interval: Duration::from_millis(100),
            ..DynamoStoreSettings::default()
        },
        Arc::new(Metrics::new()),
    )
    .await
    .unwrap()
}

fn dtab(text: &str) -> Dtab {
    Dtab::read(text).unwrap()
}

async fn sees(
    store: &DynamoStore<ecsmesh_dtab::Dtab>,
    what: &str,
    done: impl Fn(&ecsmesh_controller::store::Namespaces) -> bool,
) {
    let mut rx = store.subscribe();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !done(&rx.borrow_and_update()) {
            rx.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the other replica did not see {what}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_dtabs_with_the_file_stores_semantics() {
    let moto = MotoServer::shared();
    let (endpoint, region) = (moto.endpoint(), "eu-west-1");
    let client = table(&endpoint, region, "dtabs-semantics").await;
    let a = open(&endpoint, region, "dtabs-semantics").await;
    let b = open(&endpoint, region, "dtabs-semantics").await;

    let v1 = a
        .create("default", dtab("/svc=>/#/ecs/a"), 10)
        .await
        .unwrap();
    assert!(matches!(
        a.create("default", dtab("/svc=>/#/ecs/x"), 10).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    sees(&b, "the create", |n| {
        n.get("default").is_some_and(|d| d.version == v1.version)
    })
    .await;
    assert_eq!(
        b.subscribe().borrow().clone()["default"].doc.to_string(),
        "/svc=>/#/ecs/a"
    );

    // CAS: a stale version is refused with the current one; the right one wins.
    match b
        .update("default", dtab("/svc=>/#/ecs/b"), v1.version + 7)
        .await
    {
        Err(StoreError::VersionMismatch { actual, .. }) => assert_eq!(actual, v1.version),
        other => panic!("{other:?}"),
    }
    let v2 = b
        .update("default", dtab("/svc=>/#/ecs/b"), v1.version)
        .await
        .unwrap();
    assert!(v2.version > v1.version);
    sees(&a, "the update", |n| {
        n.get("default").is_some_and(|d| d.version == v2.version)
    })
    .await;

    // Two writers with the same expectation: exactly one wins.
    let (x, y) = tokio::join!(
        a.update("default", dtab("/svc=>/#/ecs/x"), v2.version),
        b.update("default", dtab("/svc=>/#/ecs/y"), v2.version)
    );
    assert_eq!(
        usize::from(x.is_ok()) + usize::from(y.is_ok()),
        1,
        "{x:?} {y:?}"
    );
    let v3 = x.or(y).unwrap();

    // Deletes: CAS too; then gone everywhere; versions keep growing.
    assert!(matches!(
        a.delete("default", Some(v2.version)).await,
        Err(StoreError::VersionMismatch { .. })
    ));
    a.delete("default", Some(v3.version)).await.unwrap();
    sees(&b, "the delete", |n| !n.contains_key("default")).await;
    assert!(matches!(
        a.delete("default", None).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        a.update("default", dtab("/svc=>/#/ecs/z"), v3.version)
            .await,
        Err(StoreError::NotFound { .. })
    ));
    let again = a
        .create("default", dtab("/svc=>/#/ecs/c"), 10)
        .await
        .unwrap();
    assert!(again.version > v3.version);

    // The namespace limit.
    assert!(matches!(
        a.create("other", dtab("/svc=>/#/ecs/c"), 1).await,
        Err(StoreError::TooMany { limit: 1, .. })
    ));

    // An item written by hand that is no dtab is skipped, not applied.
    client
        .put_item()
        .table_name("dtabs-semantics")
        .item("pk", AttributeValue::S("dtab#broken".into()))
        .item("dtab", AttributeValue::S("/svc=>".into()))
        .item("version", AttributeValue::N("999999".into()))
        .send()
        .await
        .unwrap();
    a.create("later", dtab("/svc=>/#/ecs/l"), 10).await.unwrap();
    sees(&b, "the later create", |n| n.contains_key("later")).await;
    assert!(!b.subscribe().borrow().clone().contains_key("broken"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_moved_to_a_fresh_disk_keeps_every_override() {
    let moto = MotoServer::shared();
    let region = "eu-west-2";
    table(&moto.endpoint(), region, "dtabs-moved").await;
    let mut env = emulator_env(&moto.endpoint(), region);
    env.push(("ECSMESH_STORE", "dynamodb".to_owned()));
    env.push(("ECSMESH_DYNAMODB_TABLE", "dtabs-moved".to_owned()));
    let start = |disk: &std::path::Path| {
        let port = free_port("127.0.0.1");
        let args = [
            "--grpc-addr".to_owned(),
            format!("127.0.0.1:{port}"),
            "--admin-addr".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--store-dir".to_owned(),
            disk.display().to_string(),
            "--base-dtab".to_owned(),
            "/svc=>/#/ecs/demo".to_owned(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        (Running::start(&args, &env), port)
    };
    let api = |port: u16| async move {
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return pb::dtab_admin_client::DtabAdminClient::new(channel(addr).await);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the controller did not listen");
    };
    let first_disk = tempfile::tempdir().unwrap();
    let (first, port) = start(first_disk.path());
    api(port)
        .await
        .create_dtab(pb::CreateDtabRequest {
            namespace: "default".into(),
            dtab: "/svc/world=>/svc/world-v2".into(),
        })
        .await
        .unwrap();
    first.kill();
    drop(first_disk); // the instance and its disk are gone

    let second_disk = tempfile::tempdir().unwrap();
    let (_second, port) = start(second_disk.path());
    let got = api(port)
        .await
        .get_dtab(pb::GetDtabRequest {
            namespace: "default".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.dtab, "/svc/world=>/svc/world-v2");
}

/// Service policies (issue #18) live in the same table as the dtabs
/// (`policy#<prefix>` items, the shared version counter): replicas share
/// them with the same compare-and-set, and neither kind sees the other's
/// items.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_share_the_table_with_the_dtabs() {
    use ecsmesh_policy::ServicePolicy;

    let moto = MotoServer::shared();
    let (endpoint, region) = (moto.endpoint(), "eu-north-1");
    let client = table(&endpoint, region, "policies").await;
    let open_policies = || async {
        DynamoStore::<ServicePolicy>::with_client(
            aws_sdk_dynamodb::Client::new(&sdk_config(&endpoint, region).await),
            &DynamoStoreSettings {
                table: "policies".to_owned(),
                poll_interval: Duration::from_millis(100),
                ..DynamoStoreSettings::default()
            },
            Arc::new(Metrics::new()),
        )
        .await
        .unwrap()
    };
    let a = open_policies().await;
    let b = open_policies().await;
    let dtabs = open(&endpoint, region, "policies").await;
    let policy = |text: &str| ServicePolicy::parse(text).unwrap();

    let d = dtabs
        .create("default", dtab("/svc=>/#/ecs/a"), 10)
        .await
        .unwrap();
    let v1 = a
        .create("/svc/payments", policy("retries: {max_attempts: 3}"), 10)
        .await
        .unwrap();
    assert!(v1.version > d.version, "one counter for both kinds");
    let mut rx = b.subscribe();
    // wait_for's guard holds the channel: it must not outlive the match.
    let seen = matches!(
        tokio::time::timeout(
            Duration::from_secs(5),
            rx.wait_for(|all| all
                .get("/svc/payments")
                .is_some_and(|s| s.version == v1.version)),
        )
        .await,
        Ok(Ok(_))
    );
    assert!(seen, "b did not see a's policy");
    let item = client
        .get_item()
        .table_name("policies")
        .key("pk", AttributeValue::S("policy#/svc/payments".to_owned()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        item.item()
            .and_then(|i| i.get("policy"))
            .and_then(|v| v.as_s().ok()),
        Some(&policy("retries: {max_attempts: 3}").canonical())
    );
    // Each kind sees only its own items.
    assert_eq!(dtabs.subscribe().borrow().len(), 1);
    assert_eq!(b.subscribe().borrow().len(), 1);

    match b
        .update("/svc/payments", policy("{}"), v1.version + 3)
        .await
    {
        Err(StoreError::VersionMismatch { actual, .. }) => assert_eq!(actual, v1.version),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        a.create("/svc/payments", policy("{}"), 10).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    assert!(matches!(
        a.create("/svc/other", policy("{}"), 1).await,
        Err(StoreError::TooMany { limit: 1, .. })
    ));
    b.delete("/svc/payments", Some(v1.version)).await.unwrap();
    assert!(b.subscribe().borrow().is_empty());
    assert_eq!(dtabs.subscribe().borrow().len(), 1, "the dtab stays");
}
