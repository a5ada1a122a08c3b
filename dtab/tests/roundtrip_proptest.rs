//! Property tests, deterministic (fixed ChaCha seed, no persistence files):
//! show/read round trips of generated values, robustness of every parser on
//! arbitrary input, and the algebra of `simplify`, `eval` and `bind`.

#![allow(clippy::unwrap_used, clippy::float_cmp)]

use std::cell::Cell;
use std::collections::BTreeSet;
use std::fmt::Display;

use ecsmesh_dtab::{
    Dentry, Dtab, Label, Name, NameTree, Namer, NamerError, ParseError, Path, Prefix, PrefixElem,
    Weighted, bind, write_weight,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

// ------------------------------------------------------------------ setup

fn runner(cases: u32, seed: u8) -> TestRunner {
    let config = Config {
        cases,
        rng_algorithm: RngAlgorithm::ChaCha,
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]),
    )
}

fn check<S: Strategy>(
    cases: u32,
    seed: u8,
    strategy: &S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    if let Err(e) = runner(cases, seed).run(strategy, test) {
        panic!("{e}");
    }
}

// ------------------------------------------------------------- strategies

fn label() -> impl Strategy<Value = Label> {
    prop_oneof![
        3 => "[a-zA-Z0-9_:.#$%-]{1,6}".prop_map(|s| Label::new(s.as_bytes()).unwrap()),
        1 => prop::collection::vec(any::<u8>(), 1..5).prop_map(|b| Label::new(&b).unwrap()),
        1 => Just(Label::try_from("*").unwrap()),
    ]
}

fn path() -> impl Strategy<Value = Path> {
    prop::collection::vec(label(), 0..4).prop_map(Path::new)
}

fn prefix() -> impl Strategy<Value = Prefix> {
    prop::collection::vec(
        prop_oneof![3 => label().prop_map(PrefixElem::Label), 1 => Just(PrefixElem::Any)],
        0..4,
    )
    .prop_map(Prefix::new)
}

/// Weights with at most two decimals: they print exactly.
fn exact_weight() -> impl Strategy<Value = f64> {
    prop_oneof![
        1 => Just(1.0),
        3 => (0u32..=1000).prop_map(|k| f64::from(k) / 100.0),
    ]
}

fn constant() -> impl Strategy<Value = NameTree<Path>> {
    prop_oneof![
        Just(NameTree::Neg),
        Just(NameTree::Fail),
        Just(NameTree::Empty),
    ]
}

/// Trees as the parser builds them: no empty or single-child Alt/Union.
fn canonical_tree() -> impl Strategy<Value = NameTree<Path>> {
    prop_oneof![1 => constant(), 2 => path().prop_map(NameTree::Leaf)].prop_recursive(
        6,
        48,
        3,
        |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 2..4).prop_map(NameTree::Alt),
                prop::collection::vec((exact_weight(), inner), 2..4).prop_map(|branches| {
                    NameTree::Union(
                        branches
                            .into_iter()
                            .map(|(w, t)| Weighted::new(w, t))
                            .collect(),
                    )
                }),
            ]
        },
    )
}

/// Any tree: empty and single-child nodes, weights of any precision.
fn any_tree() -> impl Strategy<Value = NameTree<Path>> {
    let small_path = prop::collection::vec("[abc]", 1..3)
        .prop_map(|elems| Path::from_strs(elems.iter().map(String::as_str)).unwrap());
    prop_oneof![1 => constant(), 2 => small_path.prop_map(NameTree::Leaf)].prop_recursive(
        6,
        48,
        3,
        |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(NameTree::Alt),
                prop::collection::vec(
                    ((0u32..20_000).prop_map(|k| f64::from(k) / 1000.0), inner),
                    0..4
                )
                .prop_map(|branches| {
                    NameTree::Union(
                        branches
                            .into_iter()
                            .map(|(w, t)| Weighted::new(w, t))
                            .collect(),
                    )
                }),
            ]
        },
    )
}

fn dtab() -> impl Strategy<Value = Dtab> {
    prop::collection::vec((prefix(), canonical_tree()), 0..5)
        .prop_map(|ds| ds.into_iter().map(|(p, t)| Dentry::new(p, t)).collect())
}

const TOKENS: &[&str] = &[
    "/", "/", "/", "/a", "/svc", "/#", "/$", "/*", "*", "(", ")", "|", " | ", "&", " & ", "~", "!",
    "$", "#", "# c\n", ";", "; ", "=>", "=>", " => ", "=", ">", "\\x", "\\x4f", "\\xA0", "\\xz",
    "1", "0", "9", ".", ".5", "2.", "2 * ", "x", "a", "Z", "_", ":", "-", "%", " ", " ", "\n",
    "\t", "\r\n", "\u{2003}", "\u{a0}", "\u{3000}", "é", "😀", "\u{663}", "\\", "@", "?", "{", "^",
];

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => prop::sample::select(TOKENS).prop_map(str::to_owned),
        1 => any::<char>().prop_map(String::from),
    ]
}

/// Strings made mostly of grammar tokens, with some arbitrary characters.
fn grammar_soup() -> impl Strategy<Value = String> {
    prop::collection::vec(token(), 0..24).prop_map(|parts| parts.concat())
}

/// What a generated value shows as, then damaged by a few edits: mostly
/// almost valid, so that every parser succeeds now and then.
fn damaged() -> impl Strategy<Value = String> {
    let shown = prop_oneof![
        path().prop_map(|p| p.to_string()),
        prefix().prop_map(|p| p.to_string()),
        canonical_tree().prop_map(|t| t.to_string()),
        (prefix(), canonical_tree()).prop_map(|(p, t)| Dentry::new(p, t).to_string()),
        dtab().prop_map(|d| d.to_string()),
    ];
    let edit = (0u8..3, any::<prop::sample::Index>(), token());
    (shown, prop::collection::vec(edit, 0..3)).prop_map(|(shown, edits)| {
        let mut chars: Vec<char> = shown.chars().collect();
        for (kind, at, token) in edits {
            let at = at.index(chars.len() + 1);
            match kind {
                0 => {
                    chars.splice(at..at, token.chars());
                }
                1 if at < chars.len() => {
                    chars.remove(at);
                }
                _ if at < chars.len() => {
                    chars.splice(at..=at, token.chars());
                }
                _ => chars.extend(token.chars()),
            }
        }
        chars.into_iter().collect()
    })
}

fn parser_input() -> impl Strategy<Value = String> {
    prop_oneof![grammar_soup(), damaged()]
}

// --------------------------------------------------------------- helpers

/// A weight as it reads back after printing.
fn printed(weight: f64) -> f64 {
    let mut s = String::new();
    write_weight(&mut s, weight).unwrap();
    s.parse().unwrap()
}

/// The tree with every weight as it reads back after printing.
fn reprinted(tree: &NameTree<Path>) -> NameTree<Path> {
    match tree {
        NameTree::Alt(trees) => NameTree::Alt(trees.iter().map(reprinted).collect()),
        NameTree::Union(branches) => NameTree::Union(
            branches
                .iter()
                .map(|b| Weighted::new(printed(b.weight), reprinted(&b.tree)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn reprinted_dtab(d: &Dtab) -> Dtab {
    d.dentries()
        .iter()
        .map(|e| Dentry::new(e.prefix.clone(), reprinted(&e.dst)))
        .collect()
}

fn eval_owned(tree: &NameTree<Path>) -> Option<BTreeSet<Path>> {
    tree.eval().map(|set| set.into_iter().cloned().collect())
}

/// Finagle's `simplified` shape: no empty or single-child nodes, no `~` in
/// an Alt, `!` only last in an Alt, neither `~` nor `!` in a Union.
fn is_simplified(tree: &NameTree<Path>) -> bool {
    match tree {
        NameTree::Alt(trees) => {
            trees.len() >= 2
                && trees.iter().all(|t| *t != NameTree::Neg)
                && trees[..trees.len() - 1]
                    .iter()
                    .all(|t| *t != NameTree::Fail)
                && trees.iter().all(is_simplified)
        }
        NameTree::Union(branches) => {
            branches.len() >= 2
                && branches.iter().all(|b| {
                    !matches!(b.tree, NameTree::Neg | NameTree::Fail) && is_simplified(&b.tree)
                })
        }
        _ => true,
    }
}

fn has_alt<T>(tree: &NameTree<T>) -> bool {
    match tree {
        NameTree::Alt(_) => true,
        NameTree::Union(branches) => branches.iter().any(|b| has_alt(&b.tree)),
        _ => false,
    }
}

/// The result of reading what was shown must be the value itself.
fn reads_back<T: Display + PartialEq + std::fmt::Debug>(
    value: &T,
    read: fn(&str) -> Result<T, ParseError>,
) -> Result<(), TestCaseError> {
    let shown = value.to_string();
    let back = read(&shown).map_err(|e| TestCaseError::fail(format!("{shown:?}: {e}")))?;
    prop_assert_eq!(&back, value, "shown as {:?}", shown);
    Ok(())
}

// --------------------------------------------------- (a) round trips

#[test]
fn generated_paths_and_prefixes_round_trip() {
    check(2000, 1, &path(), |p| reads_back(&p, Path::read));
    check(2000, 2, &prefix(), |p| reads_back(&p, Prefix::read));
}

#[test]
fn generated_trees_round_trip() {
    check(2000, 3, &canonical_tree(), |t| {
        reads_back(&t, NameTree::read)?;
        // and the second printing is the first
        let shown = t.to_string();
        prop_assert_eq!(NameTree::read(&shown).unwrap().to_string(), shown);
        Ok(())
    });
}

#[test]
fn generated_dtabs_round_trip() {
    check(2000, 4, &dtab(), |d| {
        reads_back(&d, Dtab::read)?;
        for dentry in d.dentries() {
            reads_back(dentry, Dentry::read)?;
        }
        Ok(())
    });
}

// ------------------------------------------- (b) parsers on any input

/// Parses `s` with `read`; if that works, printing and reading again gives
/// the same value (up to printed weight precision) and the same text.
fn stable<T: Display + PartialEq + std::fmt::Debug>(
    s: &str,
    read: fn(&str) -> Result<T, ParseError>,
    reprint: fn(&T) -> T,
    parsed: &Cell<usize>,
) -> Result<(), TestCaseError> {
    match read(s) {
        Ok(value) => {
            parsed.set(parsed.get() + 1);
            let shown = value.to_string();
            let again = read(&shown)
                .map_err(|e| TestCaseError::fail(format!("{s:?} shows as {shown:?}: {e}")))?;
            prop_assert_eq!(&again, &reprint(&value), "{:?} shows as {:?}", s, shown);
            prop_assert_eq!(again.to_string(), shown);
        }
        Err(e) => {
            prop_assert!(e.offset <= s.len(), "{:?}: {}", s, e);
            prop_assert!(s.is_char_boundary(e.offset), "{:?}: {}", s, e);
            let message = e.to_string();
            prop_assert!(
                message.starts_with(&format!("error at offset {}: ", e.offset)),
                "{}",
                message
            );
        }
    }
    Ok(())
}

#[test]
fn parsers_never_panic_and_reprint_stably() {
    let paths = Cell::new(0);
    let prefixes = Cell::new(0);
    let trees = Cell::new(0);
    let dentries = Cell::new(0);
    let dtabs = Cell::new(0);
    check(2000, 5, &parser_input(), |s| {
        stable(&s, Path::read, Path::clone, &paths)?;
        stable(&s, Prefix::read, Prefix::clone, &prefixes)?;
        stable(&s, NameTree::read, reprinted, &trees)?;
        stable(
            &s,
            Dentry::read,
            |d| Dentry::new(d.prefix.clone(), reprinted(&d.dst)),
            &dentries,
        )?;
        stable(&s, Dtab::read, reprinted_dtab, &dtabs)?;
        Ok(())
    });
    // the soup is valid often enough to exercise the success path
    for (what, n) in [
        ("paths", paths.get()),
        ("prefixes", prefixes.get()),
        ("trees", trees.get()),
        ("dentries", dentries.get()),
        ("dtabs", dtabs.get()),
    ] {
        assert!(n >= 50, "only {n} {what} parsed");
    }

    // arbitrary strings, and the parsers on a shown dtab with one byte cut
    check(1000, 6, &any::<String>(), |s| {
        let none = Cell::new(0);
        stable(&s, Path::read, Path::clone, &none)?;
        stable(&s, NameTree::read, reprinted, &none)?;
        stable(&s, Dtab::read, reprinted_dtab, &none)?;
        Ok(())
    });
    check(
        500,
        7,
        &(dtab(), any::<prop::sample::Index>()),
        |(d, cut)| {
            let shown = d.to_string();
            let mut s = shown.clone();
            if !s.is_empty() {
                s.remove(cut.index(s.len()));
            }
            let none = Cell::new(0);
            stable(&s, Dtab::read, reprinted_dtab, &none)
        },
    );
}

// ------------------------------------------ (c) simplify, eval, bind

#[test]
fn simplify_is_idempotent_and_keeps_eval() {
    check(2000, 8, &any_tree(), |t| {
        let simple = t.clone().simplify();
        prop_assert!(is_simplified(&simple), "{:?} simplified to {:?}", t, simple);
        prop_assert_eq!(&simple.clone().simplify(), &simple);
        prop_assert_eq!(
            eval_owned(&simple),
            eval_owned(&t),
            "{:?} -> {:?}",
            t,
            simple
        );
        // a simplified tree prints and reads back (weights to two places)
        let shown = simple.to_string();
        let back =
            NameTree::read(&shown).map_err(|e| TestCaseError::fail(format!("{shown:?}: {e}")))?;
        prop_assert_eq!(back, reprinted(&simple));
        Ok(())
    });
}

/// Binds `/<root>` to a tree, and any other path to itself.
struct Identity(NameTree<Path>);

const ROOT: &[u8] = b"\xff\xff\xff\xff\xff\xff\xff\xff root";

impl Namer for Identity {
    type Bound = Path;
    fn lookup(&self, path: &Path) -> Result<NameTree<Name<Path>>, NamerError> {
        Ok(
            if path.elems().first().is_some_and(|l| l.as_bytes() == ROOT) {
                self.0.map_ref(&mut |p| Name::Path(p.clone()))
            } else {
                NameTree::Leaf(Name::Bound(path.clone()))
            },
        )
    }
}

#[test]
fn binding_evaluates_like_eval() {
    let root = Path::new(vec![Label::new(ROOT).unwrap()]);
    check(2000, 9, &any_tree(), |t| {
        // through the namer
        let bound = bind(&Dtab::empty(), &root, &Identity(t.clone()))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(!has_alt(&bound), "{:?} bound to {:?}", t, bound);
        prop_assert_eq!(&bound.clone().simplify(), &bound);
        prop_assert_eq!(
            eval_owned(&bound),
            eval_owned(&t),
            "{:?} bound to {:?}",
            t,
            bound
        );
        // and through a dentry
        let dtab = Dtab::new(vec![Dentry::new(Prefix::from(&root), t.clone())]);
        let via_dtab = bind(&dtab, &root, &Identity(NameTree::Neg))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(via_dtab, bound);
        Ok(())
    });
}
