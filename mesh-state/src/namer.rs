//! The namer agents (and the controller's resolve API) bind with: concrete
//! names are looked up in a [`MeshState`]'s endpoint sets, `/$/…` in
//! Finagle's global namer.

use std::sync::Arc;

use ecsmesh_dtab::{GlobalNamer, InetName, Name, NameTree, Namer, NamerError, Path};

use crate::names::{self, NAME_LEN, NameKind};
use crate::state::{EndpointSet, MeshState};

/// A bound leaf: where a request may go.
#[derive(Clone, Debug, PartialEq)]
pub enum Bound {
    /// An endpoint set the controller published.
    Set {
        /// The concrete name as the dtab wrote it (the client id, and the
        /// metrics label).
        id: Path,
        endpoints: Arc<EndpointSet>,
        /// Elements after the concrete name.
        residual: Path,
    },
    /// A fixed address, `/$/inet/<host>/<port>`.
    Inet(InetName),
}

impl Bound {
    /// The concrete name of this leaf.
    pub fn id(&self) -> &Path {
        match self {
            Self::Set { id, .. } => id,
            Self::Inet(inet) => &inet.id,
        }
    }
}

/// Binds concrete names against a mesh state. A name with no endpoint set,
/// or an empty one, is `~`, so that dtab alternatives fall back (as
/// Linkerd's consul namer does for a service with no instances).
#[derive(Clone, Copy, Debug)]
pub struct MeshNamer<'a> {
    state: &'a MeshState,
}

impl<'a> MeshNamer<'a> {
    pub fn new(state: &'a MeshState) -> Self {
        Self { state }
    }

    /// The endpoint set a concrete name refers to (aliases included).
    pub fn set(&self, path: &Path) -> Option<(Path, &'a Arc<EndpointSet>)> {
        let elems = path.elems();
        match names::kind(elems)? {
            NameKind::Ecs | NameKind::Consul => self
                .state
                .sets
                .get_key_value(&elems[..NAME_LEN])
                .map(|(k, v)| (k.clone(), v)),
            NameKind::LinkerdConsul => {
                let canonical = names::canonical(elems)?;
                let set = self.state.sets.get(&canonical)?;
                Some((path.take(NAME_LEN), set))
            }
        }
    }
}

impl Namer for MeshNamer<'_> {
    type Bound = Bound;

    fn lookup(&self, path: &Path) -> Result<NameTree<Name<Bound>>, NamerError> {
        if path.elems().first().is_some_and(|l| l.as_bytes() == b"$") {
            return GlobalNamer.lookup(path).map(|t| {
                t.map(&mut |name| match name {
                    Name::Path(p) => Name::Path(p),
                    Name::Bound(inet) => Name::Bound(Bound::Inet(inet)),
                })
            });
        }
        Ok(match self.set(path) {
            Some((id, endpoints)) if !endpoints.is_empty() => {
                NameTree::Leaf(Name::Bound(Bound::Set {
                    id,
                    endpoints: Arc::clone(endpoints),
                    residual: path.skip(NAME_LEN),
                }))
            }
            _ => NameTree::Neg,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Endpoint;
    use ecsmesh_dtab::{Dtab, bind};

    fn mesh() -> MeshState {
        let set = |addrs: &[&str]| {
            Arc::new(
                addrs
                    .iter()
                    .map(|a| Endpoint::new(a.parse().unwrap()))
                    .collect::<EndpointSet>(),
            )
        };
        MeshState {
            dtabs: std::collections::BTreeMap::default(),
            sets: [
                (
                    Path::read("/#/ecs/demo/world").unwrap(),
                    set(&["127.0.1.1:1"]),
                ),
                (Path::read("/#/ecs/demo/world-v2").unwrap(), set(&[])),
                (
                    Path::read("/#/consul/dc1/hello").unwrap(),
                    set(&["127.0.1.2:2"]),
                ),
            ]
            .into(),
            ..MeshState::default()
        }
    }

    fn bound_id(dtab: &str, path: &str) -> String {
        let state = mesh();
        let tree = bind(
            &Dtab::read(dtab).unwrap(),
            &Path::read(path).unwrap(),
            &MeshNamer::new(&state),
        )
        .unwrap();
        match tree {
            NameTree::Leaf(b) => b.id().to_string(),
            other => format!("{:?}", other.map(&mut |b: Bound| b.id().clone())),
        }
    }

    #[test]
    fn empty_sets_fall_back() {
        assert_eq!(
            bound_id("/svc=>/#/ecs/demo;/svc/world=>/svc/world-v2", "/svc/world"),
            "/#/ecs/demo/world"
        );
    }

    #[test]
    fn linkerd_consul_names_are_aliases() {
        assert_eq!(
            bound_id("/svc=>/#/io.l5d.consul/dc1", "/svc/hello/x"),
            "/#/io.l5d.consul/dc1/hello"
        );
        assert_eq!(bound_id("/svc=>/#/consul/dc1", "/svc/nope"), "Neg");
    }

    #[test]
    fn inet_names_bind() {
        assert_eq!(
            bound_id("/svc=>/$/inet/127.0.0.1/8080", "/svc/x"),
            "/$/inet/127.0.0.1/8080"
        );
    }

    #[test]
    fn residual_is_kept() {
        let state = mesh();
        let path = Path::read("/#/ecs/demo/world/a/b").unwrap();
        let tree = bind(&Dtab::empty(), &path, &MeshNamer::new(&state)).unwrap();
        let NameTree::Leaf(Bound::Set { residual, .. }) = tree else {
            panic!("not a set: {tree:?}");
        };
        assert_eq!(residual.to_string(), "/a/b");
    }
}
