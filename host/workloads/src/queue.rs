//! A workload's work queue: opaque items the control plane queues for the workload's
//! agent, delivered at least once and in order.
//!
//! The head of the queue is handed out until it is acknowledged (a final status): an
//! agent processes one item at a time, so asking again means the earlier delivery was
//! lost (the agent crashed, or reconnected elsewhere) and the same item comes back with
//! its delivery count raised. Nothing behind the head is delivered before it, which is
//! what keeps items in order. [`WorkQueue`] is the single-host form; the Redis form
//! (`burrow_host_redis` scripts) keeps the same rules.

use std::collections::VecDeque;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// Items waiting (not yet acknowledged) per workload, at most.
pub const MAX_PENDING: usize = 1000;
/// Longest status detail kept.
pub const MAX_DETAIL: usize = 4096;

/// Where an item stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkState {
    Queued,
    Delivered,
    Running,
    Succeeded,
    Failed,
}

impl WorkState {
    /// Whether the state acknowledges the item (it leaves the queue).
    pub fn is_final(self) -> bool {
        matches!(self, WorkState::Succeeded | WorkState::Failed)
    }

    /// The name used in the stored JSON (and the Redis scripts).
    pub fn as_str(self) -> &'static str {
        match self {
            WorkState::Queued => "queued",
            WorkState::Delivered => "delivered",
            WorkState::Running => "running",
            WorkState::Succeeded => "succeeded",
            WorkState::Failed => "failed",
        }
    }
}

/// An item's status, as the control API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkStatus {
    pub id: String,
    pub state: WorkState,
    pub deliveries: u32,
    pub detail: String,
    pub enqueued_at: u64,
    pub updated_at: u64,
}

/// One delivery of an item to an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: String,
    pub payload: Vec<u8>,
    /// 1 on the first delivery.
    pub delivery: u32,
}

/// Why an update was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("the work queue is full ({MAX_PENDING} items wait)")]
    Full,
    #[error("no work item {0:?}")]
    UnknownItem(String),
}

/// The outcome of an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Updated {
    Yes,
    /// The item had been acknowledged already: a repeated final status changes nothing.
    AlreadyFinal,
}

/// Cuts `detail` to [`MAX_DETAIL`] bytes on a character boundary.
pub fn clip_detail(detail: &str) -> &str {
    if detail.len() <= MAX_DETAIL {
        return detail;
    }
    let mut end = MAX_DETAIL;
    while !detail.is_char_boundary(end) {
        end -= 1;
    }
    &detail[..end]
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Item {
    status: WorkStatus,
    /// Until acknowledged.
    #[serde(with = "b64", default)]
    payload: Vec<u8>,
}

mod b64 {
    use super::*;
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// One workload's queue, held in memory and saved with the single host's state file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkQueue {
    seq: u64,
    pending: VecDeque<Item>,
    /// Acknowledged items, oldest first, the last [`crate::store::DONE_KEPT`] kept.
    done: VecDeque<WorkStatus>,
}

/// The id of the `n`th item: zero-padded so ids sort in enqueue order.
pub fn item_id(n: u64) -> String {
    format!("{n:020}")
}

impl WorkQueue {
    /// Appends an item.
    pub fn enqueue(&mut self, payload: Vec<u8>, now: u64) -> Result<String, QueueError> {
        if self.pending.len() >= MAX_PENDING {
            return Err(QueueError::Full);
        }
        self.seq += 1;
        let id = item_id(self.seq);
        self.pending.push_back(Item {
            status: WorkStatus {
                id: id.clone(),
                state: WorkState::Queued,
                deliveries: 0,
                detail: String::new(),
                enqueued_at: now,
                updated_at: now,
            },
            payload,
        });
        Ok(id)
    }

    /// Hands out the head, counting the delivery.
    pub fn next(&mut self, now: u64) -> Option<Delivery> {
        let head = self.pending.front_mut()?;
        head.status.deliveries += 1;
        if head.status.state == WorkState::Queued {
            head.status.state = WorkState::Delivered;
        }
        head.status.updated_at = now;
        Some(Delivery {
            id: head.status.id.clone(),
            payload: head.payload.clone(),
            delivery: head.status.deliveries,
        })
    }

    /// Records progress; a final state acknowledges the item.
    pub fn update(
        &mut self,
        id: &str,
        state: WorkState,
        detail: &str,
        now: u64,
    ) -> Result<Updated, QueueError> {
        if self.done.iter().any(|d| d.id == id) {
            return Ok(Updated::AlreadyFinal);
        }
        let Some(at) = self.pending.iter().position(|i| i.status.id == id) else {
            return Err(QueueError::UnknownItem(id.to_owned()));
        };
        let item = &mut self.pending[at];
        item.status.state = state;
        item.status.detail = clip_detail(detail).to_owned();
        item.status.updated_at = now;
        if state.is_final() {
            let item = self.pending.remove(at).expect("found above");
            self.done.push_back(item.status);
            while self.done.len() > crate::store::DONE_KEPT {
                self.done.pop_front();
            }
        }
        Ok(Updated::Yes)
    }

    /// Every kept item, oldest first.
    pub fn list(&self) -> Vec<WorkStatus> {
        self.done.iter().cloned().chain(self.pending.iter().map(|i| i.status.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_items_come_in_order_and_the_head_until_acknowledged() {
        let mut q = WorkQueue::default();
        let a = q.enqueue(b"a".to_vec(), 1).unwrap();
        let b = q.enqueue(b"b".to_vec(), 2).unwrap();
        assert!(a < b);
        let first = q.next(3).unwrap();
        assert_eq!((first.id.as_str(), first.payload.as_slice(), first.delivery), (a.as_str(), &b"a"[..], 1));
        // Not acknowledged: asking again is a redelivery of the same item, not the next.
        let again = q.next(4).unwrap();
        assert_eq!((again.id.as_str(), again.delivery), (a.as_str(), 2));
        assert_eq!(q.update(&a, WorkState::Running, "", 5), Ok(Updated::Yes));
        assert_eq!(q.update(&a, WorkState::Succeeded, "ok", 6), Ok(Updated::Yes));
        assert_eq!(q.update(&a, WorkState::Failed, "late", 7), Ok(Updated::AlreadyFinal));
        let second = q.next(8).unwrap();
        assert_eq!((second.id.as_str(), second.delivery), (b.as_str(), 1));
        let states: Vec<_> = q.list().iter().map(|s| (s.id.clone(), s.state, s.detail.clone())).collect();
        assert_eq!(
            states,
            vec![(a, WorkState::Succeeded, "ok".into()), (b, WorkState::Delivered, String::new())]
        );
    }

    #[test]
    fn queue_refuses_unknown_items_and_a_full_queue() {
        let mut q = WorkQueue::default();
        assert_eq!(
            q.update("nope", WorkState::Succeeded, "", 1),
            Err(QueueError::UnknownItem("nope".into()))
        );
        for _ in 0..MAX_PENDING {
            q.enqueue(vec![], 1).unwrap();
        }
        assert_eq!(q.enqueue(vec![], 1), Err(QueueError::Full));
        assert_eq!(q.list().len(), MAX_PENDING);
    }

    #[test]
    fn queue_details_are_clipped_on_a_character_boundary() {
        let long = "é".repeat(MAX_DETAIL);
        let clipped = clip_detail(&long);
        assert!(clipped.len() <= MAX_DETAIL && clipped.len() > MAX_DETAIL - 2);
        assert_eq!(clip_detail("short"), "short");
    }

    #[test]
    fn queue_survives_a_save_and_load() {
        let mut q = WorkQueue::default();
        q.enqueue(vec![0, 255, 7], 1).unwrap();
        let json = serde_json::to_string(&q).unwrap();
        let mut back: WorkQueue = serde_json::from_str(&json).unwrap();
        assert_eq!(back.next(2).unwrap().payload, vec![0, 255, 7]);
    }
}
