//! The calls a device with no local state uses to find its account's groups and
//! rejoin them by external commit: which groups, and each one's GroupInfo with
//! its members' directory entries. Who may ask is the fence's rule
//! ([`crate::core::epoch::account_in_group`]); this module only fetches.

use std::collections::BTreeSet;

use quicnprotochat_wire::limits::MAX_ACCOUNT_GROUPS;

use super::*;
use crate::auth::MemberEntry;
use crate::core::epoch::account_in_group;

/// A group's GroupInfo and its members as the directory knows them.
pub(super) struct FoundGroupInfo {
    pub group_info: Vec<u8>,
    pub members: Vec<MemberEntry>,
}

fn account_devices(ctx: &NodeContext, device: &IdentityKey) -> BTreeSet<[u8; 32]> {
    ctx.auth
        .devices_of_account(device)
        .into_iter()
        .map(|d| d.0)
        .collect()
}

fn storage_unavailable(e: impl std::fmt::Display) -> capnp::Error {
    tracing::error!(error = %e, "group directory read failed");
    refuse(ErrorCode::Unavailable, "storage unavailable")
}

/// The members of `group_id` as the group's actor holds them (after every
/// accepted commit), for a device whose account is in it.
async fn members_seen_by(
    ctx: &NodeContext,
    device: &IdentityKey,
    group_id: &[u8],
) -> Result<BTreeSet<[u8; 32]>, capnp::Error> {
    let members = ctx
        .groups
        .members(group_id)
        .await
        .map_err(WireError::from)?;
    if !account_in_group(&members, &device.0, &account_devices(ctx, device)) {
        return Err(refuse(
            ErrorCode::Unauthorized,
            "no device of this account is a member of the group",
        ));
    }
    Ok(members)
}

/// The account names of those of `asked` that are members of `group_id` now,
/// for a device whose account is in it: what a client checks the names other
/// members claim against (no hybrid keys: the client has them signed).
pub(super) async fn group_members(
    ctx: &NodeContext,
    device: &IdentityKey,
    group_id: &[u8],
    asked: &BTreeSet<[u8; 32]>,
) -> Result<Vec<MemberEntry>, capnp::Error> {
    let members = members_seen_by(ctx, device, group_id).await?;
    let listed: BTreeSet<[u8; 32]> = members.intersection(asked).copied().collect();
    Ok(ctx.auth.member_names(&listed))
}

/// The latest GroupInfo of `group_id`, for a device whose account is in it.
pub(super) async fn group_info(
    ctx: &NodeContext,
    device: &IdentityKey,
    group_id: &[u8],
) -> Result<FoundGroupInfo, capnp::Error> {
    let members = members_seen_by(ctx, device, group_id).await?;
    let info = ctx
        .store
        .group_info(group_id.to_vec())
        .await
        .map_err(storage_unavailable)?
        .ok_or_else(|| {
            refuse(
                ErrorCode::NotFound,
                "the group has no current GroupInfo (its last commit published none)",
            )
        })?;
    let auth = ctx.auth.clone();
    let members = auth.member_entries(&members).await.map_err(auth_refusal)?;
    Ok(FoundGroupInfo {
        group_info: info,
        members,
    })
}

/// The groups any device of `device`'s account is a member of.
pub(super) async fn account_groups(
    ctx: &NodeContext,
    device: &IdentityKey,
) -> Result<Vec<Vec<u8>>, capnp::Error> {
    let devices: Vec<[u8; 32]> = account_devices(ctx, device).into_iter().collect();
    ctx.store
        .groups_of(devices, MAX_ACCOUNT_GROUPS)
        .await
        .map_err(storage_unavailable)
}
