//! The node's tables on PostgreSQL (`store = "postgres://…"`): the same records
//! and promises as the redb file, for several nodes serving one population.
//!
//! - Schema: `actors/migrations/`, applied by refinery when a node starts
//!   (under an advisory lock, so nodes starting together migrate once).
//! - Writes: one writer per node (`postgres/writer.rs`) applies the same [`WriteOp`]s as
//!   the redb writer, a batch per transaction, and answers after `COMMIT`
//!   (PostgreSQL's `synchronous_commit` makes that durable).
//! - Seqs: assigned inside the transaction that stores the message, by
//!   incrementing the inbox's `last_seq` (its row lock orders writers on every
//!   node; a rollback takes the seq back, so seqs stay gap-free). A node's
//!   inbox actor reserves the seq it expects; when another node wrote to the
//!   inbox meanwhile the database's seq wins and the actor reloads.
//! - Reads: a pool of connections ([`deadpool_postgres`]).
//!
//! [`WriteOp`]: super::writer::WriteOp

use std::collections::HashMap;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use quicnprotochat_crypto::mls::Suite;
use quicnprotochat_wire::{Envelope, IdentityKey};
use tokio_postgres::NoTls;

use super::StoreError;
use super::admin::Account;
use super::ops::suite_code;
use crate::auth::ClaimedPackage;

mod accounts;
mod delivery;
mod import;
mod news;
pub(super) mod writer;

pub(super) use news::CHANNEL;
pub use news::News;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Connections the read pool holds at most.
const READ_POOL_SIZE: usize = 16;
/// The advisory lock nodes take while migrating (any constant of our own).
const MIGRATION_LOCK: i64 = 0x7170_635f_6d69_6772;

/// The node's database on PostgreSQL. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    config: tokio_postgres::Config,
    pool: Pool,
    /// This node among those sharing the database (random per start): its
    /// own notifications are not news to it.
    node_id: u64,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("PgStore")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .finish()
    }
}

/// A failure of PostgreSQL, as a store error.
pub(super) fn pg(e: tokio_postgres::Error) -> StoreError {
    StoreError::Postgres(e.to_string())
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Postgres(e.to_string())
}

fn rand_node_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// An i64 column as the u64 it stores (never negative: written from u64s).
pub(super) fn u(v: i64) -> u64 {
    v.max(0) as u64
}

/// A u64 as the i64 a BIGINT column holds (seqs and counts stay far below).
pub(super) fn i(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

pub(super) fn key32(bytes: &[u8]) -> Result<[u8; 32], StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("a key of {} bytes, not 32", bytes.len())))
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://USER@HOST:PORT/DB`) and
    /// brings its schema up to date.
    pub async fn open(url: &str) -> Result<PgStore, StoreError> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| StoreError::Postgres(format!("bad URL: {e}")))?;
        let store = PgStore {
            pool: Pool::builder(Manager::from_config(
                config.clone(),
                NoTls,
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            ))
            .max_size(READ_POOL_SIZE)
            .build()
            .map_err(|e| StoreError::Postgres(e.to_string()))?,
            config,
            node_id: rand_node_id(),
        };
        store.check_durability().await?;
        store.migrate().await?;
        Ok(store)
    }

    /// A connection of its own (the writer's, the listener's, migrations'),
    /// its driver task spawned on the current runtime.
    pub(super) async fn connect(&self) -> Result<tokio_postgres::Client, StoreError> {
        let (client, connection) = self.config.connect(NoTls).await.map_err(pg)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "PostgreSQL connection ended");
            }
        });
        Ok(client)
    }

    /// Refuses a database whose commits may return before they are durable
    /// (`synchronous_commit = off`): the node answers a seq only after its
    /// commit, and that answer must mean the message survives a crash.
    async fn check_durability(&self) -> Result<(), StoreError> {
        let row = self
            .client()
            .await?
            .query_one("SELECT current_setting('synchronous_commit')", &[])
            .await
            .map_err(pg)?;
        let setting: String = row.get(0);
        if setting == "off" {
            return Err(StoreError::NotDurable(setting));
        }
        Ok(())
    }

    /// This node's id among those sharing the database.
    pub(super) fn node_id(&self) -> u64 {
        self.node_id
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.connect().await?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg)?;
        let report = embedded::migrations::runner()
            .run_async(&mut client)
            .await
            .map_err(|e| StoreError::Postgres(format!("migration: {e}")));
        let _ = client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await;
        for m in report?.applied_migrations() {
            tracing::info!(migration = %m, "applied a schema migration");
        }
        Ok(())
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_err)
    }

    /// Envelopes of `inbox` with seq > `after`, in seq order, at most `limit`,
    /// no more than `max_bytes` of payload (but at least one if any exist).
    pub async fn fetch(
        &self,
        inbox: &IdentityKey,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Envelope>, StoreError> {
        if after >= i64::MAX as u64 {
            return Ok(Vec::new());
        }
        let rows = self
            .client()
            .await?
            .query(
                "SELECT m.seq, m.kind, m.data, m.part, b.data FROM messages m \
                 LEFT JOIN bodies b ON b.id = m.body \
                 WHERE m.inbox = $1 AND m.seq > $2 ORDER BY m.seq LIMIT $3",
                &[
                    &&inbox.0[..],
                    &i(after),
                    &(limit.min(i64::MAX as usize) as i64),
                ],
            )
            .await
            .map_err(pg)?;
        let mut out = Vec::with_capacity(rows.len());
        let mut bytes = 0usize;
        for row in rows {
            let seq = u(row.get(0));
            let kind: i16 = row.get(1);
            let envelope = match kind {
                0 => Envelope::direct(seq, row.get::<_, Option<Vec<u8>>>(2).unwrap_or_default()),
                1 => Envelope::shared(
                    seq,
                    row.get::<_, Option<Vec<u8>>>(3).unwrap_or_default(),
                    row.get::<_, Option<Vec<u8>>>(4).ok_or_else(|| {
                        StoreError::Corrupt(format!("message {seq} points to a missing body"))
                    })?,
                ),
                2 => Envelope::missed(seq, row.get::<_, Option<Vec<u8>>>(2).unwrap_or_default()),
                k => return Err(StoreError::Corrupt(format!("message kind {k}"))),
            };
            bytes += envelope.data.len();
            if bytes > max_bytes && !out.is_empty() {
                break;
            }
            out.push(envelope);
        }
        Ok(out)
    }

    /// Every inbox that holds unacknowledged messages.
    pub async fn inboxes_with_messages(&self) -> Result<Vec<IdentityKey>, StoreError> {
        let rows = self
            .client()
            .await?
            .query("SELECT inbox FROM inbox_meta WHERE last_seq > acked", &[])
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|r| key32(r.get(0)).map(IdentityKey))
            .collect()
    }

    /// How many shared bodies are stored, and their bytes.
    pub async fn shared_bodies(&self) -> Result<(u64, u64), StoreError> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT count(*), COALESCE(sum(length(data)), 0)::BIGINT FROM bodies",
                &[],
            )
            .await
            .map_err(pg)?;
        Ok((u(row.get(0)), u(row.get(1))))
    }

    /// The latest GroupInfo of `group_id`, if its last commit published one.
    pub async fn group_info(&self, group_id: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT group_info FROM groups WHERE group_id = $1",
                &[&group_id],
            )
            .await
            .map_err(pg)?;
        Ok(row.and_then(|r| r.get(0)))
    }

    /// The groups any of `devices` is a member of, sorted, at most `max`.
    pub async fn groups_of(
        &self,
        devices: &[[u8; 32]],
        max: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let devices: Vec<&[u8]> = devices.iter().map(|d| &d[..]).collect();
        let rows = self
            .client()
            .await?
            .query(
                "SELECT DISTINCT group_id FROM member_groups WHERE device = ANY($1) \
                 ORDER BY group_id LIMIT $2",
                &[&devices, &(max.min(i64::MAX as usize) as i64)],
            )
            .await
            .map_err(pg)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// A node secret, if stored.
    pub async fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT value FROM secrets WHERE name = $1", &[&name])
            .await
            .map_err(pg)?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Every device with its account, and every session alive at `now_ms`.
    pub async fn directory(&self, now_ms: u64) -> Result<super::Directory, StoreError> {
        let client = self.client().await?;
        let mut devices = Vec::new();
        for r in client
            .query("SELECT device, username FROM devices", &[])
            .await
            .map_err(pg)?
        {
            devices.push((IdentityKey(key32(r.get(0))?), r.get::<_, String>(1)));
        }
        let mut sessions = Vec::new();
        for r in client
            .query(
                "SELECT token_hash, device, expires_ms FROM sessions WHERE expires_ms > $1",
                &[&i(now_ms)],
            )
            .await
            .map_err(pg)?
        {
            sessions.push((key32(r.get(0))?, IdentityKey(key32(r.get(1))?), u(r.get(2))));
        }
        let accounts_exist = client
            .query_opt("SELECT 1 FROM users LIMIT 1", &[])
            .await
            .map_err(pg)?
            .is_some();
        Ok(super::Directory {
            devices,
            sessions,
            accounts_exist,
        })
    }

    /// The OPAQUE password record of `username`.
    pub async fn password_record(&self, username: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT record FROM users WHERE username = $1", &[&username])
            .await
            .map_err(pg)?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Per device of `devices` with published keys: its hybrid key and
    /// last-resort package of `suite` (consuming nothing).
    pub async fn last_resort_packages(
        &self,
        suite: Suite,
        devices: &[IdentityKey],
    ) -> Result<Vec<ClaimedPackage>, StoreError> {
        let client = self.client().await?;
        let mut out = Vec::new();
        for d in devices {
            let row = client
                .query_opt(
                    "SELECT h.key, s.last_resort FROM hybrid_keys h \
                     JOIN kp_stats s ON s.device = h.device AND s.suite = $2 \
                     WHERE h.device = $1 AND s.last_resort IS NOT NULL",
                    &[&&d.0[..], &suite_code(suite)],
                )
                .await
                .map_err(pg)?;
            if let Some(r) = row {
                out.push(ClaimedPackage {
                    identity_key: *d,
                    hybrid_public_key: r.get(0),
                    key_package: r.get(1),
                    last_resort: true,
                });
            }
        }
        Ok(out)
    }

    /// How many classic one-time packages `device` has left, and how often its
    /// classic last-resort package was served.
    pub async fn key_package_status(&self, device: &IdentityKey) -> Result<(u64, u64), StoreError> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT (SELECT count(*) FROM key_packages WHERE device = $1 AND suite = 0), \
                        COALESCE((SELECT served FROM kp_stats WHERE device = $1 AND suite = 0), 0)",
                &[&&device.0[..]],
            )
            .await
            .map_err(pg)?;
        Ok((u(row.get(0)), u(row.get(1))))
    }

    /// The hash of `device`'s sealed-sender access key, if set.
    pub async fn access_key(&self, device: &IdentityKey) -> Result<Option<[u8; 32]>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT hash FROM access_keys WHERE device = $1",
                &[&&device.0[..]],
            )
            .await
            .map_err(pg)?;
        row.map(|r| key32(r.get(0))).transpose()
    }

    /// The hybrid keys of those of `devices` that published one.
    pub async fn hybrid_keys(
        &self,
        devices: &[[u8; 32]],
    ) -> Result<HashMap<[u8; 32], Vec<u8>>, StoreError> {
        let devices: Vec<&[u8]> = devices.iter().map(|d| &d[..]).collect();
        let rows = self
            .client()
            .await?
            .query(
                "SELECT device, key FROM hybrid_keys WHERE device = ANY($1)",
                &[&devices],
            )
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|r| Ok((key32(r.get(0))?, r.get(1))))
            .collect()
    }

    /// Every account with its devices, by name.
    pub async fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT u.username, d.device FROM users u \
                 LEFT JOIN devices d ON d.username = u.username \
                 ORDER BY u.username COLLATE \"C\", d.device",
                &[],
            )
            .await
            .map_err(pg)?;
        let mut out: Vec<Account> = Vec::new();
        for r in rows {
            let name: String = r.get(0);
            if out.last().is_none_or(|a| a.username != name) {
                out.push(Account {
                    username: name,
                    devices: Vec::new(),
                });
            }
            if let Some(d) = r.get::<_, Option<Vec<u8>>>(1) {
                out.last_mut()
                    .expect("pushed above")
                    .devices
                    .push(IdentityKey(key32(&d)?));
            }
        }
        Ok(out)
    }
}
