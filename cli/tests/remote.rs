//! `ecsmeshctl` against a live controller: the dtab API commands and
//! `status`, run as a user runs them.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use ecsmesh_controller::Controller;
use ecsmesh_controller::config::Config;
use ecsmesh_controller::reconcile::BaseDtabs;
use ecsmesh_dtab::{Dtab, Path};
use ecsmesh_state::{Endpoint, EndpointSet};

async fn controller(dir: &std::path::Path, token: Option<&str>) -> Controller {
    let config = Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        store_dir: dir.to_owned(),
        admin_token: token.map(Arc::from),
        base_dtabs: BaseDtabs(
            [(
                "default".to_owned(),
                Arc::new(Dtab::read("/svc=>/#/ecs/demo").unwrap()),
            )]
            .into(),
        ),
        ecs: None,
        consul: None,
        consul_store: None,
        security: ecsmesh_controller::config::Security::default(),
    };
    let c = Controller::start(config, &["test"]).await.unwrap();
    let set = |addr: &str| {
        Arc::new(
            [Endpoint::new(addr.parse().unwrap())]
                .into_iter()
                .collect::<EndpointSet>(),
        )
    };
    c.observed.replace(
        "test",
        BTreeMap::from([
            (
                Path::read("/#/ecs/demo/world").unwrap(),
                set("127.0.1.1:8080"),
            ),
            (
                Path::read("/#/ecs/demo/world-v2").unwrap(),
                set("127.0.1.2:8081"),
            ),
        ]),
    );
    c
}

/// ecsmeshctl `args` against the controller at `addr`.
async fn ctl(addr: std::net::SocketAddr, args: &[&str]) -> (i32, String, String) {
    let mut full: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    full.push("--controller".to_owned());
    full.push(addr.to_string());
    common::ecsmeshctl(full, Vec::new()).await
}

#[tokio::test]
async fn the_dtab_api_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let c = controller(dir.path(), None).await;
    let addr = c.grpc_addr;

    assert_eq!(
        ctl(addr, &["dtab", "list"]).await,
        (0, "default\n".into(), String::new())
    );
    let (code, out, _) = ctl(
        addr,
        &["dtab", "set", "default", "/svc/world => /svc/world-v2"],
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(out, "/svc/world=>/svc/world-v2\n# version 1\n");

    // The override is what an agent would now route with.
    let (code, out, _) = ctl(addr, &["dtab", "resolve", "/svc/world"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "/#/ecs/demo/world-v2\n127.0.1.2:8081\t/#/ecs/demo/world-v2\n"
    );
    let (_, out, _) = ctl(addr, &["dtab", "delegate", "/svc/world"]).await;
    assert_eq!(out, "/#/ecs/demo/world-v2 | /#/ecs/demo/world\n");

    // Compare-and-set: a stale version is refused and nothing changes.
    let (code, _, err) = ctl(
        addr,
        &[
            "dtab",
            "update",
            "default",
            "/svc/world=>/svc/other",
            "--version",
            "7",
        ],
    )
    .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("FailedPrecondition") || err.contains("not the expected 7"),
        "{err}"
    );
    // A malformed dtab is refused before it is sent, with its position.
    let (code, _, err) = ctl(addr, &["dtab", "set", "default", "/svc/world =>"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("error at offset 13"), "{err}");
    let (_, out, _) = ctl(addr, &["dtab", "get", "default", "-o", "json"]).await;
    let got: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got["dtab"], "/svc/world=>/svc/world-v2");
    assert_eq!(got["version"], "1");
    assert_eq!(
        got["effective_dtab"],
        "/svc=>/#/ecs/demo;/svc/world=>/svc/world-v2"
    );

    let (code, out, _) = ctl(
        addr,
        &[
            "dtab",
            "update",
            "default",
            "/svc/world=>/svc/world",
            "--version",
            "1",
        ],
    )
    .await;
    assert_eq!(
        (code, out.as_str()),
        (0, "/svc/world=>/svc/world\n# version 2\n")
    );

    let (code, out, _) = ctl(addr, &["dtab", "watch", "default", "--count", "1"]).await;
    assert_eq!(
        (code, out.as_str()),
        (0, "/svc/world=>/svc/world\n# version 2\n")
    );

    assert_eq!(
        ctl(addr, &["dtab", "delete", "default"]).await,
        (0, "deleted default\n".into(), String::new())
    );
    let (code, _, err) = ctl(addr, &["dtab", "get", "default"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("no stored dtab"), "{err}");
}

#[tokio::test]
async fn writes_present_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let c = controller(dir.path(), Some("s3cret")).await;
    let (code, _, err) = ctl(c.grpc_addr, &["dtab", "set", "prod", "/a=>/b"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("Bearer"), "{err}");
    let (code, _, _) = ctl(
        c.grpc_addr,
        &["dtab", "set", "prod", "/a=>/b", "--token", "s3cret"],
    )
    .await;
    assert_eq!(code, 0);
}

#[tokio::test]
async fn status_lists_agents_and_convergence() {
    let dir = tempfile::tempdir().unwrap();
    let c = controller(dir.path(), None).await;
    let (code, out, _) = ctl(c.grpc_addr, &["status", "-o", "json"]).await;
    assert_eq!(code, 0);
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["agents"].as_array().unwrap().len(), 0);
    assert!(s["version"].as_u64().unwrap() >= 1);
    let (code, out, _) = ctl(c.grpc_addr, &["status"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("0/0 agents converged"), "{out}");
}

#[tokio::test]
async fn an_unreachable_controller_is_a_clear_error() {
    let (code, _, err) = ctl("127.0.0.1:1".parse().unwrap(), &["dtab", "list"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("connecting to the controller at http://127.0.0.1:1"),
        "{err}"
    );
}
