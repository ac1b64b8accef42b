//! The binary: serve, apply migrations, export, import, report usage, or mint a development
//! token.

use std::{io::IsTerminal, process::ExitCode, time::Duration};

use chrono::SecondsFormat;

use chat_service::{
    Config,
    api::auth::mint_token,
    chat::UsageReports,
    config::{Settings, cost_micros, usage_period},
    domain::{Budget, PeriodUsage, Spend, Subject, UsagePeriod},
    store::{Store, run_migrations},
    telemetry, transfer,
};
use clap::{Parser, Subcommand};

/// Keeps allocation cheap however long the service runs: with glibc's allocator, a heap once
/// fragmented by thousands of streams made every later allocation slower.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "chat-service",
    version,
    about = "gRPC chat service backed by PostgreSQL and an LLM"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Subcommand)]
enum Command {
    /// Serve gRPC (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Write every conversation of a user to standard output, in the export format (JSON Lines;
    /// see README, "Export and import").
    Export {
        /// The user, by the `sub` of their tokens.
        #[arg(long)]
        user: String,
    },
    /// Read conversations from standard input into a user's: this service's export, or
    /// ChatGPT's conversations.json. Each is stored whole or refused whole; a summary follows.
    Import {
        /// The user, by the `sub` of their tokens; created if new.
        #[arg(long)]
        user: String,
    },
    /// Print a user's usage in the current period and the one before, as JSON: what GetUsage
    /// gives the user, for operators.
    Usage {
        /// The user, by the `sub` of their tokens.
        #[arg(long)]
        user: String,
    },
    /// Give a user a budget of their own, or take it away (see README, "Budgets").
    Budget {
        #[command(subcommand)]
        action: BudgetAction,
    },
    /// Print an access token that this configuration accepts (development mode or CHAT_JWT_SECRET).
    Token {
        /// The user the token stands for (its `sub`).
        #[arg(long)]
        user: String,
        /// How long the token stays valid (e.g. 30m, 24h).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

#[derive(Subcommand)]
enum BudgetAction {
    /// Set the user's budget, in place of the default (CHAT_BUDGET_TOKENS, CHAT_BUDGET_COST).
    /// A limit left out is none: with neither, the user has no limit.
    Set {
        /// The user, by the `sub` of their tokens; created if new.
        #[arg(long)]
        user: String,
        /// Tokens (input and output) the user may spend in a period.
        #[arg(long)]
        tokens: Option<u64>,
        /// What the user may spend in a period at the catalog's prices, in their unit (e.g. 2.50).
        #[arg(long, value_parser = cost_micros)]
        cost: Option<i64>,
        /// day, week (from Monday) or month, from midnight UTC.
        #[arg(long, value_parser = usage_period)]
        period: UsagePeriod,
    },
    /// Take the user's own budget away: the default applies again.
    Clear {
        /// The user, by the `sub` of their tokens.
        #[arg(long)]
        user: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli.settings.into_config(std::io::stderr().is_terminal()) {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    if let Some(Command::Token { user, ttl }) = &cli.command {
        return match mint_token(&config.auth, user, *ttl) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        };
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&e),
    };
    let outcome = runtime.block_on(async {
        // The OTLP exporter runs on this runtime, so it is set up inside it.
        let telemetry =
            telemetry::init(&config.log, config.otel.as_ref()).map_err(|e| e.to_string())?;
        let outcome = match cli.command {
            Some(Command::Migrate) => {
                run_migrations(&config.database.url, &config.database.search_config)
                    .await
                    .map(|applied| tracing::info!(versions = ?applied, "migrations applied"))
                    .map_err(|e| {
                        format!("applying migrations to {} failed: {e}", config.database.url)
                    })
            }
            Some(Command::Export { user }) => export(&config, &user).await,
            Some(Command::Import { user }) => import(&config, &user).await,
            Some(Command::Usage { user }) => usage(&config, &user).await,
            Some(Command::Budget { action }) => budget(&config, action).await,
            _ => chat_service::run(config).await.map_err(|e| e.to_string()),
        };
        // Delivers the last spans; blocking, so off the async threads.
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        outcome
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

async fn store_and_subject(config: &Config, user: &str) -> Result<(Store, Subject), String> {
    let subject = Subject::parse(user).ok_or_else(|| {
        format!("--user {user:?} is not a user: give the `sub` of their tokens (1 to 255 bytes, no control characters)")
    })?;
    let store = Store::connect(&config.database)
        .await
        .map_err(|e| e.to_string())?;
    Ok((store, subject))
}

async fn export(config: &Config, user: &str) -> Result<(), String> {
    let (store, subject) = store_and_subject(config, user).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let exported = transfer::export(&store, &subject, &mut out)
        .await
        .map_err(|e| e.to_string())?;
    eprintln!(
        "exported {} conversations ({} messages) of {user}",
        exported.conversations, exported.messages
    );
    Ok(())
}

async fn import(config: &Config, user: &str) -> Result<(), String> {
    let (store, subject) = store_and_subject(config, user).await?;
    let input = std::io::BufReader::new(std::io::stdin().lock());
    let imported = transfer::import(&store, &subject, input)
        .await
        .map_err(|e| e.to_string())?;
    for (place, reason) in &imported.refused {
        eprintln!("refused {place}: {reason}");
    }
    eprintln!(
        "imported {} conversations ({} messages) into {user}; refused {}",
        imported.conversations,
        imported.messages,
        imported.refused.len()
    );
    if imported.refused.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} conversations were refused (listed above); the others are stored",
            imported.refused.len()
        ))
    }
}

async fn usage(config: &Config, user: &str) -> Result<(), String> {
    let (store, subject) = store_and_subject(config, user).await?;
    let reports = UsageReports::new(store, config.limits.usage_period);
    let [previous, current] = reports
        .of_subject(&subject)
        .await
        .map_err(|e| e.to_string())?;
    let period: &str = config.limits.usage_period.into();
    let own = match reports.store().find_user(&subject).await {
        Ok(Some(id)) => reports.store().budget_of(id).await,
        Ok(None) => Ok(None),
        Err(e) => Err(e),
    }
    .map_err(|e| e.to_string())?;
    let budget = own.unwrap_or(config.limits.budget);
    let report = serde_json::json!({
        "user": user,
        "period": period,
        "current": period_json(&current),
        "previous": period_json(&previous),
        "budget": budget_json(&budget),
        "own_budget": own.is_some(),
    });
    println!("{report:#}");
    Ok(())
}

async fn budget(config: &Config, action: BudgetAction) -> Result<(), String> {
    match action {
        BudgetAction::Set {
            user,
            tokens,
            cost,
            period,
        } => {
            let (store, subject) = store_and_subject(config, &user).await?;
            let id = store
                .ensure_user(&subject)
                .await
                .map_err(|e| e.to_string())?;
            let budget = Budget {
                tokens: tokens.map(|tokens| i64::try_from(tokens).unwrap_or(i64::MAX)),
                cost_micros: cost,
                period,
            };
            store
                .set_budget(id, budget)
                .await
                .map_err(|e| e.to_string())?;
            eprintln!("{user} has a budget of their own: {}", budget_json(&budget));
        }
        BudgetAction::Clear { user } => {
            let (store, subject) = store_and_subject(config, &user).await?;
            let cleared = match store.find_user(&subject).await.map_err(|e| e.to_string())? {
                Some(id) => store.clear_budget(id).await.map_err(|e| e.to_string())?,
                None => false,
            };
            match cleared {
                true => eprintln!("{user}'s own budget is gone; the default applies"),
                false => eprintln!("{user} had no budget of their own; the default applies"),
            }
        }
    }
    Ok(())
}

fn budget_json(budget: &Budget) -> serde_json::Value {
    let period: &str = budget.period.into();
    serde_json::json!({
        "tokens": budget.tokens,
        "cost_micros": budget.cost_micros,
        "period": period,
    })
}

fn period_json(usage: &PeriodUsage) -> serde_json::Value {
    let spend = |spend: &Spend| {
        serde_json::json!({
            "calls": spend.calls,
            "estimated_calls": spend.estimated_calls,
            "input_tokens": spend.input_tokens,
            "cached_input_tokens": spend.cached_input_tokens,
            "output_tokens": spend.output_tokens,
            "reasoning_tokens": spend.reasoning_tokens,
            "cost_micros": spend.cost_micros,
        })
    };
    let models: Vec<_> = usage
        .models
        .iter()
        .map(|model| serde_json::json!({"model": model.model, "spend": spend(&model.spend)}))
        .collect();
    serde_json::json!({
        "start_time": usage.span.start_time().to_rfc3339_opts(SecondsFormat::Secs, true),
        "end_time": usage.span.end_time().to_rfc3339_opts(SecondsFormat::Secs, true),
        "total": spend(&usage.total),
        "models": models,
    })
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::FAILURE
}
