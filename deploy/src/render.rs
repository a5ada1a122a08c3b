//! `${NAME}` templates: every variable must be given, every given value is
//! validated by the caller, nothing else in the text changes (so `$shell`
//! variables in the user data pass through).

use std::collections::BTreeMap;

use crate::error::{DeployError, Result};

pub const USER_DATA: &str = include_str!("../templates/user-data.sh");
/// The user data's step that fetches the mesh's secrets (TLS material,
/// tokens) from SSM, inserted as `${SECRETS_FETCH}` (and the agent's mounts
/// and settings as `${AGENT_SECRET_ARGS}`); with neither TLS nor tokens
/// (`--insecure`) both are empty, so the user data says nothing of them.
pub const USER_DATA_SECRETS: &str = include_str!("../templates/user-data-secrets.sh");
pub const CONTROLLER: &str = include_str!("../ecs/controller.json");
pub const AGENT: &str = include_str!("../ecs/agent.json");
pub const HELLO: &str = include_str!("../ecs/hello.json");
pub const WORLD: &str = include_str!("../ecs/world.json");
pub const WORLD_V2: &str = include_str!("../ecs/world-v2.json");

/// Replaces each `${NAME}` (NAME = `[A-Z_][A-Z0-9_]*`) with its value; an
/// unknown name is an error.
pub fn render(
    template_name: &'static str,
    template: &str,
    vars: &BTreeMap<&str, String>,
) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| DeployError::Template {
            template: template_name,
            reason: "unterminated ${".to_owned(),
        })?;
        let name = &after[..end];
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(DeployError::Template {
                template: template_name,
                reason: format!("bad variable name {name:?}"),
            });
        }
        let value = vars.get(name).ok_or_else(|| DeployError::Template {
            template: template_name,
            reason: format!("no value for ${{{name}}}"),
        })?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_and_keeps_shell_variables() {
        let vars = BTreeMap::from([("CLUSTER", "demo".to_owned())]);
        let out = render("t", "a=${CLUSTER} b=$TOKEN c=\"$X\"", &vars).unwrap();
        assert_eq!(out, "a=demo b=$TOKEN c=\"$X\"");
    }

    #[test]
    fn unknown_and_bad_names_fail() {
        let vars = BTreeMap::new();
        assert!(render("t", "${NOPE}", &vars).is_err());
        assert!(render("t", "${lower}", &vars).is_err());
        assert!(render("t", "${OPEN", &vars).is_err());
    }
}
