//! The message writer: sends that arrive together are written together.
//!
//! Every message takes its group's row lock until its transaction commits, so one transaction
//! per message would bound a busy group to one commit (one WAL flush) at a time. Instead each
//! send queues here; a shard's task takes whatever has queued (up to [`MAX_BATCH`]) and writes
//! each group's share in one transaction, then fans the events out in order and answers every
//! sender. Under light load a batch is one message and nothing waits; under heavy load the
//! batches grow and the flushes are shared. A group always goes to the same shard, so its
//! events leave this replica in `seq` order.

use crate::fanout::Fanout;
use crate::store::{NewMessage, Posted, Store};
use protocol::ids::GroupId;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// The most sends one transaction writes.
pub(crate) const MAX_BATCH: usize = 256;
/// Writer tasks; groups are spread over them.
const SHARDS: usize = 4;
/// Sends queued per shard before senders wait.
const QUEUE: usize = 4096;

type Reply = oneshot::Sender<Result<Posted, Arc<sqlx::Error>>>;

struct Job {
    group: GroupId,
    message: NewMessage,
    reply: Reply,
}

/// Hands sends to the writer tasks.
#[derive(Debug, Clone)]
pub(crate) struct MessageWriter {
    shards: Vec<mpsc::Sender<Job>>,
    hasher: RandomState,
}

/// The writer task has stopped (the process is shutting down).
#[derive(Debug, thiserror::Error)]
pub(crate) enum WriteError {
    #[error("the message writer has stopped")]
    Stopped,
    #[error(transparent)]
    Database(Arc<sqlx::Error>),
}

impl MessageWriter {
    /// Starts the writer tasks. Call within a tokio runtime.
    pub(crate) fn spawn(store: Store, fanout: Fanout) -> Self {
        let shards = (0..SHARDS)
            .map(|_| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(run(store.clone(), fanout.clone(), rx));
                tx
            })
            .collect();
        Self {
            shards,
            hasher: RandomState::new(),
        }
    }

    /// Posts a message; answers once it is committed and fanned out.
    pub(crate) async fn post(
        &self,
        group: GroupId,
        message: NewMessage,
    ) -> Result<Posted, WriteError> {
        let shard = self.hasher.hash_one(group) as usize % self.shards.len();
        let (reply, answer) = oneshot::channel();
        self.shards[shard]
            .send(Job {
                group,
                message,
                reply,
            })
            .await
            .map_err(|_| WriteError::Stopped)?;
        answer
            .await
            .map_err(|_| WriteError::Stopped)?
            .map_err(WriteError::Database)
    }
}

async fn run(store: Store, fanout: Fanout, mut rx: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        // Each group's share, in arrival order.
        let mut order: Vec<GroupId> = Vec::new();
        let mut by_group: HashMap<GroupId, Vec<Job>> = HashMap::new();
        for job in jobs.drain(..) {
            let share = by_group.entry(job.group).or_insert_with(|| {
                order.push(job.group);
                Vec::new()
            });
            share.push(job);
        }
        for group in order {
            let share = by_group.remove(&group).unwrap_or_default();
            let batch: Vec<NewMessage> = share.iter().map(|j| j.message.clone()).collect();
            match store.post_messages(group, &batch).await {
                Ok(outcomes) => {
                    for (job, outcome) in share.into_iter().zip(outcomes) {
                        if let Posted::New(event) = &outcome {
                            fanout.event(event.clone());
                        }
                        let _ = job.reply.send(Ok(outcome));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, %group, "cannot write messages");
                    let e = Arc::new(e);
                    for job in share {
                        let _ = job.reply.send(Err(Arc::clone(&e)));
                    }
                }
            }
        }
    }
}
