//! What a driver sends to its peers when a peer's backlog is full.
//!
//! Owns the per-peer queues of messages the transport could not take yet
//! ([`Transport::send_or_hold`] gave them back), and sends them in order,
//! before anything newer to the same peer, as acknowledgements make room.
//! Both drivers ([`crate::api`] and [`crate::daemon`]) send through it:
//! dropping one message of a burst — an unlock, a heartbeat, the leave
//! itself — would leave the peer with a wrong picture of this node, and a
//! lost heartbeat can cost a lease the peer never saw renewed.
//!
//! It touches no protocol state: it only orders bytes for the transport.

use crate::resource::NodeId;
use crate::transport::Transport;
use std::collections::{BTreeMap, VecDeque};
use tracing::warn;

/// Most messages held back for one peer whose backlog is full. A burst
/// (a node giving up ten thousand locks at unmount) fits many times over;
/// past this the peer is not acknowledging at all, and the membership's
/// failure detection deals with it.
pub const MAX_HELD: usize = 1 << 20;

#[derive(Debug, Default)]
pub struct Outbox {
    held: BTreeMap<NodeId, VecDeque<Vec<u8>>>,
}

impl Outbox {
    pub fn new() -> Outbox {
        Outbox::default()
    }

    /// Sends `payload` to `to` through `transport`, after what is held for
    /// `to`. A full backlog holds the message instead of dropping it. An
    /// error means the message is lost: the transport refused it (closed,
    /// unknown peer, too large) or `MAX_HELD` are already waiting.
    pub fn send(
        &mut self,
        transport: &Transport,
        to: NodeId,
        payload: Vec<u8>,
    ) -> Result<(), String> {
        let q = self.held.entry(to).or_default();
        let back = if q.is_empty() {
            match transport.send_or_hold(to, payload) {
                Ok(None) => return Ok(()),
                Ok(Some(p)) => p,
                Err(e) => return Err(e.to_string()),
            }
        } else {
            payload
        };
        if q.len() >= MAX_HELD {
            return Err(format!(
                "{MAX_HELD} messages held for node {to}, whose backlog stays full: dropped"
            ));
        }
        q.push_back(back);
        Ok(())
    }

    /// Sends what was held back, oldest first, while the backlogs allow.
    /// True when nothing is held any more. `me` names this node in logs.
    pub fn send_held(&mut self, transport: &Transport, me: NodeId) -> bool {
        let peers: Vec<NodeId> = self.held.keys().copied().collect();
        for to in peers {
            let Some(mut q) = self.held.remove(&to) else {
                continue;
            };
            while let Some(p) = q.pop_front() {
                match transport.send_or_hold(to, p) {
                    Ok(None) => {}
                    Ok(Some(p)) => {
                        q.push_front(p);
                        break;
                    }
                    Err(e) => {
                        warn!(node = me, peer = to, error = %e, "send of a held message failed");
                    }
                }
            }
            if !q.is_empty() {
                self.held.insert(to, q);
            }
        }
        self.held.is_empty()
    }

    /// Messages held for all peers together.
    pub fn len(&self) -> usize {
        self.held.values().map(VecDeque::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}
