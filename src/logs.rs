//! Lambda logs: a bounded, non-blocking sink the hot path writes guest output to,
//! drained by one background task that batches lines into the store.
//! Depends on `model` and `store`.

use std::collections::HashMap;

use tokio::sync::mpsc;

use crate::model::LambdaId;
use crate::store::Store;

/// Lines buffered between guests and the writer; beyond this, lines are dropped
/// (and counted) rather than slowing requests down.
const QUEUE_LINES: usize = 65_536;
/// Lines written per store batch.
const BATCH_LINES: usize = 1024;

/// One line for a lambda's log.
#[derive(Debug)]
struct LogLine {
    lambda: LambdaId,
    text: String,
}

/// Cloneable handle the runtime and lifecycle write lambda log lines to.
#[derive(Debug, Clone)]
pub struct LogSink {
    tx: mpsc::Sender<LogLine>,
    max_line_bytes: usize,
}

impl LogSink {
    /// Starts the writer task; it ends when every sink is dropped.
    pub fn start(store: Store, keep_per_lambda: usize, max_line_bytes: usize) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_LINES);
        tokio::spawn(write_loop(store, rx, keep_per_lambda));
        Self { tx, max_line_bytes }
    }

    /// Queues a line stamped with the time; never blocks. Returns false if dropped.
    pub fn line(&self, lambda: LambdaId, text: &str) -> bool {
        let mut text = text.trim_end_matches(['\r', '\n']).to_owned();
        if text.len() > self.max_line_bytes {
            let mut cut = self.max_line_bytes;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str(" [truncated]");
        }
        let stamped = format!(
            "{} {text}",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
        self.tx
            .try_send(LogLine {
                lambda,
                text: stamped,
            })
            .is_ok()
    }
}

async fn write_loop(store: Store, mut rx: mpsc::Receiver<LogLine>, keep: usize) {
    let mut buf = Vec::with_capacity(BATCH_LINES);
    while rx.recv_many(&mut buf, BATCH_LINES).await > 0 {
        let mut by_lambda: HashMap<LambdaId, Vec<String>> = HashMap::new();
        for line in buf.drain(..) {
            by_lambda.entry(line.lambda).or_default().push(line.text);
        }
        let store = store.clone();
        let written = tokio::task::spawn_blocking(move || {
            for (lambda, lines) in by_lambda {
                // Lines of a lambda deleted meanwhile must not outlive it.
                if !matches!(store.lambda(lambda), Ok(Some(_))) {
                    continue;
                }
                if let Err(e) = store.append_logs(lambda, &lines, keep) {
                    tracing::error!(%lambda, error = %e, "cannot store lambda log lines");
                }
            }
        })
        .await;
        if let Err(e) = written {
            tracing::error!(error = %e, "lambda log writer failed");
        }
    }
}
