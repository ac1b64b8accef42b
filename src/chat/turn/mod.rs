//! One turn of `SendMessage`, and everything that may happen to it afterwards.
//!
//! The modules are listed from the bottom up: each uses only those listed before it.
//! - What a turn is: how it stands and ended ([`state`]), what it emits ([`events`]), the
//!   service it runs in ([`service`]), the model's view of the conversation ([`context`]).
//! - A reply, carried by a task of its own ([`task`]): its events are numbered and delivered
//!   ([`outlet`]) and observed ([`telemetry`]); each model round is relayed ([`relay`]); its
//!   writes are one store call each ([`persist`]); its end is settled ([`outcome`]) unless it
//!   calls tools, planned ([`round_plan`]) and run ([`tool_round`]); [`driver`] runs it from
//!   the commit to the end.
//! - Entry points, each starting a reply or following one: the tools offered ([`offer`]),
//!   starting the reply task ([`spawn`]), a turn replayed from storage ([`replay`]) or followed
//!   live ([`follow`]), a retry of a request ([`retry`]), a new turn ([`admit`]), another
//!   reply to a user's message ([`regenerate`]), turns whose
//!   replica stopped ([`lapsed`]), and the client's tool results ([`client_tools`]).
//!
//! Every event of a turn is numbered and written to the turn's log, so that a retry of the
//! same request, or a client whose stream broke, follows the turn from where it is, on any
//! replica.

mod state;
mod events;
mod service;
mod context;
mod outlet;
mod telemetry;
mod relay;
mod task;
mod persist;
mod outcome;
mod round_plan;
mod tool_round;
mod driver;
mod offer;
mod spawn;
mod replay;
mod follow;
mod retry;
mod admit;
mod regenerate;
mod lapsed;
mod client_tools;

pub use self::{
    client_tools::{
        Continuation, GivenToolResult, MAX_RESULTS_BYTES as MAX_TOOL_RESULTS_BYTES,
        ToolResultsRequest,
    },
    events::{ACCEPTED, Accepted, Completion, Sequenced, ToolResult, TurnEvent},
    regenerate::RegenerateRequest,
    service::{ClientTool, TurnRequest, TurnRuntime, TurnSettings, TurnStream, Turns},
};
