//! Catalog, health, KV and sessions against the Consul double.

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

use std::time::Duration;

use ecsmesh_consul::{
    Client, Config, HealthQuery, HealthStatus, Indexed, KvPair, NewSession, QueryOptions,
    ServiceEntry, SessionBehavior,
};
use ecsmesh_consul_double::{ConsulDouble, DoubleOptions};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

fn client(consul: &ConsulDouble) -> Client {
    Client::new(Config {
        address: consul.address(),
        request_timeout: Duration::from_secs(2),
        ..Config::default()
    })
    .unwrap()
}

/// A raw `PUT` (the client has no registration calls).
async fn put(consul: &ConsulDouble, path: &str, body: &serde_json::Value) -> (u16, String) {
    let http = HttpClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = hyper::Request::put(format!("{}{path}", consul.address()))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = http.request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn now() -> QueryOptions {
    QueryOptions::default()
}

/// All of `service`'s instances, now.
async fn health(c: &Client, service: &str) -> Indexed<Vec<ServiceEntry>> {
    c.health_service(service, &HealthQuery::default(), &now())
        .await
        .unwrap()
}

/// The entry at `key`, now.
async fn kv(c: &Client, key: &str) -> Option<KvPair> {
    c.kv_get(key, &now()).await.unwrap().value
}

#[tokio::test]
async fn catalog_and_health_with_filters() {
    let consul = ConsulDouble::start_with(DoubleOptions {
        datacenters: vec!["dc1".into(), "dc2".into()],
        ..DoubleOptions::default()
    })
    .await
    .unwrap();
    let c = client(&consul);
    // Over HTTP, as a registrator would.
    let (status, body) = put(
        &consul,
        "/v1/catalog/register",
        &json!({
            "Node": "ip-10-0-0-1", "Address": "10.0.0.1",
            "Service": {"ID": "web-1", "Service": "web", "Port": 31001, "Tags": ["v1", "Canary"]},
            "Check": {"CheckID": "web-1", "ServiceID": "web-1", "Status": "passing"},
        }),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "true"));
    consul
        .catalog_register(&json!({
            "Node": "ip-10-0-0-2", "Address": "10.0.0.2",
            "Service": {"ID": "web-2", "Service": "web", "Address": "172.17.0.5", "Port": 8080, "Tags": ["v2"]},
            "Checks": [
                {"CheckID": "serfHealth", "Status": "passing"},
                {"CheckID": "web-2", "ServiceID": "web-2", "Status": "warning"},
            ],
        }))
        .unwrap();
    consul
        .catalog_register(&json!({
            "Datacenter": "dc2", "Node": "far", "Address": "10.1.0.1",
            "Service": {"ID": "web-9", "Service": "web", "Port": 9},
        }))
        .unwrap();

    let services = c.catalog_services(&now()).await.unwrap().value;
    assert_eq!(services["web"], ["Canary", "v1", "v2"]);

    let all = health(&c, "web").await.value;
    assert_eq!(all.len(), 2);
    let (w1, w2) = (&all[0], &all[1]);
    assert_eq!(
        (w1.service_id.as_str(), w1.endpoint_address(), w1.port),
        ("web-1", "10.0.0.1", 31001)
    );
    assert_eq!(
        (w2.endpoint_address(), w2.address.as_str()),
        ("172.17.0.5", "10.0.0.2")
    );
    assert_eq!(w1.status(), HealthStatus::Passing);
    assert_eq!(w2.status(), HealthStatus::Warning);
    assert_eq!(w2.checks.len(), 2, "node checks are included");
    assert_eq!(w1.datacenter, "dc1");

    let passing = HealthQuery {
        passing: true,
        ..HealthQuery::default()
    };
    let healthy = c
        .health_service("web", &passing, &now())
        .await
        .unwrap()
        .value;
    assert_eq!(healthy.len(), 1);
    assert_eq!(healthy[0].service_id, "web-1");

    let tagged = HealthQuery {
        tags: vec!["canary".into(), "v1".into()],
        ..HealthQuery::default()
    };
    let canaries = c
        .health_service("web", &tagged, &now())
        .await
        .unwrap()
        .value;
    assert_eq!(
        canaries.len(),
        1,
        "tags match case-insensitively, all of them"
    );

    let in_dc2 = QueryOptions {
        datacenter: Some("dc2".into()),
        ..now()
    };
    let far = c
        .health_service("web", &HealthQuery::default(), &in_dc2)
        .await
        .unwrap()
        .value;
    assert_eq!(far.len(), 1);
    assert_eq!(far[0].datacenter, "dc2");
    assert_eq!(far[0].status(), HealthStatus::Passing, "no checks: healthy");

    let none = health(&c, "nothing").await;
    assert!(none.value.is_empty());
}

#[tokio::test]
async fn health_blocking_is_scoped_to_the_service() {
    let consul = ConsulDouble::start().await.unwrap();
    let c = client(&consul);
    for (node, id, name) in [("n1", "a-1", "a"), ("n2", "b-1", "b")] {
        consul
            .catalog_register(&json!({
                "Node": node, "Address": "10.0.0.1",
                "Service": {"ID": id, "Service": name, "Port": 1},
                "Check": {"CheckID": id, "ServiceID": id, "Status": "passing"},
            }))
            .unwrap();
    }
    let a = health(&c, "a").await;
    consul
        .set_check_status("dc1", "n2", "b-1", "critical")
        .unwrap();
    let again = health(&c, "a").await;
    assert_eq!(again.index, a.index, "b's check does not touch a's index");
    consul
        .set_check_status("dc1", "n1", "a-1", "warning")
        .unwrap();
    let changed = health(&c, "a").await;
    assert!(changed.index > a.index);
    assert_eq!(changed.value[0].status(), HealthStatus::Warning);
    // Deregistering the last instance: the service's index goes away and
    // the extinction index answers for it.
    consul.catalog_deregister("dc1", "n1", Some("a-1")).unwrap();
    let gone = health(&c, "a").await;
    assert!(gone.value.is_empty());
    assert!(gone.index > changed.index);
}

#[tokio::test]
async fn agent_registration_and_ttl_check_updates() {
    let consul = ConsulDouble::start().await.unwrap();
    let c = client(&consul);
    let (status, _) = put(
        &consul,
        "/v1/agent/service/register",
        &json!({"Name": "api", "ID": "api-1", "Port": 7000, "Check": {"TTL": "15s"}}),
    )
    .await;
    assert_eq!(status, 200);
    let entries = health(&c, "api").await.value;
    assert_eq!(entries[0].node, "consul-double");
    assert_eq!(entries[0].endpoint_address(), "127.0.0.1");
    assert_eq!(entries[0].status(), HealthStatus::Critical);
    let (status, _) = put(&consul, "/v1/agent/check/pass/service:api-1", &json!(null)).await;
    assert_eq!(status, 200);
    let entries = health(&c, "api").await.value;
    assert_eq!(entries[0].status(), HealthStatus::Passing);
    let (status, _) = put(&consul, "/v1/agent/check/pass/nope", &json!(null)).await;
    assert_eq!(status, 404);
    let (status, _) = put(&consul, "/v1/agent/service/deregister/api-1", &json!(null)).await;
    assert_eq!(status, 200);
    assert!(c.catalog_services(&now()).await.unwrap().value.is_empty());
}

#[tokio::test]
async fn kv_compare_and_set() {
    let consul = ConsulDouble::start().await.unwrap();
    let c = client(&consul);
    assert!(c.kv_put("cfg/a", b"one", Some(0)).await.unwrap(), "create");
    assert!(
        !c.kv_put("cfg/a", b"two", Some(0)).await.unwrap(),
        "create again"
    );
    let a = kv(&c, "cfg/a").await.unwrap();
    assert_eq!(a.value, b"one");
    assert_eq!(a.create_index, a.modify_index);
    assert!(
        !c.kv_put("cfg/a", b"two", Some(a.modify_index + 100))
            .await
            .unwrap()
    );
    assert!(!c.kv_put("cfg/missing", b"x", Some(5)).await.unwrap());
    assert!(
        c.kv_put("cfg/a", b"two", Some(a.modify_index))
            .await
            .unwrap()
    );
    let a2 = kv(&c, "cfg/a").await.unwrap();
    assert!(a2.modify_index > a.modify_index);
    assert_eq!(a2.create_index, a.create_index);
    // The loser of a race holds the old index.
    assert!(
        !c.kv_put("cfg/a", b"three", Some(a.modify_index))
            .await
            .unwrap()
    );

    // Binary and empty values survive the base64 round trip.
    c.kv_put("cfg/bin", &[0, 255, 10, 13], None).await.unwrap();
    c.kv_put("cfg/empty", b"", None).await.unwrap();
    let list = c.kv_list("cfg/", &now()).await.unwrap().value;
    let keys: Vec<_> = list.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["cfg/a", "cfg/bin", "cfg/empty"]);
    assert_eq!(list[1].value, [0, 255, 10, 13]);
    assert!(list[2].value.is_empty());
    assert!(
        c.kv_list("nothing/", &now())
            .await
            .unwrap()
            .value
            .is_empty()
    );

    // Delete: cas=0 never deletes an existing key; a stale index fails.
    assert!(!c.kv_delete("cfg/a", Some(0)).await.unwrap());
    assert!(!c.kv_delete("cfg/a", Some(a.modify_index)).await.unwrap());
    assert!(c.kv_delete("cfg/a", Some(a2.modify_index)).await.unwrap());
    assert!(kv(&c, "cfg/a").await.is_none());
    // As in Consul, a CAS delete of a missing key answers true.
    assert!(c.kv_delete("cfg/a", Some(7)).await.unwrap());
}

#[tokio::test]
async fn sessions_acquire_and_release() {
    let consul = ConsulDouble::start().await.unwrap();
    let c = client(&consul);
    let quick = |behavior| NewSession {
        lock_delay: Some(Duration::ZERO),
        ..NewSession::new(Duration::from_secs(15), behavior)
    };
    let s1 = c
        .session_create(&quick(SessionBehavior::Release))
        .await
        .unwrap();
    let s2 = c
        .session_create(&quick(SessionBehavior::Release))
        .await
        .unwrap();
    assert_ne!(s1, s2);

    assert!(c.kv_acquire("leader", b"replica-1", &s1).await.unwrap());
    assert!(!c.kv_acquire("leader", b"replica-2", &s2).await.unwrap());
    let held = kv(&c, "leader").await.unwrap();
    assert_eq!(held.session.as_deref(), Some(s1.as_str()));
    assert_eq!(
        (held.lock_index, held.value.as_slice()),
        (1, &b"replica-1"[..])
    );
    // Re-acquiring by the holder changes only the value.
    assert!(c.kv_acquire("leader", b"replica-1b", &s1).await.unwrap());
    assert_eq!(kv(&c, "leader").await.unwrap().lock_index, 1);
    // Advisory: a plain write succeeds and keeps the holder.
    assert!(c.kv_put("leader", b"overwritten", None).await.unwrap());
    let held = kv(&c, "leader").await.unwrap();
    assert_eq!(held.session.as_deref(), Some(s1.as_str()));

    assert!(
        !c.kv_release("leader", b"", &s2).await.unwrap(),
        "not the holder"
    );
    assert!(c.kv_release("leader", b"released", &s1).await.unwrap());
    assert!(c.kv_acquire("leader", b"replica-2", &s2).await.unwrap());
    assert_eq!(kv(&c, "leader").await.unwrap().lock_index, 2);

    // Destroying the holder releases (behaviour "release")...
    assert!(c.session_destroy(&s2).await.unwrap());
    let after = kv(&c, "leader").await.unwrap();
    assert_eq!(after.session, None);
    assert_eq!(after.value, b"replica-2");
    // ...or deletes the key (behaviour "delete").
    let eph = c
        .session_create(&quick(SessionBehavior::Delete))
        .await
        .unwrap();
    assert!(c.kv_acquire("ephemeral", b"x", &eph).await.unwrap());
    c.session_destroy(&eph).await.unwrap();
    assert!(kv(&c, "ephemeral").await.is_none());

    // An unknown session cannot acquire.
    let err = c
        .kv_acquire("leader", b"", "no-such-session")
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(500));
}

#[tokio::test]
async fn a_lost_holders_lock_delay_blocks_acquisition() {
    let consul = ConsulDouble::start().await.unwrap();
    let c = client(&consul);
    let spec = NewSession::new(Duration::from_secs(15), SessionBehavior::Release);
    let holder = c.session_create(&spec).await.unwrap();
    let next = c.session_create(&spec).await.unwrap();
    assert!(c.kv_acquire("lock", b"", &holder).await.unwrap());
    c.session_destroy(&holder).await.unwrap();
    // The default lock delay (15 s) is running.
    assert!(!c.kv_acquire("lock", b"", &next).await.unwrap());
}

#[tokio::test]
async fn session_ttls_renewal_and_expiry() {
    let consul = ConsulDouble::start_with(DoubleOptions {
        session_ttl_min: Duration::from_millis(100),
        ..DoubleOptions::default()
    })
    .await
    .unwrap();
    let c = client(&consul);
    let mut spec = NewSession::new(Duration::from_millis(150), SessionBehavior::Release);
    spec.lock_delay = Some(Duration::ZERO);
    let id = c.session_create(&spec).await.unwrap();
    let renewed = c.session_renew(&id).await.unwrap().unwrap();
    assert_eq!(renewed.ttl, Some(Duration::from_millis(150)));
    assert_eq!(renewed.behavior, SessionBehavior::Release);
    assert!(c.kv_acquire("k", b"v", &id).await.unwrap());
    let info = c.session_info(&id, &now()).await.unwrap();
    assert_eq!(info.value.unwrap().id, id);

    // Consul reaps at twice the TTL; wait for it with a blocking query.
    let mut expired = false;
    let mut index = info.index;
    for _ in 0..10 {
        let opts = QueryOptions {
            index: Some(index),
            wait: Some(Duration::from_secs(1)),
            ..now()
        };
        let r = c.session_info(&id, &opts).await.unwrap();
        index = r.index;
        if r.value.is_none() {
            expired = true;
            break;
        }
    }
    assert!(expired);
    assert_eq!(kv(&c, "k").await.unwrap().session, None);
    assert_eq!(
        c.session_renew(&id).await.unwrap(),
        None,
        "renewing a lost session"
    );

    // Out of bounds TTLs are refused, as Consul does.
    let err = c
        .session_create(&NewSession::new(
            Duration::from_millis(50),
            SessionBehavior::Release,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400));
}

#[tokio::test]
async fn sessions_on_a_critical_check_are_refused_and_invalidated() {
    let consul = ConsulDouble::start().await.unwrap();
    let c = client(&consul);
    // Consul's default: tied to the node's serfHealth check.
    let spec = NewSession {
        node_checks: None,
        ..NewSession::new(Duration::from_secs(15), SessionBehavior::Release)
    };
    let id = c.session_create(&spec).await.unwrap();
    consul
        .set_check_status("dc1", "consul-double", "serfHealth", "critical")
        .unwrap();
    assert!(c.session_info(&id, &now()).await.unwrap().value.is_none());
    let err = c.session_create(&spec).await.unwrap_err();
    assert!(err.to_string().contains("critical state"), "{err}");
}
