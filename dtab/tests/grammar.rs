//! The dtab grammar, as Finagle's `NameTreeParsers` accepts it: paths,
//! prefixes, name trees, dentries and dtabs, comments, whitespace, and the
//! byte offsets and wording of parse errors.

#![allow(clippy::unwrap_used, clippy::float_cmp, clippy::too_many_lines)]

use ecsmesh_dtab::{
    Dentry, Dtab, Found, Label, MAX_NESTING, NameTree, ParseError, ParseErrorKind, Path, Prefix,
    PrefixElem, Weighted,
};

// ---------------------------------------------------------------- helpers

fn path(elems: &[&str]) -> Path {
    Path::from_strs(elems.iter().copied()).unwrap()
}

fn leaf(elems: &[&str]) -> NameTree<Path> {
    NameTree::Leaf(path(elems))
}

fn w(weight: f64, tree: NameTree<Path>) -> Weighted<Path> {
    Weighted::new(weight, tree)
}

fn union(branches: Vec<Weighted<Path>>) -> NameTree<Path> {
    NameTree::Union(branches)
}

fn alt(trees: Vec<NameTree<Path>>) -> NameTree<Path> {
    NameTree::Alt(trees)
}

fn tree(s: &str) -> NameTree<Path> {
    NameTree::read(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
}

fn label_prefix(elems: &[&str]) -> Prefix {
    Prefix::from(&path(elems))
}

fn pfx(elems: &[Option<&str>]) -> Prefix {
    Prefix::new(
        elems
            .iter()
            .map(|e| match e {
                Some(l) => PrefixElem::Label(Label::try_from(*l).unwrap()),
                None => PrefixElem::Any,
            })
            .collect::<Vec<_>>(),
    )
}

/// The rendered error of a parse that must fail.
fn err<T: std::fmt::Debug>(r: Result<T, ParseError>) -> String {
    r.expect_err("the input should not parse").to_string()
}

fn path_err(s: &str) -> String {
    err(Path::read(s))
}

fn tree_err(s: &str) -> String {
    err(NameTree::read(s))
}

fn dtab_err(s: &str) -> String {
    err(Dtab::read(s))
}

fn dentry_err(s: &str) -> String {
    err(Dentry::read(s))
}

// ------------------------------------------------------------------ paths

#[test]
fn root_path_is_empty() {
    assert_eq!(Path::read("/").unwrap(), Path::empty());
    assert!(Path::read("/").unwrap().is_empty());
    assert_eq!(Path::read("  /  ").unwrap(), Path::empty());
}

#[test]
fn whitespace_around_a_path_is_ignored() {
    assert_eq!(Path::read("  /foo/bar  ").unwrap(), path(&["foo", "bar"]));
    assert_eq!(
        Path::read("\t\r\n/foo/bar\n\x0b\x0c").unwrap(),
        path(&["foo", "bar"])
    );
}

#[test]
fn every_showable_character_is_a_label_character() {
    let all = "#$%-.0123456789:ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz";
    assert_eq!(Path::read(&format!("/{all}")).unwrap(), path(&[all]));
    assert_eq!(
        Path::read("/#/io.l5d.consul/dc1/World:8080").unwrap(),
        path(&["#", "io.l5d.consul", "dc1", "World:8080"])
    );
    assert_eq!(Path::read("/$/inet/127.1/80").unwrap().len(), 4);
    assert_eq!(Path::read("/%2F/a-b_c").unwrap(), path(&["%2F", "a-b_c"]));
}

#[test]
fn hex_escapes_in_either_case() {
    assert_eq!(Path::read(r"/\x66\x6f\x6F").unwrap(), path(&["foo"]));
    assert_eq!(Path::read(r"/\x4A\x4a\x4b").unwrap(), path(&["JJK"]));
    assert_eq!(
        Path::read(r"/\xAb\xaB\xAB\xab").unwrap().elems()[0].as_bytes(),
        [0xab; 4]
    );
    // escapes and plain characters mix within one label
    assert_eq!(Path::read(r"/a\x2fb/c").unwrap(), path(&["a/b", "c"]));
    assert_eq!(
        Path::read(r"/\x00\xff\x0a").unwrap().elems()[0].as_bytes(),
        [0x00, 0xff, 0x0a]
    );
    assert_eq!(
        Path::read(r"/my\x20host").unwrap().elems()[0].as_bytes(),
        b"my host"
    );
    // a label may be nothing but escapes
    assert_eq!(Path::read(r"/\x2a").unwrap(), path(&["*"]));
}

#[test]
fn path_errors() {
    assert_eq!(
        path_err(""),
        "error at offset 0: expected '/' but found end of input"
    );
    assert_eq!(
        path_err("   "),
        "error at offset 3: expected '/' but found end of input"
    );
    assert_eq!(
        path_err("foo"),
        "error at offset 0: expected '/' but found 'f'"
    );
    // trailing slash: a label must follow every '/' but the first
    assert_eq!(
        path_err("/foo/bar/"),
        "error at offset 9: expected a label character but found end of input"
    );
    // empty element: the path ends after the first '/'
    assert_eq!(
        path_err("//foo"),
        "error at offset 1: expected end of input but found '/'"
    );
    assert_eq!(
        path_err("/foo//bar"),
        "error at offset 5: expected a label character but found '/'"
    );
    assert_eq!(
        path_err("/{}"),
        "error at offset 1: expected end of input but found '{'"
    );
    assert_eq!(
        path_err("/foo^bar"),
        "error at offset 4: expected end of input but found '^'"
    );
    // spaces inside a path
    assert_eq!(
        path_err("/foo bar"),
        "error at offset 5: expected end of input but found 'b'"
    );
    assert_eq!(
        path_err("/foo/ bar"),
        "error at offset 5: expected a label character but found ' '"
    );
}

#[test]
fn bad_escapes() {
    assert_eq!(
        path_err(r"/\?"),
        "error at offset 2: expected 'x' but found '?'"
    );
    assert_eq!(
        path_err(r"/\X41"),
        "error at offset 2: expected 'x' but found 'X'"
    );
    assert_eq!(
        path_err(r"/\x?"),
        "error at offset 3: expected a hex digit but found '?'"
    );
    assert_eq!(
        path_err(r"/\x0?"),
        "error at offset 4: expected a hex digit but found '?'"
    );
    assert_eq!(
        path_err(r"/\x"),
        "error at offset 3: expected a hex digit but found end of input"
    );
    assert_eq!(
        path_err(r"/\x4"),
        "error at offset 4: expected a hex digit but found end of input"
    );
    assert_eq!(
        path_err(r"/a\xg0"),
        "error at offset 4: expected a hex digit but found 'g'"
    );
    assert_eq!(
        path_err(r"/\"),
        "error at offset 2: expected 'x' but found end of input"
    );
}

#[test]
fn characters_that_are_not_showable_are_illegal() {
    for (i, c) in "*~!@+=?&|(){}[]<>\"',;^`".chars().enumerate() {
        let input = format!("/a{c}b");
        let e = Path::read(&input).expect_err(&input);
        assert_eq!(e.offset, 2, "{input} (#{i})");
        assert_eq!(
            e.kind,
            ParseErrorKind::Unexpected {
                expected: "end of input",
                found: Found::Char(c)
            },
            "{input}"
        );
    }
    // directly after the slash, the path is empty and the character is trailing junk
    let e = Path::read("/*").unwrap_err();
    assert_eq!(e.offset, 1);
    // non-ASCII characters too
    assert_eq!(
        path_err("/é"),
        "error at offset 1: expected end of input but found 'é'"
    );
}

// --------------------------------------------------------------- prefixes

#[test]
fn prefixes() {
    assert_eq!(Prefix::read("/").unwrap(), Prefix::empty());
    assert_eq!(
        Prefix::read("/a/*/c").unwrap(),
        pfx(&[Some("a"), None, Some("c")])
    );
    assert_eq!(Prefix::read(" /* ").unwrap(), pfx(&[None]));
    assert_eq!(Prefix::read("/*/*").unwrap(), pfx(&[None, None]));
    assert_eq!(
        Prefix::read("/svc/world").unwrap(),
        label_prefix(&["svc", "world"])
    );
    // an escaped '*' is an ordinary label
    assert_eq!(Prefix::read(r"/\x2a").unwrap(), pfx(&[Some("*")]));
    assert_ne!(Prefix::read(r"/\x2a").unwrap(), Prefix::read("/*").unwrap());
}

#[test]
fn star_must_be_a_whole_prefix_element() {
    assert_eq!(
        err(Prefix::read("/a*")),
        "error at offset 2: expected end of input but found '*'"
    );
    assert_eq!(
        err(Prefix::read("/*a")),
        "error at offset 2: expected end of input but found 'a'"
    );
    assert_eq!(
        err(Prefix::read("/**")),
        "error at offset 2: expected end of input but found '*'"
    );
    assert_eq!(
        err(Prefix::read("/a/")),
        "error at offset 3: expected a label character but found end of input"
    );
    // in a dentry the prefix ends there and '=>' is wanted
    assert_eq!(
        dentry_err("/a*=>/b"),
        "error at offset 2: expected '=>' but found '*'"
    );
    assert_eq!(
        dentry_err("/*a=>/b"),
        "error at offset 2: expected '=>' but found 'a'"
    );
    assert_eq!(
        dentry_err("/foo/*bar/baz => !"),
        "error at offset 6: expected '=>' but found 'b'"
    );
    assert_eq!(
        dtab_err("/a*/b=>/c"),
        "error at offset 2: expected '=>' but found '*'"
    );
    // '*' is a prefix element only: a path never has one
    assert_eq!(
        dentry_err("/a=>/b/*"),
        "error at offset 7: expected a label character but found '*'"
    );
}

// ------------------------------------------------------------------ trees

#[test]
fn constants_and_leaves() {
    assert_eq!(tree("!"), NameTree::Fail);
    assert_eq!(tree("~"), NameTree::Neg);
    assert_eq!(tree("$"), NameTree::Empty);
    assert_eq!(tree("/"), NameTree::Leaf(Path::empty()));
    assert_eq!(tree("/$"), leaf(&["$"]));
    assert_eq!(tree("/foo/bar"), leaf(&["foo", "bar"]));
    assert_eq!(
        tree("! | ~ | $"),
        alt(vec![NameTree::Fail, NameTree::Neg, NameTree::Empty])
    );
    assert_eq!(tree("!|~|$"), tree("! | ~ | $"));
}

#[test]
fn union_binds_tighter_than_alternation() {
    assert_eq!(
        tree("  /foo & /bar  "),
        union(vec![w(1.0, leaf(&["foo"])), w(1.0, leaf(&["bar"]))])
    );
    assert_eq!(
        tree("  /foo | /bar  "),
        alt(vec![leaf(&["foo"]), leaf(&["bar"])])
    );
    assert_eq!(
        tree("/foo & /bar | /bar & /baz"),
        alt(vec![
            union(vec![w(1.0, leaf(&["foo"])), w(1.0, leaf(&["bar"]))]),
            union(vec![w(1.0, leaf(&["bar"])), w(1.0, leaf(&["baz"]))]),
        ])
    );
    assert_eq!(
        tree("/a | /b & /c"),
        alt(vec![
            leaf(&["a"]),
            union(vec![w(1.0, leaf(&["b"])), w(1.0, leaf(&["c"]))])
        ])
    );
    assert_eq!(
        tree("/a & /b | /c"),
        alt(vec![
            union(vec![w(1.0, leaf(&["a"])), w(1.0, leaf(&["b"]))]),
            leaf(&["c"])
        ])
    );
    assert_eq!(
        tree("/a | /b | /c"),
        alt(vec![leaf(&["a"]), leaf(&["b"]), leaf(&["c"])])
    );
    assert_eq!(
        tree("/a & /b & /c"),
        union(vec![
            w(1.0, leaf(&["a"])),
            w(1.0, leaf(&["b"])),
            w(1.0, leaf(&["c"]))
        ])
    );
}

#[test]
fn parentheses_group_and_are_not_flattened() {
    assert_eq!(
        tree("(/a | /b) & /c"),
        union(vec![
            w(1.0, alt(vec![leaf(&["a"]), leaf(&["b"])])),
            w(1.0, leaf(&["c"]))
        ])
    );
    assert_eq!(
        tree("/a | (/b | /c)"),
        alt(vec![leaf(&["a"]), alt(vec![leaf(&["b"]), leaf(&["c"])])])
    );
    assert_eq!(
        tree("(/a & /b) & /c"),
        union(vec![
            w(1.0, union(vec![w(1.0, leaf(&["a"])), w(1.0, leaf(&["b"]))])),
            w(1.0, leaf(&["c"]))
        ])
    );
    assert_eq!(tree("((/a))"), leaf(&["a"]));
    assert_eq!(tree("( ( ! ) )"), NameTree::Fail);
    assert_eq!(tree("(~)|($)"), alt(vec![NameTree::Neg, NameTree::Empty]));
}

#[test]
fn weights() {
    assert_eq!(
        tree("1 * /foo & 2 * /bar | .5 * /bar & .5 * /baz"),
        alt(vec![
            union(vec![w(1.0, leaf(&["foo"])), w(2.0, leaf(&["bar"]))]),
            union(vec![w(0.5, leaf(&["bar"])), w(0.5, leaf(&["baz"]))]),
        ])
    );
    assert_eq!(
        tree("2*/a&3*/b"),
        union(vec![w(2.0, leaf(&["a"])), w(3.0, leaf(&["b"]))])
    );
    assert_eq!(
        tree("1. * /a & 0.25*/b & 007 * /c & 0 * /d"),
        union(vec![
            w(1.0, leaf(&["a"])),
            w(0.25, leaf(&["b"])),
            w(7.0, leaf(&["c"])),
            w(0.0, leaf(&["d"])),
        ])
    );
    // whitespace, newlines and comments around the '*'
    assert_eq!(
        tree("9\n*\n/svc/world & 1 # note\n * /svc/world-v2"),
        union(vec![
            w(9.0, leaf(&["svc", "world"])),
            w(1.0, leaf(&["svc", "world-v2"]))
        ])
    );
    // a weight may apply to a parenthesised tree
    assert_eq!(
        tree("2 * (/a | /b) & /c"),
        union(vec![
            w(2.0, alt(vec![leaf(&["a"]), leaf(&["b"])])),
            w(1.0, leaf(&["c"]))
        ])
    );
    assert_eq!(
        tree("2 * ! & 3 * ~ & 4 * $"),
        union(vec![
            w(2.0, NameTree::Fail),
            w(3.0, NameTree::Neg),
            w(4.0, NameTree::Empty)
        ])
    );
}

#[test]
fn a_weight_on_a_lone_term_is_dropped() {
    assert_eq!(tree("2 * /a"), leaf(&["a"]));
    assert_eq!(tree("(2 * /a)"), leaf(&["a"]));
    assert_eq!(tree("0.5 * !"), NameTree::Fail);
    assert_eq!(
        tree("3 * /a | 4 * /b"),
        alt(vec![leaf(&["a"]), leaf(&["b"])])
    );
    // the union inside keeps its own weights; the outer weight is gone
    assert_eq!(
        tree("2 * (3 * /a & /b)"),
        union(vec![w(3.0, leaf(&["a"])), w(1.0, leaf(&["b"]))])
    );
}

#[test]
fn weight_errors() {
    assert_eq!(
        tree_err("/foo & 0.1.2 * /bar"),
        "error at offset 10: expected a digit but found '.'"
    );
    assert_eq!(
        tree_err("/foo & . * /bar"),
        "error at offset 7: expected a weight but found '.'"
    );
    assert_eq!(
        tree_err(". * /a"),
        "error at offset 0: expected a weight but found '.'"
    );
    // the '*' after a weight is required
    assert_eq!(
        tree_err("2 /a & /b"),
        "error at offset 2: expected '*' but found '/'"
    );
    assert_eq!(
        tree_err("2/a"),
        "error at offset 1: expected '*' but found '/'"
    );
    assert_eq!(
        tree_err("/a & 2"),
        "error at offset 6: expected '*' but found end of input"
    );
    assert_eq!(
        tree_err("2 * 3 * /a"),
        "error at offset 4: expected a name tree ('/', '(', '!', '~' or '$') but found '3'"
    );
    assert_eq!(
        tree_err("2 *"),
        "error at offset 3: expected a name tree ('/', '(', '!', '~' or '$') but found end of input"
    );
    assert_eq!(
        tree_err("-1 * /a & /b").split(':').next().unwrap(),
        "error at offset 0"
    );
}

#[test]
fn tree_errors() {
    const TREE: &str = "a name tree ('/', '(', '!', '~' or '$')";
    assert_eq!(
        tree_err(""),
        format!("error at offset 0: expected {TREE} but found end of input")
    );
    assert_eq!(
        tree_err("#"),
        format!("error at offset 1: expected {TREE} but found end of input")
    );
    assert_eq!(
        tree_err("/foo &"),
        format!("error at offset 6: expected {TREE} but found end of input")
    );
    assert_eq!(
        tree_err("/a | | /b"),
        format!("error at offset 5: expected {TREE} but found '|'")
    );
    assert_eq!(
        tree_err("foo"),
        format!("error at offset 0: expected {TREE} but found 'f'")
    );
    assert_eq!(
        tree_err("("),
        format!("error at offset 1: expected {TREE} but found end of input")
    );
    assert_eq!(
        tree_err("()"),
        format!("error at offset 1: expected {TREE} but found ')'")
    );
    assert_eq!(
        tree_err("(/a"),
        "error at offset 3: expected ')' but found end of input"
    );
    assert_eq!(
        tree_err("(/a /b)"),
        "error at offset 4: expected ')' but found '/'"
    );
    assert_eq!(
        tree_err("/a)"),
        "error at offset 2: expected end of input but found ')'"
    );
    assert_eq!(
        tree_err("~~"),
        "error at offset 1: expected end of input but found '~'"
    );
    assert_eq!(
        tree_err("!/a"),
        "error at offset 1: expected end of input but found '/'"
    );
    assert_eq!(
        tree_err("/a;"),
        "error at offset 2: expected end of input but found ';'"
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let deep = "(".repeat(100_000);
    let e = NameTree::read(&deep).unwrap_err();
    assert_eq!(e.offset, MAX_NESTING);
    assert_eq!(e.kind, ParseErrorKind::TooDeep);
    assert_eq!(
        e.to_string(),
        format!(
            "error at offset {MAX_NESTING}: parentheses nested deeper than {MAX_NESTING} levels"
        )
    );

    let e = Dtab::read(&format!("/a=>{deep}")).unwrap_err();
    assert_eq!(
        (e.offset, e.kind),
        (4 + MAX_NESTING, ParseErrorKind::TooDeep)
    );

    // also when each level is a weighted union branch
    let weighted = "1 * (".repeat(50_000);
    let e = NameTree::read(&weighted).unwrap_err();
    assert_eq!(e.kind, ParseErrorKind::TooDeep);
    assert_eq!(e.offset, 5 * MAX_NESTING + 4);

    // exactly at the limit it parses
    let ok = format!("{}/a{}", "(".repeat(MAX_NESTING), ")".repeat(MAX_NESTING));
    assert_eq!(tree(&ok), leaf(&["a"]));
    let too_deep = format!("({ok})");
    assert_eq!(
        NameTree::read(&too_deep).unwrap_err(),
        ParseError {
            offset: MAX_NESTING,
            kind: ParseErrorKind::TooDeep
        }
    );
    // depth is nesting, not the number of groups
    let siblings = vec!["(/a)"; 10_000].join(" | ");
    assert_eq!(tree(&siblings), NameTree::Alt(vec![leaf(&["a"]); 10_000]));
}

#[test]
fn long_flat_trees_parse() {
    let alts = (0..20_000)
        .map(|i| format!("/s{i}"))
        .collect::<Vec<_>>()
        .join("|");
    match tree(&alts) {
        NameTree::Alt(trees) => assert_eq!(trees.len(), 20_000),
        other => panic!("expected an Alt, got {other:?}"),
    }
    let long_path = "/a".repeat(50_000);
    assert_eq!(Path::read(&long_path).unwrap().len(), 50_000);
}

// --------------------------------------------------------------- dentries

#[test]
fn dentries() {
    assert_eq!(
        Dentry::read("/=>!").unwrap(),
        Dentry::new(Prefix::empty(), NameTree::Fail)
    );
    assert_eq!(
        Dentry::read("/ => !").unwrap(),
        Dentry::new(Prefix::empty(), NameTree::Fail)
    );
    assert_eq!(
        Dentry::read("/foo/*/bar => !").unwrap(),
        Dentry::new(pfx(&[Some("foo"), None, Some("bar")]), NameTree::Fail)
    );
    assert_eq!(
        Dentry::read("/foo/bar/baz => !").unwrap(),
        Dentry::new(label_prefix(&["foo", "bar", "baz"]), NameTree::Fail)
    );
    assert_eq!(
        Dentry::read("\n/svc\n=>\n/#/io.l5d.consul/dc1\n").unwrap(),
        Dentry::new(label_prefix(&["svc"]), leaf(&["#", "io.l5d.consul", "dc1"]))
    );
    assert_eq!(
        Dentry::read("/a=>/b | /c").unwrap().dst,
        alt(vec![leaf(&["b"]), leaf(&["c"])])
    );
}

#[test]
fn arrow_is_two_adjacent_characters() {
    assert_eq!(
        dentry_err("/&!"),
        "error at offset 1: expected '=>' but found '&'"
    );
    assert_eq!(
        dentry_err("/a = > /b"),
        "error at offset 4: expected '=>' but found ' '"
    );
    assert_eq!(
        dentry_err("/a=/b"),
        "error at offset 3: expected '=>' but found '/'"
    );
    assert_eq!(
        dentry_err("/a>/b"),
        "error at offset 2: expected '=>' but found '>'"
    );
    assert_eq!(
        dentry_err("/a =>"),
        "error at offset 5: expected a name tree ('/', '(', '!', '~' or '$') but found end of input"
    );
    assert_eq!(
        dentry_err("/a"),
        "error at offset 2: expected '=>' but found end of input"
    );
    assert_eq!(
        dentry_err("=>/a"),
        "error at offset 0: expected '/' but found '='"
    );
    assert_eq!(
        dentry_err("/a=>/b;"),
        "error at offset 6: expected end of input but found ';'"
    );
}

// ------------------------------------------------------------------ dtabs

#[test]
fn empty_dtabs() {
    for s in ["", "   ", "\n\t\n", "# only a comment", "# one\n# two\n"] {
        assert_eq!(Dtab::read(s).unwrap(), Dtab::empty(), "{s:?}");
    }
}

#[test]
fn separators() {
    let one = Dtab::new(vec![Dentry::new(Prefix::empty(), NameTree::Fail)]);
    assert_eq!(Dtab::read("  /=>!  ").unwrap(), one);
    assert_eq!(Dtab::read("/=>!;").unwrap(), one);
    assert_eq!(Dtab::read("/=>! ; \n").unwrap(), one);
    assert_eq!(
        Dtab::read("/=>!;/foo=>/bar").unwrap(),
        Dtab::new(vec![
            Dentry::new(Prefix::empty(), NameTree::Fail),
            Dentry::new(label_prefix(&["foo"]), leaf(&["bar"])),
        ])
    );
    let trailing = Dtab::read(
        "
          /b => /c;
          /a => /b;
          ",
    )
    .unwrap();
    assert_eq!(trailing.len(), 2);
    assert_eq!(trailing.dentries()[1], Dentry::read("/a=>/b").unwrap());
}

#[test]
fn separator_errors() {
    assert_eq!(
        dtab_err(";"),
        "error at offset 0: expected '/' but found ';'"
    );
    assert_eq!(
        dtab_err(";/a=>/b"),
        "error at offset 0: expected '/' but found ';'"
    );
    assert_eq!(
        dtab_err("  ;/a=>/b"),
        "error at offset 2: expected '/' but found ';'"
    );
    assert_eq!(
        dtab_err("/a=>/b;;/c=>/d"),
        "error at offset 7: expected '/' but found ';'"
    );
    assert_eq!(
        dtab_err("/a=>/b;;"),
        "error at offset 7: expected '/' but found ';'"
    );
    assert_eq!(
        dtab_err("/a=>/b; ;"),
        "error at offset 8: expected '/' but found ';'"
    );
    assert_eq!(
        dtab_err("/a=>/b /c=>/d"),
        "error at offset 7: expected ';' or end of input but found '/'"
    );
    assert_eq!(
        dtab_err("/a=>/b)"),
        "error at offset 6: expected ';' or end of input but found ')'"
    );
}

#[test]
fn multi_line_dtab() {
    let d = Dtab::read(
        "/srv         => /#/io.l5d.consul/dc1;\n\
         /host        => /srv;\r\n\
         \t/svc        => /host ;\n\
         /svc/world   => 9 * /srv/world\n\
         \x20              & 1 * /srv/world-v2\n",
    )
    .unwrap();
    assert_eq!(
        d.to_string(),
        "/srv=>/#/io.l5d.consul/dc1;/host=>/srv;/svc=>/host;/svc/world=>9.00*/srv/world & /srv/world-v2"
    );
}

// --------------------------------------------------------------- comments

#[test]
fn comments_where_whitespace_may_stand() {
    let with_comments = Dtab::read(
        "
# a comment
      /#foo => /biz  # another comment
             | ( /bliz & # yet another comment
                 /bluth ) # duh bluths
             ; #finalmente
      #/ignore=>/me;
    ",
    )
    .unwrap();
    assert_eq!(
        with_comments,
        Dtab::new(vec![Dentry::new(
            label_prefix(&["#foo"]),
            alt(vec![
                leaf(&["biz"]),
                union(vec![w(1.0, leaf(&["bliz"])), w(1.0, leaf(&["bluth"]))]),
            ]),
        )])
    );
}

#[test]
fn hash_inside_a_label_is_a_character() {
    assert_eq!(Path::read("/#foo").unwrap(), path(&["#foo"]));
    assert_eq!(Path::read("/biz#x").unwrap(), path(&["biz#x"]));
    assert_eq!(Path::read("/#").unwrap(), path(&["#"]));
    assert_eq!(Path::read("/a/#/b#").unwrap(), path(&["a", "#", "b#"]));
    assert_eq!(Path::read("/biz # note").unwrap(), path(&["biz"]));
    assert_eq!(Path::read("/biz #").unwrap(), path(&["biz"]));
    assert_eq!(Path::read("# lead\n/biz").unwrap(), path(&["biz"]));
    assert_eq!(Prefix::read("/a#/*").unwrap(), pfx(&[Some("a#"), None]));
    assert_eq!(
        Dentry::read("/a#=>/b#c").unwrap(),
        Dentry::new(label_prefix(&["a#"]), leaf(&["b#c"]))
    );
    assert_eq!(tree("/a #c\n| /d"), alt(vec![leaf(&["a"]), leaf(&["d"])]));
    // a '#' at the start of a token is a comment, even right after an operator
    assert_eq!(tree("/a |#x\n/b"), alt(vec![leaf(&["a"]), leaf(&["b"])]));
    assert_eq!(tree("(#x\n/a)"), leaf(&["a"]));
    assert_eq!(
        Dentry::read("/a=>#c\n/b").unwrap(),
        Dentry::new(label_prefix(&["a"]), leaf(&["b"]))
    );
    // a comment runs to the end of the line, so what it hides is gone
    assert_eq!(
        tree_err("/a | # /b"),
        "error at offset 9: expected a name tree ('/', '(', '!', '~' or '$') but found end of input"
    );
    assert_eq!(Dtab::read("/a=>/b # ;/c=>/d").unwrap().len(), 1);
    assert_eq!(Dtab::read("/a=>/b # x\r\n;/c=>/d").unwrap().len(), 2);
}

// ------------------------------------------------------------- whitespace

#[test]
fn java_whitespace_outside_ascii() {
    let spaces = [
        '\u{1c}', '\u{1d}', '\u{1e}', '\u{1f}', '\u{1680}', '\u{2000}', '\u{2001}', '\u{2002}',
        '\u{2003}', '\u{2004}', '\u{2005}', '\u{2006}', '\u{2008}', '\u{2009}', '\u{200a}',
        '\u{2028}', '\u{2029}', '\u{205f}', '\u{3000}',
    ];
    for c in spaces {
        let s = format!("{c}/a{c}={c}>");
        // the '=' and '>' must be adjacent: only the surrounding whitespace is fine
        assert!(Dentry::read(&s).is_err(), "{c:?}");
        let s = format!("{c}/a{c}=>{c}/b{c}|{c}/c{c};{c}");
        assert_eq!(
            Dtab::read(&s).unwrap().to_string(),
            "/a=>/b | /c",
            "U+{:04X}",
            u32::from(c)
        );
    }
    // U+2003 EM SPACE specifically
    assert_eq!(
        Path::read("\u{2003}/svc/world\u{2003}").unwrap(),
        path(&["svc", "world"])
    );
}

#[test]
fn non_breaking_and_other_spaces_are_not_whitespace() {
    for c in [
        '\u{a0}', '\u{2007}', '\u{202f}', '\u{85}', '\u{200b}', '\u{feff}',
    ] {
        let e = Path::read(&format!("{c}/a")).unwrap_err();
        assert_eq!(
            (e.offset, e.kind),
            (
                0,
                ParseErrorKind::Unexpected {
                    expected: "'/'",
                    found: Found::Char(c)
                }
            ),
            "U+{:04X}",
            u32::from(c)
        );
        let e = Path::read(&format!("/a{c}")).unwrap_err();
        assert_eq!(e.offset, 2);
    }
    assert_eq!(
        path_err("\u{a0}/a"),
        r"error at offset 0: expected '/' but found '\u{a0}'"
    );
    assert_eq!(
        dtab_err("/a=>/b\u{a0};"),
        r"error at offset 6: expected ';' or end of input but found '\u{a0}'"
    );
}

// -------------------------------------------------------- offset is bytes

#[test]
fn error_offsets_are_byte_offsets() {
    // U+2003 is three bytes of UTF-8 but one character
    let e = Path::read("\u{2003}/a/é").unwrap_err();
    assert_eq!(e.offset, 6);
    assert_eq!(
        e.to_string(),
        "error at offset 6: expected a label character but found 'é'"
    );

    let s = "\u{3000}\u{3000}/a|é";
    let e = NameTree::read(s).unwrap_err();
    assert_eq!(e.offset, 9);
    assert_eq!(s.char_indices().nth(5).map(|(i, _)| i), Some(9));
    assert_eq!(
        e.kind,
        ParseErrorKind::Unexpected {
            expected: "a name tree ('/', '(', '!', '~' or '$')",
            found: Found::Char('é')
        }
    );
    // the offset always points at the start of the offending character
    assert_eq!(&s[e.offset..], "é");

    // a multi-byte character in a comment
    let s = "# ünïcödé\n/a=>/b;;";
    let e = Dtab::read(s).unwrap_err();
    assert_eq!(e.offset, s.len() - 1);
    assert_eq!(e.offset, 21);

    // a four-byte character as the culprit
    let e = Path::read("\u{2003}/😀").unwrap_err();
    assert_eq!(e.offset, 4);
    assert_eq!(
        e.to_string(),
        "error at offset 4: expected end of input but found '😀'"
    );

    // several offsets in one place
    for (input, offset) in [
        ("/a=>", 4),
        ("  /a  =>  ", 10),
        ("/a=>/b;/c", 9),
        ("/a=>/b;/c=", 10),
        ("/a=>/b;/c=>", 11),
        ("/a => /b & ", 11),
        ("/a => 2 * /b & 3 /c", 17),
        ("/é=>/b", 1),
    ] {
        assert_eq!(Dtab::read(input).unwrap_err().offset, offset, "{input:?}");
    }
}

#[test]
fn non_ascii_digits_are_not_weights() {
    // Finagle's `isDigit` would take U+0663 for a digit; this parser keeps
    // weights ASCII (a deliberate departure).
    let e = NameTree::read("\u{663} * /a & /b").unwrap_err();
    assert_eq!(e.offset, 0);
    let e = NameTree::read("1\u{663} * /a & /b").unwrap_err();
    assert_eq!(
        e.kind,
        ParseErrorKind::Unexpected {
            expected: "'*'",
            found: Found::Char('\u{663}')
        }
    );
    assert_eq!(e.offset, 1);
}

#[test]
fn weights_too_large_for_a_double_are_refused() {
    // Java's parseDouble would give Infinity; this parser refuses it (a
    // deliberate departure).
    let huge = format!("1{} * /a & /b", "0".repeat(400));
    assert_eq!(
        NameTree::read(&huge).unwrap_err(),
        ParseError {
            offset: 0,
            kind: ParseErrorKind::WeightOutOfRange
        }
    );
    assert_eq!(
        NameTree::read(&huge).unwrap_err().to_string(),
        "error at offset 0: weight is out of range"
    );
    // a long but finite one is fine
    let big = format!("1{} * /a & /b", "0".repeat(300));
    match tree(&big) {
        NameTree::Union(b) => assert_eq!(b[0].weight, 1e300),
        other => panic!("{other:?}"),
    }
}

#[test]
fn from_str_is_read() {
    assert_eq!("/a/b".parse::<Path>().unwrap(), path(&["a", "b"]));
    assert_eq!("/a | /b".parse::<NameTree<Path>>().unwrap(), tree("/a|/b"));
    assert_eq!(
        "/a=>/b".parse::<Dentry>().unwrap(),
        Dentry::read("/a => /b").unwrap()
    );
    assert_eq!("/a=>/b;/c=>/d".parse::<Dtab>().unwrap().len(), 2);
    assert!("/a/".parse::<Path>().is_err());
}
