//! Cairn's wire types, generated at build time from the `.proto` files under the
//! repository's `proto/` directory (packages `cairn.<area>.v1`).
//!
//! The modules mirror the protobuf packages. [`FILE_DESCRIPTOR_SET`] is the encoded
//! descriptor set of every Cairn proto, which gRPC servers hand to reflection.

#![forbid(unsafe_code)]

/// The encoded `FileDescriptorSet` of every Cairn proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/cairn_descriptor.bin"));

/// `cairn.event.v1`: the envelope around every raw event.
pub mod event {
    pub mod v1 {
        #![allow(clippy::all, unused_qualifications)]
        include!(concat!(env!("OUT_DIR"), "/cairn.event.v1.rs"));
    }
}

/// `cairn.campaign.v1`: what campaigns ask channels to do, and their timers.
pub mod campaign {
    pub mod v1 {
        #![allow(clippy::all, unused_qualifications)]
        include!(concat!(env!("OUT_DIR"), "/cairn.campaign.v1.rs"));
    }
}

/// `cairn.personalize.v1`: what the personalization API answers for a profile.
pub mod personalize {
    pub mod v1 {
        #![allow(clippy::all, unused_qualifications)]
        include!(concat!(env!("OUT_DIR"), "/cairn.personalize.v1.rs"));
    }
}

/// `cairn.dispatch.v1`: what became of each email.
pub mod dispatch {
    pub mod v1 {
        #![allow(clippy::all, unused_qualifications)]
        include!(concat!(env!("OUT_DIR"), "/cairn.dispatch.v1.rs"));
    }
}

/// `cairn.admin.v1`: process status for operators.
pub mod admin {
    pub mod v1 {
        #![allow(clippy::all, unused_qualifications)]
        include!(concat!(env!("OUT_DIR"), "/cairn.admin.v1.rs"));
    }
}

/// `cairn.identity.v1`: the identity graph's API.
pub mod identity {
    pub mod v1 {
        #![allow(clippy::all, unused_qualifications)]
        include!(concat!(env!("OUT_DIR"), "/cairn.identity.v1.rs"));
    }
}

/// `cairn.profile.v1`: profiles, their changes, and enricher facts.
pub mod profile {
    pub mod v1 {
        #![allow(clippy::all, unused_qualifications)]
        include!(concat!(env!("OUT_DIR"), "/cairn.profile.v1.rs"));
    }
}

/// `cairn.collector.v1`: gRPC ingest.
pub mod collector {
    pub mod v1 {
        #![allow(clippy::all, unused_qualifications)]
        include!(concat!(env!("OUT_DIR"), "/cairn.collector.v1.rs"));
    }
}

/// `cairn.segment.v1`: segments in FilterQL.
pub mod segment {
    pub mod v1 {
        #![allow(clippy::all, unused_qualifications)]
        include!(concat!(env!("OUT_DIR"), "/cairn.segment.v1.rs"));
    }
}
