//! The per-request path must not allocate per path element: binding and
//! lookup allocate a fixed number of times per rewrite step, whatever the
//! length of the path.

use std::fmt::Write as _;

use ecsmesh_dtab::{Dtab, Name, NameTree, Namer, NamerError, Path, bind};

/// Binds `/#/ns/<svc>` (any residual) to the service name's length.
struct Endpoints;

impl Namer for Endpoints {
    type Bound = usize;
    fn lookup(&self, path: &Path) -> Result<NameTree<Name<usize>>, NamerError> {
        Ok(match path.elems() {
            [hash, ns, svc, ..] if hash.as_bytes() == b"#" && ns.as_bytes() == b"ns" => {
                NameTree::Leaf(Name::Bound(svc.as_bytes().len()))
            }
            _ => NameTree::Neg,
        })
    }
}

fn path_with_residual(elems: usize) -> Path {
    let mut s = String::from("/svc/hello");
    for i in 0..elems {
        write!(s, "/part{i}").expect("writing to a String");
    }
    Path::read(&s).expect("valid path")
}

fn dtab() -> Dtab {
    let mut text = String::new();
    for i in 0..18 {
        write!(text, "/unrelated{i} => /#/ns/x{i};").expect("writing to a String");
    }
    text.push_str("/srv => /#/ns; /svc => /srv");
    Dtab::read(&text).expect("valid dtab")
}

#[test]
fn bind_allocations_do_not_grow_with_path_length() {
    let dtab = dtab();
    let short = path_with_residual(1);
    let long = path_with_residual(60);
    let count = |p: &Path| {
        allocation_counter::measure(|| {
            let bound = bind(&dtab, p, &Endpoints).expect("binds");
            assert_eq!(bound, NameTree::Leaf(5));
        })
        .count_total
    };
    let (short_allocs, long_allocs) = (count(&short), count(&long));
    assert_eq!(
        short_allocs, long_allocs,
        "allocations grew with the path length"
    );
    // Two rewrite steps (/svc, /srv): one new path each.
    assert_eq!(short_allocs, 2);
}

#[test]
fn lookup_allocations_do_not_grow_with_path_length() {
    let dtab = dtab();
    let count = |p: &Path| allocation_counter::measure(|| drop(dtab.lookup(p))).count_total;
    assert_eq!(
        count(&path_with_residual(1)),
        count(&path_with_residual(60))
    );
}
