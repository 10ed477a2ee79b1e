//! Names of the node's metrics, in one place. The `metrics` facade makes every
//! call a no-op until the binary installs a recorder.

/// QUIC connections accepted (counter).
pub const CONNECTIONS_TOTAL: &str = "qpc_connections_total";
/// QUIC connections open now (gauge).
pub const CONNECTIONS_OPEN: &str = "qpc_connections_open";
/// Messages accepted, durable (counter).
pub const ENQUEUES_TOTAL: &str = "qpc_enqueues_total";
/// `fetch` and `fetchWait` answered (counter).
pub const FETCHES_TOTAL: &str = "qpc_fetches_total";
/// `deliver` calls made to subscribed clients (counter).
pub const PUSHES_TOTAL: &str = "qpc_pushes_total";
/// `ack` answered (counter).
pub const ACKS_TOTAL: &str = "qpc_acks_total";
/// Messages stored and not yet acknowledged (gauge).
pub const QUEUE_DEPTH: &str = "qpc_queue_depth";
/// Writes per store transaction (histogram).
pub const COMMIT_BATCH_SIZE: &str = "qpc_commit_batch_size";
/// Store commit (fsync) latency (histogram).
pub const COMMIT_SECONDS: &str = "qpc_commit_seconds";
/// Actors replaced after a failure (counter).
pub const ACTOR_RESTARTS_TOTAL: &str = "qpc_actor_restarts_total";
/// Requests refused with `RATE_LIMITED` (counter).
pub const RATE_LIMITED_TOTAL: &str = "qpc_rate_limited_total";
/// Commits refused with `STALE_EPOCH` (counter).
pub const STALE_EPOCH_TOTAL: &str = "qpc_stale_epoch_total";
/// Sessions opened by login or resume, by call (counter).
pub const LOGINS_TOTAL: &str = "qpc_logins_total";
/// Refused login, resume and authenticate attempts, by call (counter).
pub const LOGINS_FAILED_TOTAL: &str = "qpc_logins_failed_total";
/// Connections refused over a cap, by cap (counter).
pub const CONNECTIONS_REFUSED_TOTAL: &str = "qpc_connections_refused_total";
/// Calls refused over a budget (counter).
pub const OVER_BUDGET_TOTAL: &str = "qpc_calls_over_budget_total";
/// Connections closed because their replies stayed unread too long (counter).
pub const STALLED_CONNECTIONS_TOTAL: &str = "qpc_stalled_connections_total";
/// Commits whose GroupInfo was past its device's quota and not kept (counter).
pub const GROUP_INFOS_NOT_KEPT_TOTAL: &str = "qpc_group_infos_not_kept_total";
/// Request bytes held by calls in flight (gauge).
pub const BYTES_IN_FLIGHT: &str = "qpc_call_bytes_in_flight";
pub use quicnprotochat_wire::error::REFUSALS_TOTAL;

/// Every counter, so a fresh node reports them at zero rather than not at all.
pub const COUNTERS: [&str; 13] = [
    GROUP_INFOS_NOT_KEPT_TOTAL,
    OVER_BUDGET_TOTAL,
    STALLED_CONNECTIONS_TOTAL,
    LOGINS_TOTAL,
    LOGINS_FAILED_TOTAL,
    CONNECTIONS_REFUSED_TOTAL,
    CONNECTIONS_TOTAL,
    ENQUEUES_TOTAL,
    FETCHES_TOTAL,
    ACKS_TOTAL,
    ACTOR_RESTARTS_TOTAL,
    RATE_LIMITED_TOTAL,
    STALE_EPOCH_TOTAL,
];

/// Registers every metric with its description.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(CONNECTIONS_TOTAL, "QUIC connections accepted");
    describe_gauge!(CONNECTIONS_OPEN, "QUIC connections open now");
    describe_counter!(ENQUEUES_TOTAL, "messages accepted (durable)");
    describe_counter!(FETCHES_TOTAL, "fetch and fetchWait calls answered");
    describe_counter!(
        PUSHES_TOTAL,
        "inbox batches pushed to subscribed clients (deliver calls)"
    );
    describe_counter!(ACKS_TOTAL, "ack calls answered");
    describe_gauge!(
        QUEUE_DEPTH,
        "messages stored and not yet acknowledged, all inboxes"
    );
    describe_histogram!(COMMIT_BATCH_SIZE, "writes per store transaction");
    describe_histogram!(
        COMMIT_SECONDS,
        Unit::Seconds,
        "store commit (fsync) latency"
    );
    describe_counter!(
        ACTOR_RESTARTS_TOTAL,
        "inbox actors replaced after a failure"
    );
    describe_counter!(RATE_LIMITED_TOTAL, "requests refused with RATE_LIMITED");
    describe_counter!(STALE_EPOCH_TOTAL, "commits refused with STALE_EPOCH");
    describe_counter!(
        LOGINS_TOTAL,
        "sessions opened by OPAQUE login or token resume"
    );
    describe_counter!(
        LOGINS_FAILED_TOTAL,
        "refused login, resume and authenticate attempts, by call"
    );
    describe_counter!(
        CONNECTIONS_REFUSED_TOTAL,
        "QUIC connections refused over a connection cap, by cap"
    );
    describe_counter!(
        OVER_BUDGET_TOTAL,
        "calls refused over a connection's or the node's in-flight budget"
    );
    describe_counter!(
        STALLED_CONNECTIONS_TOTAL,
        "connections closed because their replies stayed unread (limits.reply_stall_secs)"
    );
    describe_gauge!(
        BYTES_IN_FLIGHT,
        "request bytes held by calls in flight, all connections"
    );
    describe_counter!(REFUSALS_TOTAL, "typed refusals sent to clients, by code");
    for name in COUNTERS {
        metrics::counter!(name).increment(0);
    }
    metrics::gauge!(CONNECTIONS_OPEN).set(0.0);
}
