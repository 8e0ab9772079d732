//! A lambda version's outbound HTTP policy: the `allowed_outbound_hosts` allow-list and
//! the bounds on one request's calls. Pure data and matching; the hooks that enforce it
//! on each call are in `outbound`. Depends on `config` and `model`.

use std::time::Duration;

use crate::model::HostPattern;

/// Bounds on the outbound calls of one request.
#[derive(Debug, Clone, Copy)]
pub struct OutboundLimits {
    /// Calls one request may make.
    pub max_requests: u32,
    /// Connecting.
    pub connect_timeout: Duration,
    /// First byte of the response, and between its bytes.
    pub response_timeout: Duration,
    /// Response body bytes.
    pub max_response_bytes: u64,
    /// Whether non-public destination addresses may be reached.
    pub allow_private: bool,
}

impl From<&crate::config::Sandbox> for OutboundLimits {
    fn from(sandbox: &crate::config::Sandbox) -> Self {
        Self {
            max_requests: sandbox.max_outbound_requests,
            connect_timeout: Duration::from_millis(sandbox.outbound_connect_timeout_ms),
            response_timeout: Duration::from_millis(sandbox.outbound_response_timeout_ms),
            max_response_bytes: sandbox.max_outbound_response_bytes,
            allow_private: sandbox.allow_private_outbound,
        }
    }
}

/// A lambda version's outbound policy.
#[derive(Debug, Clone)]
pub struct OutboundPolicy {
    patterns: Vec<HostPattern>,
    limits: OutboundLimits,
}

impl OutboundPolicy {
    /// The policy of `allowed_outbound_hosts` (already validated: invalid entries are
    /// skipped so they can never widen it).
    pub fn new(allowed: &[String], limits: OutboundLimits) -> Self {
        Self {
            patterns: allowed
                .iter()
                .filter_map(|p| HostPattern::parse(p).ok())
                .collect(),
            limits,
        }
    }

    /// The bounds on one request's calls.
    pub fn limits(&self) -> OutboundLimits {
        self.limits
    }

    /// Whether a request to the URI's authority is allowed.
    pub fn admits(&self, uri: &http::Uri) -> bool {
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let default_port = if https { 443 } else { 80 };
        let Some(host) = uri.host() else {
            return false;
        };
        let port = uri.port_u16().unwrap_or(default_port);
        self.patterns
            .iter()
            .any(|p| p.admits(host, port, default_port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(patterns: &[&str]) -> OutboundPolicy {
        let owned: Vec<String> = patterns.iter().map(|p| (*p).to_owned()).collect();
        OutboundPolicy::new(
            &owned,
            OutboundLimits {
                max_requests: 1,
                connect_timeout: Duration::from_secs(1),
                response_timeout: Duration::from_secs(1),
                max_response_bytes: 1,
                allow_private: false,
            },
        )
    }

    fn admits(p: &OutboundPolicy, uri: &str) -> bool {
        p.admits(&uri.parse().unwrap())
    }

    #[test]
    fn allow_list_matching() {
        let p = policy(&["127.0.0.1:5210", "*.example.com", "api.test:*"]);
        assert!(admits(&p, "http://127.0.0.1:5210/x"));
        assert!(!admits(&p, "http://127.0.0.1:5211/x"));
        assert!(!admits(&p, "http://127.0.0.2:5210/x"));
        assert!(admits(&p, "https://a.example.com/"));
        assert!(admits(&p, "http://A.B.Example.com/"));
        assert!(!admits(&p, "https://example.com/"));
        assert!(!admits(&p, "https://evilexample.com/"));
        assert!(!admits(&p, "https://a.example.com:8443/"));
        assert!(admits(&p, "http://api.test:9999/"));
        assert!(!admits(&policy(&[]), "http://127.0.0.1/"));
        assert!(admits(&policy(&["*:*"]), "http://anything:1/"));
        // An invalid entry never widens the policy.
        assert!(!admits(&policy(&["http://x"]), "http://x/"));
    }
}
