//! Outbound HTTP from guests (`wasi:http/outgoing-handler`): closed unless the lambda's
//! `allowed_outbound_hosts` opens it, refused when the destination resolves to a
//! non-public address (unless the operator allows those), bounded in calls per request,
//! connect and response time and response size, and counted in metrics: the `wasi:http`
//! hooks of one request. The policy itself is in `policy`. Depends on `env`, `policy`,
//! `metrics` and `logs`.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::env::GuestEnv;
use crate::metrics::Outbound;

/// The `wasi:http` hooks of one request: the allow-list, its call budget, metrics.
pub struct OutboundHooks {
    env: Arc<GuestEnv>,
    request_id: Arc<str>,
    calls: u32,
}

impl OutboundHooks {
    /// Hooks for one request of the lambda described by `env`.
    pub fn new(env: Arc<GuestEnv>, request_id: Arc<str>) -> Self {
        Self {
            env,
            request_id,
            calls: 0,
        }
    }

    fn refuse(&self, uri: &http::Uri, why: &str) -> SendFuture {
        log_denial(&self.env, &self.request_id, uri, why);
        Box::new(async { Err(HttpError::HttpRequestDenied) })
    }
}

fn log_denial(env: &GuestEnv, request_id: &str, uri: &http::Uri, why: &str) {
    env.metrics.outbound(Outbound::Denied);
    env.log(
        request_id,
        &format!(
            "outbound request to {} denied: {why}",
            uri.authority().map_or("(no host)", |a| a.as_str())
        ),
    );
}

/// Whether `ip` is outside the public internet: loopback, private (RFC 1918, unique
/// local), link-local (where cloud metadata lives), site-local, shared (CGNAT),
/// unspecified, broadcast, multicast, documentation, benchmarking, discard-only,
/// Teredo, ORCHID, local-use NAT64 (64:ff9b:1::/48) or reserved; IPv6 forms that embed
/// an IPv4 address (mapped, translated, compatible, well-known NAT64, 6to4) are judged
/// by that address.
pub fn is_non_public(ip: IpAddr) -> bool {
    fn v4(ip: Ipv4Addr) -> bool {
        let [a, b, c, _] = ip.octets();
        ip.is_loopback()
            || ip.is_private()
            || ip.is_link_local()
            || ip.is_unspecified()
            || ip.is_broadcast()
            || ip.is_multicast()
            || ip.is_documentation()
            || a == 0
            || (a == 100 && (64..128).contains(&b))
            || (a == 192 && b == 0 && c == 0)
            || (a == 198 && (b == 18 || b == 19))
            || (a == 192 && b == 88 && c == 99)
            || a >= 240
    }
    fn v6(ip: Ipv6Addr) -> bool {
        let s = ip.segments();
        let o = ip.octets();
        let embedded = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
        let six_to_four = Ipv4Addr::new(o[2], o[3], o[4], o[5]);
        ip.is_loopback()
            || ip.is_unspecified()
            || ip.is_multicast()
            || (s[0] & 0xfe00) == 0xfc00
            || (s[0] & 0xffc0) == 0xfe80
            // fec0::/10, site-local (deprecated, still routed inside sites).
            || (s[0] & 0xffc0) == 0xfec0
            || (s[0] == 0x2001 && s[1] == 0x0db8)
            // 100::/64 discard-only; 2001::/32 Teredo; 2001:2::/48 benchmarking;
            // 2001:10::/28 and 2001:20::/28 ORCHID.
            || s[..4] == [0x100, 0, 0, 0]
            || (s[0] == 0x2001 && s[1] == 0)
            || (s[0] == 0x2001 && s[1] == 2 && s[2] == 0)
            || (s[0] == 0x2001 && matches!(s[1] & 0xfff0, 0x10 | 0x20))
            // 64:ff9b:1::/48: local-use NAT64, whose IPv4 side is the operator's choice.
            || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)
            || ip.to_ipv4_mapped().is_some_and(v4)
            // ::a.b.c.d (deprecated IPv4-compatible), ::ffff:0:a.b.c.d (IPv4-translated)
            // and 64:ff9b::/96 (well-known NAT64) end in the address; 2002::/16 (6to4)
            // carries it after the prefix.
            || (s[..6] == [0; 6] && v4(embedded))
            || (s[..6] == [0, 0, 0, 0, 0xffff, 0] && v4(embedded))
            || (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && v4(embedded))
            || (s[0] == 0x2002 && v4(six_to_four))
    }
    match ip {
        IpAddr::V4(ip) => v4(ip),
        IpAddr::V6(ip) => v6(ip),
    }
}

/// Whether `ip` is an address of this host's own interfaces, public ones included: a
/// guest must not reach the service's own ports through the host's public address.
/// Binding a socket to an address succeeds only for local addresses (and sends
/// nothing), so no interface list is read.
pub fn is_own_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Why a destination was not pinned.
enum Unpinned {
    /// It resolves to this non-public address or one of this host's.
    NonPublic(IpAddr),
    /// It could not be resolved.
    Failed(HttpError),
}

/// Resolves the request's host and refuses it if any address is non-public. A plain
/// HTTP request is then pointed at the resolved address itself (Host keeps the name);
/// for HTTPS the checked address is returned, for a connection made to it with the
/// name kept for TLS. Either way a second lookup cannot move the request elsewhere
/// (DNS rebinding).
async fn pin_public_address(
    request: &mut http::Request<WasiBody>,
    timeout: Duration,
) -> Result<Option<SocketAddr>, Unpinned> {
    let uri = request.uri();
    let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
    let host = uri
        .host()
        .ok_or(Unpinned::Failed(HttpError::HttpRequestUriInvalid))?;
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addresses: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::time::timeout(timeout, tokio::net::lookup_host((bare, port)))
            .await
            .map_err(|_| Unpinned::Failed(HttpError::DnsTimeout))?
            .map_err(|e| {
                Unpinned::Failed(HttpError::DnsError {
                    rcode: Some(e.to_string()),
                    info_code: None,
                })
            })?
            .collect(),
    };
    let refused = |a: &&SocketAddr| is_non_public(a.ip()) || is_own_address(a.ip());
    if let Some(address) = addresses.iter().find(refused) {
        return Err(Unpinned::NonPublic(address.ip()));
    }
    let Some(first) = addresses.first() else {
        return Err(Unpinned::Failed(HttpError::DestinationNotFound));
    };
    if https {
        return Ok(Some(*first));
    }
    pin_to(request, *first).map_err(Unpinned::Failed)?;
    Ok(None)
}

/// The TLS client guests' HTTPS uses: the web's root certificates, as the default
/// sender of `wasmtime-wasi-http` has them (`None` should the provider refuse its own
/// default protocol versions: then no HTTPS call is made rather than one unchecked).
fn tls_connector() -> Option<tokio_rustls::TlsConnector> {
    static CONNECTOR: std::sync::OnceLock<Option<tokio_rustls::TlsConnector>> =
        std::sync::OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.into(),
            };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .ok()
                .map(|builder| {
                    let config = builder.with_root_certificates(roots).with_no_client_auth();
                    tokio_rustls::TlsConnector::from(Arc::new(config))
                })
        })
        .clone()
}

type SentResponse = (
    http::Response<WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
);

/// Sends an HTTPS request over a connection to `address` (the checked one), with the
/// request's host as the TLS server name: certificates are checked against the name,
/// and no lookup is made.
async fn send_https_to(
    mut request: http::Request<WasiBody>,
    address: SocketAddr,
    options: RequestOptions,
) -> wasmtime_wasi_http::Result<SentResponse> {
    let host = request
        .uri()
        .host()
        .ok_or(HttpError::HttpRequestUriInvalid)?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let name = match bare.parse::<IpAddr>() {
        Ok(ip) => rustls::pki_types::ServerName::from(ip),
        Err(_) => rustls::pki_types::ServerName::try_from(bare.to_owned())
            .map_err(|_| HttpError::HttpRequestUriInvalid)?,
    };
    let unbounded = Duration::from_secs(600);
    let connect_timeout = options.connect_timeout.unwrap_or(unbounded);
    let tcp = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(address))
        .await
        .map_err(|_| HttpError::ConnectionTimeout)?
        .map_err(HttpError::Connect)?;
    let connector = tls_connector().ok_or(HttpError::TlsProtocolError)?;
    let tls = tokio::time::timeout(connect_timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| HttpError::ConnectionTimeout)?
        .map_err(HttpError::Tls)?;
    let (mut sender, connection) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::handshake(wasmtime_wasi_http::io::TokioIo::new(tls)),
    )
    .await
    .map_err(|_| HttpError::ConnectionTimeout)??;
    // The connection ends when the response body and the sender are gone.
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "outbound HTTPS connection ended with an error");
        }
    });
    // The request line names the path only; the Host header keeps the name.
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|_| HttpError::HttpRequestUriInvalid)?;
    let first_byte = options.first_byte_timeout.unwrap_or(unbounded);
    let response = tokio::time::timeout(first_byte, sender.send_request(request))
        .await
        .map_err(|_| HttpError::ConnectionReadTimeout)??;
    let between = options
        .between_bytes_timeout
        .unwrap_or(unbounded)
        .max(Duration::from_nanos(1));
    let response = response.map(|incoming| {
        TimedBody {
            inner: incoming,
            between,
            idle: Box::pin(tokio::time::sleep(between)),
        }
        .boxed_unsync()
    });
    Ok((response, Box::new(async { Ok(()) })))
}

/// A response body whose frames must come within `between` of each other.
struct TimedBody {
    inner: hyper::body::Incoming,
    between: Duration,
    idle: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, HttpError>>> {
        use std::task::Poll;
        match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = tokio::time::Instant::now() + self.between;
                self.idle.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(HttpError::from(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Points a plain HTTP request at `address` itself; the Host header keeps the name.
fn pin_to(request: &mut http::Request<WasiBody>, address: SocketAddr) -> Result<(), HttpError> {
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    *request.uri_mut() = http::Uri::builder()
        .scheme(http::uri::Scheme::HTTP)
        .authority(address.to_string())
        .path_and_query(path)
        .build()
        .map_err(|_| HttpError::HttpRequestUriInvalid)?;
    Ok(())
}

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        let policy = &self.env.outbound;
        if !policy.admits(request.uri()) {
            return self.refuse(request.uri(), "the host is not in allowed_outbound_hosts");
        }
        if self.calls >= policy.limits().max_requests {
            let why = format!(
                "a request may make at most {} outbound calls",
                policy.limits().max_requests
            );
            return self.refuse(request.uri(), &why);
        }
        self.calls += 1;
        let limits = policy.limits();
        // The guest may ask for shorter timeouts, never longer ones.
        let clamp =
            |asked: Option<Duration>, max: Duration| Some(asked.map_or(max, |a| a.min(max)));
        let options = RequestOptions {
            connect_timeout: clamp(
                options.and_then(|o| o.connect_timeout),
                limits.connect_timeout,
            ),
            first_byte_timeout: clamp(
                options.and_then(|o| o.first_byte_timeout),
                limits.response_timeout,
            ),
            between_bytes_timeout: clamp(
                options.and_then(|o| o.between_bytes_timeout),
                limits.response_timeout,
            ),
        };
        let metrics = self.env.metrics.clone();
        let (env, request_id) = (self.env.clone(), self.request_id.clone());
        Box::new(async move {
            let mut request = request;
            let mut https_to = None;
            if !limits.allow_private {
                let original = request.uri().clone();
                let timeout = options.connect_timeout.unwrap_or(limits.connect_timeout);
                match pin_public_address(&mut request, timeout).await {
                    Ok(address) => https_to = address,
                    Err(Unpinned::NonPublic(ip)) => {
                        let why = format!(
                            "it resolves to {ip}, which is not a public address or is \
                             this host's own (the operator's sandbox.allow_private_outbound \
                             is off)"
                        );
                        log_denial(&env, &request_id, &original, &why);
                        return Err(HttpError::DestinationIpProhibited);
                    }
                    Err(Unpinned::Failed(e)) => {
                        metrics.outbound(Outbound::Failed);
                        return Err(e);
                    }
                }
            }
            let sent = match https_to {
                Some(address) => send_https_to(request, address, options).await,
                None => wasmtime_wasi_http::default_send_request(request, Some(options))
                    .await
                    .map(|(response, io)| {
                        let io: Box<dyn Future<Output = _> + Send> = Box::new(io);
                        (response.map(BodyExt::boxed_unsync), io)
                    }),
            };
            match sent {
                Ok((response, io)) => {
                    metrics.outbound(Outbound::Sent);
                    let response = response.map(|body| {
                        CappedBody {
                            inner: body,
                            remaining: limits.max_response_bytes,
                        }
                        .boxed_unsync()
                    });
                    Ok((response, io))
                }
                Err(e) => {
                    metrics.outbound(Outbound::Failed);
                    Err(e)
                }
            }
        })
    }
}

/// An outbound response body that fails once it exceeds the cap.
struct CappedBody<B> {
    inner: B,
    remaining: u64,
}

impl<B> http_body::Body for CappedBody<B>
where
    B: http_body::Body<Data = Bytes, Error = HttpError> + Unpin,
{
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, HttpError>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let len = data.len() as u64;
            if len > self.remaining {
                return std::task::Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(None))));
            }
            self.remaining -= len;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Addresses are only classified here; nothing is ever sent to them.
    #[test]
    fn non_public_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "192.0.0.8",
            "198.18.0.1",
            "192.0.2.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::10.0.0.1",
            "64:ff9b::a00:1",
            "::ffff:0:127.0.0.1",
            "::ffff:0:10.0.0.1",
            "64:ff9b:1::808:808",
            "64:ff9b:1:ffff::1",
            "fec0::1",
            "feff::1",
            "100::1",
            "2001::1",
            "2001:2::1",
            "2001:10::1",
            "2001:20::1",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::1",
            "192.88.99.1",
        ] {
            assert!(is_non_public(ip.parse().unwrap()), "{ip} is not public");
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "93.184.216.34",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2001:4860::8888",
        ] {
            assert!(!is_non_public(ip.parse().unwrap()), "{ip} is public");
        }
    }

    /// Binding only: nothing is sent to any address.
    #[test]
    fn the_hosts_own_addresses_are_recognised() {
        let own = std::process::Command::new("ip")
            .args(["-o", "addr"])
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default();
        let addresses: Vec<IpAddr> = own
            .lines()
            .filter_map(|line| line.split_whitespace().nth(3))
            .filter_map(|cidr| cidr.split('/').next()?.parse().ok())
            // A link-local address binds only with its interface named.
            .filter(|ip: &IpAddr| !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
            .collect();
        for ip in addresses
            .iter()
            .copied()
            .chain(["127.0.0.1".parse().unwrap()])
        {
            assert!(is_own_address(ip), "{ip} is this host's");
        }
        for ip in ["8.8.8.8", "2606:4700::1111"] {
            assert!(
                !is_own_address(ip.parse().unwrap()),
                "{ip} is not this host's"
            );
        }
    }

    fn get(uri: &str) -> http::Request<WasiBody> {
        let body = http_body_util::Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync();
        http::Request::builder()
            .uri(uri)
            .header(http::header::HOST, "kept")
            .body(body)
            .unwrap()
    }

    #[tokio::test]
    async fn private_destinations_are_refused_after_resolution() {
        let timeout = Duration::from_secs(2);
        for uri in [
            "http://127.0.0.1:5210/x",
            "http://localhost:5210/x",
            "https://localhost/x",
            "http://[::1]:80/",
        ] {
            let mut request = get(uri);
            let outcome = pin_public_address(&mut request, timeout).await;
            let outcome = outcome.map(drop);
            assert!(matches!(outcome, Err(Unpinned::NonPublic(_))), "{uri}");
        }
    }

    /// The HTTPS connection goes to the address that was checked, naming the host only
    /// in TLS: a name that does not even resolve reaches the listener on loopback.
    #[tokio::test]
    async fn https_connects_to_the_checked_address_and_names_the_host_in_tls() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let hello = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut first = vec![0u8; 2048];
            let n = socket.read(&mut first).await.unwrap();
            first.truncate(n);
            first
        });
        let options = RequestOptions {
            connect_timeout: Some(Duration::from_secs(2)),
            first_byte_timeout: Some(Duration::from_secs(2)),
            between_bytes_timeout: Some(Duration::from_secs(2)),
        };
        let sent = send_https_to(get("https://pinned.invalid/x"), address, options).await;
        assert!(sent.is_err(), "the listener speaks no TLS");
        let client_hello = hello.await.unwrap();
        assert_eq!(client_hello.first(), Some(&0x16), "a TLS handshake arrived");
        assert!(
            client_hello.windows(14).any(|w| w == b"pinned.invalid"),
            "the server name is the request's host"
        );
    }

    #[test]
    fn a_pinned_request_goes_to_the_checked_address_with_its_host() {
        let mut request = get("http://api.test:8080/q?x=1");
        pin_to(&mut request, "127.0.0.1:8080".parse().unwrap()).unwrap();
        assert_eq!(request.uri(), "http://127.0.0.1:8080/q?x=1");
        assert_eq!(request.headers()[http::header::HOST], "kept");
    }
}
