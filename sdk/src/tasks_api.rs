//! The `tasks` lambda type: [`Tasks`] and its error. Export an implementation with
//! [`tasks`](crate::tasks).

use serde_json::Value;

/// A tasks lambda: LUNA splits a task into subtasks with `split_content`, then runs
/// each with `execute_subtask`. Contents and results are JSON.
pub trait Tasks {
    /// The subtasks of the task `content`.
    fn split_content(content: Value) -> Result<Vec<Value>, TaskError>;

    /// The result of one subtask.
    fn execute_subtask(content: Value) -> Result<Value, TaskError>;
}

/// Why a task could not be split or a subtask failed; the caller receives the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError(pub String);

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TaskError {}

impl From<&str> for TaskError {
    fn from(message: &str) -> Self {
        Self(message.to_owned())
    }
}

impl From<String> for TaskError {
    fn from(message: String) -> Self {
        Self(message)
    }
}

impl From<serde_json::Error> for TaskError {
    fn from(e: serde_json::Error) -> Self {
        Self(format!("JSON: {e}"))
    }
}

impl From<crate::kv::KvError> for TaskError {
    fn from(e: crate::kv::KvError) -> Self {
        Self(format!("key-value: {e}"))
    }
}
