//! The client's actor tree (DESIGN.md, "Client: the actor tree"):
//!
//! ```text
//! ClientSupervisor     starts the others, owns the group registry
//! ├── SessionActor     the QUIC connection + Cap'n Proto client (its own thread:
//! │                    capnp-rpc is !Send); connects, resumes, reconnects with backoff
//! ├── ReceiverActor    fetch / fetchWait; opens each envelope, strictly in seq order,
//! │                    routes it by group id; joins groups from Welcomes; acks
//! ├── GroupActor(gid)  owns one group's MLS state: every epoch transition of that
//! │                    group (incoming or our own) goes through its mailbox
//! └── client store     redb: identity, hybrid key, OpenMLS storage, groups, cursor
//! ```
//!
//! Each group actor and the receiver have their own view of the OpenMLS storage
//! (`RedbMlsStorage`): one MLS operation commits its writes, with the cursor and
//! whatever else it changed, in one redb transaction.
//!
//! The [`crate::messenger::Messenger`] is the handle applications hold.

pub(crate) mod group;
pub(crate) mod names;
pub(crate) mod receiver;
pub(crate) mod session;
pub(crate) mod supervisor;

pub use session::ConnectionEvent;

use std::net::SocketAddr;
use std::time::Duration;

use quicnprotochat_crypto::Identity;
use quicnprotochat_crypto::envelope::{
    BodyProtection, HybridKeyPair, HybridPublicKey, seal_shared,
};
use quicnprotochat_crypto::mls::{Group, Suite};
use quicnprotochat_wire::IdentityKey;
use ractor::{ActorRef, RpcReplyPort};

use crate::ClientError;
use crate::message::{Body, ClientMessage, RosterEntry};
use crate::messenger::terms::{Line, MessengerError};
use crate::mls_store::RedbMlsStorage;
use crate::state::ClientState;
use crate::state::groups::ClientTxn;

/// Where the node is and how to reach it again after a lost connection.
#[derive(Clone)]
pub struct NodeAddress {
    /// The node.
    pub addr: SocketAddr,
    /// What the client trusts to be the node: its pinned certificate, or a CA
    /// bundle and the node's name.
    pub trust: quicnprotochat_wire::tls::ServerTrust,
    /// The operator's admission token, if the node requires one.
    pub auth_token: Option<String>,
    /// How long a request waits for a lost connection to come back (with
    /// backoff) before it fails; the first connection is tried once.
    pub reconnect_patience: Duration,
    /// A client QUIC endpoint to connect through (see
    /// [`crate::client_endpoint`]), shared by the many clients of one
    /// process (a load generator); `None`: each connection has its own.
    pub endpoint: Option<quinn::Endpoint>,
    /// How long one connection attempt may take before the node counts as
    /// unreachable (`None`: the handshake's own timeout, 6 s). A command that
    /// can answer from the profile bounds it, so a node that is down costs it
    /// a fraction of a second.
    pub connect_within: Option<Duration>,
    /// Fail fast while disconnected, with this first wait between attempts:
    /// a request makes at most one (bounded) attempt, and none at all before
    /// the next one is due (the wait doubles, up to 30 s), instead of waiting
    /// out `reconnect_patience`; the start does not connect. For a resident
    /// client, whose follow loop keeps trying and whose calls must not hang
    /// (250 ms), and for a read that answers from the profile (one attempt:
    /// a wait longer than the command).
    pub fail_fast: Option<Duration>,
}

impl std::fmt::Debug for NodeAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeAddress")
            .field("addr", &self.addr)
            .field(
                "auth_token",
                &self.auth_token.as_ref().map(|_| "<redacted>"),
            )
            .field("reconnect_patience", &self.reconnect_patience)
            .field("connect_within", &self.connect_within)
            .field("fail_fast", &self.fail_fast)
            .finish()
    }
}

/// A shared body and each recipient's part of it (none when the body needs none).
pub(crate) type SealedForGroup = (Vec<u8>, Vec<(IdentityKey, Vec<u8>)>);

/// The profile every actor of the tree works for (shared, read-mostly).
pub(crate) struct Profile {
    pub state: ClientState,
    pub identity: Identity,
    pub hybrid: HybridKeyPair,
    pub username: String,
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn short_hex(id: &[u8]) -> String {
    id.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

impl Profile {
    pub(crate) fn me(&self) -> [u8; 32] {
        self.identity.public_key()
    }

    pub(crate) fn my_entry(&self) -> RosterEntry {
        RosterEntry {
            identity: self.identity.public_key(),
            username: self.username.clone(),
            hybrid_key: self.hybrid.signed_public(&self.identity).to_bytes(),
        }
    }

    /// How a member is shown: its name as the node's directory confirmed it,
    /// else its key in short ([`names`]).
    pub(crate) fn name_of(&self, identity: &[u8]) -> String {
        match self.state.roster_entry(identity) {
            Ok(Some(e)) => names::label(&e.username, identity),
            _ => names::label("", identity),
        }
    }

    /// Seals `msg` once for `recipients` of `group`: protected by the MLS
    /// message inside when the group's suite is post-quantum (no parts: the node
    /// knows the group's members), otherwise wrapped with an X-Wing part for each
    /// recipient, so every payload stays post-quantum protected.
    pub(crate) fn seal_for_group(
        &self,
        group: &Group,
        recipients: &[Vec<u8>],
        msg: &[u8],
    ) -> Result<SealedForGroup, MessengerError> {
        if group.suite() == Some(Suite::PostQuantum) {
            return Ok(self.seal_shared_to(group, &[], &[], msg));
        }
        let mut ids = Vec::with_capacity(recipients.len());
        let mut keys = Vec::with_capacity(recipients.len());
        for r in recipients {
            let entry = self
                .state
                .roster_entry(r)?
                .ok_or_else(|| MessengerError::NoKeyFor(short_hex(r)))?;
            keys.push(
                HybridPublicKey::verify(&entry.hybrid_key, &entry.identity).map_err(|e| {
                    MessengerError::BadKeys {
                        user: entry.username.clone(),
                        reason: e.to_string(),
                    }
                })?,
            );
            ids.push(IdentityKey(entry.identity));
        }
        Ok(self.seal_shared_to(group, &ids, &keys, msg))
    }

    /// [`Profile::seal_for_group`] with the recipients' keys at hand.
    pub(crate) fn seal_shared_to(
        &self,
        group: &Group,
        ids: &[IdentityKey],
        keys: &[HybridPublicKey],
        msg: &[u8],
    ) -> SealedForGroup {
        let protection = if group.suite() == Some(Suite::PostQuantum) {
            BodyProtection::Mls
        } else {
            BodyProtection::Wrapped
        };
        let sealed = seal_shared(&self.identity, msg, now_ms(), protection, keys);
        let parts = ids.iter().copied().zip(sealed.parts).collect();
        (sealed.body, parts)
    }

    /// The receipt of our commit made at `epoch`, sealed for this device alone:
    /// the node stores it with the commit, and its arrival confirms the commit.
    pub(crate) fn seal_receipt(
        &self,
        group: &Group,
        epoch: u64,
    ) -> Result<SealedForGroup, MessengerError> {
        let receipt = self
            .group_message(Body::CommitReceipt { epoch }, &group.group_id(), Vec::new())
            .encode()?;
        self.seal_for_group(group, &[self.me().to_vec()], &receipt)
    }

    pub(crate) fn group_message(&self, body: Body, group_id: &[u8], mls: Vec<u8>) -> ClientMessage {
        ClientMessage {
            body,
            group_id: group_id.to_vec(),
            mls,
            sender_name: self.username.clone(),
            roster: Vec::new(),
        }
    }

    /// Members other than this device.
    pub(crate) fn others(&self, group: &Group) -> Vec<Vec<u8>> {
        let me = self.me();
        group
            .members()
            .into_iter()
            .filter(|m| m.as_slice() != me)
            .collect()
    }

    /// Commits, in one transaction, the MLS writes in `storage`, the effects of
    /// applying the envelope `seq`, and the cursor moved to `seq`.
    pub(crate) fn commit_envelope(
        &self,
        storage: &RedbMlsStorage,
        seq: u64,
        fx: &Effects,
    ) -> Result<(), MessengerError> {
        Ok(self.state.transact(storage, |t| fx.write(t, seq))?)
    }
}

/// What applying one envelope changes besides the MLS state.
#[derive(Default)]
pub(crate) struct Effects {
    pub lines: Vec<Line>,
    pub roster: Vec<RosterEntry>,
    pub set_group: Option<(String, Vec<u8>)>,
    pub forget_group: Option<Vec<u8>>,
    pub hold: Option<Vec<u8>>,
    pub release: Vec<u64>,
    /// The digest of the group message this envelope carried, to ignore replays.
    pub processed: Option<[u8; 32]>,
    /// The key of the message id it carried, to show a resent message once.
    pub message_id: Option<[u8; 32]>,
    /// Messages to keep in a group's history: (group id, entry).
    pub history: Vec<(Vec<u8>, crate::state::history::HistoryEntry)>,
}

impl Effects {
    fn write(&self, t: &ClientTxn<'_>, seq: u64) -> Result<(), redb::Error> {
        for e in &self.roster {
            t.put_roster(e)?;
        }
        if let Some((name, gid)) = &self.set_group {
            t.set_group(name, gid)?;
        }
        if let Some(gid) = &self.forget_group {
            t.forget_group(gid)?;
        }
        if let Some(held) = &self.hold {
            t.hold(seq, held)?;
        }
        for s in &self.release {
            t.release(*s)?;
        }
        for digest in self.processed.iter().chain(&self.message_id) {
            t.remember_processed(digest)?;
        }
        for (group_id, entry) in &self.history {
            t.add_history(group_id, entry)?;
        }
        for (n, line) in self.lines.iter().enumerate() {
            t.add_line(seq, n as u32, line)?;
        }
        t.set_cursor(seq)
    }
}

pub(crate) fn notice(seq: u64, group: Option<&str>, text: String) -> Line {
    Line {
        seq,
        group: group.map(str::to_string),
        sender: None,
        text,
        epoch: None,
    }
}

/// Asks `actor` and waits for its answer; an actor that stopped (or failed while
/// answering) is a typed error, not a hang.
pub(crate) async fn ask<M, T>(
    actor: &ActorRef<M>,
    what: &'static str,
    build: impl FnOnce(RpcReplyPort<Result<T, MessengerError>>) -> M,
) -> Result<T, MessengerError>
where
    M: ractor::Message,
    T: Send + 'static,
{
    match actor.call(build, None).await {
        Ok(ractor::rpc::CallResult::Success(r)) => r,
        Ok(_) => Err(MessengerError::ActorStopped(what)),
        Err(_) => Err(MessengerError::ActorStopped(what)),
    }
}

/// Like [`ask`], for the session actor's answers (client errors).
pub(crate) async fn ask_session<T>(
    actor: &ActorRef<session::SessionMsg>,
    build: impl FnOnce(RpcReplyPort<Result<T, ClientError>>) -> session::SessionMsg,
) -> Result<T, ClientError>
where
    T: Send + 'static,
{
    match actor.call(build, None).await {
        Ok(ractor::rpc::CallResult::Success(r)) => r,
        _ => Err(ClientError::Transport(
            "the client's session actor stopped".into(),
        )),
    }
}
