//! The dashboard's service-policy endpoints (issue #18) on the real
//! `ecsmesh-controller` binary's admin port: `/api/policies` lists what is
//! stored, `/api/policies/explain?service=` says which policy a service
//! gets and why, both behind `admin_reads`, with a bounded service name.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Running, channel, free_port};
use ecsmesh_proto::v1 as pb;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::Request;

const TOKEN: &str = "s3cret-admin-token";

/// One HTTP/1.0 GET on the admin port: the status code and the body.
async fn get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    s.write_all(format!("GET {path} HTTP/1.0\r\nhost: x\r\n{auth}\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

async fn get_json(port: u16, path: &str) -> Value {
    let (status, body) = get(port, path, Some(TOKEN)).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

async fn wait_listening(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the controller did not listen on 127.0.0.1:{port}");
}

fn authorized<T>(message: T) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    r
}

/// `(prefix, version, chosen)` of each candidate an explanation lists.
fn candidates(e: &Value) -> Vec<(String, Option<u64>, bool)> {
    e["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["stored"].as_bool().unwrap(), c["version"].is_u64(), "{c}");
            (
                c["prefix"].as_str().unwrap().to_owned(),
                c["version"].as_u64(),
                c["chosen"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
#[allow(clippy::too_many_lines)]
async fn the_admin_port_explains_which_policy_a_service_gets() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let (grpc, admin) = (free_port("127.0.0.1"), free_port("127.0.0.1"));
    let (grpc_addr, admin_addr) = (format!("127.0.0.1:{grpc}"), format!("127.0.0.1:{admin}"));
    let store = dir.path().join("store").display().to_string();
    let token_path = token_file.display().to_string();
    let _controller = Running::start(
        &[
            "--grpc-addr",
            &grpc_addr,
            "--admin-addr",
            &admin_addr,
            "--store-dir",
            &store,
            "--base-dtab",
            "/svc=>/#/ecs/demo",
            "--admin-token-file",
            &token_path,
            "--admin-reads",
            "authenticated",
        ],
        &[],
    );
    wait_listening(grpc).await;
    wait_listening(admin).await;

    // Two policies, through the policy API as ecsmeshctl stores them.
    let mut api =
        pb::policy_admin_client::PolicyAdminClient::new(channel(grpc_addr.parse().unwrap()).await);
    let mut versions = std::collections::BTreeMap::new();
    for (prefix, policy) in [
        ("/svc", "zone_aware: false"),
        ("/svc/payments", "timeouts: {total: 2s}"),
    ] {
        let stored = api
            .create_policy(authorized(pb::CreatePolicyRequest {
                prefix: prefix.into(),
                policy: policy.into(),
            }))
            .await
            .unwrap()
            .into_inner();
        let version: u64 = String::from_utf8(stored.version).unwrap().parse().unwrap();
        versions.insert(prefix, (version, stored.policy));
    }

    // Reads need the token: none is 401, a wrong one 403; the page itself
    // stays open.
    for path in ["/api/policies", "/api/policies/explain?service=/svc/x"] {
        let (status, body) = get(admin, path, None).await;
        assert_eq!(status, 401, "{path}: {body}");
        let (status, body) = get(admin, path, Some("guess")).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body.contains("invalid bearer token"), "{body}");
    }
    let (status, page) = get(admin, "/", None).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("id=\"policies\""),
        "the page has the policies view"
    );

    // Everything stored: prefix, version and the canonical document.
    let all = get_json(admin, "/api/policies").await;
    let listed: Vec<_> = all["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let canonical = p["canonical"].as_str().unwrap();
            assert_eq!(
                p["policy"],
                serde_json::from_str::<Value>(canonical).unwrap()
            );
            (
                p["prefix"].as_str().unwrap().to_owned(),
                p["version"].as_u64().unwrap(),
                canonical.to_owned(),
            )
        })
        .collect();
    let expected: Vec<_> = versions
        .iter()
        .map(|(prefix, (v, canonical))| ((*prefix).to_owned(), *v, canonical.clone()))
        .collect();
    assert_eq!(listed, expected);
    let (v_svc, v_payments) = (versions["/svc"].0, versions["/svc/payments"].0);

    // The most specific stored prefix applies.
    let e = get_json(admin, "/api/policies/explain?service=/svc/payments/v2").await;
    assert_eq!(e["service"], "/svc/payments/v2");
    assert_eq!(
        candidates(&e),
        [
            ("/svc/payments/v2".to_owned(), None, false),
            ("/svc/payments".to_owned(), Some(v_payments), true),
            ("/svc".to_owned(), Some(v_svc), false),
        ]
    );
    assert_eq!(e["chosen"]["prefix"], "/svc/payments");
    assert_eq!(e["chosen"]["version"], v_payments);
    assert_eq!(
        e["chosen"]["canonical"].as_str().unwrap(),
        versions["/svc/payments"].1
    );
    assert!(
        e["chosen"]["canonical"].as_str().unwrap().contains("2s"),
        "{e}"
    );

    // Label by label: /svc/other gets /svc's (percent-encoded slashes too).
    let e = get_json(admin, "/api/policies/explain?service=%2Fsvc%2Fother").await;
    assert_eq!(
        candidates(&e),
        [
            ("/svc/other".to_owned(), None, false),
            ("/svc".to_owned(), Some(v_svc), true),
        ]
    );
    assert_eq!(e["chosen"]["prefix"], "/svc");
    let e = get_json(admin, "/api/policies/explain?service=/svc/paymentsx").await;
    assert_eq!(
        e["chosen"]["prefix"], "/svc",
        "/svc/payments is no prefix of it"
    );

    // No stored prefix: the agents' defaults.
    let e = get_json(admin, "/api/policies/explain?service=/x").await;
    assert_eq!(candidates(&e), [("/x".to_owned(), None, false)]);
    assert_eq!(e["chosen"], Value::Null);

    // Bounds: a huge name is refused before it is parsed, and never echoed;
    // a malformed or missing one is a short 400 too.
    let huge = "y".repeat(10_000);
    let (status, body) = get(
        admin,
        &format!("/api/policies/explain?service=/svc/{huge}"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.len() < 200, "{body}");
    assert!(body.contains("longer than 256 bytes"), "{body}");
    assert!(!body.contains("yyyyyyyy"), "{body}");
    let long_garbage = format!("not%20a%20path{}", "!".repeat(200));
    for (query, expect) in [
        (long_garbage.as_str(), "invalid service name"),
        ("/svc/(", "invalid service name"),
        ("", "pass a service name"),
    ] {
        let (status, body) = get(
            admin,
            &format!("/api/policies/explain?service={query}"),
            Some(TOKEN),
        )
        .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(expect), "{query}: {body}");
        assert!(body.len() < 200, "{body}");
        assert!(!body.contains("!!!!!!!!"), "{body}");
    }
    let (status, body) = get(admin, "/api/policies/explain", Some(TOKEN)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("pass a service name"), "{body}");

    // A deleted policy stops applying at once.
    api.delete_policy(authorized(pb::DeletePolicyRequest {
        prefix: "/svc/payments".into(),
        expected_version: Vec::new(),
    }))
    .await
    .unwrap();
    let e = get_json(admin, "/api/policies/explain?service=/svc/payments/v2").await;
    assert_eq!(e["chosen"]["prefix"], "/svc");
    let all = get_json(admin, "/api/policies").await;
    assert_eq!(all["policies"].as_array().unwrap().len(), 1, "{all}");
}
