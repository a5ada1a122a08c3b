//! Every stored policy by prefix, and the match for a service name.

use std::collections::BTreeMap;
use std::sync::Arc;

use ecsmesh_dtab::Path;

use crate::{PolicyError, ServicePolicy};

/// A stored policy and its version (the store's, as for dtabs).
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned {
    pub policy: Arc<ServicePolicy>,
    pub version: u64,
}

/// The policy that applies to a service, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Matched<'a> {
    /// The most specific prefix of the service name that has a policy.
    pub prefix: &'a Path,
    pub policy: &'a Versioned,
}

/// Policies by service-name prefix.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicySet(BTreeMap<Path, Versioned>);

/// The longest prefix a policy may be stored under, in bytes.
pub const MAX_PREFIX_BYTES: usize = 256;

/// Checks a prefix a policy is written for: a dtab path (`/svc/payments`),
/// not the root (a policy for everything is the agent's configuration), at
/// most [`MAX_PREFIX_BYTES`]; returns it in canonical form.
///
/// # Errors
/// Not a path, the root, or too long.
pub fn parse_prefix(text: &str) -> Result<Path, PolicyError> {
    let bad = |message: String| PolicyError::Prefix {
        prefix: text.chars().take(64).collect(),
        message,
    };
    if text.len() > MAX_PREFIX_BYTES {
        return Err(bad(format!("longer than {MAX_PREFIX_BYTES} bytes")));
    }
    let path = Path::read(text).map_err(|e| bad(e.to_string()))?;
    if path.is_empty() {
        return Err(bad(
            "the root matches every service: set defaults in the agent's configuration".to_owned(),
        ));
    }
    Ok(path)
}

impl PolicySet {
    pub fn new(policies: BTreeMap<Path, Versioned>) -> Self {
        Self(policies)
    }

    /// The policy for `service` (a logical name such as `/svc/payments/v2`):
    /// the one stored under its longest prefix, label by label, so
    /// `/svc/pay` does not match `/svc/payments`.
    pub fn matching(&self, service: &Path) -> Option<Matched<'_>> {
        (1..=service.len()).rev().find_map(|n| {
            self.0
                .get_key_value(&service.take(n))
                .map(|(prefix, policy)| Matched { prefix, policy })
        })
    }

    /// The policy stored under exactly `prefix`.
    pub fn get(&self, prefix: &Path) -> Option<&Versioned> {
        self.0.get(prefix)
    }

    pub fn insert(&mut self, prefix: Path, policy: Versioned) {
        self.0.insert(prefix, policy);
    }

    pub fn remove(&mut self, prefix: &Path) -> Option<Versioned> {
        self.0.remove(prefix)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Path, &Versioned)> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
