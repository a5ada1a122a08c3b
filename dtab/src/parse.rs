//! The dtab grammar, as Finagle's hand-written recursive-descent parser
//! accepts it:
//!
//! ```text
//! dtab     ::= [ dentry ( ';' dentry )* [ ';' ] ]
//! dentry   ::= prefix '=>' tree
//! prefix   ::= '/' [ ( '*' | label ) ( '/' ( '*' | label ) )* ]
//! tree     ::= term ( '|' term )*            -- Alt when more than one
//! term     ::= weighted ( '&' weighted )*    -- Union when more than one
//! weighted ::= [ number '*' ] simple         -- a lone term's weight is dropped
//! simple   ::= '(' tree ')' | path | '!' | '~' | '$'
//! path     ::= '/' [ label ( '/' label )* ]
//! label    ::= ( [0-9A-Za-z_:.#$%-] | '\x' hex hex )+
//! number   ::= ( digit | '.' )+              -- at most one '.'
//! ```
//!
//! Whitespace (Java's `Character.isWhitespace`) and `#` comments running to
//! the end of the line may stand before any token; `#` inside a label is an
//! ordinary character.

use std::fmt;

use crate::path::is_showable;
use crate::tree::{DEFAULT_WEIGHT, Weighted};
use crate::{Dentry, Dtab, Label, NameTree, Path, Prefix, PrefixElem};

/// How deeply parentheses may nest. Finagle has no limit; this one keeps a
/// hostile header from exhausting the stack, far above any real dtab.
pub const MAX_NESTING: usize = 100;

/// Why the input is not a dtab, a tree or a path, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("error at offset {offset}: {kind}")]
pub struct ParseError {
    /// Byte offset into the input of the character that could not be accepted.
    pub offset: usize,
    pub kind: ParseErrorKind,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// Another token was needed here.
    Unexpected {
        expected: &'static str,
        found: Found,
    },
    /// Parentheses nest deeper than [`MAX_NESTING`].
    TooDeep,
    /// A union weight too large to represent.
    WeightOutOfRange,
}

impl fmt::Display for ParseErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unexpected { expected, found } => {
                write!(f, "expected {expected} but found {found}")
            }
            Self::TooDeep => write!(f, "parentheses nested deeper than {MAX_NESTING} levels"),
            Self::WeightOutOfRange => f.write_str("weight is out of range"),
        }
    }
}

/// What stood where something else was expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    EndOfInput,
    Char(char),
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EndOfInput => f.write_str("end of input"),
            Self::Char(c) => write!(f, "'{}'", c.escape_debug()),
        }
    }
}

pub(crate) fn path(s: &str) -> Result<Path, ParseError> {
    Parser::new(s).all(Parser::path)
}

pub(crate) fn name_tree(s: &str) -> Result<NameTree<Path>, ParseError> {
    Parser::new(s).all(Parser::tree)
}

pub(crate) fn prefix(s: &str) -> Result<Prefix, ParseError> {
    Parser::new(s).all(Parser::prefix)
}

pub(crate) fn dentry(s: &str) -> Result<Dentry, ParseError> {
    Parser::new(s).all(Parser::dentry)
}

pub(crate) fn dtab(s: &str) -> Result<Dtab, ParseError> {
    let mut p = Parser::new(s);
    let dtab = p.dtab()?;
    p.skip_whitespace();
    p.expect_end("';' or end of input")?;
    Ok(dtab)
}

const EXPECTED_TREE: &str = "a name tree ('/', '(', '!', '~' or '$')";
const EXPECTED_LABEL: &str = "a label character";

struct Parser<'a> {
    input: &'a str,
    bytes: &'a [u8],
    pos: usize,
    nesting: usize,
}

impl<'a> Parser<'a> {
    fn new(input: &'a str) -> Self {
        Self {
            input,
            bytes: input.as_bytes(),
            pos: 0,
            nesting: 0,
        }
    }

    fn all<T>(mut self, item: fn(&mut Self) -> Result<T, ParseError>) -> Result<T, ParseError> {
        let value = item(&mut self)?;
        self.skip_whitespace();
        self.expect_end("end of input")?;
        Ok(value)
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, b: u8, expected: &'static str) -> Result<(), ParseError> {
        if self.eat(b) {
            Ok(())
        } else {
            Err(self.unexpected(expected))
        }
    }

    fn expect_end(&self, expected: &'static str) -> Result<(), ParseError> {
        if self.pos >= self.bytes.len() {
            Ok(())
        } else {
            Err(self.unexpected(expected))
        }
    }

    fn unexpected(&self, expected: &'static str) -> ParseError {
        let found = self
            .input
            .get(self.pos..)
            .and_then(|rest| rest.chars().next())
            .map_or(Found::EndOfInput, Found::Char);
        ParseError {
            offset: self.pos,
            kind: ParseErrorKind::Unexpected { expected, found },
        }
    }

    /// Skips whitespace and `#` comments (to the end of the line).
    fn skip_whitespace(&mut self) {
        while let Some(b) = self.peek() {
            match b {
                b'#' => {
                    self.pos = self.bytes[self.pos..]
                        .iter()
                        .position(|&c| c == b'\n')
                        .map_or(self.bytes.len(), |i| self.pos + i + 1);
                }
                b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0x1c..=0x1f | b' ' => self.pos += 1,
                0x80.. => match self.input.get(self.pos..).and_then(|r| r.chars().next()) {
                    Some(c) if is_java_whitespace(c) => self.pos += c.len_utf8(),
                    _ => return,
                },
                _ => return,
            }
        }
    }

    fn is_label_start(&self) -> bool {
        self.peek().is_some_and(|b| is_showable(b) || b == b'\\')
    }

    fn label(&mut self) -> Result<Label, ParseError> {
        let start = self.pos;
        while self.peek().is_some_and(is_showable) {
            self.pos += 1;
        }
        if self.peek() != Some(b'\\') {
            if self.pos == start {
                return Err(self.unexpected(EXPECTED_LABEL));
            }
            // The common case: no escapes, one allocation.
            return Label::new(&self.bytes[start..self.pos])
                .map_err(|_| self.unexpected(EXPECTED_LABEL));
        }
        let mut buf = self.bytes[start..self.pos].to_vec();
        loop {
            match self.peek() {
                Some(b) if is_showable(b) => {
                    buf.push(b);
                    self.pos += 1;
                }
                Some(b'\\') => {
                    self.pos += 1;
                    self.expect(b'x', "'x'")?;
                    let hi = self.hex_digit()?;
                    let lo = self.hex_digit()?;
                    buf.push(hi << 4 | lo);
                }
                _ => break,
            }
        }
        Label::new(&buf).map_err(|_| self.unexpected(EXPECTED_LABEL))
    }

    fn hex_digit(&mut self) -> Result<u8, ParseError> {
        let digit = self
            .peek()
            .and_then(|b| char::from(b).to_digit(16))
            .and_then(|d| u8::try_from(d).ok())
            .ok_or_else(|| self.unexpected("a hex digit"))?;
        self.pos += 1;
        Ok(digit)
    }

    fn path(&mut self) -> Result<Path, ParseError> {
        self.skip_whitespace();
        self.expect(b'/', "'/'")?;
        if !self.is_label_start() {
            return Ok(Path::empty());
        }
        let mut labels = Vec::new();
        loop {
            labels.push(self.label()?);
            if !self.eat(b'/') {
                return Ok(Path::new(labels));
            }
        }
    }

    fn prefix(&mut self) -> Result<Prefix, ParseError> {
        self.skip_whitespace();
        self.expect(b'/', "'/'")?;
        if !(self.is_label_start() || self.peek() == Some(b'*')) {
            return Ok(Prefix::empty());
        }
        let mut elems = Vec::new();
        loop {
            if self.eat(b'*') {
                elems.push(PrefixElem::Any);
            } else {
                elems.push(PrefixElem::Label(self.label()?));
            }
            if !self.eat(b'/') {
                return Ok(Prefix::new(elems));
            }
        }
    }

    fn tree(&mut self) -> Result<NameTree<Path>, ParseError> {
        let mut alts = Vec::new();
        loop {
            alts.push(self.term()?);
            self.skip_whitespace();
            if !self.eat(b'|') {
                break;
            }
        }
        Ok(if alts.len() == 1 {
            alts.pop().unwrap_or(NameTree::Neg)
        } else {
            NameTree::Alt(alts)
        })
    }

    fn term(&mut self) -> Result<NameTree<Path>, ParseError> {
        let mut branches = Vec::new();
        loop {
            branches.push(self.weighted()?);
            self.skip_whitespace();
            if !self.eat(b'&') {
                break;
            }
        }
        Ok(if branches.len() == 1 {
            branches.pop().map_or(NameTree::Neg, |w| w.tree)
        } else {
            NameTree::Union(branches)
        })
    }

    fn weighted(&mut self) -> Result<Weighted<Path>, ParseError> {
        self.skip_whitespace();
        let weight = if self.peek().is_some_and(is_number_char) {
            let w = self.number()?;
            self.skip_whitespace();
            self.expect(b'*', "'*'")?;
            w
        } else {
            DEFAULT_WEIGHT
        };
        Ok(Weighted::new(weight, self.simple()?))
    }

    fn number(&mut self) -> Result<f64, ParseError> {
        let start = self.pos;
        let mut seen_dot = false;
        while let Some(b) = self.peek().filter(|&b| is_number_char(b)) {
            if b == b'.' {
                if seen_dot {
                    return Err(self.unexpected("a digit"));
                }
                seen_dot = true;
            }
            self.pos += 1;
        }
        let text = &self.input[start..self.pos];
        if text == "." {
            return Err(ParseError {
                offset: start,
                kind: ParseErrorKind::Unexpected {
                    expected: "a weight",
                    found: Found::Char('.'),
                },
            });
        }
        match text.parse::<f64>() {
            Ok(w) if w.is_finite() => Ok(w),
            _ => Err(ParseError {
                offset: start,
                kind: ParseErrorKind::WeightOutOfRange,
            }),
        }
    }

    fn simple(&mut self) -> Result<NameTree<Path>, ParseError> {
        self.skip_whitespace();
        match self.peek() {
            Some(b'(') => {
                if self.nesting >= MAX_NESTING {
                    return Err(ParseError {
                        offset: self.pos,
                        kind: ParseErrorKind::TooDeep,
                    });
                }
                self.pos += 1;
                self.nesting += 1;
                let tree = self.tree()?;
                self.nesting -= 1;
                self.skip_whitespace();
                self.expect(b')', "')'")?;
                Ok(tree)
            }
            Some(b'/') => Ok(NameTree::Leaf(self.path()?)),
            Some(b'!') => {
                self.pos += 1;
                Ok(NameTree::Fail)
            }
            Some(b'~') => {
                self.pos += 1;
                Ok(NameTree::Neg)
            }
            Some(b'$') => {
                self.pos += 1;
                Ok(NameTree::Empty)
            }
            _ => Err(self.unexpected(EXPECTED_TREE)),
        }
    }

    fn dentry(&mut self) -> Result<Dentry, ParseError> {
        let prefix = self.prefix()?;
        self.skip_whitespace();
        self.expect(b'=', "'=>'")?;
        self.expect(b'>', "'=>'")?;
        let dst = self.tree()?;
        Ok(Dentry::new(prefix, dst))
    }

    fn dtab(&mut self) -> Result<Dtab, ParseError> {
        let mut dentries = Vec::new();
        loop {
            self.skip_whitespace();
            if self.pos < self.bytes.len() {
                dentries.push(self.dentry()?);
                self.skip_whitespace();
            }
            if !self.eat(b';') {
                return Ok(Dtab::new(dentries));
            }
        }
    }
}

fn is_number_char(b: u8) -> bool {
    b.is_ascii_digit() || b == b'.'
}

/// Java's `Character.isWhitespace` outside ASCII: the Unicode space,
/// line and paragraph separators, less the non-breaking spaces.
fn is_java_whitespace(c: char) -> bool {
    matches!(
        c,
        '\u{1680}' | '\u{2000}'..='\u{2006}' | '\u{2008}'..='\u{200a}' | '\u{2028}' | '\u{2029}' | '\u{205f}' | '\u{3000}'
    )
}
