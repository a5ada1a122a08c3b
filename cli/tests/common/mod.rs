//! What the CLI's integration tests share.

use assert_cmd::Command;

/// Runs ecsmeshctl off the async runtime with `env` set and without the
/// variables through which the developer's own settings would leak in;
/// returns (exit code, stdout, stderr).
pub async fn ecsmeshctl(
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::cargo_bin("ecsmeshctl").unwrap();
        for var in [
            "ECSMESH_CONTROLLER",
            "ECSMESH_TOKEN",
            "ECSMESH_TLS_CA",
            "ECSMESH_TLS_CERT",
            "ECSMESH_TLS_KEY",
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
        ] {
            cmd.env_remove(var);
        }
        let out = cmd.envs(env).args(&args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    })
    .await
    .unwrap()
}
