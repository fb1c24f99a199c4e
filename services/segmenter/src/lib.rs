//! The segmenter: FilterQL segments kept live to the second.
//!
//! So far: the engine ([`segments`]: the set of segments, each indexed by the profile
//! changes that can affect it, through INCLUDE too, evaluated in dependency order with
//! the entered/exited transitions and the next instant a date-math condition flips),
//! and the saved segments ([`definitions`], all in one record changed by
//! compare-and-set so that checks across segments hold) served by
//! `cairn.segment.v1.Segments` ([`grpc`]). Keeping memberships live (consuming
//! `profiles.changed`, publishing `segments.changed`, durable timers) and batch
//! evaluation are the next step.

#![forbid(unsafe_code)]

pub mod definitions;
pub mod error;
pub mod grpc;
pub mod segments;

use cairn_proto::segment::v1::segments_server::SegmentsServer;
use cairn_runtime::grpc::GrpcServices;
use cairn_runtime::{Module, ModuleContext, Var};
use cairn_store::Store;

pub use error::SegmentError;
pub use segments::{Segment, SegmentSet, Transition};

/// Every variable the segmenter reads.
pub fn vars() -> Vec<Var> {
    cairn_store::config::VARS.to_vec()
}

/// Starts the segmenter on `store`.
pub async fn start<S: Store>(_context: &ModuleContext, store: S) -> Result<Module, SegmentError> {
    // The saved segments must be readable before anything is served.
    definitions::load(&store).await?.0.set()?;
    Ok(Module {
        name: "segmenter",
        grpc: GrpcServices::default().with(SegmentsServer::new(grpc::SegmentsService { store })),
        http: None,
        tasks: Vec::new(),
    })
}
