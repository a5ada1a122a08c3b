//! Canonical printing (Finagle's `show`), byte for byte, and `read` of what
//! `show` prints.

#![allow(clippy::unwrap_used, clippy::float_cmp, clippy::too_many_lines)]

use ecsmesh_dtab::{
    Dentry, Dtab, Label, NameTree, Path, Prefix, PrefixElem, Weighted, write_weight,
};

fn path(elems: &[&str]) -> Path {
    Path::from_strs(elems.iter().copied()).unwrap()
}

fn leaf(s: &str) -> NameTree<Path> {
    NameTree::Leaf(Path::read(s).unwrap())
}

fn w(weight: f64, tree: NameTree<Path>) -> Weighted<Path> {
    Weighted::new(weight, tree)
}

fn u(branches: Vec<Weighted<Path>>) -> NameTree<Path> {
    NameTree::Union(branches)
}

fn u1(trees: Vec<NameTree<Path>>) -> NameTree<Path> {
    NameTree::Union(trees.into_iter().map(|t| w(1.0, t)).collect())
}

fn alt(trees: Vec<NameTree<Path>>) -> NameTree<Path> {
    NameTree::Alt(trees)
}

fn weight(x: f64) -> String {
    let mut s = String::new();
    write_weight(&mut s, x).unwrap();
    s
}

fn assert_round_trip(t: &NameTree<Path>) {
    let shown = t.to_string();
    let back = NameTree::read(&shown).unwrap_or_else(|e| panic!("{shown:?}: {e}"));
    assert_eq!(&back, t, "{shown}");
    assert_eq!(back.to_string(), shown);
}

// ------------------------------------------------------------- dtabs

#[test]
fn dentries_and_dtabs_show_without_spaces() {
    let d = Dtab::read("/svc => /#/io.l5d.consul/dc1; /svc/world => /svc/world-v2;").unwrap();
    assert_eq!(
        d.to_string(),
        "/svc=>/#/io.l5d.consul/dc1;/svc/world=>/svc/world-v2"
    );
    assert_eq!(Dtab::empty().to_string(), "");
    assert_eq!(Dtab::read("/ => !").unwrap().to_string(), "/=>!");
    assert_eq!(
        Dtab::read(" /a/*/c => /d ").unwrap().to_string(),
        "/a/*/c=>/d"
    );
    assert_eq!(
        Dentry::read("/a => ~ | $ | !").unwrap().to_string(),
        "/a=>~ | $ | !"
    );
    assert_eq!(
        Dtab::read("/a=>/b;/c=>/d;/e=>/f").unwrap().to_string(),
        "/a=>/b;/c=>/d;/e=>/f"
    );
    assert_eq!(
        format!("{:?}", Dtab::read("/a=>/b").unwrap()),
        "Dtab(/a=>/b)"
    );
    assert_eq!(
        format!("{:?}", Dentry::read("/a=>/b").unwrap()),
        "Dentry(/a=>/b)"
    );
    assert_eq!(format!("{:?}", Path::read("/a/b").unwrap()), "Path(/a/b)");
}

#[test]
fn paths_and_prefixes() {
    assert_eq!(Path::empty().to_string(), "/");
    assert_eq!(Path::empty().show(), "/");
    assert_eq!(Path::read("/foo/bar").unwrap().show(), "/foo/bar");
    assert_eq!(Prefix::empty().to_string(), "/");
    assert_eq!(
        Prefix::new(vec![
            PrefixElem::Any,
            PrefixElem::Label(Label::try_from("a b").unwrap()),
            PrefixElem::Any
        ])
        .to_string(),
        r"/*/\x61\x20\x62/*"
    );
    // an escaped '*' label prints escaped, so it does not read back as `*`
    let star = Prefix::new(vec![PrefixElem::Label(Label::try_from("*").unwrap())]);
    assert_eq!(star.to_string(), r"/\x2a");
    assert_eq!(Prefix::read(&star.to_string()).unwrap(), star);
}

// ------------------------------------------------------ escaping rule

#[test]
fn elements_print_as_is_or_entirely_escaped() {
    assert_eq!(
        path(&["my host"]).to_string(),
        r"/\x6d\x79\x20\x68\x6f\x73\x74"
    );
    assert_eq!(path(&["World:8080"]).to_string(), "/World:8080");
    assert_eq!(path(&["#$%-.09:AZ_az"]).to_string(), "/#$%-.09:AZ_az");
    // only the element with a non-showable byte is escaped
    assert_eq!(
        path(&["ok", "not ok", "ok"]).to_string(),
        r"/ok/\x6e\x6f\x74\x20\x6f\x6b/ok"
    );
    assert_eq!(path(&["a/b"]).to_string(), r"/\x61\x2f\x62");
    assert_eq!(path(&["é"]).to_string(), r"/\xc3\xa9");
    let bytes = Path::new(vec![Label::new(&[0x00, 0xff, 0x0a, 0x7f, 0x80]).unwrap()]);
    assert_eq!(bytes.to_string(), r"/\x00\xff\x0a\x7f\x80");
    // uppercase hex input prints lowercase; escapes of showable bytes vanish
    assert_eq!(Path::read(r"/\x4A\x20").unwrap().to_string(), r"/\x4a\x20");
    assert_eq!(Path::read(r"/\x4A\x4b").unwrap().to_string(), "/JK");
    assert_eq!(
        Path::read(r"/a\x2Fb").unwrap().to_string(),
        r"/\x61\x2f\x62"
    );
    // each non-showable ASCII character escapes its element
    for b in (0u8..128).filter(|b| !ecsmesh_dtab::is_showable(*b)) {
        let p = Path::new(vec![Label::new(&[b'a', b]).unwrap()]);
        assert_eq!(p.to_string(), format!(r"/\x61\x{b:02x}"));
        assert_eq!(Path::read(&p.to_string()).unwrap(), p);
    }
}

#[test]
fn every_byte_round_trips() {
    let all: Vec<u8> = (0..=255).collect();
    let p = Path::new(vec![
        Label::new(&all).unwrap(),
        Label::new(b"plain").unwrap(),
    ]);
    let shown = p.to_string();
    assert!(shown.starts_with(r"/\x00\x01\x02"));
    assert!(shown.ends_with(r"\xfe\xff/plain"));
    assert_eq!(shown.len(), 1 + 4 * 256 + 6);
    assert_eq!(Path::read(&shown).unwrap(), p);
}

// ------------------------------------------------------------ weights

#[test]
fn weights_print_like_java_percent_point_two_f() {
    assert_eq!(weight(0.125), "0.13");
    assert_eq!(weight(2.675), "2.68");
    assert_eq!(weight(1.005), "1.01");
    assert_eq!(weight(0.5), "0.50");
    assert_eq!(weight(9.0), "9.00");
    assert_eq!(weight(0.0), "0.00");
    assert_eq!(weight(0.333), "0.33");
    assert_eq!(weight(0.335), "0.34");
    assert_eq!(weight(0.994), "0.99");
    assert_eq!(weight(0.995), "1.00");
    assert_eq!(weight(0.004), "0.00");
    assert_eq!(weight(0.005), "0.01");
    assert_eq!(weight(9.999), "10.00");
    assert_eq!(weight(99.995), "100.00");
    assert_eq!(weight(10.0), "10.00");
    assert_eq!(weight(123_456.789), "123456.79");
    assert_eq!(weight(1e-5), "0.00");
    assert_eq!(weight(1e21), "1000000000000000000000.00");
    assert_eq!(weight(1.0), "1.00");
}

#[test]
fn weight_one_is_omitted_and_others_get_two_decimals() {
    let t = u(vec![
        w(1.0, leaf("/a")),
        w(0.125, leaf("/b")),
        w(2.675, leaf("/c")),
        w(0.5, leaf("/d")),
        w(0.0, leaf("/e")),
        w(0.995, leaf("/f")),
        w(1.000_000_1, leaf("/g")),
    ]);
    assert_eq!(
        t.to_string(),
        "/a & 0.13*/b & 2.68*/c & 0.50*/d & 0.00*/e & 1.00*/f & 1.00*/g"
    );
    assert_eq!(
        NameTree::read("9 * /svc/world & 1 * /svc/world-v2")
            .unwrap()
            .to_string(),
        "9.00*/svc/world & /svc/world-v2"
    );
    assert_eq!(
        NameTree::read(".5*/a & 1.*/b & 2.5 * /c")
            .unwrap()
            .to_string(),
        "0.50*/a & /b & 2.50*/c"
    );
    // printing loses precision: 0.333 reads back as 0.33
    let lossy = u(vec![w(0.333, leaf("/a")), w(1.0, leaf("/b"))]);
    let back = NameTree::read(&lossy.to_string()).unwrap();
    assert_eq!(back, u(vec![w(0.33, leaf("/a")), w(1.0, leaf("/b"))]));
}

// -------------------------------------------------------- parentheses

#[test]
fn parenthesisation() {
    let (a, b, c) = (leaf("/a"), leaf("/b"), leaf("/c"));
    // Alt in Alt: parenthesised, wherever it stands
    assert_eq!(
        alt(vec![a.clone(), alt(vec![b.clone(), c.clone()])]).to_string(),
        "/a | (/b | /c)"
    );
    assert_eq!(
        alt(vec![alt(vec![a.clone(), b.clone()]), c.clone()]).to_string(),
        "(/a | /b) | /c"
    );
    // Union in Alt: bare
    assert_eq!(
        alt(vec![u1(vec![a.clone(), b.clone()]), c.clone()]).to_string(),
        "/a & /b | /c"
    );
    assert_eq!(
        alt(vec![a.clone(), u1(vec![b.clone(), c.clone()])]).to_string(),
        "/a | /b & /c"
    );
    // Alt in Union: parenthesised
    assert_eq!(
        u1(vec![alt(vec![a.clone(), b.clone()]), c.clone()]).to_string(),
        "(/a | /b) & /c"
    );
    // Union in Union: parenthesised
    assert_eq!(
        u1(vec![u1(vec![a.clone(), b.clone()]), c.clone()]).to_string(),
        "(/a & /b) & /c"
    );
    assert_eq!(
        u(vec![
            w(2.0, u1(vec![a.clone(), b.clone()])),
            w(1.0, c.clone())
        ])
        .to_string(),
        "2.00*(/a & /b) & /c"
    );
    assert_eq!(
        u(vec![
            w(2.0, alt(vec![a.clone(), b.clone()])),
            w(3.0, c.clone())
        ])
        .to_string(),
        "2.00*(/a | /b) & 3.00*/c"
    );
    // deeper
    assert_eq!(
        alt(vec![
            u1(vec![
                alt(vec![a.clone(), u1(vec![b.clone(), c.clone()])]),
                a.clone()
            ]),
            alt(vec![u1(vec![a.clone(), b.clone()]), c.clone()]),
        ])
        .to_string(),
        "(/a | /b & /c) & /a | (/a & /b | /c)"
    );
    // constants
    assert_eq!(
        alt(vec![NameTree::Neg, NameTree::Fail, NameTree::Empty]).to_string(),
        "~ | ! | $"
    );
    assert_eq!(
        u(vec![w(2.0, NameTree::Neg), w(1.0, NameTree::Empty)]).to_string(),
        "2.00*~ & $"
    );
}

#[test]
fn single_child_nodes_print_as_their_child() {
    let (a, b, c) = (leaf("/a"), leaf("/b"), leaf("/c"));
    assert_eq!(alt(vec![a.clone()]).to_string(), "/a");
    assert_eq!(u(vec![w(3.0, a.clone())]).to_string(), "/a");
    assert_eq!(
        alt(vec![alt(vec![u(vec![w(5.0, alt(vec![a.clone()]))])])]).to_string(),
        "/a"
    );
    assert_eq!(
        alt(vec![a.clone(), alt(vec![b.clone()])]).to_string(),
        "/a | /b"
    );
    // a single-child node around a multi-child one is invisible, so the
    // inner node is parenthesised as if it stood there itself
    assert_eq!(
        u1(vec![alt(vec![u1(vec![a.clone(), b.clone()])]), c.clone()]).to_string(),
        "(/a & /b) & /c"
    );
    assert_eq!(
        alt(vec![
            a.clone(),
            u(vec![w(2.0, alt(vec![b.clone(), c.clone()]))])
        ])
        .to_string(),
        "/a | (/b | /c)"
    );
    assert_eq!(
        alt(vec![
            u(vec![w(2.0, u1(vec![a.clone(), b.clone()]))]),
            c.clone()
        ])
        .to_string(),
        "/a & /b | /c"
    );
    assert_eq!(
        u(vec![w(2.0, alt(vec![b.clone()])), w(1.0, c.clone())]).to_string(),
        "2.00*/b & /c"
    );
    assert_eq!(
        u(vec![
            w(1.0, u(vec![w(7.0, alt(vec![a.clone(), b.clone()]))])),
            w(1.0, c.clone())
        ])
        .to_string(),
        "(/a | /b) & /c"
    );
}

#[test]
fn empty_nodes_print_as_nothing() {
    assert_eq!(alt(vec![]).to_string(), "");
    assert_eq!(u(vec![]).to_string(), "");
    assert_eq!(alt(vec![leaf("/a"), alt(vec![])]).to_string(), "/a | ()");
    assert_eq!(u1(vec![leaf("/a"), u(vec![])]).to_string(), "/a & ()");
}

// ------------------------------------------------------- round trips

#[test]
fn hand_picked_trees_round_trip() {
    let (a, b, c) = (leaf("/a"), leaf("/b/c"), leaf("/"));
    let escaped = NameTree::Leaf(path(&["x y", "#", "$"]));
    let trees = vec![
        NameTree::Neg,
        NameTree::Fail,
        NameTree::Empty,
        a.clone(),
        c.clone(),
        escaped.clone(),
        alt(vec![a.clone(), b.clone()]),
        alt(vec![
            NameTree::Fail,
            NameTree::Neg,
            NameTree::Empty,
            escaped.clone(),
        ]),
        u1(vec![a.clone(), b.clone(), c.clone()]),
        u(vec![
            w(0.5, a.clone()),
            w(2.0, b.clone()),
            w(0.0, c.clone()),
        ]),
        alt(vec![a.clone(), alt(vec![b.clone(), c.clone()])]),
        alt(vec![alt(vec![a.clone(), b.clone()]), c.clone()]),
        alt(vec![u1(vec![a.clone(), b.clone()]), c.clone()]),
        u1(vec![alt(vec![a.clone(), b.clone()]), c.clone()]),
        u1(vec![u1(vec![a.clone(), b.clone()]), c.clone()]),
        u(vec![
            w(9.0, u1(vec![a.clone(), escaped.clone()])),
            w(0.25, alt(vec![b.clone(), NameTree::Neg])),
        ]),
        alt(vec![
            u(vec![
                w(
                    3.5,
                    alt(vec![u1(vec![a.clone(), b.clone()]), NameTree::Empty]),
                ),
                w(1.0, c.clone()),
            ]),
            alt(vec![
                alt(vec![alt(vec![a.clone(), b.clone()]), c.clone()]),
                NameTree::Fail,
            ]),
        ]),
        NameTree::Leaf(Path::new(vec![Label::new(&[0xff, 0x00]).unwrap()])),
    ];
    for t in &trees {
        assert_round_trip(t);
    }
    let d: Dtab = trees
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let prefix = if i % 3 == 0 {
                Prefix::new(vec![
                    PrefixElem::Label(Label::try_from("p").unwrap()),
                    PrefixElem::Any,
                ])
            } else {
                Prefix::from(&path(&["svc", &format!("s{i}")]))
            };
            Dentry::new(prefix, t.clone())
        })
        .collect();
    assert_eq!(Dtab::read(&d.to_string()).unwrap(), d);
}

// ------------------------------------- Finagle's random-tree round trip

/// Knuth's MMIX linear congruential generator: deterministic, dependency-free.
struct Lcg(u64);

impl Lcg {
    fn next_u32(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        u32::try_from(self.0 >> 33).unwrap()
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next_u32()).unwrap() % n
    }
}

const WORDS: &[&str] = &[
    "alpha",
    "bravo",
    "Charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "Juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
    "io.l5d.consul",
    "#",
    "$",
    "world-v2",
    "dc1",
    "host:8080",
    "100%",
    "a_b",
];

fn random_leaf(rng: &mut Lcg) -> NameTree<Path> {
    match rng.below(4) {
        0 => NameTree::Fail,
        1 => NameTree::Empty,
        2 => NameTree::Neg,
        _ => {
            let n = 1 + rng.below(10);
            let elems: Vec<&str> = (0..n).map(|_| WORDS[rng.below(WORDS.len())]).collect();
            NameTree::Leaf(path(&elems))
        }
    }
}

fn random_tree(rng: &mut Lcg, depth: u32) -> NameTree<Path> {
    match rng.below(3) {
        _ if depth == 0 => random_leaf(rng),
        0 => random_leaf(rng),
        1 => {
            let n = 1 + rng.below(3);
            let mut branches: Vec<Weighted<Path>> = (0..n)
                .map(|_| {
                    let weight = f64::from(u32::try_from(rng.below(10)).unwrap());
                    w(weight, random_tree(rng, depth - 1))
                })
                .collect();
            if branches.len() == 1 {
                branches.pop().unwrap().tree
            } else {
                NameTree::Union(branches)
            }
        }
        _ => {
            let n = 1 + rng.below(3);
            let mut trees: Vec<NameTree<Path>> =
                (0..n).map(|_| random_tree(rng, depth - 1)).collect();
            if trees.len() == 1 {
                trees.pop().unwrap()
            } else {
                NameTree::Alt(trees)
            }
        }
    }
}

#[test]
fn random_trees_round_trip() {
    let mut rng = Lcg(1234);
    let mut unions = 0;
    let mut alts = 0;
    let mut weighted = 0;
    for depth in [2, 2, 2, 3, 4] {
        for _ in 0..100 {
            let t = random_tree(&mut rng, depth);
            let shown = t.to_string();
            unions += usize::from(shown.contains(" & "));
            alts += usize::from(shown.contains(" | "));
            weighted += usize::from(shown.contains(".00*"));
            assert_round_trip(&t);
        }
    }
    // the generator really exercised the interesting shapes
    assert!(unions > 50, "{unions}");
    assert!(alts > 50, "{alts}");
    assert!(weighted > 50, "{weighted}");
}

#[test]
fn random_dtabs_round_trip() {
    let mut rng = Lcg(42);
    for _ in 0..100 {
        let n = rng.below(6);
        let d: Dtab = (0..n)
            .map(|_| {
                let prefix: Vec<PrefixElem> = (0..rng.below(4))
                    .map(|_| {
                        if rng.below(4) == 0 {
                            PrefixElem::Any
                        } else {
                            PrefixElem::Label(
                                Label::try_from(WORDS[rng.below(WORDS.len())]).unwrap(),
                            )
                        }
                    })
                    .collect();
                Dentry::new(Prefix::new(prefix), random_tree(&mut rng, 3))
            })
            .collect();
        let shown = d.to_string();
        assert_eq!(shown.matches("=>").count(), n);
        assert_eq!(Dtab::read(&shown).unwrap(), d, "{shown}");
    }
}
