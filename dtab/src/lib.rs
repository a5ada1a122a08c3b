//! # ecsmesh-dtab
//!
//! Linkerd 1 / Finagle delegation tables, byte for byte: the same grammar,
//! the same canonical printing, the same lookup, simplification, evaluation
//! and binding rules, so dtabs written for Linkerd work unchanged.
//!
//! - [`Path`], [`Prefix`], [`Dentry`], [`Dtab`], [`NameTree`]: the types, each
//!   with `read` (parse) and `Display` (Finagle's `show`).
//! - [`Dtab::lookup`]: one rewrite step; [`NameTree::simplify`] and
//!   [`NameTree::eval`].
//! - [`bind()`]: the full binding algorithm against a [`Namer`] (fallback on
//!   `~` only, `!` stops it, `$` wins, unions drop dead branches, depth limit).
//! - [`delegate()`]: static delegation with a step-by-step explanation.
//!
//! The crate is pure: no I/O, no async, no global state. See `DESIGN.md`
//! beside this crate for where it departs from Finagle and why.

mod bind;
mod delegate;
mod dtab;
#[cfg(feature = "json")]
pub mod json;
mod parse;
mod path;
mod tree;

pub use bind::{
    BindError, GlobalNamer, InetName, MAX_DEPTH, MAX_LOOKUPS, MAX_OPEN_NODES, Name, Namer,
    NamerError, NoNamer, Traced, bind, bind_traced,
};
pub use delegate::{DelegateError, DelegateNode, DelegateTree, delegate};
pub use dtab::{Dentry, Dtab, Prefix, PrefixElem};
pub use parse::{Found, MAX_NESTING, ParseError, ParseErrorKind};
pub use path::{EmptyLabel, Label, Path, is_showable};
pub use tree::{DEFAULT_WEIGHT, NameTree, Weighted, write_weight};
