//! Arbitrary text through every parser of `ecsmesh-dtab`, and what parses
//! through `show` and `delegate`.
//!
//! The input is read as UTF-8 (lossily when it is not). Checked:
//! - no parser panics (`Dtab`, `NameTree`, `Path`, `Prefix`, `Dentry`);
//! - what parses shows as text that parses again, and show settles after
//!   at most two rounds (weights print with two decimals);
//! - paths and prefixes read back as the very same value;
//! - a parsed dtab delegates a fixed path and, when the input holds a NUL
//!   byte, the path written after it (the dtab being the text before it)
//!   without panicking; every leaf of a delegation is a namer name
//!   (`/#/…`, `/$/…`) no dentry matches, and the result and the explanation
//!   render (text and JSON).

#![no_main]

use std::borrow::Cow;
use std::fmt::Display;

use ecsmesh_dtab::{
    DelegateTree, Dentry, Dtab, NameTree, ParseError, Path, Prefix, delegate, json,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = text(data);
    round_trip(&whole, Dtab::read);
    round_trip(&whole, NameTree::read);
    round_trip(&whole, Dentry::read);
    if let Some(p) = round_trip(&whole, Path::read) {
        assert_eq!(
            Path::read(&p.to_string()).as_ref(),
            Ok(&p),
            "path {whole:?}"
        );
    }
    if let Some(p) = round_trip(&whole, Prefix::read) {
        assert_eq!(
            Prefix::read(&p.to_string()).as_ref(),
            Ok(&p),
            "prefix {whole:?}"
        );
    }

    let (dtab_text, path_text) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (text(&data[..nul]), Some(text(&data[nul + 1..]))),
        None => (whole.clone(), None),
    };
    let Ok(dtab) = Dtab::read(&dtab_text) else {
        return;
    };
    let fixed = Path::read("/svc/world").expect("a fixed path");
    check_delegation(&dtab, &fixed);
    if let Some(Ok(path)) = path_text.as_deref().map(Path::read) {
        check_delegation(&dtab, &path);
    }
});

fn text(data: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// Parses `input`; on success checks that show reads back and settles.
/// Weights print with two decimals (as Finagle's do), so one in
/// [0.995, 1.005) shows as `1.00*`, reads back as the default weight and
/// then shows without one: the text is a fixpoint after two rounds.
fn round_trip<T: Display>(input: &str, read: fn(&str) -> Result<T, ParseError>) -> Option<T> {
    let value = read(input).ok()?;
    let mut shown = value.to_string();
    for round in 1..=2 {
        let again = read(&shown)
            .unwrap_or_else(|e| panic!("{input:?} shows as {shown:?}, which does not parse: {e}"));
        let reshown = again.to_string();
        if reshown == shown {
            return Some(value);
        }
        assert!(
            round < 2,
            "{input:?}: show does not settle: {shown:?} then {reshown:?}"
        );
        shown = reshown;
    }
    Some(value)
}

fn check_delegation(dtab: &Dtab, path: &Path) {
    let Ok(tree) = delegate(dtab, path) else {
        return; // the depth or nesting limit: an answer, not a failure
    };
    assert_eq!(&tree.path, path);
    check_leaves(dtab, &tree);
    let result = tree.result();
    let _ = result.to_string();
    let _ = json::tree(&result).to_string();
    let _ = tree.explain();
    let _ = json::delegation(&tree).to_string();
}

/// Delegation stops at a leaf only for a namer name nothing rewrites.
fn check_leaves(dtab: &Dtab, tree: &DelegateTree) {
    for leaf in tree.to_name_tree().leaves() {
        assert!(
            leaf.is_namer_name(),
            "delegation ended at {leaf}, not a namer name"
        );
        assert!(
            dtab.matching(leaf).next().is_none(),
            "delegation ended at {leaf}, which {dtab} rewrites"
        );
    }
}
