//! The first bytes of a WASM request's body, received before the request takes an
//! instance slot (what nginx's request buffering does): a client that sends its body
//! slowly holds a connection, not a slot of the pool nor a concurrency permit. The
//! rest of a larger body streams to the guest as it comes. Depends on nothing else in
//! the crate.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;

/// The body did not bring `max` bytes (or its end) within the time allowed.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} ms", .0.as_millis())]
pub struct BodyTimeout(pub Duration);

/// A body whose first frames were read ahead: they are yielded first, then the rest.
#[derive(Debug)]
pub struct Prebuffered<B> {
    head: VecDeque<Frame<Bytes>>,
    head_bytes: u64,
    /// A failure of the body met while reading ahead, yielded after the head.
    error: Option<std::io::Error>,
    /// What is still to come (none: the body ended while read ahead).
    rest: Option<B>,
}

/// Reads `body` until `max` bytes or its end are in, for at most `within`.
pub async fn prebuffer<B>(
    mut body: B,
    max: usize,
    within: Duration,
) -> Result<Prebuffered<B>, BodyTimeout>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut buffered = Prebuffered {
        head: VecDeque::new(),
        head_bytes: 0,
        error: None,
        rest: None,
    };
    if max == 0 || body.is_end_stream() {
        // Nothing to wait for (a GET, an empty body): no clock read, no timer.
        buffered.rest = Some(body);
        return Ok(buffered);
    }
    let deadline = tokio::time::Instant::now() + within;
    while (buffered.head_bytes as usize) < max && !body.is_end_stream() {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(BodyTimeout(within)),
            Ok(None) => return Ok(buffered),
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    buffered.head_bytes += data.len() as u64;
                }
                buffered.head.push_back(frame);
            }
            Ok(Some(Err(error))) => {
                buffered.error = Some(std::io::Error::other(error.to_string()));
                return Ok(buffered);
            }
        }
    }
    buffered.rest = Some(body);
    Ok(buffered)
}

/// Errors of the rest of the body are passed on as text (the guest sees a failed body
/// either way).
impl<B> Body for Prebuffered<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if let Some(frame) = this.head.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(error) = this.error.take() {
            return Poll::Ready(Some(Err(error)));
        }
        match &mut this.rest {
            Some(rest) => Pin::new(rest)
                .poll_frame(cx)
                .map_err(|e| std::io::Error::other(e.to_string())),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_empty()
            && self.error.is_none()
            && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let head: u64 = self
            .head
            .iter()
            .filter_map(|frame| frame.data_ref().map(|d| d.len() as u64))
            .sum();
        let Some(rest) = &self.rest else {
            return SizeHint::with_exact(head);
        };
        let hint = rest.size_hint();
        let mut sum = SizeHint::new();
        sum.set_lower(hint.lower() + head);
        if let Some(upper) = hint.upper() {
            sum.set_upper(upper + head);
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    #[tokio::test]
    async fn a_small_body_is_read_whole_and_yielded_unchanged() {
        let body = Full::new(Bytes::from_static(b"hello"));
        let buffered = prebuffer(body, 64, Duration::from_secs(1)).await.unwrap();
        assert!(buffered.rest.is_none() || buffered.rest.as_ref().unwrap().is_end_stream());
        assert_eq!(buffered.size_hint().exact(), Some(5));
        let bytes = buffered.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");
    }

    #[tokio::test]
    async fn a_large_body_keeps_its_head_then_streams_the_rest() {
        let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = (0..10)
            .map(|n| Ok(Frame::data(Bytes::from(vec![n; 10]))))
            .collect();
        let body = StreamBody::new(futures::stream::iter(chunks));
        let buffered = prebuffer(body, 25, Duration::from_secs(1)).await.unwrap();
        assert_eq!(buffered.head.len(), 3, "reads ahead only up to the bound");
        let bytes = buffered.collect().await.unwrap().to_bytes();
        assert_eq!(bytes.len(), 100);
        assert_eq!(bytes[95], 9);
    }

    #[tokio::test]
    async fn a_body_that_does_not_come_times_out() {
        let body = StreamBody::new(futures::stream::pending::<
            Result<Frame<Bytes>, std::io::Error>,
        >());
        let error = prebuffer(body, 64, Duration::from_millis(20))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("20 ms"), "{error}");
    }
}
