//! Trace export over OTLP/HTTP with protobuf. A test binary of its own: tracing is set up once
//! per process.

use chat_service_test_support as support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_is_one_trace_exported_over_otlp_http() {
    support::otlp::assert_one_trace_per_turn(chat_service::telemetry::OtlpProtocol::HttpProtobuf)
        .await;
}
