//! OTLP receivers, gRPC and HTTP, that keep every span exported to them, and the checks that
//! one SendMessage produces one well-formed trace.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, routing::post};
use chat_service::{
    api::proto::SendMessageRequest,
    telemetry::Telemetry,
    telemetry::{LogFormat, LogSettings, OtelSettings, OtlpProtocol},
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
    trace::v1::{Span, span::SpanKind},
};
use prost::Message;

use super::{FakeLlm, FakeToolServer, Script, TestApp};

type Spans = Arc<Mutex<Vec<Span>>>;

fn keep(spans: &Spans, request: ExportTraceServiceRequest) {
    let mut kept = spans.lock().unwrap_or_else(|e| e.into_inner());
    for resource in request.resource_spans {
        for scope in resource.scope_spans {
            kept.extend(scope.spans);
        }
    }
}

struct GrpcReceiver(Spans);

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        keep(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn http_export(State(spans): State<Spans>, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body)
        .unwrap_or_else(|e| panic!("not OTLP protobuf: {e}"));
    keep(&spans, request);
    ExportTraceServiceResponse {
        partial_success: None,
    }
    .encode_to_vec()
}

/// Starts a receiver for `protocol`, returning the endpoint to configure and the spans it keeps.
pub async fn start_receiver(protocol: OtlpProtocol) -> (String, Spans) {
    let spans = Spans::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr: SocketAddr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    match protocol {
        OtlpProtocol::Grpc => {
            let service = TraceServiceServer::new(GrpcReceiver(spans.clone()));
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(incoming),
            );
        }
        OtlpProtocol::HttpProtobuf => {
            let router = Router::new()
                .route("/v1/traces", post(http_export))
                .with_state(spans.clone());
            tokio::spawn(async move { axum::serve(listener, router).await });
        }
    }
    (format!("http://{addr}"), spans)
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()
}

fn string(span: &Span, key: &str) -> Option<String> {
    match attribute(span, key)? {
        Value::StringValue(text) => Some(text.clone()),
        _ => None,
    }
}

fn int(span: &Span, key: &str) -> Option<i64> {
    match attribute(span, key)? {
        Value::IntValue(n) => Some(*n),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// Exports over `protocol` while a SendMessage runs with a caller's `traceparent`, and checks the
/// trace: the RPC span continues the caller's, database and model spans are its children, and
/// the model's upstream request carries the model span as its parent.
pub async fn assert_one_trace_per_turn(protocol: OtlpProtocol) {
    let (endpoint, spans) = start_receiver(protocol).await;
    let otel = OtelSettings {
        endpoint,
        protocol,
        service_name: "chat-service-test".to_owned(),
    };
    let log = LogSettings {
        format: LogFormat::Json,
        filter: "info".to_owned(),
    };
    let telemetry: Arc<Telemetry> = Arc::new(
        chat_service::telemetry::init(&log, Some(&otel)).unwrap_or_else(|e| panic!("{e}")),
    );

    // A turn of two rounds: the model calls a tool, then answers.
    let fake = FakeLlm::start().await;
    fake.script([Script::tool_calls(&[("call_1", "echo", "{}")])]);
    let tools = FakeToolServer::start().await;
    let server = tools.settings("tasks", false);
    let app = TestApp::with_fake_llm(&fake, |config| config.tools.servers = vec![server]).await;
    app.wait_for_tools(crate::mcp::TOOLS).await;
    let mut request = app.request(
        "alice",
        SendMessageRequest {
            conversation_id: String::new(),
            content: "trace me".into(),
            ..Default::default()
        },
    );
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    request.metadata_mut().insert(
        "traceparent",
        traceparent.parse().unwrap_or_else(|e| panic!("{e}")),
    );
    let mut stream = app
        .chat()
        .send_message(request)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner();
    while stream
        .message()
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .is_some()
    {}

    // The RPC span ends as its response body finishes; wait until it has been exported.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let rpc = loop {
        let flushing = telemetry.clone();
        let _ = tokio::task::spawn_blocking(move || flushing.flush()).await;
        let found = spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|s| s.name == "chat.v1.ChatService/SendMessage" && hex(&s.trace_id) == TRACE_ID)
            .cloned();
        if let Some(span) = found {
            break span;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the RPC span was never exported"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let spans = spans.lock().unwrap_or_else(|e| e.into_inner()).clone();

    assert_eq!(
        hex(&rpc.parent_span_id),
        CALLER_SPAN,
        "the RPC span continues the caller's trace"
    );
    assert_eq!(rpc.kind, SpanKind::Server as i32);
    assert_eq!(string(&rpc, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        string(&rpc, "rpc.service").as_deref(),
        Some("chat.v1.ChatService")
    );
    assert_eq!(string(&rpc, "rpc.method").as_deref(), Some("SendMessage"));
    assert_eq!(int(&rpc, "rpc.grpc.status_code"), Some(0));

    let children: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id == rpc.span_id)
        .collect();
    let database: Vec<&&Span> = children
        .iter()
        .filter(|s| string(s, "db.system.name").as_deref() == Some("postgresql"))
        .collect();
    assert!(
        database.len() >= 2,
        "database spans under the RPC: {children:?}"
    );
    assert!(
        database
            .iter()
            .all(|s| s.kind == SpanKind::Client as i32 && hex(&s.trace_id) == TRACE_ID)
    );

    // One span per call to the model, and one for the tool call between them.
    let models: Vec<&&Span> = children
        .iter()
        .filter(|s| s.name == "chat fake-model")
        .collect();
    assert_eq!(models.len(), 2, "model spans under the RPC: {children:?}");
    let tool = children
        .iter()
        .find(|s| s.name == "execute_tool echo")
        .unwrap_or_else(|| panic!("no tool span under the RPC: {children:?}"));
    assert_eq!(tool.kind, SpanKind::Client as i32);
    assert_eq!(
        string(tool, "gen_ai.operation.name").as_deref(),
        Some("execute_tool")
    );
    assert_eq!(string(tool, "gen_ai.tool.name").as_deref(), Some("echo"));
    assert_eq!(string(tool, "mcp.server").as_deref(), Some("tasks"));
    assert!(models[0].end_time_unix_nano <= tool.start_time_unix_nano);
    assert!(tool.end_time_unix_nano <= models[1].start_time_unix_nano);
    let model = models[1];
    assert_eq!(model.kind, SpanKind::Client as i32);
    assert_eq!(
        string(model, "gen_ai.operation.name").as_deref(),
        Some("chat")
    );
    assert_eq!(string(model, "gen_ai.system").as_deref(), Some("openai"));
    assert_eq!(
        string(model, "gen_ai.request.model").as_deref(),
        Some("fake-model")
    );
    assert_eq!(
        int(model, "gen_ai.usage.input_tokens"),
        Some(7),
        "{:?}",
        model.attributes
    );
    assert_eq!(int(model, "gen_ai.usage.output_tokens"), Some(3));

    // The upstream request carried the model span as its parent.
    let sent = fake.received()[1].traceparent.clone();
    assert_eq!(
        sent,
        Some(format!("00-{TRACE_ID}-{}-01", hex(&model.span_id)))
    );
}
