//! # ecsmesh-config
//!
//! What every ecsmesh binary's configuration file shares: YAML, with
//! `${VAR}` and `${VAR:-default}` replaced from the environment before it
//! is parsed (so no `envsubst` wrapper is needed, unlike Linkerd 1 on ECS),
//! and durations written `500ms`, `10s`, `2m`.

use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "{file}: environment variable {var} is not set and has no default (write ${{{var}:-default}})"
    )]
    UnsetVariable { file: String, var: String },
    #[error("{file}: unterminated ${{ at byte {offset}")]
    Unterminated { file: String, offset: usize },
    #[error("{file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {source}")]
    Yaml {
        file: String,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("invalid duration {0:?}: use e.g. 500ms, 10s, 2m")]
    Duration(String),
    #[error("{0}")]
    Invalid(String),
}

/// A bearer token from its file, surrounding whitespace dropped. An empty
/// one is refused: it would let an empty `Bearer ` through.
///
/// # Errors
/// The file cannot be read, or holds nothing but whitespace.
pub fn read_token(path: &Path) -> Result<String, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "the token file {file} is empty"
        )));
    }
    Ok(token.to_owned())
}

/// Replaces `${VAR}` and `${VAR:-default}` using `lookup`. A variable that
/// is unset and has no default is an error naming it. `$` not followed by
/// `{` is left alone (dtabs use `$`).
pub fn substitute(
    file: &str,
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(ConfigError::Unterminated {
                file: file.to_owned(),
                offset: text.len() - rest.len() + start,
            });
        };
        let expr = &after[..end];
        let (var, default) = match expr.split_once(":-") {
            Some((v, d)) => (v, Some(d)),
            None => (expr, None),
        };
        match lookup(var).or_else(|| default.map(str::to_owned)) {
            Some(value) => out.push_str(&value),
            None => {
                return Err(ConfigError::UnsetVariable {
                    file: file.to_owned(),
                    var: var.to_owned(),
                });
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Reads a YAML file, substituting variables from the process environment.
pub fn load_yaml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: name.clone(),
        source,
    })?;
    let text = substitute(&name, &text, |v| std::env::var(v).ok())?;
    serde_yaml_ng::from_str(&text).map_err(|source| ConfigError::Yaml { file: name, source })
}

/// Parses `500ms`, `10s`, `2m` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, ConfigError> {
    let bad = || ConfigError::Duration(s.to_owned());
    let s = s.trim();
    let (number, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = number.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(var: &str) -> Option<String> {
        (var == "CLUSTER").then(|| "demo".to_owned())
    }

    #[test]
    fn substitution() {
        assert_eq!(
            substitute(
                "f",
                "a: ${CLUSTER}\nb: ${REGION:-us-west-1}\nc: /$/inet/$x",
                env
            )
            .unwrap(),
            "a: demo\nb: us-west-1\nc: /$/inet/$x"
        );
        let err = substitute("f.yaml", "x: ${NOPE}", env).unwrap_err();
        assert_eq!(
            err.to_string(),
            "f.yaml: environment variable NOPE is not set and has no default (write ${NOPE:-default})"
        );
        assert!(matches!(
            substitute("f", "x: ${OPEN", env),
            Err(ConfigError::Unterminated { offset: 3, .. })
        ));
        assert_eq!(substitute("f", "${EMPTY:-}", env).unwrap(), "");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_mins(2));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("1h").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn load_yaml_reports_the_file() {
        let dir = std::env::temp_dir().join(format!("ecsmesh-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.yaml");
        std::fs::write(&path, "x: [").unwrap();
        let err = load_yaml::<serde_yaml_ng::Value>(&path).unwrap_err();
        assert!(err.to_string().starts_with(&path.display().to_string()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
