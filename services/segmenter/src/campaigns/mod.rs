//! Real-time campaigns: small state machines over one profile, moved on by its events,
//! its segment changes and its inactivity timers ([`machine`]), defined in YAML or JSON
//! checked before they are saved ([`definition`]) in one record ([`saved`]), and run
//! against the bus and the store ([`engine`]): journeys kept per (campaign, profile),
//! durable inactivity timers, actions published for their channels.

pub mod definition;
pub mod engine;
pub mod grpc;
pub mod machine;
pub mod saved;
pub mod webhooks;

pub use definition::{Campaign, START};
pub use machine::{Action, Input, Journey, Step, step};
