//! Lambda logs: a bounded, non-blocking sink the hot path writes guest output to,
//! drained by one writer thread that group-commits lines into the store (its async calls
//! run to their end on the thread, in the service's runtime). Depends on `model` and
//! `store`.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use crate::model::LambdaId;
use crate::store::LambdaStore;

/// Lines buffered between guests and the writer; beyond this, lines are dropped
/// (and counted) rather than slowing requests down.
const QUEUE_LINES: usize = 65_536;
/// Lines written per store batch.
const BATCH_LINES: usize = 4096;
/// After the first line of a batch, wait this long for more: one store write and
/// one thread wake-up per window instead of per line.
const BATCH_WINDOW: Duration = Duration::from_millis(20);

/// What the writer receives.
#[derive(Debug)]
enum Message {
    /// One line for a lambda's log.
    Line { lambda: LambdaId, text: String },
    /// Store everything received so far, then acknowledge.
    Flush(std::sync::mpsc::Sender<()>),
}

/// Cloneable handle the runtime and lifecycle write lambda log lines to.
#[derive(Debug, Clone)]
pub struct LogSink {
    tx: SyncSender<Message>,
    max_line_bytes: usize,
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl LogSink {
    /// Starts the writer thread; it ends when every sink is dropped. Called inside the
    /// service's runtime, whose I/O the store's calls may need.
    pub fn start(
        store: Arc<dyn LambdaStore>,
        keep_per_lambda: usize,
        max_line_bytes: usize,
    ) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?;
        let (tx, rx) = sync_channel(QUEUE_LINES);
        std::thread::Builder::new()
            .name("lambda-logs".into())
            .spawn(move || write_loop(&runtime, store.as_ref(), &rx, keep_per_lambda))?;
        Ok(Self {
            tx,
            max_line_bytes,
            dropped: std::sync::Arc::default(),
        })
    }

    /// Waits (blocking, bounded) until every line queued so far is in the store.
    pub fn flush(&self, timeout: Duration) {
        let (ack, done) = std::sync::mpsc::channel();
        let deadline = Instant::now() + timeout;
        let mut message = Message::Flush(ack);
        loop {
            match self.tx.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    message = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return,
            }
        }
        let _ = done.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }

    /// Lines dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Queues a line stamped with the time; never blocks. Returns false if dropped.
    pub fn line(&self, lambda: LambdaId, text: &str) -> bool {
        let text = crate::model::bounded_line(text, self.max_line_bytes);
        let stamped = format!(
            "{} {text}",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
        match self.tx.try_send(Message::Line {
            lambda,
            text: stamped,
        }) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                false
            }
        }
    }
}

fn write_loop(
    runtime: &tokio::runtime::Handle,
    store: &dyn LambdaStore,
    rx: &Receiver<Message>,
    keep: usize,
) {
    // Lines stored per lambda, counted once, then tracked here: trimming must not
    // rescan a lambda's whole log on every batch.
    let mut counts: HashMap<LambdaId, usize> = HashMap::new();
    while let Ok(first) = rx.recv() {
        let mut by_lambda: HashMap<LambdaId, Vec<String>> = HashMap::new();
        let mut acks = Vec::new();
        let mut take =
            |message: Message, by_lambda: &mut HashMap<LambdaId, Vec<String>>| match message {
                Message::Line { lambda, text } => by_lambda.entry(lambda).or_default().push(text),
                Message::Flush(ack) => acks.push(ack),
            };
        take(first, &mut by_lambda);
        let deadline = Instant::now() + BATCH_WINDOW;
        let mut taken = 1;
        while taken < BATCH_LINES {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                // A reader waits on a flush: write what there is now.
                Ok(message @ Message::Flush(_)) => {
                    take(message, &mut by_lambda);
                    break;
                }
                Ok(message) => {
                    take(message, &mut by_lambda);
                    taken += 1;
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        runtime.block_on(write_batch(store, by_lambda, &mut counts, keep));
        for ack in acks {
            let _ = ack.send(());
        }
    }
}

async fn write_batch(
    store: &dyn LambdaStore,
    by_lambda: HashMap<LambdaId, Vec<String>>,
    counts: &mut HashMap<LambdaId, usize>,
    keep: usize,
) {
    for (lambda, lines) in by_lambda {
        // Lines of a lambda deleted meanwhile must not outlive it.
        if !matches!(store.lambda_exists(lambda).await, Ok(true)) {
            counts.remove(&lambda);
            continue;
        }
        let count = match counts.entry(lambda) {
            Entry::Occupied(counted) => counted.into_mut(),
            Entry::Vacant(first) => first.insert(store.count_logs(lambda).await.unwrap_or(0)),
        };
        if let Err(e) = store.append_logs(lambda, &lines).await {
            tracing::error!(%lambda, error = %e, "cannot store lambda log lines");
            continue;
        }
        *count += lines.len();
        // Trim in steps (keep + 1/8) so a busy lambda does not trim every batch.
        if *count > keep + keep / 8 {
            match store.trim_logs(lambda, *count - keep).await {
                Ok(()) => *count = keep,
                Err(e) => tracing::error!(%lambda, error = %e, "cannot trim lambda logs"),
            }
        }
    }
}
