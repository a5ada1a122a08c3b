//! Starts `tests/harness/moto_ecs.py` (moto 5.2.5 with the ECS patches) on
//! a free loopback port, following the launcher's ready-file protocol.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .expect("tests/support lives two levels below the workspace root")
}

/// The Python of the venv `scripts/deps.sh` installs (`make deps`).
pub fn venv_python() -> PathBuf {
    let venv = std::env::var_os("ECSMESH_VENV").map_or_else(
        || {
            let home = std::env::var_os("HOME").expect("HOME is set");
            PathBuf::from(home).join(".cache/ecsmesh/venv")
        },
        PathBuf::from,
    );
    venv.join("bin/python")
}

/// A running launcher. Killed on drop; it also exits by itself when the
/// test process dies (`--exit-with-parent`).
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl MotoServer {
    /// Starts a launcher and waits until it accepts connections.
    pub fn start() -> Self {
        let python = venv_python();
        assert!(
            python.exists(),
            "{} is missing: run `make deps` (or `bash scripts/deps.sh`) first",
            python.display()
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let ready = dir.path().join("moto.json");
        let mut child = Command::new(&python)
            .arg(workspace_root().join("tests/harness/moto_ecs.py"))
            .args(["--port", "0", "--exit-with-parent", "--ready-file"])
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the moto launcher");
        let deadline = Instant::now() + Duration::from_mins(1);
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                let v: serde_json::Value = serde_json::from_str(&text).expect("ready file is JSON");
                break u16::try_from(v["port"].as_u64().expect("port")).expect("port fits u16");
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the moto launcher exited early: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "the moto launcher did not start in 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    /// One launcher for the whole test binary: tests isolate themselves by
    /// region (moto keeps each region's state apart).
    pub fn shared() -> &'static MotoServer {
        static SHARED: LazyLock<MotoServer> = LazyLock::new(MotoServer::start);
        &SHARED
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The IMDSv2 endpoint of one fake instance.
    pub fn imds_endpoint(&self, instance_id: &str) -> String {
        format!("{}/imds/{instance_id}", self.endpoint())
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
