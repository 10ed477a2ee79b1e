# The wire contract of quicnprotochat.
#
# Field and method numbers are forever: add new ones at the end, never renumber,
# never reuse. Errors are Cap'n Proto exceptions whose text starts with a stable
# code and a colon (QUEUE_FULL, TOO_LARGE, UNAUTHORIZED, RATE_LIMITED, STALE_EPOCH,
# NOT_FOUND, BAD_REQUEST, UNIMPLEMENTED, UNAVAILABLE, ALREADY_EXISTS,
# QUOTA_EXCEEDED, STORAGE_FULL); see wire/src/error.rs.
#
# Identity keys are raw Ed25519 public keys (32 bytes); an inbox is named by the
# identity key that owns it.

@0xf0f39850bfb4f07b;

struct Envelope {
  # One stored message of an inbox. `seq` is the inbox's delivery sequence number:
  # starts at 1, grows by exactly one per accepted message, never reused.
  seq @0 :UInt64;
  data @1 :Data;
  kind @2 :EnvelopeKind;
  # What `data` is (older nodes send only `direct`).
  part @3 :Data;
  # For `shared`: this recipient's own part of the envelope (may be empty).
}

enum EnvelopeKind {
  direct @0;
  # `data` is what a client enqueued for this inbox alone.
  shared @1;
  # `data` is a body stored once for many recipients (sendGroup, commitGroup).
  missed @2;
  # `data` is the node's note of messages it could not queue for this inbox
  # while it was full: count (u64 BE) ‖ group count (u16 BE) ‖
  # (group id length (u16 BE) ‖ group id)*, at most 16 groups.
}

struct Delivery {
  # One payload for one recipient inbox (enqueueBatch, commit fan-out).
  recipient @0 :Data;
  payload @1 :Data;
}

struct ClaimedKeyPackage {
  # What fetchKeyPackage returns for one device of the target account.
  identityKey @0 :Data;
  keyPackage @1 :Data;
  hybridPublicKey @2 :Data;
  # Signed X-Wing public key of the device (crypto issue).
  lastResort @3 :Bool;
}

struct Recipient {
  # One recipient of a shared body (sendGroup, commitGroup) and its own small part
  # of the envelope (empty when the body needs none; at most 2 KiB).
  identityKey @0 :Data;
  part @1 :Data;
}

struct SendOutcome {
  # What became of one recipient of sendGroup: its seq, or why its inbox refused
  # (a stable code and a colon, as in exception texts; e.g. "QUEUE_FULL: ...").
  recipient @0 :Data;
  union {
    seq @1 :UInt64;
    refused @2 :Text;
  }
}

struct KeyPackageTarget {
  union {
    username @0 :Text;
    identityKey @1 :Data;
  }
}

interface Node {
  # The bootstrap capability: unauthenticated calls, and the ways to a Session.

  health @0 () -> (status :Text, version :Text, uptimeMs :UInt64);
  ping @1 (nonce :UInt64) -> (nonce :UInt64);

  challenge @2 () -> (nonce :Data);
  # A fresh single-use nonce bound to this connection. The caller proves its
  # identity by signing the authentication transcript (crypto crate:
  # auth_transcript) over this nonce and the connection's TLS exporter secret.

  authenticate @3 (identityKey :Data, signature :Data, authToken :Data) -> (session :Session);
  # authToken: the operator's admission token; empty when the node has none.

  registerStart @4 (username :Text, request :Data, authToken :Data) -> (response :Data);
  registerFinish @5 (username :Text, upload :Data, identityKey :Data, signature :Data) -> ();
  loginStart @6 (username :Text, request :Data, authToken :Data) -> (response :Data);
  loginFinish @7 (finalization :Data, identityKey :Data, signature :Data) -> (session :Session, token :Data, expiresAtMs :UInt64);
  resume @8 (token :Data, authToken :Data) -> (session :Session, expiresAtMs :UInt64);

  enqueueSealed @9 (recipient :Data, payload :Data, accessKey :Data) -> (seq :UInt64);
  # Sealed sender: no session; the recipient's access key admits the message.

  fetchKeyPackage @10 (target :KeyPackageTarget, ciphersuite :UInt16) -> (packages :List(ClaimedKeyPackage));
  # One package per device of the target, for `ciphersuite` (an MLS ciphersuite
  # code; 0 means the mandatory one, MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519).

  peekKeyPackages @11 (target :KeyPackageTarget, ciphersuite :UInt16) -> (packages :List(ClaimedKeyPackage));
  # What fetchKeyPackage would serve, without consuming anything: per device of
  # the target, its hybrid public key and its last-resort package (reusable by
  # design; serving it here is not counted). For checking someone's published
  # keys: a look never uses up their one-time packages.

  operator @12 (operatorToken :Data) -> (operator :Operator);
  # The operator's capability, for the node's `operator_token`. UNAUTHORIZED
  # when the node has none or this is not it.
}

interface Operator {
  # What an operator does on a running node (the same as `admin` on a stopped
  # node's data folder).

  accounts @0 () -> (accounts :List(AccountEntry));
  # Every account with its devices, by name.

  deleteAccount @1 (username :Text) -> (devices :List(Data));
  # Deletes the account: its login, every device with its keys, KeyPackages and
  # sessions, and what is queued for them; the name is free again. Returns the
  # devices deleted; NOT_FOUND when there is no such account.
}

struct AccountEntry {
  username @0 :Text;
  devices @1 :List(Data);
  # Identity keys, 32 bytes each.
}

interface Session {
  # Calls on behalf of one authenticated identity. Inbox-scoped calls have no
  # inbox argument: a session can only ever read or ack its own inbox.

  whoami @0 () -> (identityKey :Data, username :Text, deviceCount :UInt32, expiresAtMs :UInt64);

  enqueue @1 (recipient :Data, payload :Data) -> (seq :UInt64);
  # Answers only after the message is durable (fsynced).

  enqueueBatch @2 (deliveries :List(Delivery)) -> (seqs :List(UInt64));

  fetch @3 (after :UInt64, limit :UInt32) -> (envelopes :List(Envelope));
  # Envelopes with seq > after, in seq order, at most `limit`. Not destructive.

  fetchWait @4 (after :UInt64, limit :UInt32, timeoutMs :UInt32) -> (envelopes :List(Envelope));
  # Like fetch, but when nothing is there waits until something arrives or
  # timeoutMs passes (then the list is empty).

  ack @5 (upTo :UInt64) -> ();
  # Deletes every envelope with seq <= upTo, durably, before answering.

  uploadKeyPackages @6 (oneTime :List(Data), lastResort :Data, hybridPublicKey :Data) -> ();
  # All packages of one upload are of one ciphersuite; each suite has its own
  # one-time packages and last-resort package.
  commit @7 (groupId :Data, epoch :UInt64, deliveries :List(Delivery), members :List(Data), mlsCommit :Data) -> (seqs :List(UInt64));
  # The first commit accepted at (groupId, epoch) wins; later ones are STALE_EPOCH.
  # `members`: identity keys of the group's members once this commit applies (the
  # caller among them). Once a group has a commit, only its recorded members may
  # commit to it (UNAUTHORIZED otherwise), so strangers cannot jam its fence.
  # `mlsCommit`: the MLS commit itself (a PrivateMessage: only its header is clear);
  # the node checks that its group id and epoch are the call's (BAD_REQUEST if not),
  # since the deliveries are sealed and show it nothing.
  logout @8 () -> ();
  setAccessKey @9 (accessKeyHash :Data) -> ();
  # SHA-256 of the access key sealed senders must present (enqueueSealed).

  removeDevice @10 (identityKey :Data) -> ();
  # Removes another device of the caller's account; its queued messages are deleted.

  keyPackageStatus @11 () -> (oneTimeRemaining :UInt64, lastResortServed :UInt64);

  sendGroup @12 (groupId :Data, body :Data, recipients :List(Recipient)) -> (outcomes :List(SendOutcome));
  # One upload for a whole group: the node stores `body` once, and each recipient
  # inbox gets its own seq pointing at it (fetch returns each recipient its own
  # envelope, of kind `shared`). The caller must be a member of the
  # group (its last accepted commit named it; UNAUTHORIZED otherwise).
  # `recipients` empty: every member but the caller, with empty parts. Otherwise
  # each must be a member (BAD_REQUEST otherwise). Deliveries are independent: an
  # inbox that is full refuses only its own copy (reported in `outcomes`), and
  # its owner later finds a `missed` envelope naming the group.

  commitGroup @13 (groupId :Data, epoch :UInt64, members :List(Data), mlsCommit :Data, commitBody :Data, welcomeBody :Data, receiptBody :Data, parts :List(Recipient), groupInfo :Data) -> (delivered :UInt32);
  # `commit` with one upload: the node derives the recipients from the group's
  # fence. `commitBody` goes to every member before the commit but the caller
  # (removed ones too), `welcomeBody` to every member the commit adds (required
  # when it adds any), `receiptBody` to the caller. `parts`: per-recipient parts
  # (by identity key) where the bodies need them. A commit is the group's
  # history, so it is stored for every remaining member or not at all: it may
  # exceed an inbox's queue limit by as much again (QUEUE_FULL past that, naming
  # the inbox); a removed member past its limit gets a `missed` envelope
  # instead. `delivered`: how many inboxes got a copy.
  # `groupInfo`: the group's signed GroupInfo for the epoch the commit leads to
  # (an MLSMessage with the ratchet tree and external public key; at most
  # 1 MiB), kept with the fence so that a device of a member account can rejoin
  # by external commit; empty: the group has no current GroupInfo (the node
  # forgets the one it had, which no longer matches the epoch). BAD_REQUEST if
  # it describes another group or epoch. A commit whose clear header says it is
  # an external commit (RFC 9420 §12.4.3.2) may come from a device that is not a
  # member yet, if a device of its account is one (UNAUTHORIZED otherwise).

  devices @14 () -> (identityKeys :List(Data));
  # The identity keys of every device of the caller's account, sorted (the
  # caller's own among them); just the caller's own without an account.

  groupInfo @15 (groupId :Data) -> (groupInfo :Data, members :List(MemberEntry));
  # The group's latest GroupInfo, as its last committer published it, and who
  # its members are in the node's directory (for sealing to them and naming
  # them). Only for a device whose account has a device among the group's
  # members (UNAUTHORIZED otherwise); NOT_FOUND when the node has none.

  accountGroups @16 () -> (groupIds :List(Data));
  # The groups (at most 4,096) any device of the caller's account is a member
  # of, as the groups' fences name them: what a device with no local state
  # rejoins.

  logoutEverywhere @17 () -> (sessionsEnded :UInt32);
  # Ends every session of every device of the caller's account, this one too:
  # each device must log in with the password again. Needs a session from a
  # password login of the last 5 minutes (UNAUTHORIZED otherwise), so that a
  # stolen token or device key cannot lock the owner out.

  changePasswordStart @18 (request :Data) -> (response :Data);
  changePasswordFinish @19 (upload :Data) -> (sessionsEnded :UInt32);
  # A new password: an OPAQUE registration under the account's own name that
  # replaces its record (the old password then logs in nowhere). Both need a
  # session from a password login of the last 5 minutes, which proves the old
  # password (UNAUTHORIZED otherwise). The finish also ends every other session
  # of the account, since a password that leaked may have opened them.

  subscribe @20 (receiver :InboxReceiver, after :UInt64) -> ();
  # Push instead of long-polling: the node calls `receiver.deliver` with the
  # own inbox's envelopes after `after` as they arrive, in seq order, one call
  # at a time (what arrives while a call is in flight goes in the next one, at
  # most `fetch`'s limits per call). Pushed envelopes stay queued until acked
  # (by `ack`, or by the answer to `deliver`). A session has at most one
  # subscription: a new one
  # replaces the last. It ends with the session or the connection, when
  # `deliver` fails, or after `receiver.ended` tells why.

  groupMembers @21 (groupId :Data, identityKeys :List(Data)) -> (members :List(MemberEntry));
  # The account names of those of `identityKeys` (at most 4,096) that are
  # members of the group now, as the node's directory knows them (the others are
  # left out; `hybridPublicKey` is empty: each device's own signed key travels
  # with the roster). How a client checks the usernames other members claim for
  # devices before it shows them.
  # Only for a device whose account has a device among the group's members
  # (UNAUTHORIZED otherwise, as for a group the node does not know).
}

interface InboxReceiver {
  # Served by a client that subscribed (Session.subscribe).
  deliver @0 (envelopes :List(Envelope)) -> (ackUpTo :UInt64);
  # The next envelopes in seq order. Answering asks for the next batch: a
  # client that is slow to answer is sent nothing more meanwhile. `ackUpTo`:
  # how far the client has durably applied its inbox (0: say nothing); the
  # node deletes through it as `ack` would, before it pushes more, so a client
  # that answers once it applied a batch needs no `ack` call of its own.
  ended @1 (reason :Text) -> ();
  # The subscription is over (the session ended, the inbox refused waiting);
  # `reason` is a refusal as errors carry it ("CODE: detail").
}

struct MemberEntry {
  # A group member as the node's directory knows it.
  identityKey @0 :Data;
  username @1 :Text;
  # Empty for a device without an account.
  hybridPublicKey @2 :Data;
  # Signed X-Wing public key of the device; empty if it published none.
}
