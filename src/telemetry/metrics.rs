//! Prometheus metrics: what the service does, how fast, and what it costs.

use std::sync::Arc;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Metric, Registry, Unit},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: String,
    code: String,
}

/// A model of the catalog, bounded by it, and a kind of token.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    model: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Two names of the model catalog: bounded by the catalog.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FallbackLabels {
    from: String,
    to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolLabels {
    tool: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets from 100 µs to about 26 s.
fn latency() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 19,
    ))
}

/// The service's metrics, shared by every layer that records them.
pub struct Metrics {
    registry: Registry,
    service: ServiceMetrics,
    turns: TurnMetrics,
    tools: ToolMetrics,
}

/// What every RPC, and the dependencies behind them, cost.
struct ServiceMetrics {
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_duration: HistogramFamily<RpcLabels>,
    health_checks: Family<ResultLabels, Counter>,
    db_connections: Family<StateLabels, Gauge>,
    event_engine_errors: Family<OperationLabels, Counter>,
}

/// What turns cost and how fast they answer.
struct TurnMetrics {
    time_to_first_token: Histogram,
    overhead: Histogram,
    active_streams: Gauge,
    tokens: Family<TokenLabels, Counter>,
    model_errors: Family<KindLabels, Counter>,
    history_sources: Family<SourceLabels, Counter>,
    refusals: Family<LimitLabels, Counter>,
    titles: Family<OutcomeLabels, Counter>,
    model_fallbacks: Family<FallbackLabels, Counter>,
}

/// The tools the model calls.
struct ToolMetrics {
    tool_calls: Family<ToolLabels, Counter>,
    tool_duration: HistogramFamily<ToolLabels>,
    tools_offered: Gauge,
}

impl ServiceMetrics {
    fn register(registry: &mut Registry) -> Self {
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        registry.register(
            "rpc_requests",
            "RPCs handled, by method and gRPC status code",
            rpc_requests.clone(),
        );
        let rpc_duration: HistogramFamily<RpcLabels> = Family::new_with_constructor(latency);
        registry.register_with_unit(
            "rpc_duration",
            "RPC latency by method and status code; for streams, until the stream ends",
            Unit::Seconds,
            rpc_duration.clone(),
        );
        let health_checks = Family::<ResultLabels, Counter>::default();
        registry.register(
            "health_checks",
            "Database checks behind the health service, by result (serving or not_serving)",
            health_checks.clone(),
        );
        let db_connections = Family::<StateLabels, Gauge>::default();
        registry.register(
            "db_pool_connections",
            "Database pool connections, by state (in_use or idle)",
            db_connections.clone(),
        );
        let event_engine_errors = Family::<OperationLabels, Counter>::default();
        registry.register(
            "event_engine_errors",
            "Failed operations on the engine that carries turn events between replicas (Redis), by operation (append, read, cancel, ping)",
            event_engine_errors.clone(),
        );
        Self {
            rpc_requests,
            rpc_duration,
            health_checks,
            db_connections,
            event_engine_errors,
        }
    }
}

/// Registers `metric` under `name`, and returns it for the service to update.
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl TurnMetrics {
    fn register(registry: &mut Registry) -> Self {
        let time_to_first_token = latency();
        registry.register_with_unit(
            "time_to_first_token",
            "From receiving SendMessage to relaying the first token",
            Unit::Seconds,
            time_to_first_token.clone(),
        );
        let overhead = latency();
        registry.register_with_unit(
            "overhead",
            "Time to first token minus the time spent waiting for the model's first token",
            Unit::Seconds,
            overhead.clone(),
        );
        Self {
            time_to_first_token,
            overhead,
            active_streams: registered(
                registry,
                "active_streams",
                "SendMessage streams in progress",
                Gauge::default(),
            ),
            tokens: registered(
                registry,
                "tokens",
                "Tokens of model calls, by model and kind (input, of which cached_input; output, of which reasoning); estimated where the provider reported none",
                Family::<TokenLabels, Counter>::default(),
            ),
            model_errors: registered(
                registry,
                "model_errors",
                "Failed model calls, by kind",
                Family::<KindLabels, Counter>::default(),
            ),
            history_sources: registered(
                registry,
                "turn_history",
                "Turns in existing conversations, by where their history came from (memory, stale_memory, database)",
                Family::<SourceLabels, Counter>::default(),
            ),
            refusals: registered(
                registry,
                "limit_refusals",
                "Requests refused by a limit, by limit (user_request_rate, user_streams, replica_streams, user_conversations, conversation_messages)",
                Family::<LimitLabels, Counter>::default(),
            ),
            titles: registered(
                registry,
                "conversation_titles",
                "New conversations the model was to name, by outcome (named; kept: the client named it, or the model gave no title; failed; skipped: too many at once)",
                Family::<OutcomeLabels, Counter>::default(),
            ),
            model_fallbacks: registered(
                registry,
                "model_fallbacks",
                "Model calls that failed before their first token and were asked of a fallback, by the catalog's names of both",
                Family::<FallbackLabels, Counter>::default(),
            ),
        }
    }
}

impl ToolMetrics {
    fn register(registry: &mut Registry) -> Self {
        let tool_calls = Family::<ToolLabels, Counter>::default();
        registry.register(
            "tool_calls",
            "Tool calls run for the model, by tool and outcome (succeeded, or the kind of failure)",
            tool_calls.clone(),
        );
        let tool_duration: HistogramFamily<ToolLabels> = Family::new_with_constructor(latency);
        registry.register_with_unit(
            "tool_call_duration",
            "How long tool calls took, by tool and outcome",
            Unit::Seconds,
            tool_duration.clone(),
        );
        let tools_offered = Gauge::default();
        registry.register(
            "tools_offered",
            "Tools from MCP servers offered to the model now",
            tools_offered.clone(),
        );
        Self {
            tool_calls,
            tool_duration,
            tools_offered,
        }
    }
}

/// Where a turn in an existing conversation found the messages the model sees.
#[derive(Debug, Clone, Copy)]
pub enum HistorySource {
    /// Remembered by this replica, and still current when the user message was committed.
    Memory,
    /// Remembered, but another write had come first: the turn read the database after all.
    StaleMemory,
    Database,
}

impl HistorySource {
    fn label(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::StaleMemory => "stale_memory",
            Self::Database => "database",
        }
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("chat");
        let service = ServiceMetrics::register(&mut registry);
        let turns = TurnMetrics::register(&mut registry);
        let tools = ToolMetrics::register(&mut registry);
        Arc::new(Self {
            registry,
            service,
            turns,
            tools,
        })
    }

    pub fn record_tool_call(&self, tool: &str, outcome: &'static str, seconds: f64) {
        let labels = ToolLabels {
            tool: tool.to_owned(),
            outcome,
        };
        self.tools.tool_calls.get_or_create(&labels).inc();
        self.tools
            .tool_duration
            .get_or_create(&labels)
            .observe(seconds);
    }

    pub fn record_event_engine_error(&self, operation: &'static str) {
        self.service
            .event_engine_errors
            .get_or_create(&OperationLabels { operation })
            .inc();
    }

    pub fn set_tools_offered(&self, count: usize) {
        self.tools
            .tools_offered
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn record_rpc(&self, method: &str, code: &str, seconds: f64) {
        let labels = RpcLabels {
            method: method.to_owned(),
            code: code.to_owned(),
        };
        self.service.rpc_requests.get_or_create(&labels).inc();
        self.service
            .rpc_duration
            .get_or_create(&labels)
            .observe(seconds);
    }

    /// `total` from the request's arrival, `model` spent waiting for the model's first token.
    pub fn record_first_token(&self, total: f64, model: f64) {
        self.turns.time_to_first_token.observe(total);
        self.turns.overhead.observe((total - model).max(0.0));
    }

    /// The counters of `model`'s tokens: taken once per model, so that counting a call's
    /// tokens allocates nothing.
    pub fn token_counters(&self, model: &str) -> TokenCounters {
        let counter = |kind| {
            self.turns
                .tokens
                .get_or_create(&TokenLabels {
                    model: model.to_owned(),
                    kind,
                })
                .clone()
        };
        TokenCounters {
            input: counter("input"),
            cached_input: counter("cached_input"),
            output: counter("output"),
            reasoning: counter("reasoning"),
        }
    }

    pub fn record_model_error(&self, kind: &'static str) {
        self.turns
            .model_errors
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    pub fn record_history_source(&self, source: HistorySource) {
        self.turns
            .history_sources
            .get_or_create(&SourceLabels {
                source: source.label(),
            })
            .inc();
    }

    pub fn record_title(&self, outcome: &'static str) {
        self.turns
            .titles
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub fn record_model_fallback(&self, from: &str, to: &str) {
        self.turns
            .model_fallbacks
            .get_or_create(&FallbackLabels {
                from: from.to_owned(),
                to: to.to_owned(),
            })
            .inc();
    }

    pub fn record_refusal(&self, limit: &'static str) {
        self.turns
            .refusals
            .get_or_create(&LimitLabels { limit })
            .inc();
    }

    pub fn record_health_check(&self, serving: bool) {
        let result = if serving { "serving" } else { "not_serving" };
        self.service
            .health_checks
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts a stream as active until the returned guard is dropped.
    pub fn stream_started(self: &Arc<Self>) -> ActiveStream {
        self.turns.active_streams.inc();
        ActiveStream(self.clone())
    }

    /// The metrics in Prometheus' text format, with the pool's current state.
    pub fn render(&self, pool_in_use: usize, pool_idle: usize) -> String {
        let as_gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.service
            .db_connections
            .get_or_create(&StateLabels { state: "in_use" })
            .set(as_gauge(pool_in_use));
        self.service
            .db_connections
            .get_or_create(&StateLabels { state: "idle" })
            .set(as_gauge(pool_idle));
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// Decrements the active-stream gauge when dropped.
pub struct ActiveStream(Arc<Metrics>);

impl Drop for ActiveStream {
    fn drop(&mut self) {
        self.0.turns.active_streams.dec();
    }
}

/// One model's counters of tokens, by kind.
#[derive(Clone)]
pub struct TokenCounters {
    input: Counter,
    cached_input: Counter,
    output: Counter,
    reasoning: Counter,
}

impl TokenCounters {
    /// Counts a call's tokens: `input`, of which `cached_input`, and `output`, of which
    /// `reasoning`.
    pub fn record(&self, input: u32, cached_input: u32, output: u32, reasoning: u32) {
        self.input.inc_by(u64::from(input));
        self.cached_input.inc_by(u64::from(cached_input));
        self.output.inc_by(u64::from(output));
        self.reasoning.inc_by(u64::from(reasoning));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_in_text_format() {
        let metrics = Metrics::new();
        metrics.record_rpc("/chat.v1.ChatService/SendMessage", "OK", 0.25);
        metrics.record_first_token(0.010, 0.009);
        metrics.token_counters("quick").record(12, 8, 4, 0);
        metrics.record_model_error("timeout");
        metrics.record_history_source(HistorySource::StaleMemory);
        let stream = metrics.stream_started();
        let text = metrics.render(3, 5);
        assert!(
            text.contains(
                r#"chat_rpc_requests_total{method="/chat.v1.ChatService/SendMessage",code="OK"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("chat_rpc_duration_seconds_bucket"));
        assert!(text.contains("chat_overhead_seconds_count 1"));
        assert!(text.contains("chat_active_streams 1"));
        assert!(text.contains(r#"chat_tokens_total{model="quick",kind="input"} 12"#));
        assert!(text.contains(r#"chat_tokens_total{model="quick",kind="cached_input"} 8"#));
        assert!(text.contains(r#"chat_tokens_total{model="quick",kind="reasoning"} 0"#));
        assert!(text.contains(r#"chat_model_errors_total{kind="timeout"} 1"#));
        assert!(text.contains(r#"chat_turn_history_total{source="stale_memory"} 1"#));
        assert!(text.contains(r#"chat_db_pool_connections{state="idle"} 5"#));
        drop(stream);
        assert!(metrics.render(0, 0).contains("chat_active_streams 0"));
    }
}
