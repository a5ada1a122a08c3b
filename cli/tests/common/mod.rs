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
