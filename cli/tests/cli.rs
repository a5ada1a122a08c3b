//! End-to-end tests of `ecsmeshctl dtab …`: exact stdout (trailing newline
//! included), exit codes and error messages, as a user sees them.

#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::io::Read as _;
use std::process::Stdio;

use assert_cmd::Command;
use assert_cmd::assert::Assert;
use predicates::prelude::*;
use serde_json::{Value, json};

/// The seed case's dtab: a consul default with a canary override.
const CANARY: &str = "/svc=>/#/io.l5d.consul/dc1;/svc/world=>/svc/world-v2";

fn ctl(args: &[&str]) -> Assert {
    Command::cargo_bin("ecsmeshctl")
        .unwrap()
        .args(args)
        .assert()
}

/// Succeeds, printing exactly `stdout` and nothing on stderr.
fn prints(args: &[&str], stdout: &str) {
    ctl(args).success().stdout(stdout.to_owned()).stderr("");
}

/// Succeeds, printing one line of JSON equal to `expected`.
fn prints_json(args: &[&str], expected: &Value) {
    let out = ctl(args).success().stderr("").get_output().stdout.clone();
    let text = String::from_utf8(out).unwrap();
    assert!(text.ends_with('\n'), "no trailing newline: {text:?}");
    assert_eq!(text.lines().count(), 1, "not one line: {text:?}");
    let value: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(&value, expected, "stdout was {text:?}");
}

/// Fails with exit code 1, nothing on stdout and exactly `stderr`.
fn fails(args: &[&str], stderr: &str) {
    ctl(args).code(1).stdout("").stderr(stderr.to_owned());
}

/// A dtab rewriting `/p0` to `/p1` … to `/p{n}`, then `/p{n}` to `/#/end`:
/// delegating `/p0/x` takes `n + 1` rewrites.
fn chain(n: usize) -> String {
    ladder(n, "/p{next}")
}

/// Like [`chain`], each `/p{i}` rewritten to `step` with `{next}` standing
/// for `/p{i+1}`'s number.
fn ladder(n: usize, step: &str) -> String {
    let mut dtab = String::new();
    for i in 0..n {
        let dst = step.replace("{next}", &(i + 1).to_string());
        write!(dtab, "/p{i}=>{dst};").unwrap();
    }
    write!(dtab, "/p{n}=>/#/end").unwrap();
    dtab
}

// ---------------------------------------------------------------- parse

#[test]
fn parse_prints_the_canonical_form() {
    prints(
        &[
            "dtab",
            "parse",
            "/svc => /#/io.l5d.consul/dc1 ; /svc/world=>/svc/world-v2 ;",
        ],
        "/svc=>/#/io.l5d.consul/dc1;/svc/world=>/svc/world-v2\n",
    );
    prints(&["dtab", "parse", "/a=>/b|/c&/d"], "/a=>/b | /c & /d\n");
    prints(&["dtab", "parse", "/*/x => (/a)"], "/*/x=>/a\n");
    prints(&["dtab", "parse", "/ => ~ | ! | $"], "/=>~ | ! | $\n");
}

#[test]
fn parse_of_an_empty_dtab_prints_an_empty_line() {
    prints(&["dtab", "parse", ""], "\n");
    prints(&["dtab", "parse", "  # nothing but a comment"], "\n");
    prints_json(&["dtab", "parse", "", "-o", "json"], &json!([]));
}

#[test]
fn parse_accepts_comments_in_a_multi_line_dtab() {
    let dtab = "# routing for the world service\n\
                /svc => /#/io.l5d.consul/dc1;   # everything from consul\n\
                \n\
                # canary: world goes to world-v2 first\n\
                /svc/world => /svc/world-v2 | /svc/world-v1 ; # trailing ';' is fine\n";
    prints(
        &["dtab", "parse", dtab],
        "/svc=>/#/io.l5d.consul/dc1;/svc/world=>/svc/world-v2 | /svc/world-v1\n",
    );
    prints_json(
        &["dtab", "parse", dtab, "--output", "json"],
        &json!([
            { "prefix": "/svc", "dst": "/#/io.l5d.consul/dc1" },
            { "prefix": "/svc/world", "dst": "/svc/world-v2 | /svc/world-v1" },
        ]),
    );
}

#[test]
fn parse_json_is_namerds_dtab_format() {
    prints_json(
        &[
            "dtab",
            "parse",
            "-o",
            "json",
            "/svc=>0.125*/#/a & /#/b;/x/*=>!",
        ],
        &json!([
            { "prefix": "/svc", "dst": "0.13*/#/a & /#/b" },
            { "prefix": "/x/*", "dst": "!" },
        ]),
    );
    // The exact bytes, not only the value.
    prints(
        &["dtab", "parse", "/a=>/b", "-o", "json"],
        "[{\"dst\":\"/b\",\"prefix\":\"/a\"}]\n",
    );
    prints(&["dtab", "parse", "/a=>/b", "--output=text"], "/a=>/b\n");
}

#[test]
fn parse_shows_weights_with_two_decimals_rounded_half_up() {
    prints(
        &["dtab", "parse", "/s => 0.125 * /a & /b"],
        "/s=>0.13*/a & /b\n",
    );
    prints(
        &["dtab", "parse", "/s => 2.675*/a & 1*/b & 1.0*/c"],
        "/s=>2.68*/a & /b & /c\n",
    );
    // A lone weighted term loses its weight.
    prints(&["dtab", "parse", "/s => 3*/a"], "/s=>/a\n");
}

#[test]
fn parse_errors_name_the_offset_and_point_at_it() {
    fails(
        &["dtab", "parse", "/svc/a *=> /b"],
        "ecsmeshctl: invalid dtab: error at offset 7: expected '=>' but found '*'\n  \
         /svc/a *=> /b\n  \
         \x20      ^\n",
    );
    fails(
        &["dtab", "parse", "/a=>"],
        "ecsmeshctl: invalid dtab: error at offset 4: expected a name tree \
         ('/', '(', '!', '~' or '$') but found end of input\n  /a=>\n      ^\n",
    );
    fails(
        &["dtab", "parse", "/a=>/b;;"],
        "ecsmeshctl: invalid dtab: error at offset 7: expected '/' but found ';'\n  \
         /a=>/b;;\n         ^\n",
    );
    fails(
        &["dtab", "parse", "/a=>/b /c"],
        "ecsmeshctl: invalid dtab: error at offset 7: expected ';' or end of input but found '/'\n  \
         /a=>/b /c\n         ^\n",
    );
    fails(
        &["dtab", "parse", "/s=>/\\xzz"],
        "ecsmeshctl: invalid dtab: error at offset 7: expected a hex digit but found 'z'\n  \
         /s=>/\\xzz\n         ^\n",
    );
}

#[test]
fn parse_errors_in_a_multi_line_dtab_show_the_offending_line() {
    // Offset 12 is on the second line, column 4.
    fails(
        &["dtab", "parse", "/a=>/b;\n/c=>*\n/d=>/e"],
        "ecsmeshctl: invalid dtab: error at offset 12: expected a name tree \
         ('/', '(', '!', '~' or '$') but found '*'\n  /c=>*\n      ^\n",
    );
    // A comment line before it counts in the offset but is not shown.
    fails(
        &["dtab", "parse", "# c\n/a=>/b;\r\n/c=>/d !"],
        "ecsmeshctl: invalid dtab: error at offset 20: expected ';' or end of input but found '!'\n  \
         /c=>/d !\n         ^\n",
    );
    // A CRLF line ending is not part of the line shown.
    fails(
        &["dtab", "parse", "/a=>*\r\n/b=>/c"],
        "ecsmeshctl: invalid dtab: error at offset 4: expected a name tree \
         ('/', '(', '!', '~' or '$') but found '*'\n  /a=>*\n      ^\n",
    );
}

#[test]
fn parse_error_carets_line_up_under_tabs() {
    fails(
        &["dtab", "parse", "/a\t=>\t*"],
        "ecsmeshctl: invalid dtab: error at offset 6: expected a name tree \
         ('/', '(', '!', '~' or '$') but found '*'\n  /a\t=>\t*\n    \t  \t^\n",
    );
}

#[test]
fn parse_errors_are_text_even_with_json_output() {
    ctl(&["dtab", "parse", "-o", "json", "/svc *=> /a"])
        .code(1)
        .stdout("")
        .stderr(predicate::str::contains(
            "error at offset 5: expected '=>' but found '*'",
        ));
}

#[test]
fn parse_refuses_weights_that_do_not_fit() {
    let huge = format!("/s=>1{}*/a & /b", "0".repeat(400));
    ctl(&["dtab", "parse", &huge])
        .code(1)
        .stdout("")
        .stderr(predicate::str::starts_with(
            "ecsmeshctl: invalid dtab: error at offset 4: weight is out of range\n",
        ));
}

// ---------------------------------------------------------------- path

#[test]
fn path_prints_the_canonical_form() {
    prints(&["dtab", "path", "/svc/world"], "/svc/world\n");
    prints(&["dtab", "path", "  /svc/world  "], "/svc/world\n");
    prints(&["dtab", "path", "/"], "/\n");
    prints(
        &["dtab", "path", "/#/io.l5d.consul/dc1/World:8080"],
        "/#/io.l5d.consul/dc1/World:8080\n",
    );
    prints_json(
        &["dtab", "path", "-o", "json", "/svc/world"],
        &json!("/svc/world"),
    );
}

#[test]
fn path_escapes_are_decoded_and_shown_all_or_nothing() {
    prints(&["dtab", "path", "/\\x66oo"], "/foo\n");
    prints(&["dtab", "path", "/\\x4A\\x4a"], "/JJ\n");
    // An element with one unshowable byte is shown entirely hex-escaped.
    prints(
        &["dtab", "path", "/a/my\\x20host"],
        "/a/\\x6d\\x79\\x20\\x68\\x6f\\x73\\x74\n",
    );
    prints(&["dtab", "path", "/a\\x2fb/c"], "/\\x61\\x2f\\x62/c\n");
    prints(&["dtab", "path", "/\\xff"], "/\\xff\n");
    prints_json(
        &["dtab", "path", "/a/\\x20b", "-o", "json"],
        &json!("/a/\\x20\\x62"),
    );
}

#[test]
fn path_errors() {
    fails(
        &["dtab", "path", "svc"],
        "ecsmeshctl: invalid path: error at offset 0: expected '/' but found 's'\n  svc\n  ^\n",
    );
    fails(
        &["dtab", "path", "/a//b"],
        "ecsmeshctl: invalid path: error at offset 3: expected a label character but found '/'\n  \
         /a//b\n     ^\n",
    );
    fails(
        &["dtab", "path", "/a/"],
        "ecsmeshctl: invalid path: error at offset 3: expected a label character \
         but found end of input\n  /a/\n     ^\n",
    );
    fails(
        &["dtab", "path", "/a b"],
        "ecsmeshctl: invalid path: error at offset 3: expected end of input but found 'b'\n  \
         /a b\n     ^\n",
    );
    fails(
        &["dtab", "path", "/\\x6"],
        "ecsmeshctl: invalid path: error at offset 4: expected a hex digit \
         but found end of input\n  /\\x6\n      ^\n",
    );
    // The caret counts characters, not bytes.
    fails(
        &["dtab", "path", "/é"],
        "ecsmeshctl: invalid path: error at offset 1: expected end of input but found 'é'\n  \
         /é\n   ^\n",
    );
}

// ---------------------------------------------------------------- tree

#[test]
fn tree_prints_the_canonical_form() {
    prints(&["dtab", "tree", "/a|/b&/c"], "/a | /b & /c\n");
    prints(&["dtab", "tree", "((/a))"], "/a\n");
    prints(&["dtab", "tree", "((/a | /b))"], "/a | /b\n");
    prints(&["dtab", "tree", "/a & (/b | /c)"], "/a & (/b | /c)\n");
    prints(
        &["dtab", "tree", "(/a | /b) & 2*(/c & /d)"],
        "(/a | /b) & 2.00*(/c & /d)\n",
    );
    prints(&["dtab", "tree", "/a | (/b | /c)"], "/a | (/b | /c)\n");
    prints(&["dtab", "tree", "~ | ! | $ | /"], "~ | ! | $ | /\n");
}

#[test]
fn tree_shows_weights() {
    prints(&["dtab", "tree", "0.125 * /a & /b"], "0.13*/a & /b\n");
    prints(
        &["dtab", "tree", "1 * /a & 1.0*/b & .5*/c"],
        "/a & /b & 0.50*/c\n",
    );
    prints(&["dtab", "tree", "7*/a"], "/a\n");
}

#[test]
fn tree_json() {
    prints_json(
        &["dtab", "tree", "0.125 * /a & /b", "-o", "json"],
        &json!({
            "type": "union",
            "trees": [
                { "weight": 0.125, "tree": { "type": "leaf", "path": "/a" } },
                { "weight": 1.0, "tree": { "type": "leaf", "path": "/b" } },
            ],
        }),
    );
    prints_json(
        &["dtab", "tree", "-o", "json", "~ | (! | $)"],
        &json!({
            "type": "alt",
            "trees": [
                { "type": "neg" },
                { "type": "alt", "trees": [{ "type": "fail" }, { "type": "empty" }] },
            ],
        }),
    );
}

#[test]
fn tree_simplify() {
    prints(
        &["dtab", "tree", "--simplify", "~ | $ | /blah"],
        "$ | /blah\n",
    );
    prints(&["dtab", "tree", "--simplify", "! | /ok"], "!\n");
    prints(&["dtab", "tree", "--simplify", "/a | ! | /b"], "/a | !\n");
    prints(&["dtab", "tree", "--simplify", "/ok & !"], "/ok\n");
    prints(
        &["dtab", "tree", "--simplify", "/a & ~ & 2*/b"],
        "/a & 2.00*/b\n",
    );
    prints(&["dtab", "tree", "--simplify", "3*/a & ~"], "/a\n");
    prints(&["dtab", "tree", "--simplify", "~ | ~"], "~\n");
    prints(&["dtab", "tree", "--simplify", "~ & !"], "~\n");
    // Nested alternatives are not flattened (Finagle's `simplified` does not).
    prints(
        &["dtab", "tree", "--simplify", "/a | (/b | /c)"],
        "/a | (/b | /c)\n",
    );
    prints(
        &["dtab", "tree", "--simplify", "(~ | /a) & (! | /b)"],
        "/a\n",
    );
    prints_json(
        &["dtab", "tree", "--simplify", "-o", "json", "/ok & !"],
        &json!({ "type": "leaf", "path": "/ok" }),
    );
}

#[test]
fn tree_eval() {
    prints(&["dtab", "tree", "--eval", "~ | $ | /blah"], "[]\n");
    prints(&["dtab", "tree", "--eval", "! | /ok"], "null\n");
    prints(&["dtab", "tree", "--eval", "/ok & !"], "[\"/ok\"]\n");
    prints(&["dtab", "tree", "--eval", "~"], "null\n");
    prints(&["dtab", "tree", "--eval", "!"], "null\n");
    prints(&["dtab", "tree", "--eval", "$"], "[]\n");
    prints(&["dtab", "tree", "--eval", "~ & !"], "null\n");
    prints(&["dtab", "tree", "--eval", "~ | /x | /y"], "[\"/x\"]\n");
    // Sorted and deduplicated, weights ignored.
    prints(
        &["dtab", "tree", "--eval", "/b & 2*/a & /b"],
        "[\"/a\",\"/b\"]\n",
    );
    prints(&["dtab", "tree", "--eval", "/\\x20"], "[\"/\\\\x20\"]\n");
    // Always JSON, whatever --output says.
    prints(
        &["dtab", "tree", "--eval", "-o", "json", "/ok & !"],
        "[\"/ok\"]\n",
    );
    prints(
        &["dtab", "tree", "--eval", "-o", "text", "/ok & !"],
        "[\"/ok\"]\n",
    );
}

#[test]
fn tree_simplify_and_eval_conflict() {
    ctl(&["dtab", "tree", "--simplify", "--eval", "/a"])
        .code(2)
        .stdout("")
        .stderr(predicate::str::contains("cannot be used with"));
}

#[test]
fn tree_errors() {
    fails(
        &["dtab", "tree", "/a & "],
        "ecsmeshctl: invalid name tree: error at offset 5: expected a name tree \
         ('/', '(', '!', '~' or '$') but found end of input\n  /a & \n       ^\n",
    );
    fails(
        &["dtab", "tree", "(/a | /b"],
        "ecsmeshctl: invalid name tree: error at offset 8: expected ')' but found end of input\n  \
         (/a | /b\n          ^\n",
    );
    fails(
        &["dtab", "tree", "2 /a"],
        "ecsmeshctl: invalid name tree: error at offset 2: expected '*' but found '/'\n  \
         2 /a\n    ^\n",
    );
    fails(
        &["dtab", "tree", "1.2.3*/a"],
        "ecsmeshctl: invalid name tree: error at offset 3: expected a digit but found '.'\n  \
         1.2.3*/a\n     ^\n",
    );
    let deep = format!("{}/a{}", "(".repeat(101), ")".repeat(101));
    ctl(&["dtab", "tree", &deep])
        .code(1)
        .stdout("")
        .stderr(predicate::str::starts_with(
            "ecsmeshctl: invalid name tree: error at offset 100: \
             parentheses nested deeper than 100 levels\n",
        ));
    let ok = format!("{}/a{}", "(".repeat(100), ")".repeat(100));
    prints(&["dtab", "tree", &ok], "/a\n");
}

// ---------------------------------------------------------------- lookup

#[test]
fn lookup_one_step_with_the_residual_appended() {
    prints(
        &["dtab", "lookup", "--dtab", CANARY, "/svc/world"],
        "/svc/world-v2 | /#/io.l5d.consul/dc1/world\n",
    );
    prints(
        &["dtab", "lookup", "--dtab", "/a=>/b;/b=>/c", "/a/x/y"],
        "/b/x/y\n",
    );
    prints(
        &["dtab", "lookup", "--dtab", "/*/b=>/q", "/a/b/c"],
        "/q/c\n",
    );
    prints(&["dtab", "lookup", "--dtab", "/=>/root", "/"], "/root\n");
}

#[test]
fn lookup_of_a_path_several_dentries_match_is_an_alt_last_first_unsimplified() {
    prints(
        &[
            "dtab",
            "lookup",
            "--dtab",
            "/a=>/x;/a/b=>/y|/z;/a=>/w",
            "/a/b/c",
        ],
        "/w/b/c | (/y/c | /z/c) | /x/b/c\n",
    );
    // Nothing is simplified away: ~, ! and lone unions stay.
    prints(
        &["dtab", "lookup", "--dtab", "/a=>/b & ~;/a=>~;/a=>!", "/a/c"],
        "! | ~ | /b/c & ~\n",
    );
    prints(
        &["dtab", "lookup", "--dtab", "/a=>2*/b & /c", "/a/x"],
        "2.00*/b/x & /c/x\n",
    );
    prints_json(
        &[
            "dtab",
            "lookup",
            "-o",
            "json",
            "--dtab",
            "/a=>/x;/a/b=>/y|/z;/a=>/w",
            "/a/b/c",
        ],
        &json!({
            "type": "alt",
            "trees": [
                { "type": "leaf", "path": "/w/b/c" },
                { "type": "alt", "trees": [
                    { "type": "leaf", "path": "/y/c" },
                    { "type": "leaf", "path": "/z/c" },
                ] },
                { "type": "leaf", "path": "/x/b/c" },
            ],
        }),
    );
}

#[test]
fn lookup_without_a_match_is_neg() {
    prints(&["dtab", "lookup", "--dtab", "/a=>/x", "/q"], "~\n");
    prints(&["dtab", "lookup", "--dtab", "", "/#/io.l5d.fs/x"], "~\n");
    prints(&["dtab", "lookup", "--dtab", "/a/b=>/x", "/a"], "~\n");
    prints_json(
        &["dtab", "lookup", "--dtab", "/a=>/x", "/q", "-o", "json"],
        &json!({ "type": "neg" }),
    );
}

#[test]
fn lookup_errors() {
    fails(
        &["dtab", "lookup", "--dtab", "/a=>/b", "/a b"],
        "ecsmeshctl: invalid path: error at offset 3: expected end of input but found 'b'\n  \
         /a b\n     ^\n",
    );
    fails(
        &["dtab", "lookup", "--dtab", "/a=/b", "/a"],
        "ecsmeshctl: invalid dtab: error at offset 3: expected '=>' but found '/'\n  /a=/b\n     ^\n",
    );
    ctl(&["dtab", "lookup", "/a"])
        .code(2)
        .stdout("")
        .stderr(predicate::str::contains("--dtab <DTAB>"));
}

// ---------------------------------------------------------------- delegate

#[test]
fn delegate_seed_case() {
    prints(
        &["dtab", "delegate", "--dtab", CANARY, "/svc/world"],
        "/#/io.l5d.consul/dc1/world-v2 | /#/io.l5d.consul/dc1/world\n",
    );
    prints_json(
        &[
            "dtab",
            "delegate",
            "--dtab",
            CANARY,
            "/svc/world",
            "-o",
            "json",
        ],
        &json!({
            "type": "alt",
            "trees": [
                { "type": "leaf", "path": "/#/io.l5d.consul/dc1/world-v2" },
                { "type": "leaf", "path": "/#/io.l5d.consul/dc1/world" },
            ],
        }),
    );
    prints(
        &["dtab", "delegate", "--dtab", CANARY, "/svc/hello"],
        "/#/io.l5d.consul/dc1/hello\n",
    );
}

#[test]
fn delegate_keeps_unmatched_namer_names_and_negates_other_paths() {
    prints(
        &["dtab", "delegate", "--dtab", "", "/#/io.l5d.fs/foo"],
        "/#/io.l5d.fs/foo\n",
    );
    prints(
        &["dtab", "delegate", "--dtab", "", "/$/inet/127.1/8080"],
        "/$/inet/127.1/8080\n",
    );
    prints(&["dtab", "delegate", "--dtab", "", "/svc/foo"], "~\n");
    // Only an element that is exactly `#` or `$` names a namer.
    prints(&["dtab", "delegate", "--dtab", "", "/#x/foo"], "~\n");
    prints(
        &["dtab", "delegate", "--dtab", "/svc=>/#/a", "/svc"],
        "/#/a\n",
    );
    prints(
        &["dtab", "delegate", "--dtab", "/svc=>/#/a", "/other"],
        "~\n",
    );
    // A namer name a dentry matches is rewritten like any other path.
    prints(
        &["dtab", "delegate", "--dtab", "/#/old=>/#/new", "/#/old/x"],
        "/#/new/x\n",
    );
    prints(
        &["dtab", "delegate", "--dtab", "/#/old=>/nowhere", "/#/old/x"],
        "~\n",
    );
}

#[test]
fn delegate_simplifies_the_result() {
    prints(
        &[
            "dtab",
            "delegate",
            "--dtab",
            "/svc=>/x | /y | /#/ok",
            "/svc/q",
        ],
        "/#/ok/q\n",
    );
    prints(
        &[
            "dtab",
            "delegate",
            "--dtab",
            "/svc=>3*/#/a & /#/b & /nowhere",
            "/svc/q",
        ],
        "3.00*/#/a/q & /#/b/q\n",
    );
    prints(
        &["dtab", "delegate", "--dtab", "/svc=>/#/a;/svc=>!", "/svc/q"],
        "!\n",
    );
    prints(&["dtab", "delegate", "--dtab", "/svc=>$", "/svc/q"], "$\n");
    prints(
        &[
            "dtab",
            "delegate",
            "--dtab",
            "/svc=>/a;/a=>/b;/b=>/#/c",
            "/svc/q",
        ],
        "/#/c/q\n",
    );
    prints(
        &[
            "dtab",
            "delegate",
            "--dtab",
            "/svc=>/#/a | /b;/b=>/#/c",
            "/svc/q",
        ],
        "/#/a/q | /#/c/q\n",
    );
}

#[test]
fn delegate_explain_text_seed_case() {
    prints(
        &[
            "dtab",
            "delegate",
            "--explain",
            "--dtab",
            CANARY,
            "/svc/world",
        ],
        "/svc/world => alternatives, first non-~ wins:\n\
         \x20 /svc/world-v2  [/svc/world=>/svc/world-v2]\n\
         \x20   /#/io.l5d.consul/dc1/world-v2  [/svc=>/#/io.l5d.consul/dc1]  (namer name)\n\
         \x20 /#/io.l5d.consul/dc1/world  [/svc=>/#/io.l5d.consul/dc1]  (namer name)\n",
    );
}

#[test]
fn delegate_explain_text_expands_every_branch() {
    prints(
        &[
            "dtab",
            "delegate",
            "--explain",
            "--dtab",
            "/svc=>/x | ! | /#/ok",
            "/svc/q",
        ],
        "/svc/q\n\
         \x20 /svc/q  [/svc=>/x | ! | /#/ok] => alternatives, first non-~ wins:\n\
         \x20   /x/q  [/svc=>/x | ! | /#/ok] => ~\n\
         \x20   /svc/q  [/svc=>/x | ! | /#/ok] => !\n\
         \x20   /#/ok/q  [/svc=>/x | ! | /#/ok]  (namer name)\n",
    );
    prints(
        &[
            "dtab",
            "delegate",
            "--explain",
            "--dtab",
            "/svc=>3*/#/a & $",
            "/svc/q",
        ],
        "/svc/q\n\
         \x20 /svc/q  [/svc=>3.00*/#/a & $] => union of:\n\
         \x20   3.00* /#/a/q  [/svc=>3.00*/#/a & $]  (namer name)\n\
         \x20   1.00* /svc/q  [/svc=>3.00*/#/a & $] => $\n",
    );
    prints(
        &["dtab", "delegate", "--explain", "--dtab", "", "/svc/foo"],
        "/svc/foo => ~\n",
    );
    prints(
        &["dtab", "delegate", "--explain", "--dtab", "", "/#/a"],
        "/#/a  (namer name)\n",
    );
}

#[test]
fn delegate_explain_json_seed_case() {
    let consul = json!({ "prefix": "/svc", "dst": "/#/io.l5d.consul/dc1" });
    let canary = json!({ "prefix": "/svc/world", "dst": "/svc/world-v2" });
    prints_json(
        &[
            "dtab",
            "delegate",
            "--explain",
            "-o",
            "json",
            "--dtab",
            CANARY,
            "/svc/world",
        ],
        &json!({
            "type": "alt",
            "path": "/svc/world",
            "dentry": null,
            "alt": [
                {
                    "type": "delegate",
                    "path": "/svc/world-v2",
                    "dentry": canary,
                    "delegate": {
                        "type": "leaf",
                        "path": "/#/io.l5d.consul/dc1/world-v2",
                        "dentry": consul,
                    },
                },
                { "type": "leaf", "path": "/#/io.l5d.consul/dc1/world", "dentry": consul },
            ],
        }),
    );
}

#[test]
fn delegate_explain_json_unions_and_negs() {
    let dentry = json!({ "prefix": "/svc", "dst": "3.00*/#/a & /nowhere" });
    prints_json(
        &[
            "dtab",
            "delegate",
            "--explain",
            "--output",
            "json",
            "--dtab",
            "/svc=>3*/#/a & /nowhere",
            "/svc/q",
        ],
        &json!({
            "type": "delegate",
            "path": "/svc/q",
            "dentry": null,
            "delegate": {
                "type": "union",
                "path": "/svc/q",
                "dentry": dentry,
                "union": [
                    { "weight": 3.0, "tree": { "type": "leaf", "path": "/#/a/q", "dentry": dentry } },
                    { "weight": 1.0, "tree": { "type": "neg", "path": "/nowhere/q", "dentry": dentry } },
                ],
            },
        }),
    );
    prints_json(
        &[
            "dtab",
            "delegate",
            "--explain",
            "-o",
            "json",
            "--dtab",
            "",
            "/x",
        ],
        &json!({ "type": "neg", "path": "/x", "dentry": null }),
    );
}

#[test]
fn delegate_allows_100_rewrites() {
    // /p0 … /p99 are rewritten, /#/end is reached at depth 100.
    prints(
        &["dtab", "delegate", "--dtab", &chain(99), "/p0/x"],
        "/#/end/x\n",
    );
}

#[test]
fn delegate_fails_beyond_100_rewrites() {
    fails(
        &["dtab", "delegate", "--dtab", &chain(100), "/p0/x"],
        "ecsmeshctl: Max recursion level: 100 reached in delegation (at /#/end/x)\n",
    );
}

#[test]
fn delegate_loops_hit_the_recursion_limit() {
    ctl(&["dtab", "delegate", "--dtab", "/a=>/b;/b=>/a", "/a/x"])
        .failure()
        .stdout("")
        .stderr(predicate::str::contains("Max recursion level: 100"));
    fails(
        &["dtab", "delegate", "--dtab", "/a=>/b;/b=>/a", "/a/x"],
        "ecsmeshctl: Max recursion level: 100 reached in delegation (at /b/x)\n",
    );
    for extra in [
        &["--explain"][..],
        &["-o", "json"],
        &["--explain", "-o", "json"],
    ] {
        let mut args = vec!["dtab", "delegate", "--dtab", "/a=>/a | /#/x", "/a"];
        args.extend_from_slice(extra);
        ctl(&args)
            .code(1)
            .stdout("")
            .stderr(predicate::str::contains("Max recursion level: 100"));
    }
}

#[test]
fn delegate_errors() {
    fails(
        &["dtab", "delegate", "--dtab", "/svc *=> /a", "/svc"],
        "ecsmeshctl: invalid dtab: error at offset 5: expected '=>' but found '*'\n  \
         /svc *=> /a\n       ^\n",
    );
    fails(
        &["dtab", "delegate", "--explain", "--dtab", "/svc=>/a", "svc"],
        "ecsmeshctl: invalid path: error at offset 0: expected '/' but found 's'\n  svc\n  ^\n",
    );
}

// ---------------------------------------------------------------- usage

#[test]
fn unknown_output_formats_are_usage_errors() {
    ctl(&["dtab", "parse", "/a=>/b", "--output", "yaml"])
        .code(2)
        .stdout("")
        .stderr(predicate::str::contains(
            "invalid value 'yaml' for '--output <OUTPUT>'",
        ));
}

#[test]
fn a_closed_stdout_is_not_a_crash() {
    // An answer far larger than a pipe's buffer, to a reader that has gone:
    // 2^8 ways from /p0 to /#/end, each line carrying a 400-byte residual
    // (some 200 kB in all).
    let dtab = ladder(8, "/p{next} | /p{next}");
    let path = format!("/p0/{}", "r".repeat(400));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ecsmeshctl"))
        .args(["dtab", "delegate", "--explain", "--dtab", &dtab, &path])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(stderr, "");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn exponential_dtabs_stop_at_the_lookup_budget() {
    // Every entry doubles the work: 2^30 paths without a budget.
    let dtab = ladder(30, "/p{next} | /p{next}");
    let started = std::time::Instant::now();
    Command::cargo_bin("ecsmeshctl")
        .unwrap()
        .args(["dtab", "delegate", "--dtab", &dtab, "/p0"])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("looked up more than 1000 paths"));
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
