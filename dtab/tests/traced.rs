//! `bind_traced`: each bound leaf says whether a marked dentry (one a
//! request appended to the base dtab) led to it, however many rewrites,
//! alternatives and unions lie between.

#![allow(clippy::unwrap_used)]

use ecsmesh_dtab::{Dtab, GlobalNamer, NameTree, Path, bind, bind_traced};

/// The bound ids with their marks, for a base dtab and a request's.
fn traced(base: &str, request: &str, path: &str) -> Vec<(String, Option<usize>)> {
    let base = Dtab::read(base).unwrap();
    let dtab = base.concat(&Dtab::read(request).unwrap());
    let tree = bind_traced(&dtab, &Path::read(path).unwrap(), &GlobalNamer, base.len()).unwrap();
    let mut out = Vec::new();
    collect(&tree, &mut out);
    out
}

fn collect(
    tree: &NameTree<ecsmesh_dtab::Traced<ecsmesh_dtab::InetName>>,
    out: &mut Vec<(String, Option<usize>)>,
) {
    match tree {
        NameTree::Leaf(t) => out.push((t.bound.id.to_string(), t.via)),
        NameTree::Union(bs) => bs.iter().for_each(|b| collect(&b.tree, out)),
        NameTree::Alt(ts) => ts.iter().for_each(|t| collect(t, out)),
        _ => {}
    }
}

#[test]
fn the_base_dtab_alone_marks_nothing() {
    assert_eq!(
        traced("/svc=>/$/inet/10.0.0.1/80", "", "/svc/x"),
        [("/$/inet/10.0.0.1/80".to_owned(), None)]
    );
}

#[test]
fn a_chain_through_a_bare_dollar_is_marked() {
    // Neither dentry names /$/inet in its text.
    assert_eq!(
        traced(
            "/svc=>/#/mesh",
            "/x=>/$;/svc/world=>/x/inet/10.0.0.9/1",
            "/svc/world"
        ),
        [("/$/inet/10.0.0.9/1".to_owned(), Some(2))]
    );
}

#[test]
fn the_first_marked_dentry_on_the_chain_is_named() {
    assert_eq!(
        traced("/z=>/$/inet/10.0.0.1", "/y=>/z;/svc=>/y", "/svc/80"),
        [("/$/inet/10.0.0.1/80".to_owned(), Some(2))]
    );
}

#[test]
fn unions_and_alternatives_mark_each_branch_by_its_own_chain() {
    let got = traced(
        "/a=>/$/inet/10.0.0.1/1",
        "/b=>/$/inet/10.0.0.2/2;/svc=>/a & /b",
        "/svc",
    );
    assert_eq!(
        got,
        [
            ("/$/inet/10.0.0.1/1".to_owned(), Some(2)),
            ("/$/inet/10.0.0.2/2".to_owned(), Some(2))
        ]
    );
    // A marked dentry that binds to ~ does not mark the fallback.
    assert_eq!(
        traced("/svc=>/$/inet/10.0.0.1/1", "/svc=>/nowhere", "/svc"),
        [("/$/inet/10.0.0.1/1".to_owned(), None)]
    );
}

#[test]
fn marks_do_not_change_what_binds() {
    let dtab = Dtab::read("/a=>/$/inet/1.2.3.4/5;/svc=>/a|/b;/b=>/$/nil").unwrap();
    let path = Path::read("/svc/x").unwrap();
    let plain = bind(&dtab, &path, &GlobalNamer).unwrap();
    let marked = bind_traced(&dtab, &path, &GlobalNamer, 1).unwrap();
    assert_eq!(marked.map(&mut |t| t.bound), plain);
}
