//! Liveness: each observer decides, with its own clock, which nodes died.
//!
//! Clocks of different VMs are never compared. An observer remembers, per
//! entry, the status word and heartbeat counter it last saw and the local
//! time at which either last changed. A live (or stuck joining) entry that
//! has not changed for longer than the superblock's heartbeat timeout is
//! declared dead with a compare-and-swap on the status word, which also
//! checks the generation: a node that rejoined meanwhile is never hit.
//! All monitor state is local; nothing here is shared except the CAS.

use core::sync::atomic::Ordering;

use crate::format::{Generation, MAX_NODES, NodeState, split_status, status_word};
use crate::shm::Shm;

/// What changed about a node since the previous observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub enum EventKind {
    /// The node is live at a generation this observer had not seen live.
    Joined,
    /// The node left in an orderly way.
    Left,
    /// The incarnation is gone without leaving: declared dead, or replaced
    /// by a newer generation (a restart). Its resources need recovering.
    Died {
        /// True if this observer's compare-and-swap declared it dead.
        declared_here: bool,
    },
}

/// One liveness change of one node incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct LivenessEvent {
    /// Node id.
    pub node: u16,
    /// The incarnation the event is about.
    pub generation: Generation,
    /// What happened.
    pub kind: EventKind,
}

/// Most events one observation can produce (a death and a join per node).
pub const MAX_EVENTS: usize = 2 * MAX_NODES;

/// The events of one observation, in node order (fixed capacity, no allocator).
#[derive(Debug, Clone, Copy)]
pub struct LivenessEvents {
    events: [LivenessEvent; MAX_EVENTS],
    len: usize,
}

impl LivenessEvents {
    const NONE: LivenessEvent = LivenessEvent {
        node: 0,
        generation: Generation(0),
        kind: EventKind::Left,
    };

    fn new() -> Self {
        Self {
            events: [Self::NONE; MAX_EVENTS],
            len: 0,
        }
    }

    fn push(&mut self, node: u16, generation: Generation, kind: EventKind) {
        // At most two events per node by construction; never overflows.
        if let Some(slot) = self.events.get_mut(self.len) {
            *slot = LivenessEvent {
                node,
                generation,
                kind,
            };
            self.len += 1;
        }
    }

    /// The events as a slice.
    pub fn as_slice(&self) -> &[LivenessEvent] {
        self.events.get(..self.len).unwrap_or(&[])
    }

    /// Iterates over the events.
    pub fn iter(&self) -> core::slice::Iter<'_, LivenessEvent> {
        self.as_slice().iter()
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if nothing changed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<'e> IntoIterator for &'e LivenessEvents {
    type Item = &'e LivenessEvent;
    type IntoIter = core::slice::Iter<'e, LivenessEvent>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    /// False until the entry has been observed once.
    valid: bool,
    status: u64,
    heartbeat: u64,
    /// Local time at which `status` or `heartbeat` last changed.
    since_ns: u64,
    /// The generation last reported `Joined` and not yet reported gone.
    reported_live: Option<Generation>,
}

/// Per-observer liveness state: watches heartbeats with the local clock.
#[derive(Debug, Clone)]
pub struct LivenessMonitor {
    local: Option<u16>,
    seen: [Seen; MAX_NODES],
}

impl LivenessMonitor {
    /// A monitor run by node `local` (never declared dead by itself), or by
    /// an outside observer (`None`, e.g. the host inspector).
    pub fn new(local: Option<u16>) -> Self {
        Self {
            local,
            seen: [Seen::default(); MAX_NODES],
        }
    }

    /// Reads the node table once at local time `now_ns`, declares dead the
    /// nodes whose heartbeat stood still longer than the timeout, and
    /// returns what changed since the previous call.
    ///
    /// The first call reports every live node as `Joined` and starts each
    /// node's timeout afresh.
    pub fn observe(&mut self, shm: &Shm<'_>, now_ns: u64) -> LivenessEvents {
        let mut events = LivenessEvents::new();
        let timeout = shm.heartbeat_timeout_ns();
        for node in 0..shm.max_nodes() {
            let (Ok(status), Ok(counter), Some(seen)) = (
                shm.status(node),
                shm.heartbeat_counter(node),
                self.seen.get_mut(usize::from(node)),
            ) else {
                continue;
            };
            let word = status.load(Ordering::Acquire);
            let beat = counter.load(Ordering::Relaxed);
            if !seen.valid || seen.status != word || seen.heartbeat != beat {
                *seen = Seen {
                    valid: true,
                    status: word,
                    heartbeat: beat,
                    since_ns: now_ns,
                    ..*seen
                };
            }
            let (raw, generation) = split_status(word);
            // A corrupt entry is left alone (and never counted live): a join
            // overwrites it, and the inspector shows it meanwhile.
            let Some(state) = NodeState::from_raw(raw) else {
                continue;
            };
            if state != NodeState::Unused && generation.0 == 0 {
                continue;
            }

            if let Some(old) = seen.reported_live {
                let same = generation == old;
                if !(same && state == NodeState::Live) {
                    let kind = if same && state == NodeState::Left {
                        EventKind::Left
                    } else {
                        EventKind::Died {
                            declared_here: false,
                        }
                    };
                    events.push(node, old, kind);
                    seen.reported_live = None;
                }
            }
            if state == NodeState::Live && seen.reported_live.is_none() {
                events.push(node, generation, EventKind::Joined);
                seen.reported_live = Some(generation);
            }

            let watched = matches!(state, NodeState::Live | NodeState::Joining);
            let stalled = now_ns.saturating_sub(seen.since_ns) > timeout;
            if watched && stalled && self.local != Some(node) {
                let dead = status_word(NodeState::Dead, generation);
                if status
                    .compare_exchange(word, dead, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    seen.status = dead;
                    seen.since_ns = now_ns;
                    if seen.reported_live == Some(generation) {
                        seen.reported_live = None;
                        events.push(
                            node,
                            generation,
                            EventKind::Died {
                                declared_here: true,
                            },
                        );
                    }
                }
                // A failed CAS means the entry just changed: judged next time.
            }
        }
        events
    }
}
