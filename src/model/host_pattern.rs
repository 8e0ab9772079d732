//! `allowed_outbound_hosts` entries: `host[:port]` patterns parsed once, at the edge,
//! and matched against the authority of a guest's outbound request. Pure; no
//! dependencies.

/// Which hosts a pattern admits.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    /// `*`: every host.
    Any,
    /// `example.com`.
    Exact(String),
    /// `*.example.com`: every subdomain of `example.com`, not `example.com` itself.
    Subdomain(String),
}

/// Which ports a pattern admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortMatch {
    /// No port given: the scheme's default port (80 for http, 443 for https).
    SchemeDefault,
    /// `:*`.
    Any,
    /// `:8080`.
    Exact(u16),
}

/// One entry of `allowed_outbound_hosts`: `host[:port]`, where host may be `*` or start
/// with `*.` and port may be `*`. IPv6 addresses are written in brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    host: HostMatch,
    port: PortMatch,
}

impl HostPattern {
    /// Parses one pattern; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| Err(format!("'{text}' is not host[:port]: {why}"));
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let Some((host, after)) = rest.split_once(']') else {
                return bad("unclosed '['");
            };
            let port = match after {
                "" => None,
                p => match p.strip_prefix(':') {
                    Some(p) => Some(p),
                    None => return bad("expected ':' after ']'"),
                },
            };
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return bad("the bracketed host is not an IPv6 address");
            }
            (format!("[{}]", host.to_ascii_lowercase()), port)
        } else {
            match text.rsplit_once(':') {
                Some((host, port)) => (host.to_ascii_lowercase(), Some(port)),
                None => (text.to_ascii_lowercase(), None),
            }
        };
        let port = match port {
            None => PortMatch::SchemeDefault,
            Some("*") => PortMatch::Any,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => PortMatch::Exact(p),
                _ => return bad("the port must be 1..65535 or '*'"),
            },
        };
        let host = if host == "*" {
            HostMatch::Any
        } else if let Some(domain) = host.strip_prefix("*.") {
            if !valid_hostname(domain) {
                return bad("the domain after '*.' is not a host name");
            }
            HostMatch::Subdomain(domain.to_owned())
        } else if host.starts_with('[') || valid_hostname(&host) {
            HostMatch::Exact(host)
        } else {
            return bad("the host must be a name, an IP address, '*' or '*.domain'");
        };
        Ok(Self { host, port })
    }

    /// Whether a request to `host:port` (with the scheme's default port) is admitted.
    pub fn admits(&self, host: &str, port: u16, scheme_default: u16) -> bool {
        let port_ok = match self.port {
            PortMatch::SchemeDefault => port == scheme_default,
            PortMatch::Any => true,
            PortMatch::Exact(p) => p == port,
        };
        port_ok
            && match &self.host {
                HostMatch::Any => true,
                HostMatch::Exact(h) => h.eq_ignore_ascii_case(host),
                HostMatch::Subdomain(domain) => {
                    // Bytes, not str slices: a host with non-ASCII text must not be cut
                    // inside a character (found by fuzzing).
                    let (host, domain) = (host.as_bytes(), domain.as_bytes());
                    host.len() > domain.len() + 1
                        && host[host.len() - domain.len()..].eq_ignore_ascii_case(domain)
                        && host[host.len() - domain.len() - 1] == b'.'
                }
            }
    }
}

fn valid_hostname(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_parse_or_say_why() {
        for ok in [
            "example.com",
            "example.com:8080",
            "*.example.com:*",
            "*",
            "*:*",
            "127.0.0.1:5210",
            "[::1]:80",
            "[::1]",
        ] {
            assert!(HostPattern::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "http://example.com",
            "example.com:0",
            "example.com:70000",
            "ex ample.com",
            "foo.*.com",
            "[::1",
            "[nothost]:80",
            "a..b",
        ] {
            let err = HostPattern::parse(bad).unwrap_err();
            assert!(err.contains("host[:port]"), "{bad}: {err}");
        }
    }

    /// Regression (fuzz target `edge_values`): matching a host holding non-ASCII text
    /// against `*.domain` panicked on a str slice inside a character.
    #[test]
    fn non_ascii_hosts_are_matched_without_panicking() {
        let pattern = HostPattern::parse("*.example.com:*").unwrap();
        assert!(!pattern.admits("m\u{ea}:\u{9d}\u{9d}example.com", 80, 80));
        assert!(!pattern.admits("\u{e9}", 80, 80));
        assert!(pattern.admits("\u{e9}.example.com", 80, 80));
        let short = HostPattern::parse("*.a:*").unwrap();
        assert!(!short.admits("m\u{e9}", 80, 80));
    }
}
