//! JSON for the delegator views (the controller's `Delegate` API, the
//! agent's `/admin/delegator`): Linkerd's delegator tree with the endpoints
//! the mesh knows at every concrete-name leaf.

use std::sync::Arc;

use ecsmesh_dtab::{DelegateTree, Path, json};
use serde_json::{Value, json};

use crate::{EndpointSet, MeshNamer};

/// The delegation in Linkerd's format, with `"endpoints": [{ip, port,
/// weight, meta}]` on each leaf whose path is a set the mesh publishes.
pub fn delegation_with_endpoints(tree: &DelegateTree, namer: MeshNamer<'_>) -> Value {
    let mut v = json::delegation(tree);
    add_endpoints(&mut v, namer);
    v
}

/// An endpoint set as JSON.
pub fn endpoints(set: &EndpointSet) -> Value {
    set.iter()
        .map(|e| {
            json!({
                "ip": e.addr.ip().to_string(),
                "port": e.addr.port(),
                "weight": e.weight,
                "meta": e.meta,
            })
        })
        .collect()
}

fn add_endpoints(node: &mut Value, namer: MeshNamer<'_>) {
    if node.get("type").and_then(Value::as_str) == Some("leaf") {
        let set = node
            .get("path")
            .and_then(Value::as_str)
            .and_then(|p| Path::read(p).ok())
            .and_then(|p| namer.set(&p).map(|(_, set)| Arc::clone(set)));
        if let Some(set) = set {
            node["endpoints"] = endpoints(&set);
        }
        return;
    }
    for key in ["delegate", "alt", "union", "tree"] {
        match node.get_mut(key) {
            Some(Value::Array(children)) => {
                for child in children {
                    add_endpoints(child, namer);
                }
            }
            Some(child @ Value::Object(_)) => add_endpoints(child, namer),
            _ => {}
        }
    }
}
