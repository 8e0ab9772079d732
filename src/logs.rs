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
    // Lines stored per lambda, counted once, then tracked here: trimming must not
    // rescan a lambda's whole log on every batch.
    let mut counts: HashMap<LambdaId, usize> = HashMap::new();
    while rx.recv_many(&mut buf, BATCH_LINES).await > 0 {
        let mut by_lambda: HashMap<LambdaId, Vec<String>> = HashMap::new();
        for line in buf.drain(..) {
            by_lambda.entry(line.lambda).or_default().push(line.text);
        }
        let store = store.clone();
        let mut batch_counts = std::mem::take(&mut counts);
        let written = tokio::task::spawn_blocking(move || {
            for (lambda, lines) in by_lambda {
                // Lines of a lambda deleted meanwhile must not outlive it.
                if !matches!(store.lambda_exists(lambda), Ok(true)) {
                    batch_counts.remove(&lambda);
                    continue;
                }
                let count = batch_counts
                    .entry(lambda)
                    .or_insert_with(|| store.count_logs(lambda));
                if let Err(e) = store.append_logs(lambda, &lines) {
                    tracing::error!(%lambda, error = %e, "cannot store lambda log lines");
                    continue;
                }
                *count += lines.len();
                // Trim in steps (keep + 1/8) so a busy lambda does not trim every batch.
                if *count > keep + keep / 8 {
                    match store.trim_logs(lambda, *count - keep) {
                        Ok(()) => *count = keep,
                        Err(e) => tracing::error!(%lambda, error = %e, "cannot trim lambda logs"),
                    }
                }
            }
            batch_counts
        })
        .await;
        match written {
            Ok(c) => counts = c,
            Err(e) => tracing::error!(error = %e, "lambda log writer failed"),
        }
    }
}
