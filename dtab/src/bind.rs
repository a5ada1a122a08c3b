//! Binding: turning a path into a tree of bound names (endpoint sets) by
//! rewriting it with a dtab and asking a [`Namer`] about the paths no
//! dentry matches — Finagle's `Namer.bind` with `DefaultInterpreter`'s
//! lookup order.
//!
//! Rules, as Finagle's:
//! - every path is looked up in the dtab first (`/#/…` and `/$/…` too); only
//!   a path the lookup answers `~` for goes to the namer: one no dentry
//!   matches, or one whose only matching dentry is `prefix => ~`;
//! - the matches of one lookup are alternatives, last dentry first: the
//!   first that binds to anything but `~` wins (`$` and bound names alike),
//!   and `!` stops the search;
//! - a union binds every branch and keeps those that are not `~` or `!`;
//!   it fails only if no branch succeeded and one failed;
//! - each lookup is one level; more than [`MAX_DEPTH`] levels is an error.
//!
//! Binding here is a function of a snapshot (the dtab and what the namer
//! knows now); callers re-bind when either changes, rather than holding a
//! live `Activity` as Finagle does.

use crate::Dtab;
use crate::{Label, NameTree, Path, Weighted};

/// Finagle's `namerMaxDepth` default: how many rewrite levels one binding may take.
pub const MAX_DEPTH: usize = 100;

/// How many tree nodes may be open at once while binding or delegating: it
/// bounds the stack when each of [`MAX_DEPTH`] levels also nests (never in
/// a real dtab). 400 keeps the deepest recursion under 1 MiB of stack in a
/// release build (measured: ~2 KiB a node for `delegate`), so it fits
/// Tokio's 2 MiB worker stacks; a plain chain of 100 rewrites needs ~100.
pub const MAX_OPEN_NODES: usize = 400;

/// How many paths one binding or delegation may look up in all. Finagle
/// has no such limit; without one, a dtab whose every entry rewrites to two
/// copies of the next (`/p0=>/p1|/p1;/p1=>/p2|/p2;…`) takes time and memory
/// exponential in its length — a denial of service through an `l5d-dtab`
/// header. Real bindings look up a handful of paths.
pub const MAX_LOOKUPS: usize = 1_000;

/// A name a namer hands back: a path to bind further, or a bound one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Name<B> {
    Path(Path),
    Bound(B),
}

/// A namer's failure to answer for a path (Finagle: a failed `Activity`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct NamerError {
    pub message: String,
}

impl NamerError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// Why a path could not be bound.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    /// Finagle's `NamerExceededMaxDepthException`.
    #[error("Max recursion level: {limit} reached in Namer lookup (at {path})")]
    MaxDepth { limit: usize, path: Path },
    /// Rewrites nested more tree nodes than [`MAX_OPEN_NODES`].
    #[error("name tree nested deeper than {limit} nodes while binding {path}")]
    TooDeep { limit: usize, path: Path },
    /// More than [`MAX_LOOKUPS`] paths were looked up.
    #[error("binding {path} looked up more than {limit} paths")]
    TooManyLookups { limit: usize, path: Path },
    /// A namer failed.
    #[error("namer failed for {path}: {source}")]
    Namer { path: Path, source: NamerError },
}

/// Resolves the paths the dtab does not rewrite (service discovery, `/$/…`).
pub trait Namer {
    /// What a bound leaf is: an endpoint set, a client id, …
    type Bound: Clone;

    /// The tree `path` names, `~` if this namer does not know it.
    fn lookup(&self, path: &Path) -> Result<NameTree<Name<Self::Bound>>, NamerError>;
}

/// Binds `path` with `dtab` and `namer`. The result has no `Alt` nodes and
/// is simplified: a leaf, a union of bound trees, `~`, `!` or `$`.
pub fn bind<N: Namer + ?Sized>(
    dtab: &Dtab,
    path: &Path,
    namer: &N,
) -> Result<NameTree<N::Bound>, BindError> {
    Binder {
        dtab,
        namer,
        marked_from: usize::MAX,
        leaf: |bound, _| bound,
        open_nodes: 0,
        lookups: 0,
    }
    .bind_path(path, 0, None)
}

/// A bound leaf and where its delegation came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Traced<B> {
    pub bound: B,
    /// The index in the dtab of the first marked dentry (see
    /// [`bind_traced`]) on the chain of rewrites that led to this leaf, if
    /// any: a leaf reached by any rewrite from a marked dentry is marked,
    /// whatever the other dentries and the namer did after it.
    pub via: Option<usize>,
}

/// Like [`bind()`], and each leaf tells whether its delegation used one of
/// the dentries from index `marked_from` on (e.g. those a request header
/// appended to the base dtab): callers decide per leaf, after binding, what
/// such a leaf may be — a check of the dentries' text before binding cannot
/// see what a chain of rewrites reaches.
pub fn bind_traced<N: Namer + ?Sized>(
    dtab: &Dtab,
    path: &Path,
    namer: &N,
    marked_from: usize,
) -> Result<NameTree<Traced<N::Bound>>, BindError> {
    Binder {
        dtab,
        namer,
        marked_from,
        leaf: |bound, via| Traced { bound, via },
        open_nodes: 0,
        lookups: 0,
    }
    .bind_path(path, 0, None)
}

struct Binder<'a, N: ?Sized, F> {
    dtab: &'a Dtab,
    namer: &'a N,
    /// Dentries at this index and after are marked.
    marked_from: usize,
    /// Makes a result leaf of a bound name and its mark.
    leaf: F,
    open_nodes: usize,
    lookups: usize,
}

/// How a leaf of the tree being bound turns into a name.
trait LeafName<B> {
    fn name(&self, residual: &[Label]) -> Name<B>;
}

impl<B> LeafName<B> for Path {
    #[inline]
    fn name(&self, residual: &[Label]) -> Name<B> {
        Name::Path(self.join(residual))
    }
}

impl<B: Clone> LeafName<B> for Name<B> {
    #[inline]
    fn name(&self, _: &[Label]) -> Name<B> {
        self.clone()
    }
}

impl<N: Namer + ?Sized, T, F: Fn(N::Bound, Option<usize>) -> T> Binder<'_, N, F> {
    fn bind_path(
        &mut self,
        path: &Path,
        depth: usize,
        via: Option<usize>,
    ) -> Result<NameTree<T>, BindError> {
        if depth > MAX_DEPTH {
            return Err(BindError::MaxDepth {
                limit: MAX_DEPTH,
                path: path.clone(),
            });
        }
        self.lookups += 1;
        if self.lookups > MAX_LOOKUPS {
            return Err(BindError::TooManyLookups {
                limit: MAX_LOOKUPS,
                path: path.clone(),
            });
        }
        // The lookup's Alt over matching dentries, walked lazily: no tree is
        // built for alternatives that are never reached.
        let mut matches = 0_usize;
        let mut lone_neg = false;
        let dentries = self.dtab.dentries();
        for (i, dentry) in dentries.iter().enumerate().rev() {
            let Some(residual) = dentry.prefix.strip(path) else {
                continue;
            };
            matches += 1;
            lone_neg = matches == 1 && matches!(dentry.dst, NameTree::Neg);
            let via = via.or((i >= self.marked_from).then_some(i));
            match self.bind_tree(&dentry.dst, residual, depth + 1, path, via)? {
                NameTree::Neg => {}
                decided => return Ok(decided),
            }
        }
        // Finagle asks the namer whenever `dtab.lookup` is `~`: when no
        // dentry matches, and also when the one that does has the tree `~`
        // (several matches look up to an Alt, which is not `~`).
        if matches > 0 && !lone_neg {
            return Ok(NameTree::Neg);
        }
        let named = self.namer.lookup(path).map_err(|source| BindError::Namer {
            path: path.clone(),
            source,
        })?;
        self.bind_tree(&named, &[], depth + 1, path, via)
    }

    fn bind_tree<L: LeafName<N::Bound>>(
        &mut self,
        tree: &NameTree<L>,
        residual: &[Label],
        depth: usize,
        from: &Path,
        via: Option<usize>,
    ) -> Result<NameTree<T>, BindError> {
        if depth > MAX_DEPTH {
            return Err(BindError::MaxDepth {
                limit: MAX_DEPTH,
                path: from.clone(),
            });
        }
        if self.open_nodes >= MAX_OPEN_NODES {
            return Err(BindError::TooDeep {
                limit: MAX_OPEN_NODES,
                path: from.clone(),
            });
        }
        self.open_nodes += 1;
        let bound = self.bind_node(tree, residual, depth, from, via);
        self.open_nodes -= 1;
        bound
    }

    fn bind_node<L: LeafName<N::Bound>>(
        &mut self,
        tree: &NameTree<L>,
        residual: &[Label],
        depth: usize,
        from: &Path,
        via: Option<usize>,
    ) -> Result<NameTree<T>, BindError> {
        match tree {
            NameTree::Neg => Ok(NameTree::Neg),
            NameTree::Fail => Ok(NameTree::Fail),
            NameTree::Empty => Ok(NameTree::Empty),
            NameTree::Leaf(leaf) => match leaf.name(residual) {
                Name::Path(path) => self.bind_path(&path, depth, via),
                Name::Bound(bound) => Ok(NameTree::Leaf((self.leaf)(bound, via))),
            },
            NameTree::Alt(trees) => {
                for tree in trees {
                    match self.bind_tree(tree, residual, depth, from, via)? {
                        NameTree::Neg => {}
                        decided => return Ok(decided),
                    }
                }
                Ok(NameTree::Neg)
            }
            NameTree::Union(branches) => {
                let mut oks = Vec::with_capacity(branches.len());
                let mut first_error = None;
                for branch in branches {
                    match self.bind_tree(&branch.tree, residual, depth, from, via) {
                        Ok(tree) => oks.push(Weighted::new(branch.weight, tree)),
                        Err(e) => {
                            first_error.get_or_insert(e);
                        }
                    }
                }
                match first_error {
                    Some(e) if oks.is_empty() => Err(e),
                    _ => Ok(NameTree::Union(oks).simplify()),
                }
            }
        }
    }
}

/// A namer that knows nothing: every path the dtab does not rewrite is `~`.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoNamer;

impl Namer for NoNamer {
    type Bound = Path;
    fn lookup(&self, _: &Path) -> Result<NameTree<Name<Path>>, NamerError> {
        Ok(NameTree::Neg)
    }
}

/// What `/$/inet/<host>/<port>` (or `/$/inet/<port>`, meaning localhost)
/// names. Resolving the host is the caller's business: this crate does no I/O.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct InetName {
    /// The bound id: the path up to and including the port.
    pub id: Path,
    /// Empty for localhost.
    pub host: String,
    pub port: u16,
    /// `fixedinet`: resolve once and keep the answer.
    pub fixed: bool,
    /// The elements after the port.
    pub residual: Path,
}

/// Finagle's global namer for `/$/…` paths: `/$/inet` and `/$/fixedinet`
/// bind to an [`InetName`], `/$/fail…` is `!`, `/$/nil…` is `$`; any other
/// `/$/<kind>` fails as an unknown namer, and paths outside `/$` are `~`.
#[derive(Clone, Copy, Debug, Default)]
pub struct GlobalNamer;

impl Namer for GlobalNamer {
    type Bound = InetName;

    fn lookup(&self, path: &Path) -> Result<NameTree<Name<InetName>>, NamerError> {
        let elems = path.elems();
        let Some((first, rest)) = elems.split_first() else {
            return Ok(NameTree::Neg);
        };
        if first.as_bytes() != b"$" {
            return Ok(NameTree::Neg);
        }
        let Some((kind, args)) = rest.split_first() else {
            return Ok(NameTree::Neg);
        };
        match kind.as_bytes() {
            b"fail" => Ok(NameTree::Fail),
            b"nil" => Ok(NameTree::Empty),
            scheme @ (b"inet" | b"fixedinet") => {
                let fixed = scheme == b"fixedinet";
                let port_of = |l: &Label| {
                    std::str::from_utf8(l.as_bytes())
                        .ok()
                        .and_then(|s| s.parse::<u16>().ok())
                };
                let (host, port, used) = match args {
                    [host, port, ..] if port_of(port).is_some() => (
                        String::from_utf8_lossy(host.as_bytes()).into_owned(),
                        port_of(port),
                        2,
                    ),
                    [port, ..] if port_of(port).is_some() => (String::new(), port_of(port), 1),
                    _ => (String::new(), None, 0),
                };
                let Some(port) = port else {
                    return Err(NamerError::new(format!(
                        "Unknown namer: {} for path: {path}",
                        String::from_utf8_lossy(kind.as_bytes())
                    )));
                };
                let id_len = 2 + used;
                Ok(NameTree::Leaf(Name::Bound(InetName {
                    id: path.take(id_len),
                    host,
                    port,
                    fixed,
                    residual: path.skip(id_len),
                })))
            }
            other => Err(NamerError::new(format!(
                "Unknown namer: {} for path: {path}",
                String::from_utf8_lossy(other)
            ))),
        }
    }
}
