//! JSON renderings shared by the CLI and the admin APIs. Dtabs use namerd's
//! format (`[{"prefix":"/svc","dst":"/#/io.l5d.consul/dc1"}]`), delegation
//! trees Linkerd's delegator format (`type`, `path`, `dentry`, and
//! `delegate` / `alt` / `union` children).

use std::fmt::Display;

use serde_json::{Value, json};

use crate::{DelegateNode, DelegateTree, Dentry, Dtab, NameTree, ParseError, Path};

/// `{"prefix": "/svc", "dst": "/#/io.l5d.consul/dc1"}`.
pub fn dentry(d: &Dentry) -> Value {
    json!({ "prefix": d.prefix.to_string(), "dst": d.dst.to_string() })
}

/// namerd's dtab format: a list of dentries.
pub fn dtab(d: &Dtab) -> Value {
    Value::Array(d.dentries().iter().map(dentry).collect())
}

/// A name tree as nested objects: `{"type": "leaf", "path": "/a"}`,
/// `{"type": "alt", "trees": [...]}`, `{"type": "union", "trees":
/// [{"weight": 1.0, "tree": ...}]}`, `{"type": "neg" | "fail" | "empty"}`.
pub fn tree<T: Display>(t: &NameTree<T>) -> Value {
    match t {
        NameTree::Neg => json!({ "type": "neg" }),
        NameTree::Fail => json!({ "type": "fail" }),
        NameTree::Empty => json!({ "type": "empty" }),
        NameTree::Leaf(l) => json!({ "type": "leaf", "path": l.to_string() }),
        NameTree::Alt(trees) => {
            json!({ "type": "alt", "trees": trees.iter().map(tree).collect::<Vec<_>>() })
        }
        NameTree::Union(trees) => json!({
            "type": "union",
            "trees": trees.iter().map(|w| json!({ "weight": w.weight, "tree": tree(&w.tree) })).collect::<Vec<_>>(),
        }),
    }
}

/// `eval`'s answer: `null` for `~`/`!`, else the sorted list of paths.
pub fn eval(t: &NameTree<Path>) -> Value {
    match t.eval() {
        None => Value::Null,
        Some(set) => Value::Array(
            set.into_iter()
                .map(|p| Value::String(p.to_string()))
                .collect(),
        ),
    }
}

/// A delegation in Linkerd's delegator format.
pub fn delegation(t: &DelegateTree) -> Value {
    let mut node = json!({
        "path": t.path.to_string(),
        "dentry": t.dentry.as_ref().map_or(Value::Null, dentry),
    });
    let (kind, child_key, child) = match &t.node {
        DelegateNode::Neg => ("neg", None, Value::Null),
        DelegateNode::Fail => ("fail", None, Value::Null),
        DelegateNode::Empty => ("empty", None, Value::Null),
        DelegateNode::Leaf => ("leaf", None, Value::Null),
        DelegateNode::Delegate(next) => ("delegate", Some("delegate"), delegation(next)),
        DelegateNode::Alt(trees) => ("alt", Some("alt"), trees.iter().map(delegation).collect()),
        DelegateNode::Union(trees) => (
            "union",
            Some("union"),
            trees
                .iter()
                .map(|(w, t)| json!({ "weight": w, "tree": delegation(t) }))
                .collect(),
        ),
    };
    node["type"] = Value::from(kind);
    if let Some(key) = child_key {
        node[key] = child;
    }
    node
}

/// `{"error": "...", "offset": 7}`.
pub fn parse_error(e: &ParseError) -> Value {
    json!({ "error": e.to_string(), "offset": e.offset })
}
