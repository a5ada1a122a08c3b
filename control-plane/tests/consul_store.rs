//! The dtab store on Consul KV against the Consul double: two controller
//! replicas sharing one set of dtabs, compare-and-set, and bad values.

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

use std::sync::Arc;
use std::time::Duration;

use ecsmesh_consul_double::ConsulDouble;
use ecsmesh_controller::metrics::Metrics;
use ecsmesh_controller::store::consul_kv::{ConsulStore, ConsulStoreSettings};
use ecsmesh_controller::store::{DtabStore, Namespaces, StoreError};
use ecsmesh_dtab::Dtab;
use tokio::sync::watch;

const PATIENCE: Duration = Duration::from_secs(10);

fn settings(consul: &ConsulDouble) -> ConsulStoreSettings {
    ConsulStoreSettings {
        address: consul.address(),
        wait: Duration::from_secs(1),
        min_interval: Duration::from_millis(20),
        settle_timeout: Duration::from_secs(3),
        ..ConsulStoreSettings::default()
    }
}

async fn open(consul: &ConsulDouble) -> ConsulStore<ecsmesh_dtab::Dtab> {
    ConsulStore::open(settings(consul), Arc::new(Metrics::new()))
        .await
        .unwrap()
}

fn dtab(s: &str) -> Dtab {
    Dtab::read(s).unwrap()
}

async fn until(
    rx: &mut watch::Receiver<Arc<Namespaces>>,
    what: &str,
    done: impl Fn(&Namespaces) -> bool,
) {
    let reached = matches!(
        tokio::time::timeout(PATIENCE, rx.wait_for(|ns| done(ns))).await,
        Ok(Ok(_))
    );
    assert!(reached, "timed out waiting for {what}: {:?}", rx.borrow());
}

#[tokio::test]
async fn two_replicas_see_each_others_writes_and_conflicts_are_refused() {
    let consul = ConsulDouble::start().await.unwrap();
    let a = DtabStore::Consul(open(&consul).await);
    let b = DtabStore::Consul(open(&consul).await);
    let mut b_view = b.subscribe();

    let v1 = a
        .create("default", dtab("/svc=>/#/consul/dc1"), usize::MAX)
        .await
        .unwrap();
    // Read-your-writes on the writing replica.
    assert_eq!(a.namespaces()["default"].version, v1.version);
    until(&mut b_view, "b sees a's create", |ns| {
        ns.get("default").is_some_and(|s| s.version == v1.version)
    })
    .await;
    assert!(matches!(
        b.create("default", dtab("/svc=>/x"), usize::MAX).await,
        Err(StoreError::AlreadyExists { .. })
    ));

    let v2 = b
        .update("default", dtab("/svc=>/#/consul/dc2"), v1.version)
        .await
        .unwrap();
    assert!(v2.version > v1.version);
    let mut a_view = a.subscribe();
    until(&mut a_view, "a sees b's update", |ns| {
        ns.get("default")
            .is_some_and(|s| s.doc.to_string() == "/svc=>/#/consul/dc2")
    })
    .await;

    // a still holds v1: refused, with the version that won.
    let err = a
        .update("default", dtab("/svc=>/lost"), v1.version)
        .await
        .unwrap_err();
    match err {
        StoreError::VersionMismatch {
            expected, actual, ..
        } => assert_eq!((expected, actual), (v1.version, v2.version)),
        e => panic!("{e}"),
    }

    // Both race from v2: exactly one wins.
    let (ra, rb) = tokio::join!(
        a.update("default", dtab("/svc=>/from-a"), v2.version),
        b.update("default", dtab("/svc=>/from-b"), v2.version),
    );
    let (won, lost) = match (ra, rb) {
        (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
        (ra, rb) => panic!("expected one winner: {ra:?} {rb:?}"),
    };
    assert!(matches!(lost, StoreError::VersionMismatch { actual, .. } if actual == won.version));
    for view in [&mut a_view, &mut b_view] {
        until(view, "both see the winner", |ns| {
            ns.get("default").is_some_and(|s| s.version == won.version)
        })
        .await;
    }

    // Missing namespaces, version 0, deletes.
    assert!(matches!(
        a.update("other", dtab("/a=>/b"), 5).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        a.update("default", dtab("/a=>/b"), 0).await,
        Err(StoreError::VersionMismatch { expected: 0, .. })
    ));
    assert!(matches!(
        b.delete("default", Some(v1.version)).await,
        Err(StoreError::VersionMismatch { .. })
    ));
    b.delete("default", Some(won.version)).await.unwrap();
    assert!(!b.namespaces().contains_key("default"));
    until(&mut a_view, "a sees the delete", Namespaces::is_empty).await;
    assert!(matches!(
        a.delete("default", None).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        a.create("bad name!", dtab("/a=>/b"), usize::MAX).await,
        Err(StoreError::InvalidKey { .. })
    ));

    // Versions only grow: a re-created namespace is newer than the old one.
    let again = a
        .create("default", dtab("/a=>/b"), usize::MAX)
        .await
        .unwrap();
    assert!(again.version > won.version);
}

#[tokio::test]
async fn values_that_are_not_dtabs_are_skipped() {
    let consul = ConsulDouble::start().await.unwrap();
    consul
        .kv_put("dc1", "ecsmesh/dtabs/broken", b"/svc=>")
        .unwrap();
    consul
        .kv_put("dc1", "ecsmesh/dtabs/ok", b"/svc=>/#/consul/dc1")
        .unwrap();
    let store = open(&consul).await;
    let ns = store.subscribe().borrow().clone();
    assert_eq!(ns.keys().collect::<Vec<_>>(), ["ok"]);

    // Corrupting a good namespace by hand keeps its last valid dtab...
    let good = store
        .create("good", dtab("/a=>/b"), usize::MAX)
        .await
        .unwrap();
    let bad_version = consul
        .kv_put("dc1", "ecsmesh/dtabs/good", b"not a dtab")
        .unwrap();
    let other = store
        .create("later", dtab("/c=>/d"), usize::MAX)
        .await
        .unwrap();
    let ns = store.subscribe().borrow().clone();
    assert!(
        ns.contains_key("later"),
        "the watch went past the bad value"
    );
    assert_eq!(ns["good"].version, good.version);
    assert_eq!(ns["good"].doc.to_string(), "/a=>/b");
    assert!(other.version > bad_version);

    // ...and a write from the stale version reports the real one, so an
    // operator can repair it.
    let err = store
        .update("good", dtab("/a=>/c"), good.version)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::VersionMismatch { actual, .. } if actual == bad_version),
        "{err}"
    );
    let fixed = store
        .update("good", dtab("/a=>/c"), bad_version)
        .await
        .unwrap();
    assert_eq!(store.subscribe().borrow()["good"].version, fixed.version);
}

#[tokio::test]
async fn an_unreachable_consul_fails_open_and_writes_but_keeps_the_view() {
    let consul = ConsulDouble::start().await.unwrap();
    let store = open(&consul).await;
    store
        .create("default", dtab("/a=>/b"), usize::MAX)
        .await
        .unwrap();
    consul.stop().await;
    let before = store.subscribe().borrow().clone();
    let err = store
        .update("default", dtab("/a=>/c"), 1)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(*store.subscribe().borrow(), before);

    let err = ConsulStore::<ecsmesh_dtab::Dtab>::open(settings(&consul), Arc::new(Metrics::new()))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err}");
    assert!(err.to_string().contains("ecsmesh/dtabs"), "{err}");

    // Back, and a snapshot restore later, the watch follows again.
    consul.restart().await.unwrap();
    consul.reset_index("dc1", 1).unwrap();
    let other = open(&consul).await;
    other
        .create("second", dtab("/x=>/y"), usize::MAX)
        .await
        .unwrap();
    let mut view = store.subscribe();
    until(&mut view, "the first store sees the second's write", |ns| {
        ns.contains_key("second")
    })
    .await;
}

/// Service policies (issue #18) share the backend, beside the dtabs: the
/// sibling prefix `ecsmesh/policies`, the same compare-and-set and watch,
/// each policy under its canonical prefix.
#[tokio::test]
async fn policies_are_shared_by_replicas_beside_the_dtabs() {
    use ecsmesh_controller::store::PolicyStore;
    use ecsmesh_policy::ServicePolicy;

    let consul = ConsulDouble::start().await.unwrap();
    let open_policies = || async {
        PolicyStore::Consul(
            ConsulStore::<ServicePolicy>::open(settings(&consul), Arc::new(Metrics::new()))
                .await
                .unwrap(),
        )
    };
    let a = open_policies().await;
    let b = open_policies().await;
    let dtabs = DtabStore::Consul(open(&consul).await);
    let policy = |text: &str| ServicePolicy::parse(text).unwrap();

    let v1 = a
        .create("/svc/payments", policy("timeouts: {total: 2s}"), 10)
        .await
        .unwrap();
    let mut b_view = b.subscribe();
    // wait_for's guard holds the channel: it must not outlive the match.
    let seen = matches!(
        tokio::time::timeout(
            PATIENCE,
            b_view.wait_for(|all| all
                .get("/svc/payments")
                .is_some_and(|s| s.version == v1.version)),
        )
        .await,
        Ok(Ok(_))
    );
    assert!(seen, "b did not see a's policy");
    assert_eq!(
        b.entries()["/svc/payments"].doc.total_timeout,
        Some(Duration::from_secs(2))
    );
    // Kept under the policies' prefix, as canonical JSON; not a dtab.
    let raw = kv_value(&consul, "ecsmesh/policies/svc/payments").await;
    assert_eq!(raw, policy("timeouts: {total: 2s}").canonical());
    assert!(dtabs.namespaces().is_empty());

    // Compare-and-set as for dtabs.
    let err = b
        .update(
            "/svc/payments",
            policy("timeouts: {total: 1s}"),
            v1.version + 5,
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("policy for \"/svc/payments\" is at version"),
        "{err}"
    );
    let v2 = b
        .update("/svc/payments", policy("timeouts: {total: 1s}"), v1.version)
        .await
        .unwrap();
    assert!(v2.version > v1.version);
    // A prefix not in canonical form is refused before Consul is asked.
    assert!(matches!(
        a.create("svc/x", policy("{}"), 10).await,
        Err(StoreError::InvalidKey { .. })
    ));
    b.delete("/svc/payments", Some(v2.version)).await.unwrap();
    let mut a_view = a.subscribe();
    let gone = matches!(
        tokio::time::timeout(PATIENCE, a_view.wait_for(|all| all.is_empty())).await,
        Ok(Ok(_))
    );
    assert!(gone, "a did not see the delete");
}

/// A key's raw value, read from the double's HTTP API as any Consul client.
async fn kv_value(consul: &ConsulDouble, key: &str) -> String {
    let client = ecsmesh_consul::Client::new(ecsmesh_consul::Config {
        address: consul.address(),
        ..ecsmesh_consul::Config::default()
    })
    .unwrap();
    let pair = client
        .kv_get(key, &ecsmesh_consul::QueryOptions::default())
        .await
        .unwrap()
        .value
        .unwrap();
    String::from_utf8(pair.value).unwrap()
}
