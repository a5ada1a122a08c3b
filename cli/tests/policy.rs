//! `ecsmeshctl policy` (issue #18) against a live controller, run as a user
//! runs it: set from a file and from stdin, get, update at a version,
//! explain, watch, delete; and what it refuses — invalid policies (with the
//! line and column), writes without the token, stale versions, the limit.

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

mod common;

use ecsmesh_controller::Controller;
use serde_json::Value;

const TOKEN: &str = "policy-test-token";

async fn controller(dir: &std::path::Path, max_policies: usize) -> Controller {
    let mut security = ecsmesh_controller::config::Security::default();
    security.dtab_limits.max_policies = max_policies;
    let config = common::controller_config(dir, Some(TOKEN), security);
    let c = Controller::start(config, &["test"]).await.unwrap();
    c.observed
        .replace("test", std::collections::BTreeMap::new());
    c
}

/// ecsmeshctl `args` against `addr`, with the token unless `token` is false.
async fn ctl(
    addr: std::net::SocketAddr,
    args: &[&str],
    token: bool,
    stdin: &str,
) -> (i32, String, String) {
    let mut full: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    full.extend(["--controller".to_owned(), addr.to_string()]);
    let env = if token {
        vec![("ECSMESH_TOKEN", TOKEN.to_owned())]
    } else {
        Vec::new()
    };
    common::ecsmeshctl_with_stdin(full, env, stdin.as_bytes().to_vec()).await
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[tokio::test]
async fn policies_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let c = controller(&dir.path().join("ctl"), 1_000).await;
    let addr = c.grpc_addr;
    let file = dir.path().join("payments.yaml");
    std::fs::write(
        &file,
        "# payments: fail fast, retry reads\n\
         timeouts:\n  total: 2s\n  attempt: 500ms\n\
         retries:\n  max_attempts: 3\n  backoff: {kind: jittered, min: 10ms, max: 200ms}\n\
         classifier: retryableRead5XX\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();

    // set from a file: the canonical policy and its version come back.
    let (code, out, err) = ctl(
        addr,
        &["policy", "set", "/svc/payments", "-f", file, "-o", "json"],
        true,
        "",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let set = json(&out);
    assert_eq!(set["prefix"], "/svc/payments");
    assert_eq!(set["policy"]["timeouts"]["total"], "2s");
    assert_eq!(set["policy"]["classifier"], "retryableRead5XX");
    let v1 = set["version"].as_str().unwrap().to_owned();

    // set from stdin, for a less specific prefix.
    let (code, _, err) = ctl(
        addr,
        &["policy", "set", "/svc", "-f", "-"],
        true,
        "{\"zone_aware\": false}",
    )
    .await;
    assert_eq!(code, 0, "{err}");

    // get: JSON, then a comment with the version; it reads back as YAML.
    let (code, out, _) = ctl(addr, &["policy", "get", "/svc/payments"], false, "").await;
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("# policy for /svc/payments, version {v1}")),
        "{out}"
    );
    ecsmesh_policy::ServicePolicy::parse(&out).unwrap();

    // list
    let (code, out, _) = ctl(addr, &["policy", "list"], false, "").await;
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("/svc\t") && lines[1].starts_with("/svc/payments\t"));

    // explain: the most specific stored prefix applies, /svc is shadowed.
    let (code, out, _) = ctl(
        addr,
        &["policy", "explain", "/svc/payments/v2", "-o", "json"],
        false,
        "",
    )
    .await;
    assert_eq!(code, 0);
    let e = json(&out);
    assert_eq!(e["chosen"]["prefix"], "/svc/payments");
    assert_eq!(e["chosen"]["version"], v1.as_str());
    let candidates: Vec<(String, bool, bool)> = e["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["prefix"].as_str().unwrap().to_owned(),
                c["stored"].as_bool().unwrap(),
                c["chosen"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        candidates,
        [
            ("/svc/payments/v2".to_owned(), false, false),
            ("/svc/payments".to_owned(), true, true),
            ("/svc".to_owned(), true, false),
        ]
    );
    let (_, text, _) = ctl(addr, &["policy", "explain", "/svc/payments/v2"], false, "").await;
    assert!(
        text.starts_with(&format!(
            "/svc/payments/v2: the policy for /svc/payments (version {v1}) applies"
        )),
        "{text}"
    );
    assert!(text.contains("(less specific: not used)"), "{text}");
    let (_, text, _) = ctl(addr, &["policy", "explain", "/web"], false, "").await;
    assert!(
        text.contains("the agents' configured defaults apply"),
        "{text}"
    );

    // update at a stale version: refused, nothing changes.
    let (code, _, err) = ctl(
        addr,
        &[
            "policy",
            "update",
            "/svc/payments",
            "timeouts: {total: 1s}",
            "--version",
            "999",
        ],
        true,
        "",
    )
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("is at version"), "{err}");
    // at the current one: applied.
    let (code, out, err) = ctl(
        addr,
        &[
            "policy",
            "update",
            "/svc/payments",
            "timeouts: {total: 1s}",
            "--version",
            &v1,
            "-o",
            "json",
        ],
        true,
        "",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["policy"]["timeouts"]["total"], "1s");

    // the mesh state agents are sent carries it (after the reconciler's
    // debounce).
    let payments = ecsmesh_dtab::Path::read("/svc/payments").unwrap();
    let published = || {
        c.publisher
            .current()
            .state
            .policies
            .get(&payments)
            .and_then(|p| p.policy.total_timeout)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while published() != Some(std::time::Duration::from_secs(1))
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(published(), Some(std::time::Duration::from_secs(1)));

    // watch prints the current state and stops at --count.
    let (code, out, _) = ctl(
        addr,
        &["policy", "watch", "/svc", "--count", "1", "-o", "json"],
        false,
        "",
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(json(&out)["policy"]["zone_aware"], false);

    // delete
    let (code, _, err) = ctl(addr, &["policy", "delete", "/svc"], true, "").await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = ctl(addr, &["policy", "get", "/svc"], false, "").await;
    assert_ne!(code, 0);
    assert!(err.contains("no policy is stored for"), "{err}");
}

#[tokio::test]
async fn what_the_policy_commands_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let c = controller(&dir.path().join("ctl"), 1).await;
    let addr = c.grpc_addr;

    // An invalid policy is refused locally with its line and column, and
    // the caret under the offending field; nothing is sent.
    let (code, _, err) = ctl(
        addr,
        &["policy", "set", "/svc/a", "-f", "-"],
        true,
        "timeouts:\n  total: 2s\n  totl: 1s\n",
    )
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("line 3, column 3"), "{err}");
    assert!(err.contains("    totl: 1s\n    ^"), "{err}");
    let (code, _, err) = ctl(
        addr,
        &["policy", "set", "/svc/a", "retries: {max_attempts: 50}"],
        true,
        "",
    )
    .await;
    assert_ne!(code, 0);
    assert!(
        err.contains("retries.max_attempts: 50 is outside 1 to 10"),
        "{err}"
    );
    // check validates offline and prints the canonical form.
    let (code, out, _) = common::ecsmeshctl(
        ["policy", "check", "balancer: {kind: ewma}", "-o", "json"]
            .map(String::from)
            .to_vec(),
        Vec::new(),
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(json(&out)["balancer"]["decay"], "10s");

    // The root is not a prefix a policy may be stored under.
    let (code, _, err) = ctl(addr, &["policy", "set", "/", "{}"], true, "").await;
    assert_ne!(code, 0);
    assert!(err.contains("the root matches every service"), "{err}");

    // Writes need the token.
    let (code, _, err) = ctl(addr, &["policy", "set", "/svc/a", "{}"], false, "").await;
    assert_ne!(code, 0);
    assert!(err.contains("Bearer"), "{err}");

    // The limit: one policy stored, a second refused; updates still pass.
    let (code, _, err) = ctl(addr, &["policy", "set", "/svc/a", "{}"], true, "").await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = ctl(addr, &["policy", "set", "/svc/b", "{}"], true, "").await;
    assert_ne!(code, 0);
    assert!(err.contains("max_policies"), "{err}");
    let (code, _, err) = ctl(
        addr,
        &["policy", "set", "/svc/a", "zone_aware: true"],
        true,
        "",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(c.policies.entries().len(), 1);
}
