//! The segmenter: FilterQL segments kept live to the second.
//!
//! This crate holds the engine so far ([`segments`]): the set of segments, each indexed
//! by the profile changes that can affect it (through INCLUDE too), evaluated in
//! dependency order on each change, with the entered/exited transitions and the next
//! instant a date-math condition flips. The service around it (consuming
//! `profiles.changed`, publishing `segments.changed`, durable timers, batch, gRPC) is
//! the next step.

#![forbid(unsafe_code)]

pub mod segments;

pub use segments::{Segment, SegmentError, SegmentSet, Transition};
