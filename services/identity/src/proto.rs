//! Conversions between the graph's types and `cairn.identity.v1`.

use cairn_proto::identity::v1 as pb;

use crate::graph::{LogEntry, LogKind};
use crate::rules::Identifier;

pub fn identifier(identifier: &Identifier) -> pb::Identifier {
    pb::Identifier {
        r#type: identifier.kind.clone(),
        value: identifier.value.clone(),
    }
}

pub fn merge_record(entry: &LogEntry) -> pb::MergeRecord {
    let kind = match entry.kind {
        LogKind::Merged => pb::merge_record::Kind::Merged,
        LogKind::Rejected => pb::merge_record::Kind::Rejected,
        LogKind::Split => pb::merge_record::Kind::Split,
    };
    pb::MergeRecord {
        kind: kind.into(),
        at: Some(cairn_runtime::clock::timestamp(entry.at_ms)),
        message_id: entry.message_id.clone(),
        from_profile_id: entry.from.clone(),
        into_profile_id: entry.into.clone(),
        identifiers: entry.identifiers.iter().map(identifier).collect(),
        reason: entry.reason.clone(),
    }
}
