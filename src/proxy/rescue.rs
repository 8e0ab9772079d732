//! The one place proxy failures become responses: each runtime or pod error maps to a
//! LUNA code and status; details of host-side failures go to the log, not the client.

use crate::edge::ApiError;
use crate::model::LambdaId;
use crate::runtime::{InvokeError, PodError};

/// Maps a failed forward to a container lambda's pod. The pod's address is internal:
/// it goes to the log only.
pub fn rescue_pod(error: &PodError, lambda: LambdaId, body_limit: u64) -> ApiError {
    tracing::warn!(%lambda, error = %error, "forwarding to a pod failed");
    match error {
        PodError::Timeout { after, .. } => ApiError::lambda_timeout(format!(
            "Lambda with id '{lambda}' did not answer within {} ms",
            after.as_millis()
        )),
        PodError::BodyTooLarge { .. } => ApiError::too_large("request body", body_limit),
        PodError::Connect { .. } => ApiError::unavailable(format!(
            "Lambda with id '{lambda}' is unavailable: its pod refused the connection"
        )),
        PodError::Broken { .. } => ApiError::unavailable(format!(
            "Lambda with id '{lambda}' is unavailable: its pod closed the connection or answered with invalid HTTP"
        )),
    }
}

/// Maps a failed invocation of `lambda` to the response the caller gets.
pub fn rescue(error: &InvokeError, lambda: LambdaId) -> ApiError {
    match error {
        InvokeError::Overloaded => ApiError::overloaded(format!(
            "Lambda with id '{lambda}' is handling its maximum number of concurrent requests"
        )),
        InvokeError::AccountOverloaded => ApiError::overloaded(format!(
            "Lambda with id '{lambda}' cannot run now: its account is running its maximum number of concurrent requests"
        )),
        InvokeError::MemoryFull => ApiError::overloaded(format!(
            "Lambda with id '{lambda}' cannot run now: the memory the service gives running instances is fully reserved"
        )),
        InvokeError::PoolExhausted => ApiError::overloaded(format!(
            "Lambda with id '{lambda}' cannot run now: every instance slot of the service is in use"
        )),
        InvokeError::Timeout(after) => ApiError::lambda_timeout(format!(
            "Lambda with id '{lambda}' did not answer within {} ms",
            after.as_millis()
        )),
        InvokeError::BodyTooLarge(limit) => ApiError::too_large("request body", *limit),
        InvokeError::TaskInput => ApiError::no_json(),
        InvokeError::TaskRoute { method, path } => {
            if path == crate::runtime::SPLIT_PATH || path == crate::runtime::EXECUTE_PATH {
                ApiError::method_not_allowed(method, path)
            } else {
                ApiError::no_route(path)
            }
        }
        // The guest's own message is the lambda author's to show.
        InvokeError::TaskFailed(msg) => {
            ApiError::execution(format!("Lambda with id '{lambda}' failed: {msg}"))
        }
        InvokeError::Trap(_)
        | InvokeError::MemoryLimit(_)
        | InvokeError::NoResponse
        | InvokeError::GuestError(_)
        | InvokeError::ResponseTooLarge(_) => {
            tracing::info!(%lambda, error = %error, "lambda execution failed");
            ApiError::execution(format!(
                "Lambda with id '{lambda}' failed: {}",
                public_reason(error)
            ))
        }
        InvokeError::Internal(_) => ApiError::internal(error),
    }
}

/// What the caller may learn about a guest failure: the kind, not host internals.
fn public_reason(error: &InvokeError) -> &'static str {
    match error {
        InvokeError::MemoryLimit(_) => "the lambda exceeded its memory limit",
        InvokeError::Trap(_) => "the lambda trapped",
        InvokeError::NoResponse => "the lambda returned without a response",
        InvokeError::ResponseTooLarge(_) => "the lambda's response exceeds the response size limit",
        _ => "the lambda answered with an error instead of a response",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_runtime_error_has_a_luna_code() {
        let id = LambdaId::generate();
        let table = [
            (InvokeError::Overloaded, 503, 42010),
            (InvokeError::PoolExhausted, 503, 42010),
            (InvokeError::Timeout(Duration::from_millis(5)), 504, 42008),
            (InvokeError::Trap("unreachable".into()), 500, 42013),
            (
                InvokeError::MemoryLimit("asked for 2 MiB".into()),
                500,
                42013,
            ),
            (InvokeError::NoResponse, 500, 42013),
            (InvokeError::GuestError("x".into()), 500, 42013),
            (InvokeError::ResponseTooLarge(10), 500, 42013),
            (InvokeError::BodyTooLarge(10), 413, 12047),
            (InvokeError::TaskInput, 400, 12002),
            (InvokeError::TaskFailed("bad task".into()), 500, 42013),
            (
                InvokeError::TaskRoute {
                    method: "GET".into(),
                    path: "/split".into(),
                },
                405,
                12005,
            ),
            (InvokeError::Internal("/secret/path".into()), 500, 1),
        ];
        for (err, status, code) in table {
            let api = rescue(&err, id);
            assert_eq!((api.status.as_u16(), api.code), (status, code), "{err}");
            assert!(!api.detail.contains("/secret/path"));
        }
        let pod = crate::model::Endpoint::Unix("/var/lib/luna/pods/abc/http.sock".into());
        let pod_table = [
            (
                PodError::Connect {
                    pod: pod.clone(),
                    reason: "refused".into(),
                },
                502,
                42009,
            ),
            (
                PodError::Broken {
                    pod: pod.clone(),
                    reason: "reset".into(),
                },
                502,
                42009,
            ),
            (
                PodError::Timeout {
                    pod: pod.clone(),
                    after: Duration::from_millis(5),
                },
                504,
                42008,
            ),
            (PodError::BodyTooLarge { pod }, 413, 12047),
        ];
        for (err, status, code) in pod_table {
            let api = rescue_pod(&err, id, 10);
            assert_eq!((api.status.as_u16(), api.code), (status, code), "{err}");
            assert!(!api.detail.contains("/var/lib"), "{}", api.detail);
        }
    }
}
