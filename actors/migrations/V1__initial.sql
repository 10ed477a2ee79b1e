-- The node's tables on PostgreSQL: the same records as the redb file
-- (actors/src/store/server.rs), laid out for several nodes writing at once.
-- Identity keys, group ids and token hashes are BYTEA; times are ms since the
-- Unix epoch. Plain SQL (no extensions, no stored procedures) so that it also
-- runs where PostgreSQL's wire protocol is spoken by another engine.

-- Each inbox's marks: the highest seq stored, the highest acknowledged, and
-- what was dropped for it while full and not yet told (an encoded
-- missed-messages record). A message's seq is assigned by incrementing
-- last_seq inside the transaction that stores it: the row lock orders writers
-- on several nodes, and a rollback takes the seq back, so seqs stay gap-free.
CREATE TABLE inbox_meta (
    inbox    BYTEA  PRIMARY KEY,
    last_seq BIGINT NOT NULL,
    acked    BIGINT NOT NULL,
    missed   BYTEA
);

-- A body several inboxes share (a group message, a commit, a Welcome), stored
-- once; refs counts the messages that point at it and it goes with the last.
CREATE TABLE bodies (
    id   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    data BYTEA   NOT NULL,
    refs INTEGER NOT NULL
);

-- Unacknowledged messages. kind 0: direct (data); 1: shared (body, and the
-- recipient's own part); 2: the node's missed-messages note (data).
CREATE TABLE messages (
    inbox BYTEA    NOT NULL,
    seq   BIGINT   NOT NULL,
    kind  SMALLINT NOT NULL,
    data  BYTEA,
    body  BIGINT,
    part  BYTEA,
    PRIMARY KEY (inbox, seq)
);

-- Epoch fence per MLS group: the epoch the next commit must be made at, who
-- may make it (identity keys, 32 bytes each, concatenated), the device whose
-- commit created it (counted against its quota) and the latest GroupInfo.
CREATE TABLE groups (
    group_id   BYTEA  PRIMARY KEY,
    next_epoch BIGINT NOT NULL,
    members    BYTEA  NOT NULL,
    creator    BYTEA,
    group_info BYTEA
);
CREATE TABLE groups_created (
    device BYTEA  PRIMARY KEY,
    n      BIGINT NOT NULL
);
-- Which groups each device is a member of (kept with the fences).
CREATE TABLE member_groups (
    device   BYTEA NOT NULL,
    group_id BYTEA NOT NULL,
    PRIMARY KEY (device, group_id)
);

-- Node secrets (the OPAQUE server setup): shared by every node of a deployment.
CREATE TABLE secrets (
    name  TEXT  PRIMARY KEY,
    value BYTEA NOT NULL
);
-- username -> OPAQUE password record.
CREATE TABLE users (
    username TEXT  PRIMARY KEY,
    record   BYTEA NOT NULL
);
-- device -> its account, and when it joined it.
CREATE TABLE devices (
    device   BYTEA  PRIMARY KEY,
    username TEXT   NOT NULL,
    added_ms BIGINT NOT NULL
);
CREATE INDEX devices_by_username ON devices (username);
-- SHA-256 of a session token -> its device and expiry.
CREATE TABLE sessions (
    token_hash BYTEA  PRIMARY KEY,
    device     BYTEA  NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE INDEX sessions_by_device ON sessions (device);
-- One-time KeyPackages per (device, suite), served in upload order and each
-- deleted by the claim that returns it. suite 0: classic, 1: post-quantum.
CREATE TABLE key_packages (
    device BYTEA    NOT NULL,
    suite  SMALLINT NOT NULL,
    n      BIGINT   NOT NULL,
    kp     BYTEA    NOT NULL,
    PRIMARY KEY (device, suite, n)
);
-- Per (device, suite): the next package number, the last-resort package and
-- how often it was served.
CREATE TABLE kp_stats (
    device      BYTEA    NOT NULL,
    suite       SMALLINT NOT NULL,
    next_n      BIGINT   NOT NULL,
    served      BIGINT   NOT NULL,
    last_resort BYTEA,
    PRIMARY KEY (device, suite)
);
-- device -> signed hybrid (X-Wing) public key.
CREATE TABLE hybrid_keys (
    device BYTEA PRIMARY KEY,
    key    BYTEA NOT NULL
);
-- device -> SHA-256 of its sealed-sender access key.
CREATE TABLE access_keys (
    device BYTEA PRIMARY KEY,
    hash   BYTEA NOT NULL
);
