//! Large snapshots in parts (`SnapshotPart` in mesh.proto).
//!
//! A whole-mesh snapshot is ~390 bytes per endpoint: 3.9 MB at 10,000
//! endpoints. Sent as one gRPC message, it made the controller keep a
//! snapshot-sized encode buffer alive for the life of every agent stream
//! (tonic reuses the buffer it grew), 3.8 MiB per agent. Sent in parts of
//! about [`SNAPSHOT_PART_BYTES`], each stream's buffer stays near that size.
//! Both sides of the split live here so that they cannot disagree.

use prost::Message as _;

use crate::v1::{ControllerMessage, Snapshot, SnapshotPart, controller_message::Kind};

/// The size a snapshot part aims for. Past tonic's 32 KiB yield threshold,
/// so a part goes out as one write; small enough that a thousand streams'
/// buffers stay in tens of megabytes. A single endpoint set larger than this
/// still travels whole, in a part of its own.
pub const SNAPSHOT_PART_BYTES: usize = 64 * 1024;

/// The messages that carry `snapshot`: the snapshot itself when it fits in
/// `part_bytes` (or cannot be split), otherwise `SnapshotPart`s in order.
/// The first part carries every dtab and policy; endpoint sets are never
/// split.
#[must_use]
pub fn split_snapshot(snapshot: Snapshot, part_bytes: usize) -> Vec<ControllerMessage> {
    let Snapshot {
        version,
        epoch,
        dtabs,
        endpoint_sets,
        policies,
    } = snapshot;
    let empty = || Snapshot {
        version,
        epoch: epoch.clone(),
        dtabs: Vec::new(),
        endpoint_sets: Vec::new(),
        policies: Vec::new(),
    };
    let mut parts = Vec::new();
    let mut current = Snapshot {
        dtabs,
        policies,
        ..empty()
    };
    let mut size = current.encoded_len();
    for set in endpoint_sets {
        // The set's length-delimited field: one tag byte, the length, the set.
        let len = set.encoded_len();
        let field = 1 + prost::encoding::encoded_len_varint(len as u64) + len;
        if !current.endpoint_sets.is_empty() && size + field > part_bytes {
            parts.push(std::mem::replace(&mut current, empty()));
            size = current.encoded_len();
        }
        size += field;
        current.endpoint_sets.push(set);
    }
    if parts.is_empty() {
        // It all fits, or it is one set larger than a part: no reason to split.
        return vec![ControllerMessage {
            kind: Some(Kind::Snapshot(current)),
        }];
    }
    parts.push(current);
    let count = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(index, part)| ControllerMessage {
            kind: Some(Kind::SnapshotPart(SnapshotPart {
                snapshot: Some(part),
                index: u32::try_from(index).unwrap_or(u32::MAX),
                last: index + 1 == count,
            })),
        })
        .collect()
}

/// A part that does not continue the snapshot being put together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartError {
    #[error("snapshot part {index} of version {version} carries no snapshot")]
    Empty { version: u64, index: u32 },
    #[error("snapshot part {got} of version {version} arrived where part {expected} was due")]
    OutOfOrder {
        version: u64,
        expected: u32,
        got: u32,
    },
    #[error("snapshot {version} is larger than {limit} bytes by part {index}")]
    TooLarge {
        version: u64,
        index: u32,
        limit: usize,
    },
    #[error(
        "snapshot part {index} belongs to version {got}@{got_epoch}, not to {version}@{epoch} being put together"
    )]
    OtherSnapshot {
        version: u64,
        epoch: String,
        index: u32,
        got: u64,
        got_epoch: String,
    },
}

impl PartError {
    /// The version to NACK.
    #[must_use]
    pub fn version(&self) -> u64 {
        match self {
            Self::Empty { version, .. }
            | Self::OutOfOrder { version, .. }
            | Self::TooLarge { version, .. }
            | Self::OtherSnapshot { version, .. } => *version,
        }
    }
}

/// Puts `SnapshotPart`s back together. After an error it holds nothing and
/// waits for a part 0.
#[derive(Debug)]
pub struct SnapshotAssembler {
    building: Option<Snapshot>,
    next_index: u32,
    /// The encoded size of the parts so far, and its limit: parts lift
    /// gRPC's per-message limit, so the whole needs one of its own.
    bytes: usize,
    limit: usize,
}

impl Default for SnapshotAssembler {
    fn default() -> Self {
        Self::with_limit(crate::MAX_SNAPSHOT_BYTES)
    }
}

impl SnapshotAssembler {
    /// An assembler that refuses snapshots larger than `limit` encoded bytes
    /// (the default is [`crate::MAX_SNAPSHOT_BYTES`]).
    #[must_use]
    pub fn with_limit(limit: usize) -> Self {
        Self {
            building: None,
            next_index: 0,
            bytes: 0,
            limit,
        }
    }

    /// Adds a part; returns the whole snapshot once its last part is in.
    ///
    /// # Errors
    /// A part that is empty, out of order, of another snapshot, or that
    /// takes the whole past the limit; what was put together so far is
    /// dropped.
    pub fn push(&mut self, part: SnapshotPart) -> Result<Option<Snapshot>, PartError> {
        let pushed = self.try_push(part);
        if pushed.is_err() {
            self.reset();
        }
        pushed
    }

    fn try_push(&mut self, part: SnapshotPart) -> Result<Option<Snapshot>, PartError> {
        let index = part.index;
        let Some(piece) = part.snapshot else {
            let version = self.building.as_ref().map_or(0, |b| b.version);
            return Err(PartError::Empty { version, index });
        };
        if index == 0 {
            self.building = Some(Snapshot {
                version: piece.version,
                epoch: piece.epoch.clone(),
                dtabs: Vec::new(),
                endpoint_sets: Vec::new(),
                policies: Vec::new(),
            });
            self.next_index = 0;
            self.bytes = 0;
        }
        let Some(building) = self.building.as_mut() else {
            return Err(PartError::OutOfOrder {
                version: piece.version,
                expected: 0,
                got: index,
            });
        };
        if index != self.next_index {
            return Err(PartError::OutOfOrder {
                version: piece.version,
                expected: self.next_index,
                got: index,
            });
        }
        if piece.version != building.version || piece.epoch != building.epoch {
            return Err(PartError::OtherSnapshot {
                version: building.version,
                epoch: building.epoch.clone(),
                index,
                got: piece.version,
                got_epoch: piece.epoch,
            });
        }
        self.bytes = self.bytes.saturating_add(piece.encoded_len());
        if self.bytes > self.limit {
            return Err(PartError::TooLarge {
                version: building.version,
                index,
                limit: self.limit,
            });
        }
        building.dtabs.extend(piece.dtabs);
        building.endpoint_sets.extend(piece.endpoint_sets);
        building.policies.extend(piece.policies);
        self.next_index += 1;
        Ok(if part.last {
            self.building.take()
        } else {
            None
        })
    }

    /// Drops a half-assembled snapshot (the stream ended, or a whole message
    /// arrived in its place).
    pub fn reset(&mut self) {
        self.building = None;
        self.next_index = 0;
        self.bytes = 0;
    }

    /// Whether a snapshot is half put together.
    #[must_use]
    pub fn in_progress(&self) -> bool {
        self.building.is_some()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::v1::{Endpoint, EndpointSet, NamespaceDtab, SocketAddr};

    fn snapshot(sets: usize, endpoints: usize) -> Snapshot {
        Snapshot {
            version: 7,
            epoch: "e1".into(),
            dtabs: vec![NamespaceDtab {
                namespace: "default".into(),
                dtab: "/svc=>/#/ecs/demo".into(),
            }],
            endpoint_sets: (0..sets)
                .map(|s| EndpointSet {
                    name: format!("/#/ecs/demo/svc{s}"),
                    endpoints: (0..endpoints)
                        .map(|e| Endpoint {
                            addr: Some(SocketAddr {
                                ip: format!("10.0.{s}.{e}"),
                                port: 8080,
                            }),
                            meta: [("task_arn".to_owned(), format!("arn:task/{s}/{e}"))].into(),
                            weight: 0.0,
                        })
                        .collect(),
                })
                .collect(),
            policies: vec![crate::v1::ServicePolicy {
                prefix: "/svc/payments".into(),
                policy: r#"{"timeouts":{"total":"2s"}}"#.into(),
                version: 3,
            }],
        }
    }

    fn parts(messages: Vec<ControllerMessage>) -> Vec<SnapshotPart> {
        messages
            .into_iter()
            .map(|m| match m.kind {
                Some(Kind::SnapshotPart(p)) => p,
                other => panic!("expected a part, got {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_small_snapshot_is_one_message() {
        let s = snapshot(3, 2);
        let messages = split_snapshot(s.clone(), SNAPSHOT_PART_BYTES);
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].kind, Some(Kind::Snapshot(s)));
    }

    #[test]
    fn parts_stay_near_the_bound_and_assemble_to_the_snapshot() {
        let s = snapshot(200, 20);
        let bound = 8 * 1024;
        let parts = parts(split_snapshot(s.clone(), bound));
        assert!(parts.len() > 10, "{} parts", parts.len());
        for (i, p) in parts.iter().enumerate() {
            assert_eq!(p.index as usize, i);
            assert_eq!(p.last, i + 1 == parts.len());
            let len = p.snapshot.as_ref().unwrap().encoded_len();
            assert!(len <= bound, "part {i} is {len} bytes");
        }
        // Dtabs travel once, in the first part.
        assert_eq!(parts[0].snapshot.as_ref().unwrap().dtabs.len(), 1);
        assert_eq!(parts[0].snapshot.as_ref().unwrap().policies.len(), 1);
        assert!(
            parts[1..]
                .iter()
                .all(|p| p.snapshot.as_ref().unwrap().dtabs.is_empty())
        );
        let mut assembler = SnapshotAssembler::default();
        let mut whole = None;
        for p in parts {
            assert!(whole.is_none(), "complete before the last part");
            whole = assembler.push(p).unwrap();
        }
        assert_eq!(whole, Some(s));
        assert!(!assembler.in_progress());
    }

    #[test]
    fn one_set_larger_than_a_part_is_one_snapshot() {
        let s = snapshot(1, 400);
        assert_eq!(
            split_snapshot(s.clone(), 1024),
            vec![ControllerMessage {
                kind: Some(Kind::Snapshot(s))
            }]
        );
    }

    #[test]
    fn a_set_larger_than_a_part_travels_whole() {
        let s = snapshot(3, 400);
        let parts = parts(split_snapshot(s.clone(), 1024));
        assert_eq!(parts.len(), 3);
        let mut assembler = SnapshotAssembler::default();
        let whole = parts
            .into_iter()
            .map(|p| assembler.push(p).unwrap())
            .last()
            .unwrap();
        assert_eq!(whole, Some(s));
    }

    #[test]
    fn out_of_order_and_foreign_parts_are_refused_and_drop_the_assembly() {
        let p = parts(split_snapshot(snapshot(50, 20), 4096));
        let mut a = SnapshotAssembler::default();
        // A part 1 with no part 0.
        assert_eq!(
            a.push(p[1].clone()),
            Err(PartError::OutOfOrder {
                version: 7,
                expected: 0,
                got: 1
            })
        );
        // A skipped part.
        a.push(p[0].clone()).unwrap();
        let err = a.push(p[2].clone()).unwrap_err();
        assert_eq!(err.version(), 7);
        assert!(err.to_string().contains("part 2"), "{err}");
        assert!(!a.in_progress());
        // A part of another version.
        a.push(p[0].clone()).unwrap();
        let mut other = p[1].clone();
        other.snapshot.as_mut().unwrap().version = 8;
        assert!(matches!(
            a.push(other),
            Err(PartError::OtherSnapshot {
                version: 7,
                got: 8,
                ..
            })
        ));
        // A new part 0 starts over, whatever came before.
        a.push(p[0].clone()).unwrap();
        a.push(p[1].clone()).unwrap();
        let mut whole = None;
        for part in p {
            whole = a.push(part).unwrap();
        }
        assert_eq!(whole, Some(snapshot(50, 20)));
    }

    #[test]
    fn a_snapshot_past_the_limit_is_refused_whole() {
        let s = snapshot(50, 20);
        let p = parts(split_snapshot(s.clone(), 4096));
        let size: usize = p
            .iter()
            .map(|p| p.snapshot.as_ref().unwrap().encoded_len())
            .sum();
        let mut a = SnapshotAssembler::with_limit(size - 1);
        let results: Vec<_> = p.iter().cloned().map(|part| a.push(part)).collect();
        let last = p.len() - 1;
        assert!(results[..last].iter().all(|r| matches!(r, Ok(None))));
        assert!(matches!(
            results[last],
            Err(PartError::TooLarge { version: 7, .. })
        ));
        assert!(!a.in_progress());
        // Exactly at the limit, it is whole.
        let mut a = SnapshotAssembler::with_limit(size);
        let whole = p
            .into_iter()
            .map(|part| a.push(part).unwrap())
            .last()
            .unwrap();
        assert_eq!(whole, Some(s));
    }
}
