//! ecsmeshctl's own settings file and where the admin token comes from.
//!
//! The file is `--config FILE` (`ECSMESH_CTL_CONFIG`), else
//! `$XDG_CONFIG_HOME/ecsmesh/config.yaml`, else
//! `~/.config/ecsmesh/config.yaml` (absent is fine). YAML, `${VAR}`
//! substituted, relative paths taken from the file's directory:
//!
//! ```yaml
//! controller: https://127.0.0.1:4321
//! token_file: admin-token        # or token: <the token> (then chmod 600)
//! tls: { ca: ca.pem, cert: admin.pem, key: admin-key.pem, server_name: ecsmesh-controller }
//! ```
//!
//! The token: `--token` or `--token-file`, else `ECSMESH_TOKEN`, else
//! `ECSMESH_TOKEN_FILE`, else the file's `token` or `token_file`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

/// Points ecsmeshctl at a settings file (as `--config` does).
pub const CONFIG_ENV: &str = "ECSMESH_CTL_CONFIG";
pub const TOKEN_ENV: &str = "ECSMESH_TOKEN";
pub const TOKEN_FILE_ENV: &str = "ECSMESH_TOKEN_FILE";

/// The environment, as a lookup (tests give their own).
pub type Env = dyn Fn(&str) -> Option<String>;

/// The file's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CtlConfig {
    /// The controller's gRPC address.
    pub controller: Option<String>,
    /// The admin token itself; the file must then be private (0600).
    pub token: Option<String>,
    /// A file holding the admin token.
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub tls: CtlTls,
}

/// The file's `tls:` section (as `--tls-ca`, `--tls-cert`, `--tls-key`,
/// `--tls-server-name`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CtlTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub server_name: Option<String>,
}

/// A settings file that was read.
#[derive(Debug)]
pub struct Loaded {
    pub path: PathBuf,
    pub config: CtlConfig,
}

/// The default settings file, from the environment `env`.
pub fn default_path(env: &Env) -> Option<PathBuf> {
    // The XDG base directory spec: a relative XDG_CONFIG_HOME is ignored.
    let xdg = env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let base = xdg.or_else(|| {
        env("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| Path::new(&h).join(".config"))
    })?;
    Some(base.join("ecsmesh").join("config.yaml"))
}

/// Reads the settings file: `explicit` (which must exist), else the default
/// one when it exists.
pub fn load(explicit: Option<&Path>, env: &Env) -> Result<Option<Loaded>> {
    let path = match explicit {
        Some(p) => p.to_owned(),
        None => match default_path(env) {
            Some(p) if p.exists() => p,
            _ => return Ok(None),
        },
    };
    let mut config: CtlConfig = ecsmesh_config::load_yaml(&path)?;
    if config.token.is_some() && config.token_file.is_some() {
        bail!("{}: set token or token_file, not both", path.display());
    }
    if config.token.is_some() {
        // Like ssh with a private key: a secret others can read is refused.
        if let Some(mode) = readable_by_others(&path)? {
            bail!(
                "{} holds a token but is readable by others (mode {mode:o}): chmod 600 {}",
                path.display(),
                path.display()
            );
        }
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    for p in [
        &mut config.token_file,
        &mut config.tls.ca,
        &mut config.tls.cert,
        &mut config.tls.key,
    ]
    .into_iter()
    .flatten()
    {
        if p.is_relative() {
            *p = dir.join(&*p);
        }
    }
    Ok(Some(Loaded { path, config }))
}

/// The admin token: the flags, then the environment, then the file.
pub fn token(
    flag_token: Option<&str>,
    flag_file: Option<&Path>,
    env: &Env,
    file: Option<&Loaded>,
) -> Result<Option<String>> {
    if let Some(t) = flag_token {
        return non_empty(t.trim(), "--token").map(Some);
    }
    if let Some(p) = flag_file {
        return read_token(p, "--token-file").map(Some);
    }
    if let Some(t) = env(TOKEN_ENV).filter(|t| !t.is_empty()) {
        return non_empty(t.trim(), TOKEN_ENV).map(Some);
    }
    if let Some(p) = env(TOKEN_FILE_ENV).filter(|p| !p.is_empty()) {
        return read_token(Path::new(&p), TOKEN_FILE_ENV).map(Some);
    }
    let Some(Loaded { path, config }) = file else {
        return Ok(None);
    };
    let from = path.display().to_string();
    match (&config.token, &config.token_file) {
        (Some(t), _) => non_empty(t.trim(), &from).map(Some),
        (None, Some(p)) => read_token(p, &format!("{from}: token_file")).map(Some),
        (None, None) => Ok(None),
    }
}

fn non_empty(token: &str, from: &str) -> Result<String> {
    if token.is_empty() {
        bail!("the token from {from} is empty");
    }
    Ok(token.to_owned())
}

/// A token file's content, trimmed as the controller trims its own.
fn read_token(path: &Path, from: &str) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {} ({from})", path.display()))?;
    if let Some(mode) = readable_by_others(path)? {
        eprintln!(
            "ecsmeshctl: warning: the token file {} is readable by others (mode {mode:o}); chmod 600 it",
            path.display()
        );
    }
    non_empty(text.trim(), &format!("{} ({from})", path.display()))
}

/// The file's permission bits, when its group or others may read it.
#[cfg(unix)]
fn readable_by_others(path: &Path) -> Result<Option<u32>> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .permissions()
        .mode()
        & 0o777;
    Ok((mode & 0o044 != 0).then_some(mode))
}

#[cfg(not(unix))]
fn readable_by_others(_: &Path) -> Result<Option<u32>> {
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn env_of(vars: &[(&str, &str)]) -> Box<Env> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Box::new(move |k| map.get(k).cloned())
    }

    fn write(path: &Path, text: &str, mode: u32) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn the_default_file_follows_xdg() {
        let p = default_path(&env_of(&[("XDG_CONFIG_HOME", "/x"), ("HOME", "/h")]));
        assert_eq!(p.unwrap(), Path::new("/x/ecsmesh/config.yaml"));
        let p = default_path(&env_of(&[("XDG_CONFIG_HOME", "rel"), ("HOME", "/h")]));
        assert_eq!(p.unwrap(), Path::new("/h/.config/ecsmesh/config.yaml"));
        assert!(default_path(&env_of(&[])).is_none());
    }

    #[test]
    fn the_token_comes_from_flags_then_env_then_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (flag_file, env_file, conf_file) = (
            dir.path().join("flag"),
            dir.path().join("env"),
            dir.path().join("conf-token"),
        );
        write(&flag_file, "from-flag-file\n", 0o600);
        write(&env_file, "from-env-file\n", 0o600);
        write(&conf_file, "from-config\n", 0o600);
        let conf = dir.path().join("config.yaml");
        write(&conf, "token_file: conf-token\n", 0o644);
        let env_all = env_of(&[
            (TOKEN_ENV, "from-env"),
            (TOKEN_FILE_ENV, env_file.to_str().unwrap()),
        ]);
        let file = load(Some(&conf), &env_all).unwrap();
        let t = |flag: Option<&str>, flag_file: Option<&Path>, env: &Env| {
            token(flag, flag_file, env, file.as_ref()).unwrap()
        };
        assert_eq!(t(Some("f"), None, &env_all).unwrap(), "f");
        assert_eq!(
            t(None, Some(&flag_file), &env_all).unwrap(),
            "from-flag-file"
        );
        assert_eq!(t(None, None, &env_all).unwrap(), "from-env");
        let env_file_only = env_of(&[(TOKEN_FILE_ENV, env_file.to_str().unwrap())]);
        assert_eq!(t(None, None, &env_file_only).unwrap(), "from-env-file");
        // The relative token_file is the config file's neighbour.
        assert_eq!(t(None, None, &env_of(&[])).unwrap(), "from-config");
        assert_eq!(token(None, None, &env_of(&[]), None).unwrap(), None);
    }

    #[test]
    fn a_readable_file_holding_a_token_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("config.yaml");
        write(&conf, "token: s3cret\n", 0o644);
        let err = load(Some(&conf), &env_of(&[])).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        write(&conf, "token: s3cret\n", 0o600);
        let file = load(Some(&conf), &env_of(&[])).unwrap();
        assert_eq!(
            token(None, None, &env_of(&[]), file.as_ref())
                .unwrap()
                .unwrap(),
            "s3cret"
        );
    }

    #[test]
    fn bad_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("config.yaml");
        write(&conf, "token: a\ntoken_file: b\n", 0o600);
        assert!(load(Some(&conf), &env_of(&[])).is_err());
        write(&conf, "controler: x\n", 0o600);
        assert!(load(Some(&conf), &env_of(&[])).is_err());
        // An explicit file must exist; the default one may be absent.
        assert!(load(Some(&dir.path().join("none")), &env_of(&[])).is_err());
        let home = env_of(&[("HOME", dir.path().to_str().unwrap())]);
        assert!(load(None, &home).unwrap().is_none());
        let empty = dir.path().join("empty-token");
        write(&empty, "\n", 0o600);
        assert!(token(None, Some(&empty), &env_of(&[]), None).is_err());
    }
}
