//! Static delegation: what a dtab does to a path with no namer at hand, step
//! by step (Linkerd's delegator view).
//!
//! Unlike binding, delegation expands every branch, including alternatives
//! that binding would never reach, so one can see why each was (or was not)
//! chosen. A leaf no dentry matches stays a leaf when it names a namer
//! (`/#/…`, `/$/…`) and becomes `~` otherwise.

use std::fmt::{self, Write as _};

use crate::bind::{MAX_DEPTH, MAX_LOOKUPS, MAX_OPEN_NODES};
use crate::{Dentry, Dtab, Label, NameTree, Path, Weighted};

/// Why a delegation stopped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DelegateError {
    /// More than [`MAX_DEPTH`] rewrites in a row (a loop such as `/a=>/b;/b=>/a`).
    #[error("Max recursion level: {limit} reached in delegation (at {path})")]
    MaxDepth { limit: usize, path: Path },
    /// More than [`MAX_LOOKUPS`] paths were looked up.
    #[error("delegation looked up more than {limit} paths (at {path})")]
    TooManyLookups { limit: usize, path: Path },
    /// The expansion holds more nested nodes than [`MAX_OPEN_NODES`].
    #[error("delegation tree nested deeper than {limit} nodes (at {path})")]
    TooDeep { limit: usize, path: Path },
}

/// One step of a delegation: the path it concerns, the dentry that produced
/// it (none for the root and for unmatched paths), and what happened.
#[derive(Clone, Debug, PartialEq)]
pub struct DelegateTree {
    pub path: Path,
    pub dentry: Option<Dentry>,
    pub node: DelegateNode,
}

/// What a delegation step did.
#[derive(Clone, Debug, PartialEq)]
pub enum DelegateNode {
    /// `~`: nothing matched (and the path names no namer), or the dtab says `~`.
    Neg,
    /// `!`.
    Fail,
    /// `$`.
    Empty,
    /// A namer name (`/#/…`, `/$/…`) no dentry rewrites: where delegation ends.
    Leaf,
    /// The path was rewritten (by `dentry`) to the tree below.
    Delegate(Box<DelegateTree>),
    /// Alternatives: several dentries matched, or the dtab wrote `a | b`.
    Alt(Vec<DelegateTree>),
    /// A weighted union the dtab wrote.
    Union(Vec<(f64, DelegateTree)>),
}

/// Delegates `path` through `dtab` as far as the dtab goes.
pub fn delegate(dtab: &Dtab, path: &Path) -> Result<DelegateTree, DelegateError> {
    Delegator {
        dtab,
        open_nodes: 0,
        lookups: 0,
    }
    .path(path, None, 0)
}

impl DelegateTree {
    /// The tree of final names this delegation reaches, unsimplified.
    pub fn to_name_tree(&self) -> NameTree<Path> {
        match &self.node {
            DelegateNode::Neg => NameTree::Neg,
            DelegateNode::Fail => NameTree::Fail,
            DelegateNode::Empty => NameTree::Empty,
            DelegateNode::Leaf => NameTree::Leaf(self.path.clone()),
            DelegateNode::Delegate(next) => next.to_name_tree(),
            DelegateNode::Alt(trees) => {
                NameTree::Alt(trees.iter().map(Self::to_name_tree).collect())
            }
            DelegateNode::Union(trees) => NameTree::Union(
                trees
                    .iter()
                    .map(|(w, t)| Weighted::new(*w, t.to_name_tree()))
                    .collect(),
            ),
        }
    }

    /// The final names, simplified: `delegate`'s answer.
    pub fn result(&self) -> NameTree<Path> {
        self.to_name_tree().simplify()
    }

    /// A multi-line, indented rendering of every step.
    pub fn explain(&self) -> String {
        let mut out = String::new();
        self.explain_into(&mut out, 0, None);
        out
    }

    fn explain_into(&self, out: &mut String, indent: usize, weight: Option<f64>) {
        let pad = "  ".repeat(indent);
        let _ = write!(out, "{pad}");
        if let Some(w) = weight {
            let _ = crate::tree::write_weight(out, w);
            out.push_str("* ");
        }
        let _ = write!(out, "{}", self.path);
        if let Some(d) = &self.dentry {
            let _ = write!(out, "  [{d}]");
        }
        let what = match &self.node {
            DelegateNode::Neg => " => ~",
            DelegateNode::Fail => " => !",
            DelegateNode::Empty => " => $",
            DelegateNode::Leaf => "  (namer name)",
            DelegateNode::Delegate(_) | DelegateNode::Alt(_) | DelegateNode::Union(_) => "",
        };
        out.push_str(what);
        match &self.node {
            DelegateNode::Alt(_) => out.push_str(" => alternatives, first non-~ wins:"),
            DelegateNode::Union(_) => out.push_str(" => union of:"),
            _ => {}
        }
        out.push('\n');
        match &self.node {
            DelegateNode::Delegate(next) => next.explain_into(out, indent + 1, None),
            DelegateNode::Alt(trees) => {
                for t in trees {
                    t.explain_into(out, indent + 1, None);
                }
            }
            DelegateNode::Union(trees) => {
                for (w, t) in trees {
                    t.explain_into(out, indent + 1, Some(*w));
                }
            }
            _ => {}
        }
    }
}

impl fmt::Display for DelegateTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.explain())
    }
}

struct Delegator<'a> {
    dtab: &'a Dtab,
    open_nodes: usize,
    lookups: usize,
}

impl Delegator<'_> {
    fn enter(&mut self, path: &Path, depth: usize) -> Result<(), DelegateError> {
        if depth > MAX_DEPTH {
            return Err(DelegateError::MaxDepth {
                limit: MAX_DEPTH,
                path: path.clone(),
            });
        }
        if self.open_nodes >= MAX_OPEN_NODES {
            return Err(DelegateError::TooDeep {
                limit: MAX_OPEN_NODES,
                path: path.clone(),
            });
        }
        self.open_nodes += 1;
        Ok(())
    }

    /// The step for `path`, reached through `dentry`.
    fn path(
        &mut self,
        path: &Path,
        dentry: Option<&Dentry>,
        depth: usize,
    ) -> Result<DelegateTree, DelegateError> {
        self.enter(path, depth)?;
        self.lookups += 1;
        if self.lookups > MAX_LOOKUPS {
            self.open_nodes -= 1;
            return Err(DelegateError::TooManyLookups {
                limit: MAX_LOOKUPS,
                path: path.clone(),
            });
        }
        let step = self.path_node(path, depth);
        self.open_nodes -= 1;
        Ok(DelegateTree {
            path: path.clone(),
            dentry: dentry.cloned(),
            node: step?,
        })
    }

    fn path_node(&mut self, path: &Path, depth: usize) -> Result<DelegateNode, DelegateError> {
        let mut steps = Vec::new();
        for (dentry, residual) in self.dtab.matching(path) {
            let next = self.dst(&dentry.dst, residual, path, dentry, depth + 1)?;
            steps.push(next);
        }
        Ok(match steps.len() {
            0 if path.is_namer_name() => DelegateNode::Leaf,
            0 => DelegateNode::Neg,
            1 => DelegateNode::Delegate(Box::new(steps.remove(0))),
            _ => DelegateNode::Alt(steps),
        })
    }

    /// The step for a dentry's tree applied to `from` (with `residual`).
    fn dst(
        &mut self,
        tree: &NameTree<Path>,
        residual: &[Label],
        from: &Path,
        dentry: &Dentry,
        depth: usize,
    ) -> Result<DelegateTree, DelegateError> {
        if let NameTree::Leaf(leaf) = tree {
            return self.path(&leaf.join(residual), Some(dentry), depth);
        }
        self.enter(from, depth)?;
        let node = self.dst_node(tree, residual, from, dentry, depth);
        self.open_nodes -= 1;
        Ok(DelegateTree {
            path: from.clone(),
            dentry: Some(dentry.clone()),
            node: node?,
        })
    }

    fn dst_node(
        &mut self,
        tree: &NameTree<Path>,
        residual: &[Label],
        from: &Path,
        dentry: &Dentry,
        depth: usize,
    ) -> Result<DelegateNode, DelegateError> {
        Ok(match tree {
            NameTree::Neg => DelegateNode::Neg,
            NameTree::Fail => DelegateNode::Fail,
            NameTree::Empty => DelegateNode::Empty,
            NameTree::Leaf(_) => {
                let next = self.dst(tree, residual, from, dentry, depth)?;
                DelegateNode::Delegate(Box::new(next))
            }
            NameTree::Alt(trees) => DelegateNode::Alt(
                trees
                    .iter()
                    .map(|t| self.dst(t, residual, from, dentry, depth))
                    .collect::<Result<_, _>>()?,
            ),
            NameTree::Union(trees) => DelegateNode::Union(
                trees
                    .iter()
                    .map(|w| Ok((w.weight, self.dst(&w.tree, residual, from, dentry, depth)?)))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }
}
