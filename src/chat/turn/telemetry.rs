//! What a turn tells operators: the model call's span as the GenAI semantic conventions describe
//! it, the turn's metrics, and the `turn ended` log line. Never the content.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::{Span, field};

use super::state::Outcome;
use crate::{
    domain::{ConversationId, UserId},
    llm::{LlmError, TokenUsage},
    telemetry::metrics::{ActiveStream, Metrics},
};

/// Who the turn is for, as its log lines name it.
pub(super) struct TurnLabels {
    pub request_id: String,
    pub conversation_id: ConversationId,
    pub user: UserId,
}

pub(super) struct TurnTelemetry {
    metrics: Arc<Metrics>,
    labels: TurnLabels,
    /// The model call. Polling the model's stream inside it makes it the parent of the upstream
    /// request's trace; it ends when the model's stream does.
    model_span: Span,
    /// When the request arrived: time to first token is measured from here.
    received_at: Instant,
    /// When the model request started: the model's own time to first token is measured from here.
    model_started: Instant,
    /// When the first text arrived from the model, which can be before it could be relayed.
    first_received: Option<Instant>,
    /// Time to first token as the client saw it, and the part of it spent waiting for the model.
    first_token: Option<(Duration, Duration)>,
    /// When the model's last stream ended: what follows is storing the turn's outcome.
    model_ended: Option<Instant>,
    /// The model's name and provider, for the spans of later rounds.
    model: String,
    provider: &'static str,
    _active: ActiveStream,
}

/// The span of one call to the model, as the GenAI semantic conventions describe it.
fn model_span(model: &str, provider: &'static str) -> Span {
    tracing::info_span!(
        "gen_ai",
        otel.name = %format!("chat {model}"),
        otel.kind = "client",
        gen_ai.operation.name = "chat",
        gen_ai.system = provider,
        gen_ai.provider.name = provider,
        gen_ai.request.model = %model,
        gen_ai.usage.input_tokens = field::Empty,
        gen_ai.usage.output_tokens = field::Empty,
        gen_ai.response.finish_reasons = field::Empty,
        error.type = field::Empty,
        otel.status_code = field::Empty,
    )
}

impl TurnTelemetry {
    pub fn start(
        metrics: Arc<Metrics>,
        labels: TurnLabels,
        model: &str,
        provider: &'static str,
        received_at: Instant,
    ) -> Self {
        Self {
            _active: metrics.stream_started(),
            metrics,
            labels,
            model_span: model_span(model, provider),
            model: model.to_owned(),
            provider,
            received_at,
            model_started: Instant::now(),
            first_received: None,
            first_token: None,
            model_ended: None,
        }
    }

    /// Another call to the model begins, for the next round of a reply that called tools.
    pub fn next_model_call(&mut self) {
        self.model_span = model_span(&self.model, self.provider);
    }

    pub fn model_span(&self) -> &Span {
        &self.model_span
    }

    /// Text arrived from the model.
    pub fn text_received(&mut self) {
        self.first_received.get_or_insert_with(Instant::now);
    }

    /// Text was handed to the client.
    pub fn text_relayed(&mut self) {
        if self.first_token.is_some() {
            return;
        }
        let total = self.received_at.elapsed();
        let received = *self.first_received.get_or_insert_with(Instant::now);
        let waited = received.duration_since(self.model_started);
        self.metrics
            .record_first_token(total.as_secs_f64(), waited.as_secs_f64());
        self.first_token = Some((total, waited));
    }

    /// The model's stream is over: its span ends with what it reported.
    pub fn model_ended(
        &mut self,
        usage: Option<TokenUsage>,
        finish_reason: Option<&str>,
        failure: Option<&LlmError>,
    ) {
        self.model_ended = Some(Instant::now());
        let span = std::mem::replace(&mut self.model_span, Span::none());
        if let Some(usage) = usage {
            span.record("gen_ai.usage.input_tokens", i64::from(usage.input_tokens));
            span.record("gen_ai.usage.output_tokens", i64::from(usage.output_tokens));
        }
        if let Some(reason) = finish_reason {
            span.record("gen_ai.response.finish_reasons", reason);
        }
        if let Some(error) = failure {
            span.record("error.type", error.kind());
            span.record("otel.status_code", "ERROR");
            self.metrics.record_model_error(error.kind());
        }
    }

    /// The turn's one summary line, once its outcome is stored (or not).
    pub fn turn_ended(self, usage: Option<TokenUsage>, outcome: Outcome) {
        let first_token = self.first_token;
        tracing::info!(
            request_id = %self.labels.request_id,
            conversation_id = %self.labels.conversation_id,
            user_id = %self.labels.user,
            duration_ms = self.received_at.elapsed().as_secs_f64() * 1000.0,
            time_to_first_token_ms = first_token.map(|(total, _)| total.as_secs_f64() * 1000.0),
            model_time_to_first_token_ms = first_token.map(|(_, model)| model.as_secs_f64() * 1000.0),
            after_model_ms = self.model_ended.map(|at| at.elapsed().as_secs_f64() * 1000.0),
            input_tokens = usage.map(|u| u.input_tokens),
            output_tokens = usage.map(|u| u.output_tokens),
            outcome = outcome.label(),
            model_error = outcome.model_error(),
            "turn ended"
        );
    }
}
