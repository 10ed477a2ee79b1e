//! What can go wrong between a caller and the durable store, and how it maps to the
//! wire's stable codes.

use quicnprotochat_wire::{ErrorCode, WireError};

use crate::core::inbox::InboxRefusal;
use crate::store::StoreError;

/// Why a delivery-service request failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The inbox's rules refused the request: the caller's doing.
    #[error(transparent)]
    Refused(#[from] InboxRefusal),
    /// One inbox of a write to several refused it (whose, and why); nothing of
    /// the write was stored.
    #[error("inbox {}…: {refusal}", &inbox.to_hex()[..8])]
    RefusedBy {
        /// The inbox that refused.
        inbox: quicnprotochat_wire::IdentityKey,
        /// Why.
        refusal: InboxRefusal,
    },
    /// The store failed: the node's doing; nothing acknowledged is lost.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Another node sharing the store accepted a commit first: this one was
    /// made at a stale epoch. Nothing of it was stored.
    #[error(
        "the group's epoch fence moved on another node (the group is at epoch {current:?}); fetch the commits and retry"
    )]
    FenceMoved {
        /// The epoch the group's next commit must be made at, as stored.
        current: Option<u64>,
    },
    /// The actor owning the inbox stopped or restarted while the request was in
    /// flight; retrying is safe.
    #[error("inbox restarting, retry")]
    Restarting,
}

impl From<DeliveryError> for WireError {
    fn from(e: DeliveryError) -> Self {
        let code = match &e {
            DeliveryError::Refused(r) | DeliveryError::RefusedBy { refusal: r, .. } => r.code(),
            DeliveryError::FenceMoved { .. } => ErrorCode::StaleEpoch,
            DeliveryError::Store(_) | DeliveryError::Restarting => ErrorCode::Unavailable,
        };
        // Store details are for the operator's log, not for remote parties.
        let detail = match &e {
            DeliveryError::Store(StoreError::CommitOutcomeUnknown(_)) => {
                "storage failed while storing this write: it may or may not be stored".to_string()
            }
            DeliveryError::Store(_) => "storage unavailable".to_string(),
            other => other.to_string(),
        };
        WireError::new(code, detail)
    }
}

impl InboxRefusal {
    /// The wire code of this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            InboxRefusal::QueueFull { .. } => ErrorCode::QueueFull,
            InboxRefusal::TooLarge { .. } => ErrorCode::TooLarge,
            InboxRefusal::AckBeyondEnd { .. } => ErrorCode::BadRequest,
            InboxRefusal::TooManyWaiters { .. } => ErrorCode::RateLimited,
            InboxRefusal::NoDevice => ErrorCode::NotFound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_learns_whether_a_failed_write_may_still_be_stored() {
        let cut_off: WireError =
            DeliveryError::Store(StoreError::CommitOutcomeUnknown("disk".into())).into();
        assert_eq!(cut_off.code, ErrorCode::Unavailable);
        assert!(
            cut_off.detail.contains("may or may not be stored"),
            "{cut_off}"
        );
        assert!(
            !cut_off.detail.contains("disk"),
            "no store detail to remote parties"
        );
        let refused: WireError = DeliveryError::Store(StoreError::Poisoned("disk".into())).into();
        assert_eq!(refused.code, ErrorCode::Unavailable);
        assert_eq!(refused.detail, "storage unavailable");
    }
}
