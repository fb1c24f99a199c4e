//! Starting identity over, for a rebuild after its rules changed (`cairn rebuild`): its
//! consumer of the raw events goes, so that it reads them all again from the first,
//! and the identity graph is cleared except the records of forgotten identifiers (a
//! deleted person stays deleted).

use cairn_bus::{Bus, streams};
use cairn_store::Store;

use crate::error::IdentityError;
use crate::graph::{FORGOTTEN_PREFIX, IDENTITY};
use crate::{CONSUMER, FORGET_CONSUMER};

/// Fails unless identity is stopped and has forgotten every deleted profile (those
/// deletions would be lost with the streams a rebuild deletes).
pub async fn check_stopped(bus: &Bus) -> Result<(), IdentityError> {
    if let Some(info) = bus.consumer_info(streams::EVENTS, CONSUMER).await?
        && info.num_waiting > 0
    {
        return Err(IdentityError::NotStopped(format!(
            "identity is running ({} pulls waiting on consumer {CONSUMER}): stop every Cairn process first",
            info.num_waiting
        )));
    }
    if let Some(info) = bus
        .consumer_info(streams::PROFILES, FORGET_CONSUMER)
        .await?
    {
        let left = info.num_pending + info.num_ack_pending as u64;
        if left > 0 {
            return Err(IdentityError::NotStopped(format!(
                "identity has {left} profile deletions left to process: run Cairn until it has, then stop it and rebuild"
            )));
        }
    }
    Ok(())
}

/// Clears identity's state; returns how many graph keys were deleted. The caller has
/// checked [`check_stopped`].
pub async fn reset<S: Store>(bus: &Bus, store: &S) -> Result<u64, IdentityError> {
    bus.delete_consumer(streams::EVENTS, CONSUMER).await?;
    let deleted = cairn_store::delete_all(store, &IDENTITY, |key| {
        key.starts_with(FORGOTTEN_PREFIX.as_bytes())
    })
    .await?;
    Ok(deleted)
}
