//! Size and traversal limits shared by both ends of the wire.

use capnp::message::ReaderOptions;

/// Default largest payload the node stores (1 MiB).
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// Default number of unacknowledged messages an inbox may hold.
pub const DEFAULT_QUEUE_LIMIT: u64 = 1000;

/// Most envelopes one fetch returns, whatever the caller asks for.
pub const MAX_FETCH_LIMIT: u32 = 1024;

/// Longest a fetchWait may wait (the client simply calls again).
pub const MAX_FETCH_WAIT_MS: u32 = 60_000;

/// Most payload bytes one fetch returns (at least one envelope is always returned,
/// whatever its size), so a response stays a bounded message.
pub const MAX_FETCH_BYTES: usize = 4 * 1024 * 1024;

/// Most deliveries one enqueueBatch or commit carries (a group's member devices).
pub const MAX_DELIVERIES: usize = 4096;

/// Reader options for every message we read off the wire.
///
/// The traversal limit bounds the words a single incoming message may make us visit:
/// room for the largest payload or fetch response twice over plus framing, and no
/// more. Our schema nests at most a handful of levels, so a small nesting limit
/// refuses deep garbage.
pub fn reader_options(max_payload: usize) -> ReaderOptions {
    let bytes = max_payload.max(MAX_FETCH_BYTES).saturating_mul(2);
    let words = (bytes / 8).saturating_add(64 * 1024);
    let mut options = ReaderOptions::new();
    options
        .traversal_limit_in_words(Some(words))
        .nesting_limit(16);
    options
}

/// Largest GroupInfo the node keeps for a group (commitGroup's `groupInfo`). A
/// GroupInfo carries the ratchet tree: ~1.4 KiB per member in the post-quantum
/// suite, so groups past ~700 such members publish none and cannot be rejoined
/// by external commit (their members' other devices still add new ones).
pub const MAX_GROUP_INFO: usize = 1024 * 1024;

/// Most groups `accountGroups` names.
pub const MAX_ACCOUNT_GROUPS: usize = 4096;
