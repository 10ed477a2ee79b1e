//! Who a member is called. A username travels in a Welcome's or a commit's
//! roster as a claim of the member that sent it, and any member can claim any
//! name for any device. So a claimed name is shown only once the node's
//! directory lists the device under it (the directory is what `invite alice`
//! trusts already: it serves alice's KeyPackages). A device the directory does
//! not confirm keeps an empty name and is shown by its key.
//!
//! A name is a fact about a device, not about a group: the directory binds a
//! device to one account for good, so a confirmed name holds in every group,
//! and a claim, being never shown, cannot rename a device anywhere.

use quicnprotochat_wire::ErrorCode;
use ractor::ActorRef;

use super::session::{SessionMsg, is_connection_loss};
use super::{Profile, ask_session, short_hex};
use crate::ClientError;
use crate::message::RosterEntry;
use crate::messenger::terms::MessengerError;

/// `name` if the directory confirmed one, else `#` and the device's key in
/// short: no username has a `#`, so a label is never taken for a name.
pub(crate) fn label(name: &str, identity: &[u8]) -> String {
    if name.is_empty() {
        format!("#{}", short_hex(identity))
    } else {
        name.to_string()
    }
}

/// Checks the names `roster` claims against the node's directory for `group_id`:
/// each entry then carries the directory's name for its device, or none. An
/// entry whose name this profile confirmed before is not asked about again.
/// Returns whether any entry changed. A lost connection or a refusal worth
/// retrying (`UNAVAILABLE`, `RATE_LIMITED`) is an error: the envelope is
/// applied on a later pull. Any other refusal (this device was removed from the
/// group since; an older node) leaves every asked name unconfirmed.
pub(crate) async fn confirm_roster(
    profile: &Profile,
    session: &ActorRef<SessionMsg>,
    group_id: &[u8],
    roster: &mut [RosterEntry],
) -> Result<bool, MessengerError> {
    let mut asked = Vec::new();
    for e in roster.iter() {
        let known = profile.state.roster_entry(&e.identity)?;
        let confirmed = known.is_some_and(|k| !k.username.is_empty() && k.username == e.username);
        if !confirmed && !asked.contains(&e.identity) {
            asked.push(e.identity);
        }
    }
    if asked.is_empty() {
        return Ok(false);
    }
    let group_id = group_id.to_vec();
    let keys = asked.clone();
    let directory = match ask_session(session, |reply| SessionMsg::GroupMembers {
        group_id,
        keys,
        reply,
    })
    .await
    {
        Ok(entries) => entries,
        // Worth asking again: the envelope waits for a later pull.
        Err(e) if is_connection_loss(&e) || e.code().is_some_and(|c| c.is_retryable()) => {
            return Err(e.into());
        }
        Err(ClientError::Refused(w)) if w.code == ErrorCode::Unimplemented => {
            tracing::warn!("the node cannot confirm member names; they are shown by key");
            Vec::new()
        }
        Err(e) => {
            tracing::warn!(error = %e, "member names could not be confirmed");
            Vec::new()
        }
    };
    let mut changed = false;
    for e in roster.iter_mut().filter(|e| asked.contains(&e.identity)) {
        let listed = directory
            .iter()
            .find(|d| d.identity_key.0 == e.identity)
            .map(|d| d.username.as_str())
            .unwrap_or("");
        if listed != e.username {
            if !e.username.is_empty() {
                tracing::warn!(
                    claimed = %e.username,
                    listed = %listed,
                    device = %short_hex(&e.identity),
                    "a member's name claim differs from the node's directory; the directory's stands"
                );
            }
            e.username = listed.to_string();
            changed = true;
        }
    }
    Ok(changed)
}

/// Asks the node's directory again about those of `members` this profile
/// knows without a confirmed name (a confirmation that failed for good
/// before), and keeps what it confirms: so that `remove bob` finds every
/// device of bob's.
pub(crate) async fn confirm_unnamed(
    profile: &Profile,
    session: &ActorRef<SessionMsg>,
    group_id: &[u8],
    members: &[Vec<u8>],
) -> Result<(), MessengerError> {
    let mut unnamed = Vec::new();
    for m in members {
        if let Some(e) = profile.state.roster_entry(m)?
            && e.username.is_empty()
        {
            unnamed.push(e);
        }
    }
    if unnamed.is_empty() || !confirm_roster(profile, session, group_id, &mut unnamed).await? {
        return Ok(());
    }
    profile.state.write(|t| {
        for e in unnamed.iter().filter(|e| !e.username.is_empty()) {
            t.put_roster(e)?;
        }
        Ok(())
    })?;
    Ok(())
}
