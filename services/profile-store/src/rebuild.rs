//! Starting the profile store over, for a rebuild (`cairn rebuild`): every profile, its
//! timeline and index entries go; identity's replay of the raw events makes them again.

use cairn_bus::Bus;
use cairn_store::Store;

use crate::OWNERS_GROUP;
use crate::error::ProfileError;
use crate::store::{PROFILE_INDEX, PROFILES};

/// Fails while a profile-store replica is live.
pub async fn check_stopped(bus: &Bus) -> Result<(), ProfileError> {
    let live = cairn_bus::ownership::live_members(bus, OWNERS_GROUP).await?;
    if live > 0 {
        return Err(ProfileError::NotStopped(format!(
            "{live} profile-store replicas are running: stop every Cairn process first (a replica killed without stopping is gone after CAIRN_PARTITION_LEASE)"
        )));
    }
    Ok(())
}

/// Deletes every profile; returns how many keys were deleted. The caller has checked
/// [`check_stopped`].
pub async fn reset<S: Store>(store: &S) -> Result<u64, ProfileError> {
    let profiles = cairn_store::delete_all(store, &PROFILES, |_| false).await?;
    let index = cairn_store::delete_all(store, &PROFILE_INDEX, |_| false).await?;
    Ok(profiles + index)
}
