//! Name trees: alternation, weighted union and the constants `~ ! $`
//! (Finagle's `NameTree`), with `simplified`, `eval` and `show`.

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};

use crate::Path;

/// The union weight a term has when none is written.
pub const DEFAULT_WEIGHT: f64 = 1.0;

/// An expression over names of type `T` (paths in a dtab, bound endpoint
/// sets after binding).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NameTree<T> {
    /// `~`: no such name here. Alternation falls through it.
    Neg,
    /// `!`: hard failure. Alternation stops at it.
    Fail,
    /// `$`: the name exists but has no endpoints. A positive answer.
    Empty,
    /// A name.
    Leaf(T),
    /// `a | b`: the first alternative that is not `~`.
    Alt(Vec<NameTree<T>>),
    /// `w1 * a & w2 * b`: every branch, traffic split by weight.
    Union(Vec<Weighted<T>>),
}

/// A union branch and its weight.
#[derive(Clone, Debug)]
pub struct Weighted<T> {
    pub weight: f64,
    pub tree: NameTree<T>,
}

impl<T> Weighted<T> {
    pub fn new(weight: f64, tree: NameTree<T>) -> Self {
        Self { weight, tree }
    }
}

// Weights compare by bit pattern so that trees can be map keys (the parser
// never produces NaN, for which `==` would not be reflexive).
impl<T: PartialEq> PartialEq for Weighted<T> {
    fn eq(&self, other: &Self) -> bool {
        self.weight.to_bits() == other.weight.to_bits() && self.tree == other.tree
    }
}

impl<T: Eq> Eq for Weighted<T> {}

impl<T: std::hash::Hash> std::hash::Hash for Weighted<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.weight.to_bits().hash(state);
        self.tree.hash(state);
    }
}

impl NameTree<Path> {
    /// Parses the concrete syntax of a name tree (`/a | 2 * /b & /c`).
    pub fn read(s: &str) -> Result<Self, crate::ParseError> {
        crate::parse::name_tree(s)
    }
}

impl std::str::FromStr for NameTree<Path> {
    type Err = crate::ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::read(s)
    }
}

impl<T> NameTree<T> {
    /// Replaces every leaf by `f(leaf)`, keeping the structure.
    pub fn map<U>(self, f: &mut impl FnMut(T) -> U) -> NameTree<U> {
        match self {
            Self::Neg => NameTree::Neg,
            Self::Fail => NameTree::Fail,
            Self::Empty => NameTree::Empty,
            Self::Leaf(t) => NameTree::Leaf(f(t)),
            Self::Alt(trees) => NameTree::Alt(trees.into_iter().map(|t| t.map(f)).collect()),
            Self::Union(trees) => NameTree::Union(
                trees
                    .into_iter()
                    .map(|w| Weighted::new(w.weight, w.tree.map(f)))
                    .collect(),
            ),
        }
    }

    /// Like [`map`](Self::map), borrowing the tree.
    pub fn map_ref<U>(&self, f: &mut impl FnMut(&T) -> U) -> NameTree<U> {
        match self {
            Self::Neg => NameTree::Neg,
            Self::Fail => NameTree::Fail,
            Self::Empty => NameTree::Empty,
            Self::Leaf(t) => NameTree::Leaf(f(t)),
            Self::Alt(trees) => NameTree::Alt(trees.iter().map(|t| t.map_ref(f)).collect()),
            Self::Union(trees) => NameTree::Union(
                trees
                    .iter()
                    .map(|w| Weighted::new(w.weight, w.tree.map_ref(f)))
                    .collect(),
            ),
        }
    }

    /// The leaves, left to right.
    pub fn leaves(&self) -> Vec<&T> {
        let mut out = Vec::new();
        self.collect_leaves(&mut out);
        out
    }

    fn collect_leaves<'a>(&'a self, out: &mut Vec<&'a T>) {
        match self {
            Self::Leaf(t) => out.push(t),
            Self::Alt(trees) => trees.iter().for_each(|t| t.collect_leaves(out)),
            Self::Union(trees) => trees.iter().for_each(|w| w.tree.collect_leaves(out)),
            Self::Neg | Self::Fail | Self::Empty => {}
        }
    }

    /// Finagle's `simplified`, consuming the tree: empty Alt/Union become
    /// `~`; single-child nodes become the child (its weight dropped); Alt
    /// drops `~` children and stops after the first `!`; Union drops `~` and
    /// `!` branches. `$` is never removed.
    #[must_use]
    pub fn simplify(self) -> Self {
        match self {
            Self::Alt(trees) => {
                let mut kept = Vec::with_capacity(trees.len());
                for tree in trees {
                    match tree.simplify() {
                        Self::Neg => {}
                        Self::Fail => {
                            kept.push(Self::Fail);
                            break;
                        }
                        other => kept.push(other),
                    }
                }
                Self::collapse_alt(kept)
            }
            Self::Union(trees) => {
                // A lone branch loses its weight whatever it simplifies to.
                if trees.len() == 1 {
                    return trees
                        .into_iter()
                        .next()
                        .map_or(Self::Neg, |w| w.tree.simplify());
                }
                let kept: Vec<_> = trees
                    .into_iter()
                    .filter_map(|w| match w.tree.simplify() {
                        Self::Neg | Self::Fail => None,
                        tree => Some(Weighted::new(w.weight, tree)),
                    })
                    .collect();
                Self::collapse_union(kept)
            }
            leaf => leaf,
        }
    }

    fn collapse_alt(mut trees: Vec<Self>) -> Self {
        match trees.len() {
            0 => Self::Neg,
            1 => trees.pop().unwrap_or(Self::Neg),
            _ => Self::Alt(trees),
        }
    }

    pub(crate) fn collapse_union(mut trees: Vec<Weighted<T>>) -> Self {
        match trees.len() {
            0 => Self::Neg,
            1 => trees.pop().map_or(Self::Neg, |w| w.tree),
            _ => Self::Union(trees),
        }
    }

    /// Finagle's `eval`: the set of names this tree stands for, or `None`
    /// when it is `~` or `!` (after alternation and union are resolved).
    /// `$` gives the empty set; weights are ignored.
    pub fn eval(&self) -> Option<BTreeSet<&T>>
    where
        T: Ord,
    {
        match self.eval_state() {
            Eval::Set(set) => Some(set),
            Eval::Neg | Eval::Fail => None,
        }
    }

    fn eval_state(&self) -> Eval<'_, T>
    where
        T: Ord,
    {
        match self {
            Self::Neg => Eval::Neg,
            Self::Fail => Eval::Fail,
            Self::Empty => Eval::Set(BTreeSet::new()),
            Self::Leaf(t) => Eval::Set(BTreeSet::from([t])),
            Self::Alt(trees) => {
                for tree in trees {
                    match tree.eval_state() {
                        Eval::Neg => {}
                        decided => return decided,
                    }
                }
                Eval::Neg
            }
            // A lone branch is evaluated as itself, so a lone `!` stays a
            // failure (Finagle's `case Union(Weighted(_, tree)) => eval(tree)`).
            Self::Union(trees) if trees.len() == 1 => trees[0].tree.eval_state(),
            Self::Union(trees) => {
                let mut any = false;
                let mut set = BTreeSet::new();
                for w in trees {
                    if let Eval::Set(s) = w.tree.eval_state() {
                        any = true;
                        set.extend(s);
                    }
                }
                if any { Eval::Set(set) } else { Eval::Neg }
            }
        }
    }
}

/// The three outcomes of Finagle's private `eval`: Neg and Fail are told
/// apart because alternation treats them differently.
enum Eval<'a, T> {
    Neg,
    Fail,
    Set(BTreeSet<&'a T>),
}

/// Writes a union weight as Java's `String.format("%.2f", w)` does: the
/// shortest decimal that reads back as `w`, rounded HALF_UP to two places
/// (so 0.125 gives `0.13` and 2.675 gives `2.68`, unlike C's printf).
pub fn write_weight(out: &mut impl fmt::Write, weight: f64) -> fmt::Result {
    if !weight.is_finite() {
        return out.write_str(if weight.is_nan() {
            "NaN"
        } else if weight > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        });
    }
    // Rust's `{}` for f64 prints the shortest round-tripping decimal and
    // never uses an exponent.
    let shortest = format!("{}", weight.abs());
    let (int_part, frac_part) = shortest.split_once('.').unwrap_or((&shortest, ""));
    let mut digits: Vec<u8> = int_part
        .bytes()
        .chain(frac_part.bytes().chain(std::iter::repeat(b'0')).take(2))
        .collect();
    let round_up = frac_part.as_bytes().get(2).is_some_and(|&d| d >= b'5');
    if round_up {
        let mut i = digits.len();
        loop {
            if i == 0 {
                digits.insert(0, b'1');
                break;
            }
            i -= 1;
            if digits[i] == b'9' {
                digits[i] = b'0';
            } else {
                digits[i] += 1;
                break;
            }
        }
    }
    let split = digits.len() - 2;
    // Java keeps the sign even when the value rounds to zero (`-0.00`).
    if weight.is_sign_negative() {
        out.write_char('-')?;
    }
    for &d in &digits[..split] {
        out.write_char(char::from(d))?;
    }
    out.write_char('.')?;
    for &d in &digits[split..] {
        out.write_char(char::from(d))?;
    }
    Ok(())
}

// Display is Finagle's `show`; the three functions are its three levels of
// precedence: top (Alt bare), term (Union bare, Alt parenthesised) and
// simple (both parenthesised).
impl<T: fmt::Display> fmt::Display for NameTree<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        show_top(self, f)
    }
}

/// Follows single-child Alt and Union nodes down to the node that shows.
fn unwrap_single<T>(mut tree: &NameTree<T>) -> &NameTree<T> {
    loop {
        match tree {
            NameTree::Alt(trees) if trees.len() == 1 => tree = &trees[0],
            NameTree::Union(trees) if trees.len() == 1 => tree = &trees[0].tree,
            _ => return tree,
        }
    }
}

fn show_top<T: fmt::Display>(tree: &NameTree<T>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match unwrap_single(tree) {
        NameTree::Alt(trees) => {
            for (i, t) in trees.iter().enumerate() {
                if i > 0 {
                    f.write_str(" | ")?;
                }
                show_term(t, f)?;
            }
            Ok(())
        }
        other => show_term(other, f),
    }
}

fn show_term<T: fmt::Display>(tree: &NameTree<T>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match unwrap_single(tree) {
        NameTree::Union(trees) => {
            for (i, w) in trees.iter().enumerate() {
                if i > 0 {
                    f.write_str(" & ")?;
                }
                if w.weight.to_bits() != DEFAULT_WEIGHT.to_bits() {
                    write_weight(f, w.weight)?;
                    f.write_char('*')?;
                }
                show_simple(&w.tree, f)?;
            }
            Ok(())
        }
        alt @ NameTree::Alt(_) => show_parens(alt, f),
        other => show_simple(other, f),
    }
}

fn show_simple<T: fmt::Display>(tree: &NameTree<T>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match unwrap_single(tree) {
        node @ (NameTree::Union(_) | NameTree::Alt(_)) => show_parens(node, f),
        NameTree::Leaf(t) => write!(f, "{t}"),
        NameTree::Fail => f.write_char('!'),
        NameTree::Neg => f.write_char('~'),
        NameTree::Empty => f.write_char('$'),
    }
}

fn show_parens<T: fmt::Display>(tree: &NameTree<T>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    f.write_char('(')?;
    show_top(tree, f)?;
    f.write_char(')')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weight(w: f64) -> String {
        let mut s = String::new();
        write_weight(&mut s, w).unwrap();
        s
    }

    #[test]
    fn weights_round_half_up_on_the_shortest_decimal() {
        assert_eq!(weight(0.125), "0.13");
        assert_eq!(weight(2.675), "2.68");
        assert_eq!(weight(0.5), "0.50");
        assert_eq!(weight(9.0), "9.00");
        assert_eq!(weight(0.0), "0.00");
        assert_eq!(weight(0.333), "0.33");
        assert_eq!(weight(0.335), "0.34");
        assert_eq!(weight(0.994), "0.99");
        assert_eq!(weight(0.995), "1.00");
        assert_eq!(weight(99.999), "100.00");
        assert_eq!(weight(1e-7), "0.00");
        assert_eq!(weight(12_345_678_901.0), "12345678901.00");
        assert_eq!(weight(f64::INFINITY), "Infinity");
    }
}
