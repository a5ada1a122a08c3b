//! The dtab admin API: validation, compare-and-set, authorisation,
//! persistence across restarts, watch, delegate and resolve — and that a
//! stored override reaches the agents.

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

mod common;

use common::{SOURCE, TestAgent, channel, sets, start};
use ecsmesh_proto::v1 as pb;
use ecsmesh_state::MeshState;
use pb::controller_message::Kind;
use pb::dtab_admin_client::DtabAdminClient;
use tonic::Code;
use tonic::transport::Channel;

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

async fn admin(controller: &ecsmesh_controller::Controller) -> DtabAdminClient<Channel> {
    DtabAdminClient::new(channel(controller.grpc_addr).await)
}

#[tokio::test]
async fn create_update_with_cas_and_refuse_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let controller = start(dir.path(), None).await;
    let mut api = admin(&controller).await;

    let created = api
        .create_dtab(pb::CreateDtabRequest {
            namespace: "default".into(),
            dtab: "/svc/world => /svc/world-v2 ;".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.dtab, "/svc/world=>/svc/world-v2");
    assert_eq!(
        created.effective_dtab,
        "/svc=>/#/ecs/demo;/svc/world=>/svc/world-v2"
    );
    assert!(created.exists);

    // A malformed dtab is refused with its position; nothing changes.
    let err = api
        .update_dtab(pb::UpdateDtabRequest {
            namespace: "default".into(),
            dtab: "/svc/world => /svc/world-v2 |".into(),
            expected_version: created.version.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("error at offset 29"),
        "{}",
        err.message()
    );

    // A stale version is refused; nothing changes.
    let updated = api
        .update_dtab(pb::UpdateDtabRequest {
            namespace: "default".into(),
            dtab: "/svc/world => /svc/world-v3".into(),
            expected_version: created.version.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let err = api
        .update_dtab(pb::UpdateDtabRequest {
            namespace: "default".into(),
            dtab: "/svc/world => /svc/other".into(),
            expected_version: created.version.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let got = api
        .get_dtab(pb::GetDtabRequest {
            namespace: "default".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.dtab, "/svc/world=>/svc/world-v3");
    assert_eq!(got.version, updated.version);

    let err = api
        .create_dtab(pb::CreateDtabRequest {
            namespace: "default".into(),
            dtab: "/a=>/b".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = api
        .create_dtab(pb::CreateDtabRequest {
            namespace: "../etc".into(),
            dtab: "/a=>/b".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let list = api
        .list_namespaces(pb::ListNamespacesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.namespaces, vec!["default".to_owned()]);
}

#[tokio::test]
async fn writes_need_the_token_when_one_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let controller = start(dir.path(), Some("s3cret")).await;
    let mut api = admin(&controller).await;
    let req = || pb::CreateDtabRequest {
        namespace: "prod".into(),
        dtab: "/a=>/b".into(),
    };
    assert_eq!(
        api.create_dtab(req()).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        api.create_dtab(with_token(req(), "wrong"))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    api.create_dtab(with_token(req(), "s3cret")).await.unwrap();
    // Reads stay open.
    api.get_dtab(pb::GetDtabRequest {
        namespace: "prod".into(),
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn stored_dtabs_and_versions_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let version = {
        let controller = start(dir.path(), None).await;
        let mut api = admin(&controller).await;
        api.create_dtab(pb::CreateDtabRequest {
            namespace: "default".into(),
            dtab: "/svc/world=>/svc/world-v2".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .version
    };
    let controller = start(dir.path(), None).await;
    let mut api = admin(&controller).await;
    let got = api
        .get_dtab(pb::GetDtabRequest {
            namespace: "default".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.dtab, "/svc/world=>/svc/world-v2");
    assert_eq!(got.version, version);
    let next = api
        .update_dtab(pb::UpdateDtabRequest {
            namespace: "default".into(),
            dtab: "/svc/world=>/svc/world-v3".into(),
            expected_version: version.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let parse = |v: &[u8]| std::str::from_utf8(v).unwrap().parse::<u64>().unwrap();
    assert!(parse(&next.version) > parse(&version));
}

#[tokio::test]
async fn an_override_reaches_agents_and_watchers() {
    let dir = tempfile::tempdir().unwrap();
    let controller = start(dir.path(), None).await;
    controller.observed.replace(
        SOURCE,
        sets(&[
            ("/#/ecs/demo/world", &["127.0.1.1:8080"]),
            ("/#/ecs/demo/world-v2", &["127.0.1.2:8081"]),
        ]),
    );
    let mut agent = TestAgent::connect(channel(controller.grpc_addr).await, "i-a").await;
    let Kind::Snapshot(s) = agent.next().await else {
        panic!("expected a snapshot")
    };
    let mut state = MeshState::from_snapshot(&s).unwrap();
    let mut api = admin(&controller).await;
    let mut watch = api
        .watch_dtab(pb::WatchDtabRequest {
            namespace: "default".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert!(!first.exists);

    api.create_dtab(pb::CreateDtabRequest {
        namespace: "default".into(),
        dtab: "/svc/world=>/svc/world-v2".into(),
    })
    .await
    .unwrap();
    let seen = watch.message().await.unwrap().unwrap();
    assert!(seen.exists);
    assert_eq!(seen.dtab, "/svc/world=>/svc/world-v2");

    let Kind::Delta(d) = agent.next().await else {
        panic!("expected a delta")
    };
    assert_eq!(d.dtabs.len(), 1);
    state = state.apply(&d).unwrap();
    assert_eq!(
        state.dtabs["default"].to_string(),
        "/svc=>/#/ecs/demo;/svc/world=>/svc/world-v2"
    );

    let resolved = api
        .resolve(pb::ResolveRequest {
            namespace: "default".into(),
            path: "/svc/world".into(),
            extra_dtab: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resolved.bound, "/#/ecs/demo/world-v2");
    assert_eq!(resolved.endpoints.len(), 1);
    let addr = resolved.endpoints[0]
        .endpoint
        .as_ref()
        .unwrap()
        .addr
        .as_ref()
        .unwrap();
    assert_eq!((addr.ip.as_str(), addr.port), ("127.0.1.2", 8081));

    // An extra dtab (as an l5d-dtab header would add) wins over the stored one.
    let resolved = api
        .resolve(pb::ResolveRequest {
            namespace: "default".into(),
            path: "/svc/world".into(),
            extra_dtab: "/svc/world=>/#/ecs/demo/world".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resolved.bound, "/#/ecs/demo/world");

    let delegated = api
        .delegate(pb::DelegateRequest {
            namespace: "default".into(),
            path: "/svc/world".into(),
            extra_dtab: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(delegated.result, "/#/ecs/demo/world-v2 | /#/ecs/demo/world");
    let tree: serde_json::Value = serde_json::from_str(&delegated.tree_json).unwrap();
    assert_eq!(tree["type"], "alt");
    let v2_leaf = &tree["alt"][0]["delegate"];
    assert_eq!(v2_leaf["type"], "leaf");
    assert_eq!(v2_leaf["endpoints"][0]["ip"], "127.0.1.2");

    api.delete_dtab(pb::DeleteDtabRequest {
        namespace: "default".into(),
        expected_version: Vec::new(),
    })
    .await
    .unwrap();
    let gone = watch.message().await.unwrap().unwrap();
    assert!(!gone.exists);
    let Kind::Delta(d) = agent.next().await else {
        panic!("expected a delta")
    };
    assert_eq!(
        state.apply(&d).unwrap().dtabs["default"].to_string(),
        "/svc=>/#/ecs/demo"
    );
}
