//! `ecsmeshctl` against a live controller: the dtab API commands and
//! `status`, run as a user runs them.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use ecsmesh_controller::Controller;
use ecsmesh_dtab::{Dtab, Path};
use ecsmesh_state::{Endpoint, EndpointSet};

async fn controller(dir: &std::path::Path, token: Option<&str>) -> Controller {
    let config =
        common::controller_config(dir, token, ecsmesh_controller::config::Security::default());
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

/// A file with `text` and permission bits `mode`.
fn write_file(path: &std::path::Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn the_token_comes_from_a_flag_the_environment_or_the_settings_file() {
    let dir = tempfile::tempdir().unwrap();
    let c = controller(&dir.path().join("store"), Some("s3cret")).await;
    let addr = c.grpc_addr.to_string();
    let token = dir.path().join("token");
    write_file(&token, "s3cret\n", 0o600);
    let wrong = dir.path().join("wrong");
    write_file(&wrong, "nope\n", 0o600);
    let token_path = token.display().to_string();
    let set = |extra: &[&str]| {
        let mut args = strings(&["dtab", "set", "prod", "/a=>/b"]);
        args.extend(strings(extra));
        args
    };

    // --token-file, and the flag wins over a wrong token in the environment.
    let (code, _, err) = common::ecsmeshctl(
        set(&["--controller", &addr, "--token-file", &token_path]),
        vec![("ECSMESH_TOKEN", "nope".into())],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    // ECSMESH_TOKEN_FILE.
    let (code, _, err) = common::ecsmeshctl(
        set(&["--controller", &addr]),
        vec![("ECSMESH_TOKEN_FILE", token_path.clone())],
    )
    .await;
    assert_eq!(code, 0, "{err}");

    // The settings file in the user's config dir: the controller and the
    // token file (relative to the settings file), so writes are one command.
    let xdg = dir.path().join("xdg");
    std::fs::create_dir_all(xdg.join("ecsmesh")).unwrap();
    std::fs::copy(&token, xdg.join("ecsmesh/token")).unwrap();
    write_file(
        &xdg.join("ecsmesh/config.yaml"),
        &format!("controller: http://{addr}\ntoken_file: token\n"),
        0o644,
    );
    let xdg_env = ("XDG_CONFIG_HOME", xdg.display().to_string());
    let (code, out, err) = common::ecsmeshctl(set(&[]), vec![xdg_env.clone()]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("/a=>/b\n# version "), "{out}");
    // The environment wins over the file.
    let (code, _, err) = common::ecsmeshctl(
        set(&[]),
        vec![xdg_env.clone(), ("ECSMESH_TOKEN", "nope".into())],
    )
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("invalid bearer token"), "{err}");
    let wrong_path = wrong.display().to_string();
    let (code, _, err) =
        common::ecsmeshctl(set(&["--token-file", &wrong_path]), vec![xdg_env]).await;
    assert_eq!(code, 1);
    assert!(err.contains("invalid bearer token"), "{err}");

    // --config (ECSMESH_CTL_CONFIG): a file holding the token itself must
    // be private.
    let conf = dir.path().join("ctl.yaml");
    write_file(
        &conf,
        &format!("controller: {addr}\ntoken: s3cret\n"),
        0o644,
    );
    let conf_env = ("ECSMESH_CTL_CONFIG", conf.display().to_string());
    let (code, _, err) = common::ecsmeshctl(set(&[]), vec![conf_env.clone()]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("readable by others") && err.contains("chmod 600"),
        "{err}"
    );
    write_file(
        &conf,
        &format!("controller: {addr}\ntoken: s3cret\n"),
        0o600,
    );
    let (code, _, err) = common::ecsmeshctl(set(&[]), vec![conf_env]).await;
    assert_eq!(code, 0, "{err}");
}

/// A dtab of about `bytes` bytes, one dentry per service.
fn big_dtab(bytes: usize) -> String {
    let mut d = String::new();
    let mut i = 0;
    while d.len() < bytes {
        writeln!(d, "/svc/service-{i:06}=>/#/ecs/demo/service-{i:06};").unwrap();
        i += 1;
    }
    d
}

#[tokio::test]
async fn dtabs_from_a_file_or_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let c = controller(&dir.path().join("store"), None).await;
    let addr = c.grpc_addr.to_string();
    let stored = |ns: &'static str| {
        let addr = addr.clone();
        async move {
            let (code, out, err) = common::ecsmeshctl(
                strings(&["dtab", "get", ns, "-o", "json", "--controller", &addr]),
                Vec::new(),
            )
            .await;
            assert_eq!(code, 0, "{err}");
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            v["dtab"].as_str().unwrap().to_owned()
        }
    };
    let canonical = |d: &str| Dtab::read(d).unwrap().to_string();

    // 60 KB from a file with set, then from stdin with update.
    let small = big_dtab(60_000);
    let file = dir.path().join("dtab");
    std::fs::write(&file, &small).unwrap();
    let (code, _, err) = common::ecsmeshctl(
        strings(&[
            "dtab",
            "set",
            "big",
            "-f",
            file.to_str().unwrap(),
            "--controller",
            &addr,
        ]),
        Vec::new(),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(stored("big").await, canonical(&small));
    let (code, out, err) = common::ecsmeshctl(
        strings(&["dtab", "get", "big", "--controller", &addr]),
        Vec::new(),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let version = out.lines().last().unwrap().trim_start_matches("# version ");
    let changed = small.replace("/#/ecs/demo/", "/#/ecs/prod/");
    let (code, _, err) = common::ecsmeshctl_with_stdin(
        strings(&[
            "dtab",
            "update",
            "big",
            "-f",
            "-",
            "--version",
            version,
            "--controller",
            &addr,
        ]),
        Vec::new(),
        changed.clone().into_bytes(),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(stored("big").await, canonical(&changed));
}

#[tokio::test]
async fn dtabs_past_the_limit_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let c = controller(&dir.path().join("store"), None).await;
    let addr = c.grpc_addr.to_string();
    // Past the controller's dtab limit (64 KiB by default), the refusal is
    // its own: the store's limit, or, for a dtab it will not even decode
    // (1 MB, far past what one command-line argument can carry), a clear
    // word from ecsmeshctl rather than a bare transport status.
    for (size, says) in [
        (70_000, "the limit is 65536 bytes (max_dtab_bytes)"),
        (1_000_000, "bytes) as too large (see its --max-dtab-bytes)"),
    ] {
        let (code, _, err) = common::ecsmeshctl_with_stdin(
            strings(&["dtab", "set", "large", "-f", "-", "--controller", &addr]),
            Vec::new(),
            big_dtab(size).into_bytes(),
        )
        .await;
        assert_eq!(code, 1, "{size}");
        assert!(err.contains(says), "{size}: {err}");
    }

    // The positional dtab and -f exclude each other; a missing file is named.
    let (code, _, err) = common::ecsmeshctl(
        strings(&[
            "dtab",
            "set",
            "x",
            "/a=>/b",
            "-f",
            "-",
            "--controller",
            &addr,
        ]),
        Vec::new(),
    )
    .await;
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = common::ecsmeshctl(
        strings(&[
            "dtab",
            "set",
            "x",
            "-f",
            "/nonexistent/dtab",
            "--controller",
            &addr,
        ]),
        Vec::new(),
    )
    .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("reading the dtab from /nonexistent/dtab"),
        "{err}"
    );
}
