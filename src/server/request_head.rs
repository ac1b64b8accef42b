//! Connections that must get to the point: a client has the request-head timeout to send the
//! HTTP/2 preface, or the headers of its first HTTP/1.1 request. A socket that stays silent, or
//! dribbles its headers a byte at a time, is disconnected, so that neither can pile up on either
//! port. (Later HTTP/1.1 requests on the gRPC port are bounded by hyper's own 30 s limit.)

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    time::Sleep,
};
use tonic::transport::server::{Connected, TcpConnectInfo};

const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Recognises the end of a connection's request head in the bytes it sends.
#[derive(Debug, Default)]
struct HeadScanner {
    /// Bytes seen so far, for comparing with the HTTP/2 preface.
    seen: usize,
    /// Whether every byte so far matched the preface.
    preface: bool,
    /// The last four bytes, for finding the blank line that ends HTTP/1.1 headers.
    last: [u8; 4],
}

impl HeadScanner {
    fn new() -> Self {
        Self {
            preface: true,
            ..Self::default()
        }
    }

    /// Feeds the next bytes; true once the head is complete.
    fn complete_after(&mut self, bytes: &[u8]) -> bool {
        for &byte in bytes {
            if self.preface {
                self.preface = HTTP2_PREFACE.get(self.seen) == Some(&byte);
            }
            self.seen += 1;
            self.last = [self.last[1], self.last[2], self.last[3], byte];
            if (self.preface && self.seen == HTTP2_PREFACE.len()) || &self.last == b"\r\n\r\n" {
                return true;
            }
        }
        false
    }
}

/// A connection whose reads fail once `timeout` has passed before its request head is complete.
pub struct RequestHeadDeadline<IO> {
    inner: IO,
    /// Until the head is complete.
    deadline: Option<(Pin<Box<Sleep>>, HeadScanner)>,
}

impl<IO> RequestHeadDeadline<IO> {
    pub fn new(inner: IO, timeout: Duration) -> Self {
        Self {
            inner,
            deadline: Some((Box::pin(tokio::time::sleep(timeout)), HeadScanner::new())),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for RequestHeadDeadline<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let Some((deadline, scanner)) = self.deadline.as_mut() else {
            return polled;
        };
        if let Poll::Ready(Ok(())) = &polled
            && scanner.complete_after(&buf.filled()[before..])
        {
            self.deadline = None;
            return polled;
        }
        if deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not send its request head within the timeout",
            )));
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for RequestHeadDeadline<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for RequestHeadDeadline<TcpStream> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// The metrics port's listener: every accepted connection gets the same deadline.
pub struct DeadlineListener {
    pub listener: TcpListener,
    pub timeout: Duration,
}

impl axum::serve::Listener for DeadlineListener {
    type Io = RequestHeadDeadline<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.listener).await;
        (RequestHeadDeadline::new(stream, self.timeout), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::HeadScanner;

    #[test]
    fn the_http2_preface_completes_the_head() {
        let mut scanner = HeadScanner::new();
        assert!(!scanner.complete_after(b"PRI * HTTP/2.0\r\n"));
        assert!(scanner.complete_after(b"\r\nSM\r\n\r\n"));
    }

    #[test]
    fn a_blank_line_completes_http1_headers_wherever_the_reads_split_it() {
        let mut scanner = HeadScanner::new();
        assert!(!scanner.complete_after(b"GET /metrics HTTP/1.1\r\nHost: x\r"));
        assert!(!scanner.complete_after(b"\n\r"));
        assert!(scanner.complete_after(b"\n"));
    }

    #[test]
    fn nothing_else_completes_it() {
        let mut scanner = HeadScanner::new();
        assert!(!scanner.complete_after(b"PRI * HTTP/1.1\r\nX: y\r\n"));
        assert!(!scanner.complete_after(&[b'a'; 100]));
    }
}
