//! Blocking queries and `BlockingWatch` against the Consul double: every
//! rule of Consul's blocking-query documentation, and the faults that
//! motivate them.

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ecsmesh_consul::{BlockingWatch, Client, Config, Error, Indexed, QueryOptions, WatchConfig};
use ecsmesh_consul_double::ConsulDouble;
use serde_json::json;

fn client(consul: &ConsulDouble) -> Client {
    Client::new(Config {
        address: consul.address(),
        request_timeout: Duration::from_secs(2),
        ..Config::default()
    })
    .unwrap()
}

fn watch_config() -> WatchConfig {
    WatchConfig {
        wait: Duration::from_secs(1),
        min_interval: Duration::from_millis(20),
        retry_base: Duration::from_millis(10),
        retry_max: Duration::from_millis(50),
        max_retries: 3,
        ..WatchConfig::default()
    }
}

fn blocking(index: u64, wait: Duration) -> QueryOptions {
    QueryOptions {
        index: Some(index),
        wait: Some(wait),
        ..QueryOptions::default()
    }
}

fn register(consul: &ConsulDouble, node: &str, id: &str, service: &str, tags: &[&str]) {
    consul
        .catalog_register(&json!({
            "Node": node, "Address": "10.0.0.1",
            "Service": {"ID": id, "Service": service, "Port": 80, "Tags": tags},
        }))
        .unwrap();
}

/// The value of `key`, for watches that compare values only.
async fn value_of(
    client: &Client,
    key: &str,
    opts: QueryOptions,
) -> Result<Indexed<Option<Vec<u8>>>, Error> {
    Ok(client.kv_get(key, &opts).await?.map(|p| p.map(|p| p.value)))
}

#[tokio::test]
async fn a_blocking_query_wakes_on_change_and_times_out_at_wait() {
    let consul = ConsulDouble::start().await.unwrap();
    let c = client(&consul);
    let first = c.kv_get("a", &QueryOptions::default()).await.unwrap();
    assert_eq!(first.value, None);
    assert!(first.index >= 1);

    let started = Instant::now();
    let same = c
        .kv_get("a", &blocking(first.index, Duration::from_millis(500)))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(500), "{took:?}");
    // wait + at most wait/16 of jitter, plus scheduling slack.
    assert!(took < Duration::from_millis(900), "{took:?}");
    assert_eq!(same.index, first.index);
    assert_eq!(same.value, None);

    let writer = c.clone();
    let started = Instant::now();
    let opts = blocking(first.index, Duration::from_secs(5));
    let (changed, ()) = tokio::join!(c.kv_get("a", &opts), async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(writer.kv_put("a", b"v1", None).await.unwrap());
    });
    let changed = changed.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(changed.index > first.index);
    assert_eq!(changed.value.unwrap().value, b"v1");

    // The request carried Consul's parameters.
    let last = consul
        .requests()
        .into_iter()
        .rfind(|r| r.method == "GET")
        .unwrap();
    assert_eq!(last.path, "/v1/kv/a");
    assert_eq!(last.param("index"), Some(first.index.to_string().as_str()));
    assert_eq!(last.param("wait"), Some("5s"));
}

#[tokio::test]
async fn an_index_that_goes_backwards_resets_the_watch() {
    let consul = ConsulDouble::start().await.unwrap();
    let c = client(&consul);
    for i in 0..10 {
        c.kv_put(&format!("other/{i}"), b"x", None).await.unwrap();
    }
    c.kv_put("k", b"1", None).await.unwrap();
    let mut w = BlockingWatch::new(watch_config());
    let mut fetch = |o| value_of(&c, "k", o);
    assert_eq!(
        w.next(&mut fetch).await.unwrap().as_deref(),
        Some(&b"1"[..])
    );
    let before = w.index().unwrap();
    assert!(before > 10);

    let writer = c.clone();
    let (got, ()) = tokio::join!(w.next(&mut fetch), async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        // A snapshot restore: the blocked query returns with index 2.
        consul.reset_index("dc1", 2).unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(writer.kv_put("k", b"2", None).await.unwrap());
    });
    assert_eq!(got.unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(w.resets(), 1);
    assert!(w.index().unwrap() < before, "{:?} < {before}", w.index());
    // After the reset, one plain read, then blocking on the new index.
    let gets: Vec<_> = consul
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path == "/v1/kv/k")
        .collect();
    let reset_at = gets
        .iter()
        .rposition(|r| r.param("index").is_none())
        .unwrap();
    assert!(reset_at > 0, "the first read is the only plain one");
    assert_eq!(gets[reset_at + 1].param("index"), Some("2"));
}

#[tokio::test]
async fn a_reaped_tombstone_makes_a_prefix_index_go_backwards() {
    let consul = ConsulDouble::start().await.unwrap();
    let c = client(&consul);
    c.kv_put("p/a", b"1", None).await.unwrap();
    c.kv_put("p/b", b"2", None).await.unwrap();
    c.kv_delete("p/b", None).await.unwrap();
    let before = c.kv_list("p/", &QueryOptions::default()).await.unwrap();
    consul.reap_tombstones("dc1").unwrap();
    let after = c.kv_list("p/", &QueryOptions::default()).await.unwrap();
    assert!(
        after.index < before.index,
        "{} < {}",
        after.index,
        before.index
    );
    assert_eq!(after.value, before.value);
}

#[tokio::test]
async fn errors_then_recovery_keep_the_last_state() {
    let consul = ConsulDouble::start().await.unwrap();
    let c = client(&consul);
    c.kv_put("k", b"1", None).await.unwrap();
    let mut w = BlockingWatch::new(watch_config());
    let mut fetch = |o| value_of(&c, "k", o);
    assert!(w.next(&mut fetch).await.is_ok());

    consul.fail_all(true);
    let err = w.next(&mut fetch).await.unwrap_err();
    assert!(matches!(err, Error::GaveUp { attempts: 3, .. }), "{err}");
    assert_eq!(err.status(), Some(500));
    assert_eq!(w.last().unwrap().as_deref(), Some(&b"1"[..]));

    // Two more failures, then a change: the watch retries through them.
    consul.fail_all(false);
    consul.fail_next(2);
    consul.kv_put("dc1", "k", b"2").unwrap();
    assert_eq!(
        w.next(&mut fetch).await.unwrap().as_deref(),
        Some(&b"2"[..])
    );
    assert_eq!(w.failures(), 0);

    // Consul down altogether, then back on the same port.
    consul.stop().await;
    let err = w.next(&mut fetch).await.unwrap_err();
    assert!(matches!(
        *match err {
            Error::GaveUp { last, .. } => last,
            e => panic!("{e}"),
        },
        Error::Transport { .. }
    ));
    assert_eq!(w.last().unwrap().as_deref(), Some(&b"2"[..]));
    consul.kv_put("dc1", "k", b"3").unwrap();
    consul.restart().await.unwrap();
    assert_eq!(
        w.next(&mut fetch).await.unwrap().as_deref(),
        Some(&b"3"[..])
    );
}

#[tokio::test]
async fn a_query_blocked_when_consul_stops_fails_promptly() {
    let consul = ConsulDouble::start().await.unwrap();
    let c = client(&consul);
    let first = c.kv_get("k", &QueryOptions::default()).await.unwrap();
    let started = Instant::now();
    let opts = blocking(first.index, Duration::from_secs(5));
    let (r, ()) = tokio::join!(c.kv_get("k", &opts), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        consul.stop().await;
    });
    assert!(r.is_err());
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn slow_answers_within_the_timeout_pass_and_slower_ones_time_out() {
    let consul = ConsulDouble::start().await.unwrap();
    let c = Client::new(Config {
        address: consul.address(),
        request_timeout: Duration::from_millis(500),
        ..Config::default()
    })
    .unwrap();
    let first = c.catalog_services(&QueryOptions::default()).await.unwrap();

    consul.set_delay(Duration::from_millis(300));
    let started = Instant::now();
    assert!(c.catalog_services(&QueryOptions::default()).await.is_ok());
    assert!(started.elapsed() >= Duration::from_millis(300));
    // A blocking call's timeout is wait + wait/16 + the margin: a full
    // wait plus the delay still fits.
    let r = c
        .catalog_services(&blocking(first.index, Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!(r.index, first.index);

    consul.set_delay(Duration::from_millis(900));
    let err = c
        .catalog_services(&QueryOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout { timeout, .. } if timeout == Duration::from_millis(500)),
        "{err}"
    );
}

#[tokio::test]
async fn spurious_wake_ups_are_not_yielded() {
    let consul = ConsulDouble::start().await.unwrap();
    let c = client(&consul);
    register(&consul, "n1", "web-1", "web", &["v1"]);
    let calls = AtomicU32::new(0);
    let mut w = BlockingWatch::new(watch_config());
    let mut fetch = |o| {
        calls.fetch_add(1, Ordering::Relaxed);
        let c = &c;
        async move { c.catalog_services(&o).await }
    };
    let first = w.next(&mut fetch).await.unwrap();
    assert_eq!(first.keys().collect::<Vec<_>>(), ["web"]);

    let (next, ()) = tokio::join!(w.next(&mut fetch), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Same content, new index: twice.
        consul.spurious_write("dc1").unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        register(&consul, "n2", "web-2", "web", &["v1"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        register(&consul, "n2", "db-1", "db", &[]);
    });
    let next = next.unwrap();
    let expected: BTreeMap<String, Vec<String>> = [
        ("db".to_owned(), vec![]),
        ("web".to_owned(), vec!["v1".to_owned()]),
    ]
    .into();
    assert_eq!(next, expected);
    // The first read, the wake-ups with nothing new (two, unless the
    // scheduler merged them), the change.
    assert!((3..=4).contains(&calls.load(Ordering::Relaxed)));
}

#[tokio::test]
async fn a_missing_index_header_is_an_error() {
    let consul = ConsulDouble::start().await.unwrap();
    let c = client(&consul);
    consul.omit_index_header(true);
    let err = c
        .catalog_services(&QueryOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::MissingIndex { .. }), "{err}");
    let mut w = BlockingWatch::new(watch_config());
    let err = w
        .next(|o| {
            let c = &c;
            async move { c.catalog_services(&o).await }
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::GaveUp { .. }), "{err}");
    assert!(w.last().is_none());
}

#[tokio::test]
async fn index_zero_is_clamped_and_a_hot_loop_is_rate_limited() {
    let consul = ConsulDouble::start().await.unwrap();
    let c = client(&consul);
    register(&consul, "n1", "web-1", "web", &[]);
    register(&consul, "n1", "web-2", "web", &[]);
    // Consul's old bug: every answer says index 0, and with index=1 the
    // query returns at once (the real index is higher), forever.
    consul.force_zero_index(true);
    consul.clear_requests();
    let mut w = BlockingWatch::new(WatchConfig {
        min_interval: Duration::from_millis(100),
        burst: 2,
        ..watch_config()
    });
    let mut fetch = |o| {
        let c = &c;
        async move { c.catalog_services(&o).await }
    };
    w.next(&mut fetch).await.unwrap();
    assert_eq!(w.index(), Some(1));
    // Nothing changes: `next` would loop forever; give it one second.
    let r = tokio::time::timeout(Duration::from_secs(1), w.next(&mut fetch)).await;
    assert!(r.is_err(), "no change may be yielded");
    let requests = consul.requests();
    // A burst of two, then one per 100 ms: about 11 in 1 s, not thousands.
    assert!((5..=14).contains(&requests.len()), "{}", requests.len());
    assert!(
        requests
            .iter()
            .skip(1)
            .all(|r| r.param("index") == Some("1"))
    );
}

#[tokio::test]
async fn an_unknown_datacenter_is_consuls_500() {
    let consul = ConsulDouble::start().await.unwrap();
    let c = client(&consul);
    let opts = QueryOptions {
        datacenter: Some("nowhere".to_owned()),
        ..QueryOptions::default()
    };
    let err = c.catalog_services(&opts).await.unwrap_err();
    assert_eq!(err.status(), Some(500));
    assert!(err.is_no_path_to_datacenter(), "{err}");
}

#[tokio::test]
async fn stale_reads_survive_a_lost_leader_and_say_so() {
    let consul = ConsulDouble::start().await.unwrap();
    consul.set_known_leader(false);
    consul.set_last_contact(Duration::from_millis(1500));
    let err = client(&consul)
        .catalog_services(&QueryOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("No cluster leader"), "{err}");
    let stale = Client::new(Config {
        address: consul.address(),
        stale: true,
        ..Config::default()
    })
    .unwrap();
    let r = stale
        .catalog_services(&QueryOptions::default())
        .await
        .unwrap();
    assert!(!r.known_leader);
    assert_eq!(r.last_contact, Duration::from_millis(1500));
}

#[tokio::test]
async fn the_acl_token_is_sent_as_a_header() {
    let consul = ConsulDouble::start().await.unwrap();
    consul.require_token(Some("s3cret"));
    let err = client(&consul)
        .catalog_services(&QueryOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(403));
    let with_token = Client::new(Config {
        address: consul.address(),
        token: Some("s3cret".to_owned()),
        ..Config::default()
    })
    .unwrap();
    assert!(
        with_token
            .catalog_services(&QueryOptions::default())
            .await
            .is_ok()
    );
    assert!(consul.requests().iter().all(|r| r.param("token").is_none()));
}
