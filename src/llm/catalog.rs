//! The models a request may choose among, by name, and the order in which each one's fallbacks
//! are tried when it fails before its first token.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio_stream::Stream;

use super::{
    CallUsage, ChatModel, LlmError, ModelEvent, ModelRequest, ModelSettings, ModelStream,
    TokenUsage, connect,
};

/// Prices of one model, in currency units per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prices {
    pub input: f64,
    pub cached_input: f64,
    pub output: f64,
}

impl Prices {
    /// What a call that used `tokens` costs, in millionths of a unit: a price per million
    /// tokens is a price in millionths per token. Cached input is billed at its own price, the
    /// rest of the input at the input's; reasoning is output.
    pub fn cost_micros(&self, tokens: &TokenUsage) -> i64 {
        let cached = f64::from(tokens.cached_input_tokens);
        let uncached = f64::from(
            tokens
                .input_tokens
                .saturating_sub(tokens.cached_input_tokens),
        );
        let cost = uncached * self.input
            + cached * self.cached_input
            + f64::from(tokens.output_tokens) * self.output;
        // Prices are finite and not negative (checked with the catalog); `as` saturates.
        cost.round() as i64
    }
}

/// One model of the catalog, as configured.
#[derive(Debug, Clone)]
pub struct CatalogModelSettings {
    /// The name clients choose it by, and that is stored with each reply it writes.
    pub name: String,
    pub settings: ModelSettings,
    /// Its context window in tokens; 0 when not known.
    pub context_window: u32,
    pub prices: Option<Prices>,
    /// The models tried, in this order, when it fails before its first token (indexes into the
    /// catalog).
    pub fallbacks: Vec<usize>,
}

/// The models configured, checked: names unique, fallbacks known and free of cycles.
#[derive(Debug, Clone)]
pub struct CatalogSettings {
    pub models: Vec<CatalogModelSettings>,
    /// The model of a request that names none (an index into `models`).
    pub default: usize,
}

impl CatalogSettings {
    /// A catalog of the one model `settings` describe, named as the model names itself: how the
    /// single-model settings are served.
    pub fn of_one(settings: ModelSettings, context_window: u32) -> Self {
        let name = match &settings {
            ModelSettings::Development { .. } => super::DevModel::NAME.to_owned(),
            ModelSettings::OpenAi(settings) => settings.model.clone(),
        };
        Self {
            models: vec![CatalogModelSettings {
                name,
                settings,
                context_window,
                prices: None,
                fallbacks: Vec::new(),
            }],
            default: 0,
        }
    }
}

/// A model of the catalog, as a request names it once its name was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModelChoice(usize);

impl ModelChoice {
    /// The model's place in the catalog, counted from 0: in [`ModelCatalog::iter`]'s order.
    pub fn index(self) -> usize {
        self.0
    }
}

impl CatalogModel {
    /// A call of this model that used `tokens`, with its cost at the model's prices.
    pub fn call_usage(&self, tokens: TokenUsage) -> CallUsage {
        CallUsage {
            tokens,
            cost_micros: self.prices.map(|prices| prices.cost_micros(&tokens)),
        }
    }
}

/// A name that is not in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no model is named {0:?}")]
pub struct UnknownModel(pub String);

/// One model, ready to stream.
pub struct CatalogModel {
    pub name: Arc<str>,
    pub context_window: u32,
    pub prices: Option<Prices>,
    pub model: Arc<dyn ChatModel>,
    /// This model, then each one tried after it, in order.
    chain: Arc<[(ModelChoice, Arc<dyn ChatModel>)]>,
}

/// The models clients choose among, and the default.
pub struct ModelCatalog {
    models: Vec<CatalogModel>,
    default: ModelChoice,
}

impl ModelCatalog {
    /// Connects every model of `settings`.
    pub fn connect(settings: &CatalogSettings) -> Result<Self, LlmError> {
        let connected = settings
            .models
            .iter()
            .map(|model| connect(&model.settings))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::of(settings, &connected))
    }

    /// The catalog `settings` describe, with `connected[i]` serving its model `i`.
    fn of(settings: &CatalogSettings, connected: &[Arc<dyn ChatModel>]) -> Self {
        let models = settings
            .models
            .iter()
            .enumerate()
            .map(|(index, model)| CatalogModel {
                name: Arc::from(model.name.as_str()),
                context_window: model.context_window,
                prices: model.prices,
                model: connected[index].clone(),
                chain: tried_in_order(settings, index)
                    .into_iter()
                    .map(|tried| (ModelChoice(tried), connected[tried].clone()))
                    .collect(),
            })
            .collect();
        Self {
            models,
            default: ModelChoice(settings.default),
        }
    }

    /// The model named `name`, or the default for `None`.
    pub fn choose(&self, name: Option<&str>) -> Result<ModelChoice, UnknownModel> {
        let Some(name) = name else {
            return Ok(self.default);
        };
        self.models
            .iter()
            .position(|model| &*model.name == name)
            .map(ModelChoice)
            .ok_or_else(|| UnknownModel(name.to_owned()))
    }

    pub fn default_choice(&self) -> ModelChoice {
        self.default
    }

    pub fn get(&self, choice: ModelChoice) -> &CatalogModel {
        &self.models[choice.0]
    }

    /// Every model, in the catalog's order, with whether it is the default.
    pub fn iter(&self) -> impl Iterator<Item = (&CatalogModel, bool)> {
        self.models
            .iter()
            .enumerate()
            .map(|(index, model)| (model, ModelChoice(index) == self.default))
    }

    /// Asks `choice` for a reply and, should it fail before its first event in a way another
    /// model may not share, each of its fallbacks in turn; [`ModelEvent::FellBack`] tells of each
    /// switch. Once any event came, the model answering stays: the turn never switches models
    /// after it has streamed.
    pub fn stream(&self, choice: ModelChoice, request: ModelRequest) -> ModelStream {
        let chain = &self.get(choice).chain;
        match &chain[..] {
            [(_, only)] => only.stream(request),
            _ => Box::pin(Fallbacks::start(chain.clone(), request)),
        }
    }
}

/// The catalog's indexes tried for model `first`: itself, then depth first through its fallbacks
/// and theirs, each once. The settings are free of cycles.
fn tried_in_order(settings: &CatalogSettings, first: usize) -> Vec<usize> {
    fn visit(settings: &CatalogSettings, index: usize, order: &mut Vec<usize>) {
        if order.contains(&index) {
            return;
        }
        order.push(index);
        for &next in &settings.models[index].fallbacks {
            visit(settings, next, order);
        }
    }
    let mut order = Vec::new();
    visit(settings, first, &mut order);
    order
}

/// Whether a model that failed this way before its first event is worth replacing with another:
/// it could not be reached, was overloaded or failing, or was too slow. A request it refused as
/// malformed, or a stream it garbled, would fare no better elsewhere.
fn another_may_answer(error: &LlmError) -> bool {
    match error {
        LlmError::Connect(_) | LlmError::Interrupted(_) | LlmError::Timeout(_) => true,
        LlmError::Http { status } => matches!(status, 408 | 429 | 500..=599),
        LlmError::Malformed(_) | LlmError::Oversized(_) => false,
    }
}

/// A reply from the first model of a chain that answers.
struct Fallbacks {
    chain: Arc<[(ModelChoice, Arc<dyn ChatModel>)]>,
    /// The model of `chain` being asked.
    at: usize,
    current: ModelStream,
    /// The request, kept for the next model until the one asked has answered.
    request: Option<ModelRequest>,
}

impl Fallbacks {
    fn start(chain: Arc<[(ModelChoice, Arc<dyn ChatModel>)]>, request: ModelRequest) -> Self {
        let current = chain[0].1.stream(request.clone());
        Self {
            chain,
            at: 0,
            current,
            request: Some(request),
        }
    }
}

impl Stream for Fallbacks {
    type Item = Result<ModelEvent, LlmError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let event = match this.current.as_mut().poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(event) => event,
        };
        let next = this.at + 1;
        match (&event, &this.request) {
            (Some(Err(error)), Some(request))
                if next < this.chain.len() && another_may_answer(error) =>
            {
                let (from, _) = this.chain[this.at];
                let (to, model) = &this.chain[next];
                tracing::debug!(error = %error, "the model failed before answering");
                this.current = model.stream(request.clone());
                this.at = next;
                Poll::Ready(Some(Ok(ModelEvent::FellBack {
                    from,
                    to: *to,
                    error: error.kind(),
                })))
            }
            _ => {
                if matches!(event, Some(Ok(_))) {
                    this.request = None;
                }
                Poll::Ready(event)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    /// A model that fails every request with `error`, or answers "hello from NAME".
    struct Scripted {
        name: &'static str,
        error: Option<LlmError>,
    }

    impl ChatModel for Scripted {
        fn name(&self) -> &str {
            self.name
        }

        fn provider(&self) -> &'static str {
            "test"
        }

        fn stream(&self, _: ModelRequest) -> ModelStream {
            let events = match &self.error {
                Some(error) => vec![Err(error.clone())],
                None => vec![
                    Ok(ModelEvent::Delta(format!("hello from {}", self.name))),
                    Err(LlmError::Interrupted("after the first token".into())),
                ],
            };
            Box::pin(tokio_stream::iter(events))
        }
    }

    fn catalog(models: Vec<(&'static str, Option<LlmError>, Vec<usize>)>) -> ModelCatalog {
        let settings = CatalogSettings {
            models: models
                .iter()
                .map(|(name, _, fallbacks)| CatalogModelSettings {
                    name: (*name).to_owned(),
                    settings: ModelSettings::Development {
                        delay: std::time::Duration::ZERO,
                    },
                    context_window: 0,
                    prices: None,
                    fallbacks: fallbacks.clone(),
                })
                .collect(),
            default: 0,
        };
        let connected: Vec<Arc<dyn ChatModel>> = models
            .into_iter()
            .map(|(name, error, _)| Arc::new(Scripted { name, error }) as Arc<dyn ChatModel>)
            .collect();
        ModelCatalog::of(&settings, &connected)
    }

    fn request() -> ModelRequest {
        ModelRequest {
            messages: Vec::new(),
            tools: Arc::new([]),
            may_call_tools: false,
        }
    }

    #[tokio::test]
    async fn a_model_down_falls_back_in_order_and_never_after_its_first_token() {
        let down = Some(LlmError::Connect("refused".into()));
        let busy = Some(LlmError::Http { status: 429 });
        // a → b, c; b → d: a is down, b is busy, d answers before c is tried.
        let catalog = catalog(vec![
            ("a", down, vec![1, 2]),
            ("b", busy, vec![3]),
            ("c", None, vec![]),
            ("d", None, vec![]),
        ]);
        let events: Vec<_> = catalog.stream(ModelChoice(0), request()).collect().await;
        assert_eq!(
            events,
            vec![
                Ok(ModelEvent::FellBack {
                    from: ModelChoice(0),
                    to: ModelChoice(1),
                    error: "connect"
                }),
                Ok(ModelEvent::FellBack {
                    from: ModelChoice(1),
                    to: ModelChoice(3),
                    error: "http"
                }),
                Ok(ModelEvent::Delta("hello from d".into())),
                // After a token, a failure is the reply's: nothing else is asked.
                Err(LlmError::Interrupted("after the first token".into())),
            ]
        );
    }

    #[tokio::test]
    async fn a_refusal_another_model_would_share_is_not_retried_elsewhere() {
        let refused = LlmError::Http { status: 400 };
        let catalog = catalog(vec![
            ("a", Some(refused.clone()), vec![1]),
            ("b", None, vec![]),
        ]);
        let events: Vec<_> = catalog.stream(ModelChoice(0), request()).collect().await;
        assert_eq!(events, vec![Err(refused)]);
    }

    #[tokio::test]
    async fn the_last_fallback_failing_fails_the_reply() {
        let down = LlmError::Timeout(super::super::TimeoutKind::FirstToken);
        let catalog = catalog(vec![
            ("a", Some(down.clone()), vec![1]),
            ("b", Some(down.clone()), vec![]),
        ]);
        let events: Vec<_> = catalog.stream(ModelChoice(0), request()).collect().await;
        assert_eq!(
            events,
            vec![
                Ok(ModelEvent::FellBack {
                    from: ModelChoice(0),
                    to: ModelChoice(1),
                    error: "timeout"
                }),
                Err(down)
            ]
        );
    }

    #[test]
    fn names_choose_models_and_none_chooses_the_default() {
        let catalog = catalog(vec![("a", None, vec![]), ("b", None, vec![])]);
        assert_eq!(catalog.choose(None), Ok(ModelChoice(0)));
        assert_eq!(catalog.choose(Some("b")), Ok(ModelChoice(1)));
        assert_eq!(catalog.choose(Some("B")), Err(UnknownModel("B".to_owned())));
    }
}
