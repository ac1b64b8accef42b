//! Per-RPC middleware: a correlation id, a span, one log line and metrics for every call. For
//! streams, the call ends when the response body does, so duration and status cover the stream.

use std::{
    collections::HashSet,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};
use tracing::{Instrument, Span, field};

use crate::{api::REQUEST_ID, telemetry::metrics::Metrics};

/// Accepted from clients that name the correlation id this way.
const CORRELATION_ID: &str = "x-correlation-id";

/// What metrics, spans and logs call a request to a path this server does not serve: made-up
/// paths must not each become a label kept for ever, nor fill log lines.
const UNKNOWN_METHOD: &str = "unknown";
/// How much of an unknown path a span keeps.
const MAX_LOGGED_PATH: usize = 64;

/// The methods this server serves, as request paths (`/package.Service/Method`).
#[derive(Debug, Default)]
pub struct KnownMethods(HashSet<String>);

impl KnownMethods {
    /// Every method of every service in these encoded `FileDescriptorSet`s.
    pub fn from_descriptor_sets(sets: &[&[u8]]) -> Result<Self, prost::DecodeError> {
        let mut paths = HashSet::new();
        for set in sets {
            let set = <prost_types::FileDescriptorSet as prost::Message>::decode(*set)?;
            for file in set.file {
                let package = file.package();
                for service in &file.service {
                    for method in &service.method {
                        paths.insert(format!("/{package}.{}/{}", service.name(), method.name()));
                    }
                }
            }
        }
        Ok(Self(paths))
    }

    fn contains(&self, path: &str) -> bool {
        self.0.contains(path)
    }
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncated(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[derive(Clone)]
pub struct RpcLayer {
    metrics: Arc<Metrics>,
    known: Arc<KnownMethods>,
}

impl RpcLayer {
    pub fn new(metrics: Arc<Metrics>, known: Arc<KnownMethods>) -> Self {
        Self { metrics, known }
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            metrics: self.metrics.clone(),
            known: self.known.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    metrics: Arc<Metrics>,
    known: Arc<KnownMethods>,
}

/// The longest client correlation id kept.
const MAX_REQUEST_ID: usize = 64;

/// Whether a client's correlation id can go into logs and headers as it is: letters, digits and
/// `-_.:` only (UUIDs, ULIDs, trace ids), so that it cannot forge or break a log line.
fn is_safe_request_id(value: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&value.len())
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
}

/// The correlation id: the client's if it sent a safe one, else a new UUID. A client's value
/// that is not safe comes back too, escaped and cut short, to be logged apart from it.
fn request_id(headers: &HeaderMap) -> (HeaderValue, Option<String>) {
    let sent = [REQUEST_ID, CORRELATION_ID]
        .iter()
        .find_map(|name| headers.get(*name));
    match sent {
        Some(value) if is_safe_request_id(value.as_bytes()) => (value.clone(), None),
        _ => {
            let generated = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
                .unwrap_or_else(|_| unreachable!("a UUID is a valid header value"));
            let unsafe_value = sent.map(|value| {
                let text = String::from_utf8_lossy(value.as_bytes());
                format!("{:?}", truncated(&text, MAX_REQUEST_ID))
            });
            (generated, unsafe_value)
        }
    }
}

/// How an RPC is named in its span and metrics: a method of ours, or one of no known service,
/// whose path is logged cut short and counted under one label.
struct RpcName {
    path: String,
    service: String,
    method: String,
    /// The path asked for, when it names no known method.
    unknown_path: Option<String>,
}

impl RpcName {
    fn of(known: &KnownMethods, uri_path: &str) -> Self {
        if known.contains(uri_path) {
            let (service, method) = uri_path
                .trim_start_matches('/')
                .split_once('/')
                .unwrap_or((uri_path, ""));
            return Self {
                path: uri_path.to_owned(),
                service: service.to_owned(),
                method: method.to_owned(),
                unknown_path: None,
            };
        }
        Self {
            path: UNKNOWN_METHOD.to_owned(),
            service: UNKNOWN_METHOD.to_owned(),
            method: UNKNOWN_METHOD.to_owned(),
            unknown_path: Some(truncated(uri_path, MAX_LOGGED_PATH).to_owned()),
        }
    }
}

/// The RPC's span, as OpenTelemetry's RPC conventions name its fields. A client's request id
/// that was replaced is logged beside the new one, once.
fn rpc_span(name: &RpcName, id: &HeaderValue, client_request_id: Option<&str>) -> tracing::Span {
    let span = tracing::info_span!(
        crate::telemetry::RPC_SPAN,
        otel.name = %name.path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %name.service,
        rpc.method = %name.method,
        url.path = name.unknown_path.as_deref(),
        request_id = %id.to_str().unwrap_or_default(),
        client_request_id,
        rpc.grpc.status_code = field::Empty,
        otel.status_code = field::Empty,
    );
    if let Some(client_request_id) = client_request_id {
        span.in_scope(|| {
            tracing::info!(
                request_id = %id.to_str().unwrap_or_default(),
                client_request_id = %client_request_id,
                "the client's request id is not safe to log; a new one replaces it"
            );
        });
    }
    span
}

impl<S, B> Service<http::Request<B>> for RpcService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let (id, client_request_id) = request_id(request.headers());
        // Handlers read the id from the metadata; from here on it is always there.
        request.headers_mut().insert(REQUEST_ID, id.clone());
        let name = RpcName::of(&self.known, request.uri().path());
        let span = rpc_span(&name, &id, client_request_id.as_deref());
        // An incoming `traceparent` makes this span a child of the caller's.
        let parent = crate::telemetry::propagation::extract(request.headers());
        let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(&span, parent);
        let observer = Observer {
            span: span.clone(),
            quiet: name.service == "grpc.health.v1.Health",
            // Counted under one label: a made-up path must not become a metric of its own.
            path: name.path,
            started: Instant::now(),
            metrics: self.metrics.clone(),
            code: None,
        };

        // The service that was polled ready is the one to call; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(
            async move {
                let mut response = inner.call(request).await?;
                response.headers_mut().insert(REQUEST_ID, id);
                let mut observer = observer;
                // A call that failed before sending anything puts its status in the headers.
                observer.code = grpc_status(response.headers());
                let (parts, body) = response.into_parts();
                let body = ObservedBody {
                    inner: body,
                    observer: Some(observer),
                };
                Ok(http::Response::from_parts(
                    parts,
                    tonic::body::Body::new(body),
                ))
            }
            .instrument(span),
        )
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// What the RPC's end records: the log line, the span's status and the metrics.
struct Observer {
    span: Span,
    quiet: bool,
    path: String,
    started: Instant,
    metrics: Arc<Metrics>,
    code: Option<i32>,
}

impl Observer {
    fn finish(self, ended_early: bool) {
        // A body dropped before its end means the client went away.
        let code = match (self.code, ended_early) {
            (Some(code), _) => tonic::Code::from_i32(code),
            (None, true) => tonic::Code::Cancelled,
            (None, false) => tonic::Code::Ok,
        };
        let name = code_name(code);
        let elapsed = self.started.elapsed();
        self.span.record("rpc.grpc.status_code", code as i32);
        if code != tonic::Code::Ok {
            self.span.record("otel.status_code", "ERROR");
        }
        self.metrics
            .record_rpc(&self.path, name, elapsed.as_secs_f64());
        let duration_ms = elapsed.as_secs_f64() * 1000.0;
        self.span.in_scope(|| {
            if self.quiet {
                tracing::debug!(method = %self.path, code = name, duration_ms, "rpc finished");
            } else {
                tracing::info!(method = %self.path, code = name, duration_ms, "rpc finished");
            }
        });
    }
}

/// A response body that reports the RPC's end: its trailers, its end, or its being dropped.
struct ObservedBody {
    inner: tonic::body::Body,
    observer: Option<Observer>,
}

impl ObservedBody {
    fn finish(&mut self, ended_early: bool) {
        if let Some(observer) = self.observer.take() {
            observer.finish(ended_early);
        }
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    if let Some(observer) = this.observer.as_mut() {
                        observer.code = grpc_status(trailers).or(observer.code);
                    }
                    this.finish(false);
                }
            }
            Poll::Ready(Some(Err(status))) => {
                if let Some(observer) = this.observer.as_mut() {
                    observer.code = Some(status.code() as i32);
                }
                this.finish(false);
            }
            Poll::Ready(None) => this.finish(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        self.finish(true);
    }
}

/// The canonical upper-case name of a gRPC status code.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
