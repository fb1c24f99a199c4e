//! Real-time campaigns: small state machines over one profile, moved on by its events,
//! its segment changes and its inactivity timers ([`machine`]), defined in YAML or JSON
//! and checked before they are saved ([`definition`]). Keeping journeys in the store,
//! the durable timers and sending the actions are the next step.

pub mod definition;
pub mod machine;

pub use definition::{Campaign, START};
pub use machine::{Action, Input, Journey, Step, step};
