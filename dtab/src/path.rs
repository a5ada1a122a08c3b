//! Paths: sequences of non-empty byte-string elements (Finagle's `Path`).

use std::fmt;
use std::sync::Arc;

/// The error for a path element that would be empty: Finagle forbids them
/// (`//a` and `/a/` are not paths).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("path elements must not be empty")]
pub struct EmptyLabel;

/// Characters a path element may contain unescaped, and the characters an
/// element must consist of entirely to be shown unescaped.
const SHOWABLE: [bool; 128] = {
    let mut table = [false; 128];
    let mut b: u8 = 0;
    while b < 128 {
        table[b as usize] = b.is_ascii_alphanumeric()
            || matches!(b, b'_' | b':' | b'.' | b'#' | b'$' | b'%' | b'-');
        b += 1;
    }
    table
};

/// Whether `b` may appear unescaped in a path element.
#[inline]
pub fn is_showable(b: u8) -> bool {
    SHOWABLE.get(usize::from(b)).copied().unwrap_or(false)
}

/// One path element: a non-empty string of bytes, cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label(Arc<[u8]>);

impl Label {
    /// A label from raw bytes.
    pub fn new(bytes: &[u8]) -> Result<Self, EmptyLabel> {
        if bytes.is_empty() {
            Err(EmptyLabel)
        } else {
            Ok(Self(Arc::from(bytes)))
        }
    }

    /// The element's bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether the element prints as itself; otherwise every byte of it
    /// prints as `\xhh` (Finagle's all-or-nothing rule).
    pub fn is_showable(&self) -> bool {
        self.0.iter().all(|&b| is_showable(b))
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_showable() {
            // Showable bytes are ASCII, so this is valid UTF-8.
            f.write_str(std::str::from_utf8(&self.0).map_err(|_| fmt::Error)?)
        } else {
            self.0.iter().try_for_each(|b| write!(f, "\\x{b:02x}"))
        }
    }
}

impl fmt::Debug for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl TryFrom<&str> for Label {
    type Error = EmptyLabel;
    fn try_from(s: &str) -> Result<Self, EmptyLabel> {
        Self::new(s.as_bytes())
    }
}

/// A hierarchical name: `/svc/world` has the elements `svc` and `world`.
/// The empty path shows as `/`. Cloning is a reference-count increment.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[must_use]
pub struct Path(Arc<[Label]>);

impl Default for Path {
    fn default() -> Self {
        Self::empty()
    }
}

impl Path {
    /// The empty path, `/`. Shared: no allocation.
    pub fn empty() -> Self {
        static EMPTY: std::sync::LazyLock<Path> = std::sync::LazyLock::new(|| Path(Arc::from([])));
        EMPTY.clone()
    }

    /// A path of the given elements.
    pub fn new(elems: impl Into<Arc<[Label]>>) -> Self {
        Self(elems.into())
    }

    /// A path from UTF-8 element strings, e.g. `Path::from_strs(["svc", "world"])`.
    pub fn from_strs<'a, I>(elems: I) -> Result<Self, EmptyLabel>
    where
        I: IntoIterator<Item = &'a str>,
    {
        elems
            .into_iter()
            .map(Label::try_from)
            .collect::<Result<Arc<[Label]>, _>>()
            .map(Self)
    }

    /// Parses the concrete syntax (`/a/b`, `/`, `\xHH` escapes).
    pub fn read(s: &str) -> Result<Self, crate::ParseError> {
        crate::parse::path(s)
    }

    /// The elements.
    #[inline]
    pub fn elems(&self) -> &[Label] {
        &self.0
    }

    /// The number of elements.
    #[inline]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether this is the empty path `/`.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `prefix`'s elements are the first elements of this path.
    pub fn starts_with(&self, prefix: &Path) -> bool {
        self.0.starts_with(&prefix.0)
    }

    /// The first `n` elements (all of them if there are fewer).
    pub fn take(&self, n: usize) -> Path {
        if n >= self.len() {
            self.clone()
        } else {
            Self(Arc::from(&self.0[..n]))
        }
    }

    /// All but the first `n` elements.
    pub fn skip(&self, n: usize) -> Path {
        if n == 0 {
            self.clone()
        } else if n >= self.len() {
            Self::empty()
        } else {
            Self(Arc::from(&self.0[n..]))
        }
    }

    /// This path followed by `suffix`: one allocation, whatever the length.
    pub fn join(&self, suffix: &[Label]) -> Path {
        if suffix.is_empty() {
            return self.clone();
        }
        // A chain of slice iterators has an exact length, so this collects
        // straight into the shared allocation.
        Self(self.0.iter().chain(suffix).cloned().collect())
    }

    /// The canonical form (`show` in Finagle); the same as `to_string()`.
    pub fn show(&self) -> String {
        self.to_string()
    }

    /// Whether the first element is `#` or `$`: a name for a namer rather
    /// than one for the dtab to rewrite further.
    pub fn is_namer_name(&self) -> bool {
        self.0
            .first()
            .is_some_and(|l| matches!(l.as_bytes(), b"#" | b"$"))
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("/");
        }
        for label in self.0.iter() {
            write!(f, "/{label}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Path({self})")
    }
}

// Lets maps keyed by `Path` be searched with a slice of elements (a path's
// first few elements, say) without building a new path: `Path` hashes and
// compares exactly as its element slice does.
impl std::borrow::Borrow<[Label]> for Path {
    fn borrow(&self) -> &[Label] {
        &self.0
    }
}

impl std::str::FromStr for Path {
    type Err = crate::ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::read(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn showable_set_is_finagles() {
        let shown: String = (0u8..128)
            .filter(|&b| is_showable(b))
            .map(char::from)
            .collect();
        assert_eq!(
            shown,
            "#$%-.0123456789:ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
        );
        assert!(!is_showable(0xc3));
    }

    #[test]
    fn elements_show_all_or_nothing() {
        let p = Path::new(vec![
            Label::new(b"World:8080").unwrap(),
            Label::new(b"my host").unwrap(),
        ]);
        assert_eq!(
            p.to_string(),
            "/World:8080/\\x6d\\x79\\x20\\x68\\x6f\\x73\\x74"
        );
        assert_eq!(Path::empty().to_string(), "/");
        assert_eq!(Label::new(&[0xff, 0x0a]).unwrap().to_string(), "\\xff\\x0a");
    }

    #[test]
    fn empty_labels_are_refused() {
        assert_eq!(Label::new(b""), Err(EmptyLabel));
        assert_eq!(Path::from_strs(["a", ""]), Err(EmptyLabel));
    }

    #[test]
    fn take_skip_join() {
        let p = Path::from_strs(["a", "b", "c"]).unwrap();
        assert_eq!(p.take(2).to_string(), "/a/b");
        assert_eq!(p.take(9), p);
        assert_eq!(p.skip(1).to_string(), "/b/c");
        assert_eq!(p.skip(3), Path::empty());
        assert_eq!(p.skip(7), Path::empty());
        assert_eq!(p.take(1).join(p.skip(1).elems()), p);
        assert!(p.starts_with(&p.take(2)));
        assert!(!p.take(2).starts_with(&p));
    }

    #[test]
    fn namer_names() {
        assert!(
            Path::from_strs(["#", "io.l5d.consul"])
                .unwrap()
                .is_namer_name()
        );
        assert!(Path::from_strs(["$", "inet"]).unwrap().is_namer_name());
        assert!(!Path::from_strs(["#x"]).unwrap().is_namer_name());
        assert!(!Path::empty().is_namer_name());
    }
}
