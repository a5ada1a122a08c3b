//! Dentries (`prefix => tree`) and dtabs (ordered lists of them), with
//! Finagle's one-step `lookup`.

use std::fmt;
use std::sync::Arc;

use crate::{Label, NameTree, ParseError, Path};

/// A prefix element: a label, or `*`, which matches any one element.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PrefixElem {
    Label(Label),
    Any,
}

impl fmt::Display for PrefixElem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Label(l) => write!(f, "{l}"),
            Self::Any => f.write_str("*"),
        }
    }
}

/// The left-hand side of a dentry. `*` consumes one element and captures
/// nothing.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Prefix(Arc<[PrefixElem]>);

impl Prefix {
    /// The empty prefix `/`, which matches every path.
    pub fn empty() -> Self {
        Self::default()
    }

    pub fn new(elems: impl Into<Arc<[PrefixElem]>>) -> Self {
        Self(elems.into())
    }

    pub fn read(s: &str) -> Result<Self, ParseError> {
        crate::parse::prefix(s)
    }

    pub fn elems(&self) -> &[PrefixElem] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// If this prefix matches `path`, the residual: the elements after it.
    #[inline]
    pub fn strip<'p>(&self, path: &'p Path) -> Option<&'p [Label]> {
        let elems = path.elems();
        if self.0.len() > elems.len() {
            return None;
        }
        let matched = self.0.iter().zip(elems).all(|(p, e)| match p {
            PrefixElem::Any => true,
            PrefixElem::Label(l) => l == e,
        });
        matched.then(|| &elems[self.0.len()..])
    }

    pub fn matches(&self, path: &Path) -> bool {
        self.strip(path).is_some()
    }
}

impl From<&Path> for Prefix {
    fn from(path: &Path) -> Self {
        Self(
            path.elems()
                .iter()
                .cloned()
                .map(PrefixElem::Label)
                .collect(),
        )
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("/");
        }
        self.0.iter().try_for_each(|e| write!(f, "/{e}"))
    }
}

impl fmt::Debug for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Prefix({self})")
    }
}

/// One rewrite rule: paths starting with `prefix` are rewritten to `dst`,
/// each leaf of it followed by the residual.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Dentry {
    pub prefix: Prefix,
    pub dst: NameTree<Path>,
}

impl Dentry {
    pub fn new(prefix: Prefix, dst: NameTree<Path>) -> Self {
        Self { prefix, dst }
    }

    pub fn read(s: &str) -> Result<Self, ParseError> {
        crate::parse::dentry(s)
    }

    /// Finagle's `Equiv[Dentry]`: equal prefixes and equal simplified trees.
    pub fn equiv(&self, other: &Self) -> bool {
        self.prefix == other.prefix && self.dst.clone().simplify() == other.dst.clone().simplify()
    }
}

impl fmt::Display for Dentry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}=>{}", self.prefix, self.dst)
    }
}

impl fmt::Debug for Dentry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dentry({self})")
    }
}

impl std::str::FromStr for Dentry {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::read(s)
    }
}

/// A delegation table: dentries in order; later ones take precedence.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Dtab(Vec<Dentry>);

impl Dtab {
    pub fn empty() -> Self {
        Self::default()
    }

    pub fn new(dentries: Vec<Dentry>) -> Self {
        Self(dentries)
    }

    /// Parses `;`-separated dentries (one trailing `;` allowed).
    pub fn read(s: &str) -> Result<Self, ParseError> {
        crate::parse::dtab(s)
    }

    pub fn dentries(&self) -> &[Dentry] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// This dtab with `dentry` appended.
    #[must_use]
    pub fn with(mut self, dentry: Dentry) -> Self {
        self.0.push(dentry);
        self
    }

    /// This dtab followed by `other` (Finagle's `++`).
    #[must_use]
    pub fn concat(&self, other: &Dtab) -> Dtab {
        let mut dentries = Vec::with_capacity(self.len() + other.len());
        dentries.extend_from_slice(&self.0);
        dentries.extend_from_slice(&other.0);
        Self(dentries)
    }

    /// The dentries after `prefix`, if this dtab starts with exactly
    /// `prefix`'s dentries; otherwise this dtab unchanged.
    #[must_use]
    pub fn strip_prefix(&self, prefix: &Dtab) -> Dtab {
        if self.0.starts_with(&prefix.0) {
            Self(self.0[prefix.len()..].to_vec())
        } else {
            self.clone()
        }
    }

    /// Every dentry with its tree simplified, dropping those that become
    /// `~` (they can never match anything).
    #[must_use]
    pub fn simplified(&self) -> Dtab {
        Self(
            self.0
                .iter()
                .map(|d| Dentry::new(d.prefix.clone(), d.dst.clone().simplify()))
                .filter(|d| d.dst != NameTree::Neg)
                .collect(),
        )
    }

    /// Finagle's `Equiv[Dtab]`: the same length and pairwise equivalent dentries.
    pub fn equiv(&self, other: &Dtab) -> bool {
        self.len() == other.len() && self.0.iter().zip(&other.0).all(|(a, b)| a.equiv(b))
    }

    /// The dentries matching `path`, last first, each with the residual.
    pub fn matching<'d, 'p>(
        &'d self,
        path: &'p Path,
    ) -> impl Iterator<Item = (&'d Dentry, &'p [Label])> + use<'d, 'p> {
        self.0
            .iter()
            .rev()
            .filter_map(move |d| d.prefix.strip(path).map(|residual| (d, residual)))
    }

    /// One rewrite step: the trees of every matching dentry (last first),
    /// each leaf followed by the residual; one match is that tree, several
    /// an `Alt`, none `~`.
    pub fn lookup(&self, path: &Path) -> NameTree<Path> {
        let mut matches: Vec<NameTree<Path>> = self
            .matching(path)
            .map(|(d, residual)| d.dst.map_ref(&mut |leaf| leaf.join(residual)))
            .collect();
        match matches.len() {
            0 => NameTree::Neg,
            1 => matches.pop().unwrap_or(NameTree::Neg),
            _ => NameTree::Alt(matches),
        }
    }
}

impl fmt::Display for Dtab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Dtab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dtab({self})")
    }
}

impl std::str::FromStr for Dtab {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::read(s)
    }
}

impl FromIterator<Dentry> for Dtab {
    fn from_iter<I: IntoIterator<Item = Dentry>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}
