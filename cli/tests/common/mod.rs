//! What the CLI's integration tests share.

use assert_cmd::Command;

/// Runs ecsmeshctl off the async runtime with `env` set and without the
/// variables through which the developer's own settings would leak in;
/// returns (exit code, stdout, stderr).
pub async fn ecsmeshctl(
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
) -> (i32, String, String) {
    ecsmeshctl_with_stdin(args, env, Vec::new()).await
}

/// [`ecsmeshctl`], with `stdin` as its standard input.
pub async fn ecsmeshctl_with_stdin(
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    stdin: Vec<u8>,
) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::cargo_bin("ecsmeshctl").unwrap();
        for var in [
            "ECSMESH_CONTROLLER",
            "ECSMESH_TOKEN",
            "ECSMESH_TOKEN_FILE",
            "ECSMESH_CTL_CONFIG",
            "ECSMESH_TLS_CA",
            "ECSMESH_TLS_CERT",
            "ECSMESH_TLS_KEY",
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
        ] {
            cmd.env_remove(var);
        }
        // Not the developer's own settings file (a test may point elsewhere).
        cmd.env("XDG_CONFIG_HOME", "/nonexistent/ecsmesh-cli-tests");
        let out = cmd
            .envs(env)
            .args(&args)
            .write_stdin(stdin)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    })
    .await
    .unwrap()
}

/// A controller's settings for these tests: loopback ports chosen by the
/// kernel, the store in `store`, the base dtab `/svc=>/#/ecs/demo`, no ECS
/// or Consul; `token` and `security` as given.
#[allow(dead_code)] // not every test binary starts a controller
pub fn controller_config(
    store: &std::path::Path,
    token: Option<&str>,
    security: ecsmesh_controller::config::Security,
) -> ecsmesh_controller::config::Config {
    use std::sync::Arc;
    ecsmesh_controller::config::Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        store_dir: store.to_owned(),
        admin_token: token.map(Arc::from),
        base_dtabs: ecsmesh_controller::reconcile::BaseDtabs(
            [(
                "default".to_owned(),
                Arc::new(ecsmesh_dtab::Dtab::read("/svc=>/#/ecs/demo").unwrap()),
            )]
            .into(),
        ),
        ecs: None,
        consul: None,
        consul_store: None,
        dynamodb_store: None,
        replicas: ecsmesh_controller::config::ReplicaSettings::default(),
        security,
    }
}
