//! Concrete names: the `/#/…` paths endpoint sets are published under.
//!
//! - `/#/ecs/<cluster>/<service>`: tasks ECS runs (service name from the
//!   container's labels or environment, the ECS service, or the container).
//! - `/#/consul/<dc>/<service>`: Consul's catalog.
//! - `/#/io.l5d.consul/<dc>/<service>`: Linkerd's consul namer name, accepted
//!   as an alias of `/#/consul/…` so that existing Linkerd dtabs work
//!   unchanged.
//!
//! Every concrete name has exactly [`NAME_LEN`] elements; what follows is
//! the residual.

use ecsmesh_dtab::{Label, Path};

/// Elements in a concrete name: `#`, the namer, the cluster or
/// datacenter, the service.
pub const NAME_LEN: usize = 4;

/// The namer element of ECS names.
pub const ECS: &str = "ecs";
/// The namer element of Consul names.
pub const CONSUL: &str = "consul";
/// Linkerd's name for the consul namer, an alias of [`CONSUL`].
pub const LINKERD_CONSUL: &str = "io.l5d.consul";

/// Which namer a concrete name belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameKind {
    Ecs,
    Consul,
    /// `/#/io.l5d.consul/…`: published as `/#/consul/…`.
    LinkerdConsul,
}

/// `/#/ecs/<cluster>/<service>`.
pub fn ecs(cluster: &str, service: &str) -> Option<Path> {
    Path::from_strs(["#", ECS, cluster, service]).ok()
}

/// `/#/consul/<dc>/<service>`.
pub fn consul(datacenter: &str, service: &str) -> Option<Path> {
    Path::from_strs(["#", CONSUL, datacenter, service]).ok()
}

/// What kind of concrete name `elems` starts with, if any.
pub fn kind(elems: &[Label]) -> Option<NameKind> {
    let [hash, namer, _, _, ..] = elems else {
        return None;
    };
    if hash.as_bytes() != b"#" {
        return None;
    }
    match namer.as_bytes() {
        b"ecs" => Some(NameKind::Ecs),
        b"consul" => Some(NameKind::Consul),
        b"io.l5d.consul" => Some(NameKind::LinkerdConsul),
        _ => None,
    }
}

/// The published name for an alias: `/#/io.l5d.consul/dc/svc` becomes
/// `/#/consul/dc/svc`; other names are returned as they are.
pub fn canonical(name: &[Label]) -> Option<Path> {
    match kind(name)? {
        NameKind::Ecs | NameKind::Consul => Some(Path::new(&name[..NAME_LEN])),
        NameKind::LinkerdConsul => {
            let consul = Label::try_from(CONSUL).ok()?;
            Some(Path::new(vec![
                name[0].clone(),
                consul,
                name[2].clone(),
                name[3].clone(),
            ]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases() {
        let name = ecs("demo", "world").unwrap();
        assert_eq!(name.to_string(), "/#/ecs/demo/world");
        assert_eq!(kind(name.elems()), Some(NameKind::Ecs));
        let alias = Path::read("/#/io.l5d.consul/dc1/world/extra").unwrap();
        assert_eq!(kind(alias.elems()), Some(NameKind::LinkerdConsul));
        assert_eq!(
            canonical(alias.elems()).unwrap().to_string(),
            "/#/consul/dc1/world"
        );
        assert_eq!(kind(Path::read("/#/consul/dc1").unwrap().elems()), None);
        assert_eq!(kind(Path::read("/svc/a/b/c").unwrap().elems()), None);
        assert_eq!(ecs("demo", ""), None);
    }
}
