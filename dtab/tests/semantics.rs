//! What dtabs mean: one-step `lookup`, `simplify`, `eval`, the Dtab
//! operations, binding against a namer (fallback, failure, unions, the
//! depth limit), the global `/$/` namer, and static delegation.

#![allow(clippy::unwrap_used, clippy::float_cmp, clippy::too_many_lines)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use ecsmesh_dtab::{
    BindError, DelegateError, DelegateNode, DelegateTree, Dentry, Dtab, GlobalNamer, InetName,
    MAX_DEPTH, Name, NameTree, Namer, NamerError, NoNamer, Path, Prefix, Weighted, bind, delegate,
};

// ---------------------------------------------------------------- helpers

fn p(s: &str) -> Path {
    Path::read(s).unwrap()
}

fn t(s: &str) -> NameTree<Path> {
    NameTree::read(s).unwrap()
}

fn d(s: &str) -> Dtab {
    Dtab::read(s).unwrap()
}

fn leaf(s: &str) -> NameTree<Path> {
    NameTree::Leaf(p(s))
}

fn w<T>(weight: f64, tree: NameTree<T>) -> Weighted<T> {
    Weighted::new(weight, tree)
}

fn paths(xs: &[&str]) -> BTreeSet<Path> {
    xs.iter().map(|s| p(s)).collect()
}

fn eval_owned(tree: &NameTree<Path>) -> Option<BTreeSet<Path>> {
    tree.eval().map(|set| set.into_iter().cloned().collect())
}

/// What the test namer binds a name to.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Dest {
    /// A consul service: `/#/io.l5d.consul/<dc>/<svc>` and what followed.
    Consul {
        id: Path,
        residual: Path,
        addrs: Vec<String>,
    },
    /// `/$/inet/…`.
    Inet(InetName),
}

/// A namer modelled on linkerd's: consul under `/#/io.l5d.consul`, Finagle's
/// global namer under `/$`, and (like Finagle's NamerTest) a table of paths
/// it rewrites to other paths or fails for.
#[derive(Default)]
struct TestNamer {
    /// (dc, service) -> instances. A service with no instances is Neg.
    consul: BTreeMap<(String, String), Vec<String>>,
    /// path -> the tree it names, or a namer failure.
    table: BTreeMap<Path, Result<NameTree<Path>, NamerError>>,
}

impl TestNamer {
    fn with_service(mut self, dc: &str, svc: &str, addrs: &[&str]) -> Self {
        self.consul.insert(
            (dc.to_owned(), svc.to_owned()),
            addrs.iter().map(|a| (*a).to_owned()).collect(),
        );
        self
    }

    fn without_service(mut self, dc: &str, svc: &str) -> Self {
        self.consul.remove(&(dc.to_owned(), svc.to_owned()));
        self
    }

    fn naming(mut self, path: &str, tree: &str) -> Self {
        self.table.insert(p(path), Ok(t(tree)));
        self
    }

    fn failing(mut self, path: &str, message: &str) -> Self {
        self.table.insert(p(path), Err(NamerError::new(message)));
        self
    }
}

impl Namer for TestNamer {
    type Bound = Dest;

    fn lookup(&self, path: &Path) -> Result<NameTree<Name<Dest>>, NamerError> {
        let elems = path.elems();
        let is = |i: usize, s: &str| elems.get(i).is_some_and(|l| l.as_bytes() == s.as_bytes());
        if is(0, "#") && is(1, "io.l5d.consul") {
            let [_, _, dc, svc, ..] = elems else {
                return Ok(NameTree::Neg);
            };
            let key = (
                String::from_utf8(dc.as_bytes().to_vec()).unwrap(),
                String::from_utf8(svc.as_bytes().to_vec()).unwrap(),
            );
            return Ok(match self.consul.get(&key) {
                Some(addrs) if !addrs.is_empty() => NameTree::Leaf(Name::Bound(Dest::Consul {
                    id: path.take(4),
                    residual: path.skip(4),
                    addrs: addrs.clone(),
                })),
                _ => NameTree::Neg,
            });
        }
        if is(0, "$") {
            return GlobalNamer.lookup(path).map(|tree| {
                tree.map(&mut |name| match name {
                    Name::Path(p) => Name::Path(p),
                    Name::Bound(inet) => Name::Bound(Dest::Inet(inet)),
                })
            });
        }
        match self.table.get(path) {
            Some(Ok(tree)) => Ok(tree.map_ref(&mut |p| Name::Path(p.clone()))),
            Some(Err(e)) => Err(e.clone()),
            None => Ok(NameTree::Neg),
        }
    }
}

/// Consul as in linkerd1.md §2.9: dc1 has hello, world and world-v2 (one
/// instance each), dc2 has users, dc1 has no users.
fn consul() -> TestNamer {
    TestNamer::default()
        .with_service("dc1", "hello", &["10.0.0.1:80"])
        .with_service("dc1", "world", &["10.0.0.2:80"])
        .with_service("dc1", "world-v2", &["10.0.0.3:80"])
        .with_service("dc2", "users", &["10.0.1.1:80"])
}

fn svc(dc: &str, name: &str) -> NameTree<Dest> {
    svc_residual(dc, name, "/")
}

fn svc_residual(dc: &str, name: &str, residual: &str) -> NameTree<Dest> {
    let addr = match (dc, name) {
        ("dc1", "hello") => "10.0.0.1:80",
        ("dc1", "world") => "10.0.0.2:80",
        ("dc1", "world-v2") => "10.0.0.3:80",
        ("dc2", "users") => "10.0.1.1:80",
        _ => panic!("no such service {dc}/{name}"),
    };
    NameTree::Leaf(Dest::Consul {
        id: p(&format!("/#/io.l5d.consul/{dc}/{name}")),
        residual: p(residual),
        addrs: vec![addr.to_owned()],
    })
}

fn inet(id: &str, host: &str, port: u16, residual: &str) -> InetName {
    InetName {
        id: p(id),
        host: host.to_owned(),
        port,
        fixed: false,
        residual: p(residual),
    }
}

fn bind_with(dtab: &str, path: &str, namer: &TestNamer) -> Result<NameTree<Dest>, BindError> {
    bind(&d(dtab), &p(path), namer)
}

// ----------------------------------------------------------------- lookup

#[test]
fn lookup_is_an_alt_of_matches_last_first_with_residuals() {
    let dtab = d("/a=>/x;/a=>/y;/a/b=>/z;/c=>/w");
    assert_eq!(
        dtab.lookup(&p("/a/b/c")),
        NameTree::Alt(vec![leaf("/z/c"), leaf("/y/b/c"), leaf("/x/b/c")])
    );
    assert_eq!(
        dtab.lookup(&p("/a")),
        NameTree::Alt(vec![leaf("/y"), leaf("/x")])
    );
    assert_eq!(dtab.lookup(&p("/c/d")), leaf("/w/d"));
    // the residual follows every leaf of the destination tree
    assert_eq!(
        d("/a => /x & 2 * /y | ! | (/z | ~)")
            .lookup(&p("/a/q/r"))
            .to_string(),
        "/x/q/r & 2.00*/y/q/r | ! | (/z/q/r | ~)"
    );
    // destinations are kept even when they are `~`
    assert_eq!(
        d("/a=>/x;/a=>~").lookup(&p("/a")),
        NameTree::Alt(vec![NameTree::Neg, leaf("/x")])
    );
    assert_eq!(d("/a=>~").lookup(&p("/a")), NameTree::Neg);
    // the root destination followed by a residual
    assert_eq!(d("/a=>/").lookup(&p("/a/b")), leaf("/b"));
}

#[test]
fn lookup_without_a_match_is_neg() {
    assert_eq!(Dtab::empty().lookup(&p("/a")), NameTree::Neg);
    assert_eq!(d("/a/b=>/c").lookup(&p("/a")), NameTree::Neg);
    assert_eq!(d("/a/b=>/c").lookup(&p("/b/a")), NameTree::Neg);
    assert_eq!(d("/a=>/c").lookup(&Path::empty()), NameTree::Neg);
    // matching is element-wise, byte for byte
    let dtab = d("/svc/world => /svc/world-v2");
    assert_eq!(dtab.lookup(&p("/svc/worldwide")), NameTree::Neg);
    assert_eq!(dtab.lookup(&p("/svc/world-v2")), NameTree::Neg);
    assert_eq!(dtab.lookup(&p("/svc/World")), NameTree::Neg);
    assert_eq!(dtab.lookup(&p("/svc/world/x")), leaf("/svc/world-v2/x"));
}

#[test]
fn star_consumes_one_element_and_captures_nothing() {
    let dtab = d("/a/*/c => /d");
    assert_eq!(dtab.lookup(&p("/a/b/c/e/f")), leaf("/d/e/f"));
    assert_eq!(dtab.lookup(&p("/a/zzz/c")), leaf("/d"));
    assert_eq!(dtab.lookup(&p("/a/b")), NameTree::Neg);
    assert_eq!(dtab.lookup(&p("/a/b/d")), NameTree::Neg);
    assert_eq!(d("/* => /x").lookup(&p("/anything/else")), leaf("/x/else"));
    assert_eq!(d("/* => /x").lookup(&Path::empty()), NameTree::Neg);
    assert_eq!(d("/*/* => /x").lookup(&p("/a")), NameTree::Neg);
    // a literal '*' label matches only itself
    let literal = d(r"/\x2a => /x");
    assert_eq!(literal.lookup(&p("/a")), NameTree::Neg);
    assert_eq!(literal.lookup(&p(r"/\x2a/b")), leaf("/x/b"));
    // the residual comes back from Prefix::strip
    let prefix = Prefix::read("/a/*").unwrap();
    let path = p("/a/b/c");
    assert_eq!(
        prefix.strip(&path).map(|r| Path::new(r.to_vec())),
        Some(p("/c"))
    );
    assert!(prefix.matches(&p("/a/b")));
    assert!(!prefix.matches(&p("/a")));
}

#[test]
fn root_prefix_matches_everything() {
    let dtab = d("/ => /z");
    assert_eq!(dtab.lookup(&Path::empty()), leaf("/z"));
    assert_eq!(dtab.lookup(&p("/a/b")), leaf("/z/a/b"));
    assert_eq!(
        dtab.lookup(&p("/#/io.l5d.consul/dc1/x")),
        leaf("/z/#/io.l5d.consul/dc1/x")
    );
    assert_eq!(dtab.lookup(&p("/$/inet/1234")), leaf("/z/$/inet/1234"));
}

#[test]
fn escaped_labels_match_their_bytes() {
    let dtab = d(r"/my\x20svc => /x");
    assert_eq!(
        dtab.lookup(&Path::from_strs(["my svc", "r"]).unwrap()),
        leaf("/x/r")
    );
    assert_eq!(dtab.lookup(&p(r"/\x6d\x79\x20\x73\x76\x63")), leaf("/x"));
    assert_eq!(dtab.lookup(&p("/mysvc")), NameTree::Neg);
}

// --------------------------------------------------------------- simplify

fn simp(s: &str) -> String {
    t(s).simplify().to_string()
}

#[test]
fn simplify_empty_and_single_child_nodes() {
    let a = leaf("/a");
    assert_eq!(NameTree::<Path>::Alt(vec![]).simplify(), NameTree::Neg);
    assert_eq!(NameTree::<Path>::Union(vec![]).simplify(), NameTree::Neg);
    assert_eq!(NameTree::Alt(vec![a.clone()]).simplify(), a);
    assert_eq!(NameTree::Union(vec![w(3.0, a.clone())]).simplify(), a);
    // the lone branch's weight is dropped whatever it simplifies to
    assert_eq!(
        NameTree::Union(vec![w(
            3.0,
            NameTree::Union(vec![w(2.0, leaf("/a")), w(5.0, leaf("/b"))])
        )])
        .simplify(),
        NameTree::Union(vec![w(2.0, leaf("/a")), w(5.0, leaf("/b"))])
    );
    assert_eq!(
        NameTree::Union(vec![w(3.0, NameTree::<Path>::Fail)]).simplify(),
        NameTree::Fail
    );
    assert_eq!(
        NameTree::Union(vec![w(3.0, NameTree::<Path>::Neg)]).simplify(),
        NameTree::Neg
    );
    assert_eq!(
        NameTree::Alt(vec![NameTree::Alt(vec![NameTree::Union(vec![w(
            2.0,
            a.clone()
        )])])])
        .simplify(),
        a
    );
}

#[test]
fn simplify_alt() {
    // Neg children are dropped
    assert_eq!(simp("~ | /a | ~ | /b | ~"), "/a | /b");
    assert_eq!(simp("~ | /a"), "/a");
    assert_eq!(simp("~ | ~"), "~");
    assert_eq!(simp("(~ | ~) | /a"), "/a");
    // stop after the first Fail, keeping it
    assert_eq!(simp("/a | ! | /b"), "/a | !");
    assert_eq!(simp("~ | ! | /b"), "!");
    assert_eq!(simp("! | /ok"), "!");
    assert_eq!(simp("(! | /x) | /a"), "!");
    assert_eq!(simp("/a | (~ | !) | /b"), "/a | !");
    // a union that simplifies to Neg is dropped; one that keeps a branch stays
    assert_eq!(simp("(! & ~) | /a"), "/a");
    assert_eq!(simp("(/x & ~) | /a"), "/x | /a");
    // Empty is a positive answer and is kept
    assert_eq!(simp("~ | $ | /a"), "$ | /a");
    // nested alternations are simplified but not flattened
    assert_eq!(simp("(/a | /b) | /c"), "(/a | /b) | /c");
    assert_eq!(simp("(/a | ~ | /b) | ~ | /c"), "(/a | /b) | /c");
    assert_eq!(
        t("~ | /a | ~ | /b").simplify(),
        NameTree::Alt(vec![leaf("/a"), leaf("/b")])
    );
}

#[test]
fn simplify_union() {
    // Neg and Fail branches are dropped; the others keep their weights
    assert_eq!(
        t("2*/a & 3*~ & 4*! & 5*/b").simplify(),
        NameTree::Union(vec![w(2.0, leaf("/a")), w(5.0, leaf("/b"))])
    );
    assert_eq!(simp("2*/a & 3*!"), "/a");
    assert_eq!(simp("~ & !"), "~");
    assert_eq!(simp("! & ! & !"), "~");
    assert_eq!(simp("$ & ~"), "$");
    assert_eq!(simp("$ & /a"), "$ & /a");
    assert_eq!(simp("2 * (/a & ~) & /b"), "2.00*/a & /b");
    assert_eq!(simp("(~ | /a) & (! | /b) & /c"), "/a & /c");
    assert_eq!(simp("2 * (/x | ~) & 3 * (~ | /y)"), "2.00*/x & 3.00*/y");
}

#[test]
fn simplify_leaves_constants_alone() {
    for s in ["/a", "~", "!", "$", "/"] {
        assert_eq!(t(s).simplify(), t(s));
    }
}

#[test]
fn simplify_is_a_fixpoint() {
    for s in [
        "~ | /a | ~ | /b",
        "(/a | ~ | /b) | ~ | /c",
        "2 * (/a & ~) & /b",
        "(~|$|/foo) & (/bar|/blah) & ~ & /FOO",
        "((~ | (/a & !)) | (/b | ! | /c)) & 3 * (/d | ~)",
        "! & ! & !",
        "~ | (~ | $) | /blah",
    ] {
        let once = t(s).simplify();
        assert_eq!(once.clone().simplify(), once, "{s}");
    }
}

// ------------------------------------------------------------------- eval

#[test]
fn eval_and_simplified_eval_agree_with_finagle() {
    let cases: [(&str, Option<&[&str]>); 14] = [
        ("~", None),
        ("/ok", Some(&["/ok"])),
        ("/ok & /ok1", Some(&["/ok", "/ok1"])),
        ("/ok & ~ & /blah & $", Some(&["/ok", "/blah"])),
        ("$ & $ & $", Some(&[])),
        ("~ & ~ & (~ | ~)", None),
        ("~ | /foo | /bar", Some(&["/foo"])),
        ("~ | $ | /blah", Some(&[])),
        ("~ | (~ | $) | /blah", Some(&[])),
        (
            "(~|$|/foo) & (/bar|/blah) & ~ & /FOO",
            Some(&["/bar", "/FOO"]),
        ),
        ("! | /ok", None),
        ("/ok & !", Some(&["/ok"])),
        ("! & ! & !", None),
        ("~ | /ok | !", Some(&["/ok"])),
    ];
    for (tree, expected) in cases {
        let expected = expected.map(paths);
        assert_eq!(eval_owned(&t(tree)), expected, "{tree}");
        assert_eq!(
            eval_owned(&t(tree).simplify()),
            expected,
            "simplified {tree}"
        );
    }
}

#[test]
fn eval_details() {
    assert_eq!(eval_owned(&t("!")), None);
    assert_eq!(eval_owned(&t("$")), Some(BTreeSet::new()));
    assert_eq!(
        eval_owned(&t("9 * /a & 0 * /b")),
        Some(paths(&["/a", "/b"]))
    );
    assert_eq!(eval_owned(&t("/a & /a")), Some(paths(&["/a"])));
    assert_eq!(eval_owned(&NameTree::Alt(vec![])), None);
    assert_eq!(eval_owned(&NameTree::Union(vec![])), None);
    // a union of nothing but failures is negative, so an Alt goes on past it
    assert_eq!(eval_owned(&t("(! & !) | /a")), Some(paths(&["/a"])));
}

#[test]
fn eval_of_a_single_branch_union_is_its_branch() {
    // Finagle evaluates Union(w * x) as x: a lone failing branch fails the
    // enclosing Alt instead of letting it fall through.
    let tree = NameTree::Alt(vec![
        NameTree::Union(vec![w(2.0, NameTree::Fail)]),
        leaf("/a"),
    ]);
    assert_eq!(eval_owned(&tree), None);
    assert_eq!(eval_owned(&tree.clone().simplify()), None);
    let tree = NameTree::Alt(vec![
        NameTree::Union(vec![w(2.0, NameTree::Neg)]),
        leaf("/a"),
    ]);
    assert_eq!(eval_owned(&tree), Some(paths(&["/a"])));
    let tree = NameTree::Alt(vec![NameTree::Alt(vec![NameTree::Fail]), leaf("/a")]);
    assert_eq!(eval_owned(&tree), None);
}

// ------------------------------------------------------------------- Dtab

#[test]
fn concat() {
    let d1 = d("/foo => /bar");
    let d2 = d("/foo=>/biz;/biz=>/$/inet/8080;/bar=>/$/inet/9090");
    assert_eq!(
        d1.concat(&d2),
        d("
          /foo=>/bar;
          /foo=>/biz;
          /biz=>/$/inet/8080;
          /bar=>/$/inet/9090
        ")
    );
    let d1 = d("/foo=>/bar;/biz=>/baz");
    assert_eq!(d1.concat(&Dtab::empty()), d1);
    assert_eq!(Dtab::empty().concat(&d1), d1);
    assert_eq!(
        d1.clone().with(Dentry::read("/x=>/y").unwrap()),
        d("/foo=>/bar;/biz=>/baz;/x=>/y")
    );
    assert_eq!(d1.len(), 2);
    assert!(!d1.is_empty());
    assert!(Dtab::empty().is_empty());
}

#[test]
fn strip_prefix() {
    let d1 = d("/foo=>/bar;/baz=>/xxx/yyy");
    let d2 = d("/foo=>/bar;/baz=>/xxx/yyy");
    assert!(d1.strip_prefix(&d1).is_empty());
    assert!(d1.strip_prefix(&d2).is_empty());
    let longer = d1.clone().with(Dentry::read("/foo => /123").unwrap());
    assert!(longer.strip_prefix(&d1).equiv(&d("/foo=>/123")));
    assert_eq!(longer.strip_prefix(&d1), d("/foo=>/123"));
    assert_eq!(
        d1.strip_prefix(&d1.clone().with(Dentry::read("/s => /b").unwrap())),
        d1
    );
    assert!(Dtab::empty().strip_prefix(&d1).is_empty());
    assert_eq!(d1.strip_prefix(&Dtab::empty()), d1);
    // a dtab that merely contains the prefix elsewhere is unchanged
    assert_eq!(d1.strip_prefix(&d("/baz=>/xxx/yyy")), d1);
}

#[test]
fn simplified_dtab_drops_negative_dentries() {
    assert_eq!(
        d("/a=>~;/b=>~|~;/c=>/d|~;/e=>!|/f;/g=>~&!;/h=>$").simplified(),
        d("/c=>/d;/e=>!;/h=>$")
    );
    assert_eq!(Dtab::empty().simplified(), Dtab::empty());
}

#[test]
fn equivalence_compares_simplified_trees() {
    assert!(d("/a=>/b|~").equiv(&d("/a=>/b")));
    assert!(d("/a=>(/b)").equiv(&d("/a=>/b")));
    assert!(d("/a=>2*/b & ~;/c=>!").equiv(&d("/a=>/b;/c=>! | /x")));
    assert!(!d("/a=>/b").equiv(&d("/a=>/c")));
    assert!(!d("/a=>/b").equiv(&d("/a=>/b;/a=>/b")));
    assert!(!d("/a/*=>/b").equiv(&d("/a/b=>/b")));
    assert!(!d("/a=>/b|/c").equiv(&d("/a=>/c|/b")));
    assert!(
        Dentry::read("/a => ~ | /b")
            .unwrap()
            .equiv(&Dentry::read("/a=>/b").unwrap())
    );
    // dentries made from a path prefix equal the parsed ones
    assert_eq!(
        Dentry::new(Prefix::from(&p("/a/b")), leaf("/c")),
        Dentry::read("/a/b=>/c").unwrap()
    );
}

#[test]
fn dtab_is_a_list_of_dentries() {
    let dtab = d("/a => /b; /c => /d");
    let upper: Dtab = dtab
        .dentries()
        .iter()
        .map(|e| {
            Dentry::read(&format!(
                "{}=>{}",
                e.prefix.to_string().to_uppercase(),
                e.dst.to_string().to_uppercase()
            ))
            .unwrap()
        })
        .collect();
    assert_eq!(upper.len(), 2);
    assert_eq!(upper.dentries()[0].prefix, Prefix::read("/A").unwrap());
    assert_eq!(upper.dentries()[0].dst, leaf("/B"));
    let matching: Vec<String> = d("/a=>/x;/b=>/y;/a/b=>/z")
        .matching(&p("/a/b/c"))
        .map(|(dentry, residual)| format!("{dentry} +{}", Path::new(residual.to_vec())))
        .collect();
    assert_eq!(matching, ["/a/b=>/z +/c", "/a=>/x +/b/c"]);
}

// --------------------------------------------------- linkerd1.md §2.9

const SEED: &str = "/svc => /#/io.l5d.consul/dc1; /svc/world => /svc/world-v2";

#[test]
fn example_1_seed_override() {
    let base = d("/svc => /#/io.l5d.consul/dc1");
    let local = d("/svc/world => /svc/world-v2");
    let dtab = base.concat(&local);
    assert_eq!(dtab, d(SEED));
    assert_eq!(
        dtab.lookup(&p("/svc/world")).to_string(),
        "/svc/world-v2 | /#/io.l5d.consul/dc1/world"
    );
    // /svc/world-v2 matches only the first dentry
    assert_eq!(
        dtab.lookup(&p("/svc/world-v2")).to_string(),
        "/#/io.l5d.consul/dc1/world-v2"
    );
    assert_eq!(
        bind(&dtab, &p("/svc/world"), &consul()),
        Ok(svc("dc1", "world-v2"))
    );
}

#[test]
fn example_1b_fallback_when_world_v2_is_missing_or_empty() {
    let missing = consul().without_service("dc1", "world-v2");
    assert_eq!(
        bind_with(SEED, "/svc/world", &missing),
        Ok(svc("dc1", "world"))
    );
    let empty = consul().with_service("dc1", "world-v2", &[]);
    assert_eq!(
        bind_with(SEED, "/svc/world", &empty),
        Ok(svc("dc1", "world"))
    );
    // and back again once it registers
    let back = empty.with_service("dc1", "world-v2", &["10.0.0.3:80"]);
    assert_eq!(
        bind_with(SEED, "/svc/world", &back),
        Ok(svc("dc1", "world-v2"))
    );
}

#[test]
fn example_2_star_to_inet_with_residual() {
    let dtab = d("/svc/* => /$/inet/127.1/8888");
    assert_eq!(
        dtab.lookup(&p("/svc/foo/bar")),
        leaf("/$/inet/127.1/8888/bar")
    );
    let expected = inet("/$/inet/127.1/8888", "127.1", 8888, "/bar");
    assert_eq!(
        bind(&dtab, &p("/svc/foo/bar"), &GlobalNamer),
        Ok(NameTree::Leaf(expected.clone()))
    );
    assert_eq!(
        bind(&dtab, &p("/svc/foo/bar"), &consul()),
        Ok(NameTree::Leaf(Dest::Inet(expected)))
    );
}

#[test]
fn example_3_chained_rewrites() {
    let dtab = "/srv => /#/io.l5d.consul/dc1; /host => /srv; /svc => /host";
    assert_eq!(d(dtab).lookup(&p("/svc/hello")), leaf("/host/hello"));
    assert_eq!(d(dtab).lookup(&p("/host/hello")), leaf("/srv/hello"));
    assert_eq!(
        bind_with(dtab, "/svc/hello", &consul()),
        Ok(svc("dc1", "hello"))
    );
}

#[test]
fn example_4_cross_dc_failover() {
    let dtab = "/svc => /#/io.l5d.consul/dc1 | /#/io.l5d.consul/dc2";
    assert_eq!(
        d(dtab).lookup(&p("/svc/users")).to_string(),
        "/#/io.l5d.consul/dc1/users | /#/io.l5d.consul/dc2/users"
    );
    assert_eq!(
        bind_with(dtab, "/svc/users", &consul()),
        Ok(svc("dc2", "users"))
    );
    // dc1 wins when it has the service
    let both = consul().with_service("dc1", "users", &["10.0.0.9:80"]);
    match bind_with(dtab, "/svc/users", &both).unwrap() {
        NameTree::Leaf(Dest::Consul { id, .. }) => assert_eq!(id, p("/#/io.l5d.consul/dc1/users")),
        other => panic!("{other:?}"),
    }
    // neither: Neg
    let neither = consul().without_service("dc2", "users");
    assert_eq!(bind_with(dtab, "/svc/users", &neither), Ok(NameTree::Neg));
}

#[test]
fn example_5_weighted_union() {
    let dtab = "/svc => /#/io.l5d.consul/dc1; /svc/hello => 9 * /svc/world & 1 * /svc/world-v2";
    assert_eq!(
        d(dtab).lookup(&p("/svc/hello")).to_string(),
        "9.00*/svc/world & /svc/world-v2 | /#/io.l5d.consul/dc1/hello"
    );
    assert_eq!(
        bind_with(dtab, "/svc/hello", &consul()),
        Ok(NameTree::Union(vec![
            w(9.0, svc("dc1", "world")),
            w(1.0, svc("dc1", "world-v2"))
        ]))
    );
    // a branch gone Neg is dropped and the other takes everything
    let no_v2 = consul().without_service("dc1", "world-v2");
    assert_eq!(
        bind_with(dtab, "/svc/hello", &no_v2),
        Ok(svc("dc1", "world"))
    );
    // both gone: the union is Neg and the Alt falls back to /svc's dentry
    let neither = no_v2.without_service("dc1", "world");
    assert_eq!(
        bind_with(dtab, "/svc/hello", &neither),
        Ok(svc("dc1", "hello"))
    );
}

#[test]
fn example_6_neg_override_is_a_no_op() {
    let dtab = "/svc => /#/io.l5d.consul/dc1; /svc/world => ~";
    assert_eq!(
        d(dtab).lookup(&p("/svc/world")).to_string(),
        "~ | /#/io.l5d.consul/dc1/world"
    );
    assert_eq!(
        bind_with(dtab, "/svc/world", &consul()),
        Ok(svc("dc1", "world"))
    );
}

#[test]
fn example_7_fail_stops_fallback() {
    let dtab = "/svc => /#/io.l5d.consul/dc1; /svc/world => !";
    assert_eq!(
        d(dtab).lookup(&p("/svc/world")).to_string(),
        "! | /#/io.l5d.consul/dc1/world"
    );
    assert_eq!(bind_with(dtab, "/svc/world", &consul()), Ok(NameTree::Fail));
}

#[test]
fn example_8_empty_wins() {
    let dtab = "/svc => /#/io.l5d.consul/dc1; /svc/world => $";
    assert_eq!(
        d(dtab).lookup(&p("/svc/world")).to_string(),
        "$ | /#/io.l5d.consul/dc1/world"
    );
    assert_eq!(
        bind_with(dtab, "/svc/world", &consul()),
        Ok(NameTree::Empty)
    );
    let nil = "/svc => /#/io.l5d.consul/dc1; /svc/world => /$/nil";
    assert_eq!(bind_with(nil, "/svc/world", &consul()), Ok(NameTree::Empty));
}

#[test]
fn example_9_dollar_fail_fails() {
    let dtab = "/svc => /#/io.l5d.consul/dc1; /svc/x => /$/fail | /svc/world";
    assert_eq!(
        d(dtab).lookup(&p("/svc/x")).to_string(),
        "(/$/fail | /svc/world) | /#/io.l5d.consul/dc1/x"
    );
    assert_eq!(bind_with(dtab, "/svc/x", &consul()), Ok(NameTree::Fail));
}

#[test]
fn example_10_missing_alternative_falls_back() {
    let dtab = "/svc => /#/io.l5d.consul/dc1; /svc/nosuch => /svc/world-v3 | /svc/world";
    assert_eq!(
        d(dtab).lookup(&p("/svc/nosuch")).to_string(),
        "(/svc/world-v3 | /svc/world) | /#/io.l5d.consul/dc1/nosuch"
    );
    assert_eq!(
        bind_with(dtab, "/svc/nosuch", &consul()),
        Ok(svc("dc1", "world"))
    );
}

#[test]
fn example_11_residual() {
    let dtab = "/svc => /#/io.l5d.consul/dc1";
    assert_eq!(
        d(dtab).lookup(&p("/svc/world/extra/path")),
        leaf("/#/io.l5d.consul/dc1/world/extra/path")
    );
    assert_eq!(
        bind_with(dtab, "/svc/world/extra/path", &consul()),
        Ok(svc_residual("dc1", "world", "/extra/path"))
    );
}

#[test]
fn example_12_unmatched_path_is_neg() {
    let dtab = "/svc => /#/io.l5d.consul/dc1";
    assert_eq!(d(dtab).lookup(&p("/foo/bar")), NameTree::Neg);
    assert_eq!(bind_with(dtab, "/foo/bar", &consul()), Ok(NameTree::Neg));
    // namer names the namer does not know are Neg too
    assert_eq!(
        bind_with(dtab, "/#/io.l5d.consul/dc1", &consul()),
        Ok(NameTree::Neg)
    );
    assert_eq!(
        bind_with(dtab, "/#/io.l5d.fs/x", &consul()),
        Ok(NameTree::Neg)
    );
}

#[test]
fn example_13_loop_hits_max_depth() {
    let e = bind_with("/a => /b; /b => /a", "/a/x", &consul()).unwrap_err();
    assert!(
        matches!(&e, BindError::MaxDepth { limit: 100, .. }),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .starts_with("Max recursion level: 100 reached in Namer lookup"),
        "{e}"
    );
    // the same with Finagle's own loop
    let e = bind_with(
        "/foo/bar => /bar/foo; /bar/foo => /foo/bar",
        "/foo/bar",
        &consul(),
    )
    .unwrap_err();
    assert!(matches!(
        e,
        BindError::MaxDepth {
            limit: MAX_DEPTH,
            ..
        }
    ));
}

#[test]
fn gotchas() {
    // G1: the root prefix captures the concrete names it rewrites to
    let e = bind_with("/ => /#/io.l5d.consul", "/dc1/world", &consul()).unwrap_err();
    assert!(matches!(e, BindError::MaxDepth { .. }));
    let e = bind_with("/svc => /svc/v2", "/svc/world", &consul()).unwrap_err();
    assert!(matches!(e, BindError::MaxDepth { .. }));
    // G2: whole elements only
    let dtab = "/svc => /#/io.l5d.consul/dc1; /svc/world => /svc/world-v2";
    assert_eq!(
        bind_with(dtab, "/svc/hello", &consul()),
        Ok(svc("dc1", "hello"))
    );
    assert_eq!(
        bind_with(dtab, "/svc/world/x", &consul()),
        Ok(svc_residual("dc1", "world-v2", "/x"))
    );
    // G4: a host:port is a service name of its own
    assert_eq!(
        bind_with(dtab, "/svc/hello:8080", &consul()),
        Ok(NameTree::Neg)
    );
}

#[test]
fn dentries_rewrite_namer_names_too() {
    // a dentry can redirect a concrete name...
    let dtab = "/#/io.l5d.consul/dc1/users => /#/io.l5d.consul/dc2/users";
    assert_eq!(
        bind_with(dtab, "/#/io.l5d.consul/dc1/users", &consul()),
        Ok(svc("dc2", "users"))
    );
    // ...and /$ names
    assert_eq!(
        bind_with("/$/inet/1 => /$/nil", "/$/inet/1/x", &consul()),
        Ok(NameTree::Empty)
    );
}

#[test]
fn a_lone_neg_dentry_falls_through_to_the_namer() {
    // Finagle's interpreters ask the namers whenever `dtab.lookup` is Neg,
    // and a single matching dentry whose tree is `~` looks up to Neg.
    let dtab = "/#/io.l5d.consul/dc1/world => ~";
    assert_eq!(
        d(dtab).lookup(&p("/#/io.l5d.consul/dc1/world")),
        NameTree::Neg
    );
    assert_eq!(
        bind_with(dtab, "/#/io.l5d.consul/dc1/world", &consul()),
        Ok(svc("dc1", "world"))
    );
    assert_eq!(
        bind_with(
            "/svc => /#/io.l5d.consul/dc1; /#/io.l5d.consul/dc1/world => (~)",
            "/svc/world",
            &consul()
        ),
        Ok(svc("dc1", "world"))
    );
    assert_eq!(
        bind_with("/$/inet => ~", "/$/inet/1234", &consul()),
        Ok(NameTree::Leaf(Dest::Inet(inet(
            "/$/inet/1234",
            "",
            1234,
            "/"
        ))))
    );
    // two matches look up to Alt(~, ~), which is not Neg: no namer
    let two = "/#/io.l5d.consul => ~; /#/io.l5d.consul/dc1/world => ~";
    assert_eq!(
        d(two).lookup(&p("/#/io.l5d.consul/dc1/world")),
        NameTree::Alt(vec![NameTree::Neg, NameTree::Neg])
    );
    assert_eq!(
        bind_with(two, "/#/io.l5d.consul/dc1/world", &consul()),
        Ok(NameTree::Neg)
    );
    // nor does a tree that only simplifies to `~`
    assert_eq!(
        bind_with(
            "/#/io.l5d.consul/dc1/world => ~ | ~",
            "/#/io.l5d.consul/dc1/world",
            &consul()
        ),
        Ok(NameTree::Neg)
    );
    assert_eq!(
        bind_with(
            "/#/io.l5d.consul/dc1/world => ~ & ~",
            "/#/io.l5d.consul/dc1/world",
            &consul()
        ),
        Ok(NameTree::Neg)
    );
}

// ----------------------------------------------------- NamerTest facts

#[test]
fn alt_with_fail_or_empty() {
    let namer = TestNamer::default()
        .naming("/test/1", "/$/inet/1")
        .naming("/test/2", "/$/inet/2");
    assert_eq!(
        bind_with("/t => (! | /test/1 | /test/2)", "/t", &namer),
        Ok(NameTree::Fail)
    );
    assert_eq!(
        bind_with("/t => (~ | /$/fail | /test/1)", "/t", &namer),
        Ok(NameTree::Fail)
    );
    assert_eq!(
        bind_with("/t => (/$/nil | /$/fail | /test/1)", "/t", &namer),
        Ok(NameTree::Empty)
    );
    assert_eq!(
        bind_with("/t => (~ | /test/2 | /test/1)", "/t", &namer),
        Ok(NameTree::Leaf(Dest::Inet(inet("/$/inet/2", "", 2, "/"))))
    );
}

fn inet_leaf(port: u16) -> NameTree<Dest> {
    NameTree::Leaf(Dest::Inet(inet(&format!("/$/inet/{port}"), "", port, "/")))
}

#[test]
fn union_binding() {
    let dtab = "/t => /test/0 & /test/1";
    // Ok & Ok
    let namer = TestNamer::default()
        .naming("/test/0", "/test/2")
        .naming("/test/1", "/$/inet/1")
        .naming("/test/2", "/$/inet/2");
    assert_eq!(
        bind_with(dtab, "/t", &namer),
        Ok(NameTree::Union(vec![
            w(1.0, inet_leaf(2)),
            w(1.0, inet_leaf(1))
        ]))
    );
    // Ok & Neg
    let namer = namer.naming("/test/2", "~");
    assert_eq!(bind_with(dtab, "/t", &namer), Ok(inet_leaf(1)));
    // Ok & Failed: the failed branch is dropped
    let namer = namer.failing("/test/2", "boom");
    assert_eq!(bind_with(dtab, "/t", &namer), Ok(inet_leaf(1)));
    // Failed & Failed: the first failure
    let namer = namer.failing("/test/1", "bang");
    assert_eq!(
        bind_with(dtab, "/t", &namer),
        Err(BindError::Namer {
            path: p("/test/2"),
            source: NamerError::new("boom")
        })
    );
    assert_eq!(
        bind_with(dtab, "/t", &namer).unwrap_err().to_string(),
        "namer failed for /test/2: boom"
    );
    // Neg & Neg
    let namer = namer.naming("/test/1", "~").naming("/test/2", "~");
    assert_eq!(bind_with(dtab, "/t", &namer), Ok(NameTree::Neg));
    // Empty & Neg
    let namer = namer.naming("/test/1", "$");
    assert_eq!(bind_with(dtab, "/t", &namer), Ok(NameTree::Empty));
    // Neg & Failed: Neg is a successful answer, so the union does not fail
    let namer = namer.naming("/test/1", "~").failing("/test/2", "boom");
    assert_eq!(bind_with(dtab, "/t", &namer), Ok(NameTree::Neg));
    // Fail & Failed: likewise, and the lone surviving branch is `!`
    let namer = namer.naming("/test/1", "!");
    assert_eq!(bind_with(dtab, "/t", &namer), Ok(NameTree::Fail));
    // Fail & Neg: both dropped
    let namer = namer.naming("/test/2", "~");
    assert_eq!(bind_with(dtab, "/t", &namer), Ok(NameTree::Neg));
}

#[test]
fn union_failure_in_an_alt_fails_the_alt() {
    let namer = TestNamer::default()
        .failing("/test/0", "boom")
        .failing("/test/1", "bang")
        .naming("/test/2", "/$/inet/2");
    let e = bind_with("/t => (/test/0 & /test/1) | /test/2", "/t", &namer).unwrap_err();
    assert_eq!(
        e,
        BindError::Namer {
            path: p("/test/0"),
            source: NamerError::new("boom")
        }
    );
    // and an error in an Alt's first child is not fallen through either
    let e = bind_with("/t => /test/1 | /test/2", "/t", &namer).unwrap_err();
    assert!(matches!(e, BindError::Namer { .. }));
    // but an error after the winning child is never reached
    assert_eq!(
        bind_with("/t => /test/2 | /test/1", "/t", &namer),
        Ok(inet_leaf(2))
    );
}

#[test]
fn failover() {
    let dtab = "/t => /test/0 | /test/1 & /test/2";
    let namer = TestNamer::default()
        .naming("/test/0", "$")
        .naming("/test/1", "~")
        .naming("/test/2", "~");
    assert_eq!(bind_with(dtab, "/t", &namer), Ok(NameTree::Empty));
    let namer = namer.naming("/test/0", "/$/inet/1");
    assert_eq!(bind_with(dtab, "/t", &namer), Ok(inet_leaf(1)));
    let namer = namer.naming("/test/0", "~");
    assert_eq!(bind_with(dtab, "/t", &namer), Ok(NameTree::Neg));
    let namer = namer.naming("/test/2", "/$/inet/2");
    assert_eq!(bind_with(dtab, "/t", &namer), Ok(inet_leaf(2)));
    let namer = namer.naming("/test/0", "/$/inet/3");
    assert_eq!(bind_with(dtab, "/t", &namer), Ok(inet_leaf(3)));
}

#[test]
fn bound_trees_have_no_alt_nodes() {
    let namer = consul();
    let dtab = "/svc => /#/io.l5d.consul/dc1 | /#/io.l5d.consul/dc2;
                /svc/mix => (/svc/world | /svc/users) & 2 * (/svc/nothing | /svc/world-v2) & $";
    let bound = bind_with(dtab, "/svc/mix", &namer).unwrap();
    assert_eq!(
        bound,
        NameTree::Union(vec![
            w(1.0, svc("dc1", "world")),
            w(2.0, svc("dc1", "world-v2")),
            w(1.0, NameTree::Empty),
        ])
    );
}

#[test]
fn namer_answers_are_bound_further() {
    // the namer's answer goes back through the dtab
    let namer = consul().naming("/alias/x", "/svc/world");
    assert_eq!(
        bind_with("/svc => /#/io.l5d.consul/dc1", "/alias/x", &namer),
        Ok(svc("dc1", "world"))
    );
    assert_eq!(
        bind(&Dtab::empty(), &p("/anything"), &NoNamer),
        Ok(NameTree::Neg)
    );
    assert_eq!(
        bind(&d("/a => /b | /c; /c => /$/x"), &p("/a"), &NoNamer),
        Ok(NameTree::Neg)
    );
}

// ------------------------------------------------------------ max depth

#[test]
fn self_recursion_reports_the_limit() {
    let e = bind_with("/s => /s/srv", "/s/foo/bar", &consul()).unwrap_err();
    assert!(e.to_string().contains("Max recursion level: 100"), "{e}");
    assert!(e.to_string().contains("reached in Namer lookup"), "{e}");
}

/// `/p0 => /p1; …; /p{n-2} => /p{n-1}; /p{n-1} => <last>`: n rewrites.
fn chain(n: usize, last: &str) -> Dtab {
    let mut s = String::new();
    for i in 0..n - 1 {
        write!(s, "/p{i} => /p{};", i + 1).unwrap();
    }
    write!(s, "/p{} => {last}", n - 1).unwrap();
    d(&s)
}

#[test]
fn depth_limit_is_finagles() {
    // Finagle's Namer.bind: depth starts at 0 for the path, each lookup
    // binds its answer one level deeper, and any node deeper than 100 fails.
    // n rewrites ending in a constant put the constant at depth n.
    for last in ["$", "!", "~"] {
        assert!(
            bind(&chain(100, last), &p("/p0"), &consul()).is_ok(),
            "{last}"
        );
        assert!(
            matches!(
                bind(&chain(101, last), &p("/p0"), &consul()),
                Err(BindError::MaxDepth { limit: 100, .. })
            ),
            "{last}"
        );
    }
    assert_eq!(
        bind(&chain(100, "$"), &p("/p0"), &consul()),
        Ok(NameTree::Empty)
    );
    // A rewrite to a namer name costs one more lookup (the namer's), whose
    // bound answer lands at depth n + 1.
    assert_eq!(
        bind(&chain(99, "/$/inet/7"), &p("/p0/r"), &consul()),
        Ok(NameTree::Leaf(Dest::Inet(inet("/$/inet/7", "", 7, "/r"))))
    );
    assert_eq!(
        bind(&chain(100, "/$/inet/7"), &p("/p0/r"), &consul()),
        Err(BindError::MaxDepth {
            limit: 100,
            path: p("/$/inet/7/r")
        })
    );
    assert_eq!(
        bind(
            &chain(99, "/#/io.l5d.consul/dc1/hello"),
            &p("/p0"),
            &consul()
        ),
        Ok(svc("dc1", "hello"))
    );
    assert!(
        bind(
            &chain(100, "/#/io.l5d.consul/dc1/hello"),
            &p("/p0"),
            &consul()
        )
        .is_err()
    );
    // An unmatched path at the end is looked up too (and answers Neg).
    assert_eq!(
        bind(&chain(99, "/end"), &p("/p0"), &consul()),
        Ok(NameTree::Neg)
    );
    assert!(bind(&chain(100, "/end"), &p("/p0"), &consul()).is_err());
    // Alternation and unions do not add depth; only lookups do.
    let mut s = String::new();
    for i in 0..99 {
        write!(s, "/p{i} => ~ | (/p{} & ~);", i + 1).unwrap();
    }
    s.push_str("/p99 => $");
    assert_eq!(bind(&d(&s), &p("/p0"), &consul()), Ok(NameTree::Empty));
}

#[test]
fn namer_rewrites_count_towards_the_depth() {
    // the namer answering with paths: n lookups, then `$` at depth n
    let mut namer = TestNamer::default();
    for i in 0..99 {
        namer = namer.naming(&format!("/n{i}"), &format!("/n{}", i + 1));
    }
    let at_limit = namer.naming("/n99", "$");
    assert_eq!(
        bind(&Dtab::empty(), &p("/n0"), &at_limit),
        Ok(NameTree::Empty)
    );
    let over = at_limit.naming("/n99", "/n100").naming("/n100", "$");
    assert!(matches!(
        bind(&Dtab::empty(), &p("/n0"), &over),
        Err(BindError::MaxDepth { .. })
    ));
}

// ---------------------------------------------------------- GlobalNamer

fn global(path: &str) -> Result<NameTree<Name<InetName>>, NamerError> {
    GlobalNamer.lookup(&p(path))
}

#[test]
fn global_namer_inet() {
    assert_eq!(
        global("/$/inet/1234/foobar"),
        Ok(NameTree::Leaf(Name::Bound(inet(
            "/$/inet/1234",
            "",
            1234,
            "/foobar"
        ))))
    );
    assert_eq!(
        global("/$/inet/1234"),
        Ok(NameTree::Leaf(Name::Bound(inet(
            "/$/inet/1234",
            "",
            1234,
            "/"
        ))))
    );
    assert_eq!(
        global("/$/inet/127.0.0.1/1234"),
        Ok(NameTree::Leaf(Name::Bound(inet(
            "/$/inet/127.0.0.1/1234",
            "127.0.0.1",
            1234,
            "/"
        ))))
    );
    assert_eq!(
        global("/$/inet/localhost/80/a/b"),
        Ok(NameTree::Leaf(Name::Bound(inet(
            "/$/inet/localhost/80",
            "localhost",
            80,
            "/a/b"
        ))))
    );
    assert_eq!(
        global("/$/fixedinet/127.0.0.1/1234/x"),
        Ok(NameTree::Leaf(Name::Bound(InetName {
            id: p("/$/fixedinet/127.0.0.1/1234"),
            host: "127.0.0.1".to_owned(),
            port: 1234,
            fixed: true,
            residual: p("/x"),
        })))
    );
    assert_eq!(
        global("/$/fixedinet/1234/foobar"),
        Ok(NameTree::Leaf(Name::Bound(InetName {
            id: p("/$/fixedinet/1234"),
            host: String::new(),
            port: 1234,
            fixed: true,
            residual: p("/foobar"),
        })))
    );
}

#[test]
fn global_namer_fail_nil_and_others() {
    assert_eq!(global("/$/fail"), Ok(NameTree::Fail));
    assert_eq!(global("/$/fail/foo/bar"), Ok(NameTree::Fail));
    assert_eq!(global("/$/nil"), Ok(NameTree::Empty));
    assert_eq!(global("/$/nil/foo/bar"), Ok(NameTree::Empty));
    assert_eq!(global("/foo/bar/bah/blah"), Ok(NameTree::Neg));
    assert_eq!(global("/foo/bar"), Ok(NameTree::Neg));
    assert_eq!(global("/"), Ok(NameTree::Neg));
    assert_eq!(global("/$"), Ok(NameTree::Neg));
    assert_eq!(global("/#/io.l5d.consul/dc1/x"), Ok(NameTree::Neg));
    assert_eq!(
        global("/$/inet"),
        Err(NamerError::new("Unknown namer: inet for path: /$/inet"))
    );
    assert_eq!(
        global("/$/fixedinet"),
        Err(NamerError::new(
            "Unknown namer: fixedinet for path: /$/fixedinet"
        ))
    );
    assert_eq!(
        global("/$/inet/host/notaport"),
        Err(NamerError::new(
            "Unknown namer: inet for path: /$/inet/host/notaport"
        ))
    );
    assert_eq!(
        global("/$/com.foo.Bar/x"),
        Err(NamerError::new(
            "Unknown namer: com.foo.Bar for path: /$/com.foo.Bar/x"
        ))
    );
    // through bind, a namer error names the path
    assert_eq!(
        bind(&Dtab::empty(), &p("/$/com.foo.Bar/x"), &GlobalNamer),
        Err(BindError::Namer {
            path: p("/$/com.foo.Bar/x"),
            source: NamerError::new("Unknown namer: com.foo.Bar for path: /$/com.foo.Bar/x"),
        })
    );
    assert_eq!(
        bind(&d("/s => /$/fail/x | /$/inet/1"), &p("/s"), &GlobalNamer),
        Ok(NameTree::Fail)
    );
    assert_eq!(
        bind(&d("/s => /$/nil/x | /$/inet/1"), &p("/s"), &GlobalNamer),
        Ok(NameTree::Empty)
    );
}

#[test]
fn resolving_like_namer_resolve() {
    // Finagle's Namer.resolve: bind, then eval
    let dtab = d("/s/foo => /$/inet/5678");
    let bound = bind(&dtab, &p("/s/foo"), &GlobalNamer).unwrap();
    let ports = bound
        .map_ref(&mut |i| i.port)
        .eval()
        .map(|s| s.into_iter().copied().collect::<Vec<_>>());
    assert_eq!(ports, Some(vec![5678]));
    let unbound = bind(&Dtab::empty(), &p("/s/foo"), &GlobalNamer).unwrap();
    assert_eq!(unbound, NameTree::Neg);
    assert_eq!(unbound.map_ref(&mut |i| i.port).eval(), None);
    // later dentries (the local dtab) win
    let dtab = d("/s/foo => /$/inet/1234").concat(&d("/s/foo => /$/inet/5678"));
    let bound = bind(&dtab, &p("/s/foo"), &GlobalNamer).unwrap();
    assert_eq!(bound, NameTree::Leaf(inet("/$/inet/5678", "", 5678, "/")));
}

// ------------------------------------------------------------- delegate

fn node(path: &str, dentry: Option<&str>, node: DelegateNode) -> DelegateTree {
    DelegateTree {
        path: p(path),
        dentry: dentry.map(|s| Dentry::read(s).unwrap()),
        node,
    }
}

#[test]
fn delegate_seed() {
    let tree = delegate(&d(SEED), &p("/svc/world")).unwrap();
    assert_eq!(
        tree.result().to_string(),
        "/#/io.l5d.consul/dc1/world-v2 | /#/io.l5d.consul/dc1/world"
    );
    let svc_d = "/svc=>/#/io.l5d.consul/dc1";
    let world_d = "/svc/world=>/svc/world-v2";
    assert_eq!(
        tree,
        node(
            "/svc/world",
            None,
            DelegateNode::Alt(vec![
                node(
                    "/svc/world-v2",
                    Some(world_d),
                    DelegateNode::Delegate(Box::new(node(
                        "/#/io.l5d.consul/dc1/world-v2",
                        Some(svc_d),
                        DelegateNode::Leaf
                    )))
                ),
                node(
                    "/#/io.l5d.consul/dc1/world",
                    Some(svc_d),
                    DelegateNode::Leaf
                ),
            ])
        )
    );
    assert_eq!(
        tree.to_name_tree(),
        NameTree::Alt(vec![
            leaf("/#/io.l5d.consul/dc1/world-v2"),
            leaf("/#/io.l5d.consul/dc1/world")
        ])
    );
    assert_eq!(
        tree.explain(),
        "/svc/world => alternatives, first non-~ wins:\n\
         \x20 /svc/world-v2  [/svc/world=>/svc/world-v2]\n\
         \x20   /#/io.l5d.consul/dc1/world-v2  [/svc=>/#/io.l5d.consul/dc1]  (namer name)\n\
         \x20 /#/io.l5d.consul/dc1/world  [/svc=>/#/io.l5d.consul/dc1]  (namer name)\n"
    );
    assert_eq!(tree.to_string(), tree.explain());
}

#[test]
fn delegate_unmatched() {
    let tree = delegate(&d("/svc => /#/io.l5d.consul/dc1"), &p("/foo/bar")).unwrap();
    assert_eq!(tree, node("/foo/bar", None, DelegateNode::Neg));
    assert_eq!(tree.result(), NameTree::Neg);
    assert_eq!(tree.result().to_string(), "~");
    assert_eq!(tree.explain(), "/foo/bar => ~\n");
    // namer names stay as leaves
    let tree = delegate(&Dtab::empty(), &p("/#/io.l5d.consul/dc1/x")).unwrap();
    assert_eq!(tree.node, DelegateNode::Leaf);
    assert_eq!(tree.result(), leaf("/#/io.l5d.consul/dc1/x"));
    let tree = delegate(&Dtab::empty(), &p("/$/inet/1/2")).unwrap();
    assert_eq!(tree.result(), leaf("/$/inet/1/2"));
    // a rewrite to a path no dentry matches ends in ~
    let tree = delegate(&d("/a => /b"), &p("/a/c")).unwrap();
    assert_eq!(
        tree,
        node(
            "/a/c",
            None,
            DelegateNode::Delegate(Box::new(node("/b/c", Some("/a=>/b"), DelegateNode::Neg)))
        )
    );
    assert_eq!(tree.result(), NameTree::Neg);
}

#[test]
fn delegate_constants() {
    let dtab = d("/svc => /#/io.l5d.consul/dc1; /svc/a => !; /svc/b => ~; /svc/c => $");
    for (path, constant, shown, result) in [
        ("/svc/a", DelegateNode::Fail, "!", "!"),
        ("/svc/b", DelegateNode::Neg, "~", "/#/io.l5d.consul/dc1/b"),
        (
            "/svc/c",
            DelegateNode::Empty,
            "$",
            "$ | /#/io.l5d.consul/dc1/c",
        ),
    ] {
        let tree = delegate(&dtab, &p(path)).unwrap();
        let dentry = format!("{path}=>{shown}");
        match &tree.node {
            DelegateNode::Alt(alts) => {
                assert_eq!(alts.len(), 2);
                assert_eq!(alts[0], node(path, Some(&dentry), constant));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(tree.result().to_string(), result, "{path}");
    }
    let tree = delegate(&dtab, &p("/svc/a")).unwrap();
    assert_eq!(
        tree.explain(),
        "/svc/a => alternatives, first non-~ wins:\n\
         \x20 /svc/a  [/svc/a=>!] => !\n\
         \x20 /#/io.l5d.consul/dc1/a  [/svc=>/#/io.l5d.consul/dc1]  (namer name)\n"
    );
}

#[test]
fn delegate_expands_every_branch() {
    let dtab = d("/svc => /#/io.l5d.consul/dc1;
                  /svc/x => /$/fail | /svc/world;
                  /svc/y => 9 * /svc/world & /svc/world-v2");
    let svc_d = "/svc=>/#/io.l5d.consul/dc1";

    let x = delegate(&dtab, &p("/svc/x")).unwrap();
    let x_d = "/svc/x=>/$/fail | /svc/world";
    assert_eq!(
        x,
        node(
            "/svc/x",
            None,
            DelegateNode::Alt(vec![
                node(
                    "/svc/x",
                    Some(x_d),
                    DelegateNode::Alt(vec![
                        node("/$/fail", Some(x_d), DelegateNode::Leaf),
                        node(
                            "/svc/world",
                            Some(x_d),
                            DelegateNode::Delegate(Box::new(node(
                                "/#/io.l5d.consul/dc1/world",
                                Some(svc_d),
                                DelegateNode::Leaf
                            )))
                        ),
                    ])
                ),
                node("/#/io.l5d.consul/dc1/x", Some(svc_d), DelegateNode::Leaf),
            ])
        )
    );
    assert_eq!(
        x.result().to_string(),
        "(/$/fail | /#/io.l5d.consul/dc1/world) | /#/io.l5d.consul/dc1/x"
    );

    let y = delegate(&dtab, &p("/svc/y/r")).unwrap();
    let y_d = "/svc/y=>9.00*/svc/world & /svc/world-v2";
    assert_eq!(
        y,
        node(
            "/svc/y/r",
            None,
            DelegateNode::Alt(vec![
                node(
                    "/svc/y/r",
                    Some(y_d),
                    DelegateNode::Union(vec![
                        (
                            9.0,
                            node(
                                "/svc/world/r",
                                Some(y_d),
                                DelegateNode::Delegate(Box::new(node(
                                    "/#/io.l5d.consul/dc1/world/r",
                                    Some(svc_d),
                                    DelegateNode::Leaf
                                )))
                            )
                        ),
                        (
                            1.0,
                            node(
                                "/svc/world-v2/r",
                                Some(y_d),
                                DelegateNode::Delegate(Box::new(node(
                                    "/#/io.l5d.consul/dc1/world-v2/r",
                                    Some(svc_d),
                                    DelegateNode::Leaf
                                )))
                            )
                        ),
                    ])
                ),
                node("/#/io.l5d.consul/dc1/y/r", Some(svc_d), DelegateNode::Leaf),
            ])
        )
    );
    assert_eq!(
        y.result().to_string(),
        "9.00*/#/io.l5d.consul/dc1/world/r & /#/io.l5d.consul/dc1/world-v2/r | /#/io.l5d.consul/dc1/y/r"
    );
    assert_eq!(
        y.explain(),
        "/svc/y/r => alternatives, first non-~ wins:\n\
         \x20 /svc/y/r  [/svc/y=>9.00*/svc/world & /svc/world-v2] => union of:\n\
         \x20   9.00* /svc/world/r  [/svc/y=>9.00*/svc/world & /svc/world-v2]\n\
         \x20     /#/io.l5d.consul/dc1/world/r  [/svc=>/#/io.l5d.consul/dc1]  (namer name)\n\
         \x20   1.00* /svc/world-v2/r  [/svc/y=>9.00*/svc/world & /svc/world-v2]\n\
         \x20     /#/io.l5d.consul/dc1/world-v2/r  [/svc=>/#/io.l5d.consul/dc1]  (namer name)\n\
         \x20 /#/io.l5d.consul/dc1/y/r  [/svc=>/#/io.l5d.consul/dc1]  (namer name)\n"
    );

    // binding would stop at the first alternative that answers; delegation
    // shows the losers too
    let dtab = d("/svc => /#/io.l5d.consul/dc1 | /#/io.l5d.consul/dc2 | !");
    let tree = delegate(&dtab, &p("/svc/users")).unwrap();
    match &tree.node {
        DelegateNode::Delegate(next) => match &next.node {
            DelegateNode::Alt(alts) => {
                assert_eq!(alts.len(), 3);
                assert_eq!(alts[2].node, DelegateNode::Fail);
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    assert_eq!(
        tree.result().to_string(),
        "/#/io.l5d.consul/dc1/users | /#/io.l5d.consul/dc2/users | !"
    );
}

#[test]
fn delegate_depth() {
    assert_eq!(
        delegate(&d("/a => /b; /b => /a"), &p("/a/x")),
        Err(DelegateError::MaxDepth {
            limit: 100,
            path: p("/b/x")
        })
    );
    assert!(
        delegate(&d("/a => /b; /b => /a"), &p("/a/x"))
            .unwrap_err()
            .to_string()
            .starts_with("Max recursion level: 100 reached in delegation")
    );
    // n rewrites put the last path at depth n
    assert_eq!(
        delegate(&chain(100, "/end"), &p("/p0")).unwrap().result(),
        NameTree::Neg
    );
    assert_eq!(
        delegate(&chain(100, "/#/x"), &p("/p0")).unwrap().result(),
        leaf("/#/x")
    );
    assert_eq!(
        delegate(&chain(101, "/end"), &p("/p0")),
        Err(DelegateError::MaxDepth {
            limit: 100,
            path: p("/end")
        })
    );
    // a loop in one branch fails the whole delegation
    assert!(delegate(&d("/a => /b | /c; /b => /b"), &p("/a")).is_err());
}

#[test]
fn a_looping_union_branch_is_dropped_like_a_failed_one() {
    let dtab = "/t => /$/inet/1 & /loop; /loop => /loop/x";
    assert_eq!(bind_with(dtab, "/t", &consul()), Ok(inet_leaf(1)));
    // with no healthy branch, the union fails with the loop's error
    let e = bind_with("/t => /loop & /loop; /loop => /loop/x", "/t", &consul()).unwrap_err();
    assert!(matches!(e, BindError::MaxDepth { limit: 100, .. }), "{e:?}");
}

/// Answers every path with the same tree of names.
struct Fixed(NameTree<Name<Dest>>);

impl Namer for Fixed {
    type Bound = Dest;
    fn lookup(&self, _: &Path) -> Result<NameTree<Name<Dest>>, NamerError> {
        Ok(self.0.clone())
    }
}

/// Runs `f` on a thread with a 64 MiB stack. Reaching MAX_OPEN_NODES takes
/// more than the 2 MiB default in a debug build (about 3 MiB for bind and
/// 10 MiB for delegate, measured); these tests check the limit, not the
/// stack size.
fn on_big_stack<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn a_namer_answer_nested_too_deeply_hits_max_open_nodes() {
    let outcome = on_big_stack(|| {
        let mut deep = NameTree::Leaf(Name::Path(p("/$/inet/1")));
        for _ in 0..2_500 {
            deep = NameTree::Alt(vec![deep]);
        }
        bind(&Dtab::empty(), &p("/deep"), &Fixed(deep))
    });
    assert_eq!(
        outcome,
        Err(BindError::TooDeep {
            limit: ecsmesh_dtab::MAX_OPEN_NODES,
            path: p("/deep")
        })
    );
}

#[test]
fn a_dtab_nesting_on_every_level_hits_max_open_nodes() {
    // 100 rewrite levels, each nesting 25 alternations: within the depth
    // limit, but more open nodes than MAX_OPEN_NODES.
    let mut s = String::new();
    for i in 0..99 {
        let mut tree = format!("/p{}", i + 1);
        for _ in 0..25 {
            tree = format!("({tree} | ~)");
        }
        write!(s, "/p{i} => {tree};").unwrap();
    }
    s.push_str("/p99 => $");
    let dtab = d(&s);
    let (bound, delegated) = on_big_stack(move || {
        (
            bind(&dtab, &p("/p0"), &consul()),
            delegate(&dtab, &p("/p0")).map(|t| t.result()),
        )
    });
    assert!(
        matches!(
            bound,
            Err(BindError::TooDeep {
                limit: ecsmesh_dtab::MAX_OPEN_NODES,
                ..
            })
        ),
        "{bound:?}"
    );
    assert!(
        matches!(
            delegated,
            Err(DelegateError::TooDeep {
                limit: ecsmesh_dtab::MAX_OPEN_NODES,
                ..
            })
        ),
        "{delegated:?}"
    );
    // with fewer nested nodes per level the same chain binds
    let mut s = String::new();
    for i in 0..99 {
        write!(s, "/p{i} => ((/p{} | ~) | ~);", i + 1).unwrap();
    }
    s.push_str("/p99 => $");
    assert_eq!(bind(&d(&s), &p("/p0"), &consul()), Ok(NameTree::Empty));
}

#[test]
fn exponential_rewrites_stop_at_the_lookup_budget() {
    // Each entry rewrites to two copies of the next: 2^30 lookups unbounded.
    let mut s = String::new();
    for i in 0..30 {
        write!(s, "/p{i} => /p{n} | /p{n};", n = i + 1).unwrap();
    }
    s.push_str("/p30 => ~");
    let dtab = d(&s);
    assert!(matches!(
        bind(&dtab, &p("/p0"), &consul()),
        Err(BindError::TooManyLookups { limit: 1_000, .. })
    ));
    assert!(matches!(
        delegate(&dtab, &p("/p0")),
        Err(DelegateError::TooManyLookups { limit: 1_000, .. })
    ));
}
