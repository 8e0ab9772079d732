//! A tasks lambda: `POST /split` with `{"text": "..."}` splits the text into one subtask
//! per non-empty line; `POST /execute` with a subtask counts its words.

use luna_lambda_sdk::{TaskError, Tasks, tasks};
use serde_json::{Value, json};

struct WordCount;

#[tasks]
impl Tasks for WordCount {
    fn split_content(content: Value) -> Result<Vec<Value>, TaskError> {
        let text = content
            .get("text")
            .and_then(Value::as_str)
            .ok_or("content must be {\"text\": string}")?;
        Ok(text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .enumerate()
            .map(|(index, line)| json!({ "index": index, "line": line }))
            .collect())
    }

    fn execute_subtask(content: Value) -> Result<Value, TaskError> {
        let line = content
            .get("line")
            .and_then(Value::as_str)
            .ok_or("a subtask must be {\"index\": n, \"line\": string}")?;
        Ok(json!({
            "index": content.get("index").cloned().unwrap_or(Value::Null),
            "words": line.split_whitespace().count(),
        }))
    }
}
