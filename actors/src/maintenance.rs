//! What a node deletes on its own because no registered device can use it any
//! more: messages queued for removed devices (a crash between a device's removal
//! and the purge that follows it leaves them behind) and the epoch fences of
//! groups whose members are all gone. Run at start and hourly.

use quicnprotochat_wire::IdentityKey;

use crate::DeliveryError;
use crate::connection::NodeContext;
use crate::store::ops::GroupWrite;
use crate::store::writer::WriteOp;

/// What one collection deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Collected {
    /// Inboxes of removed devices purged.
    pub inboxes: usize,
    /// Group fences deleted.
    pub fences: usize,
}

impl NodeContext {
    /// Deletes what no registered device can use any more and logs what it did.
    /// Without accounts every inbox and member is valid: nothing is looked at.
    pub async fn collect_garbage(&self) -> Collected {
        let mut collected = Collected::default();
        // Nodes sharing a store learn of each other's new devices by
        // notification: read the directory afresh, so a device registered on
        // another node a moment ago is not taken for removed.
        if self.writer.is_shared()
            && let Err(e) = self.auth.reload_directory().await
        {
            tracing::warn!(error = %e, "could not reload the device directory; collecting nothing");
            return collected;
        }
        if !self.auth.accounts_exist() {
            return collected;
        }
        match self.purge_orphaned_inboxes().await {
            Ok(n) => collected.inboxes = n,
            Err(e) => tracing::warn!(error = %e, "could not purge inboxes of removed devices"),
        }
        match self.collect_dead_group_fences().await {
            Ok(n) => collected.fences = n,
            Err(e) => tracing::warn!(error = %e, "could not collect group fences"),
        }
        if collected != Collected::default() {
            tracing::info!(
                inboxes = collected.inboxes,
                fences = collected.fences,
                "collected what removed devices left behind"
            );
        }
        collected
    }

    /// Purges every inbox that holds messages but belongs to no registered
    /// device; returns how many.
    async fn purge_orphaned_inboxes(&self) -> Result<usize, DeliveryError> {
        let inboxes = self.store.inboxes_with_messages().await?;
        let mut purged = 0;
        for inbox in inboxes {
            if !self.auth.accepts_inbox(&inbox) {
                self.registry.purge(inbox).await?;
                purged += 1;
            }
        }
        Ok(purged)
    }

    /// Deletes the fences of groups none of whose members is a registered
    /// device: nobody can commit to them again, and the group id becomes free.
    async fn collect_dead_group_fences(&self) -> Result<usize, DeliveryError> {
        let auth = self.auth.clone();
        self.writer
            .request(|reply| {
                WriteOp::Group(GroupWrite::CollectDead {
                    is_member_alive: Box::new(move |m| auth.accepts_inbox(&IdentityKey(*m))),
                    reply,
                })
            })
            .await
    }
}
