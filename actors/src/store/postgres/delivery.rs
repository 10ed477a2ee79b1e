//! The delivery writes on PostgreSQL: messages, shared bodies, acks, missed
//! counts and group fences, each inside the writer's batch transaction.

use std::collections::{BTreeSet, HashMap};

use quicnprotochat_wire::IdentityKey;
use quicnprotochat_wire::fanout::Missed;
use tokio_postgres::Transaction;

use super::{i, key32, pg, u};
use crate::core::inbox::InboxMeta;
use crate::store::StoreError;
use crate::store::fences::members_of;
use crate::store::writer::FenceWrite;

/// Stores one direct message (kind 0) or missed note (kind 2) in `inbox` under
/// the next seq, which it returns.
pub(super) async fn append(
    txn: &Transaction<'_>,
    inbox: &IdentityKey,
    kind: i16,
    payload: &[u8],
) -> Result<u64, StoreError> {
    let row = txn
        .query_one(
            "WITH m AS (INSERT INTO inbox_meta AS t (inbox, last_seq, acked) VALUES ($1, 1, 0) \
               ON CONFLICT (inbox) DO UPDATE SET last_seq = t.last_seq + 1 RETURNING last_seq) \
             INSERT INTO messages (inbox, seq, kind, data) SELECT $1, last_seq, $2, $3 FROM m \
             RETURNING seq",
            &[&&inbox.0[..], &kind, &payload],
        )
        .await
        .map_err(pg)?;
    Ok(u(row.get(0)))
}

/// Stores `body` once with a reference for each of `recipients` (distinct
/// inboxes, each with its own part) under each inbox's next seq; returns the
/// seqs in the recipients' order.
pub(super) async fn append_shared(
    txn: &Transaction<'_>,
    body: &[u8],
    recipients: &[(&IdentityKey, &[u8])],
) -> Result<Vec<u64>, StoreError> {
    let inboxes: Vec<&[u8]> = recipients.iter().map(|(k, _)| &k.0[..]).collect();
    let parts: Vec<&[u8]> = recipients.iter().map(|(_, p)| *p).collect();
    let rows = txn
        .query(
            "WITH b AS (INSERT INTO bodies (data, refs) VALUES ($1, $2) RETURNING id), \
                  r AS (SELECT * FROM unnest($3::BYTEA[], $4::BYTEA[]) AS r(inbox, part)), \
                  m AS (INSERT INTO inbox_meta AS t (inbox, last_seq, acked) \
                          SELECT inbox, 1, 0 FROM r ORDER BY inbox \
                        ON CONFLICT (inbox) DO UPDATE SET last_seq = t.last_seq + 1 \
                        RETURNING inbox, last_seq) \
             INSERT INTO messages (inbox, seq, kind, body, part) \
               SELECT m.inbox, m.last_seq, 1, b.id, r.part FROM m JOIN r ON r.inbox = m.inbox CROSS JOIN b \
             RETURNING inbox, seq",
            &[&body, &(recipients.len() as i32), &inboxes, &parts],
        )
        .await
        .map_err(pg)?;
    let mut seqs = std::collections::HashMap::with_capacity(rows.len());
    for r in rows {
        seqs.insert(key32(r.get(0))?, u(r.get(1)));
    }
    recipients
        .iter()
        .map(|(k, _)| {
            seqs.get(&k.0)
                .copied()
                .ok_or_else(|| StoreError::Corrupt("a shared body's recipient got no seq".into()))
        })
        .collect()
}

/// The batch's direct messages. The transaction first locks the marks of
/// every inbox the batch writes (creating missing ones) in key order, so that
/// writers on several nodes cannot deadlock, and reads their last seqs. A
/// direct message then takes the next seq from those locked rows, and all of
/// them are written by two statements ([`Appends::flush`]) instead of a round
/// trip each. Ops that write an inbox by SQL of their own flush first and
/// [`Appends::reload`] after.
pub(super) struct Appends {
    /// Every locked inbox's last seq, as this transaction has it.
    last: HashMap<[u8; 32], u64>,
    /// Inboxes locked, sorted.
    locked: Vec<Vec<u8>>,
    /// Inboxes with messages not yet written.
    touched: BTreeSet<[u8; 32]>,
    /// Not yet written: inbox, seq, payload.
    inboxes: Vec<Vec<u8>>,
    seqs: Vec<i64>,
    data: Vec<Vec<u8>>,
}

impl Appends {
    /// Locks the marks of `inboxes` and reads their last seqs.
    pub(super) async fn lock(
        txn: &Transaction<'_>,
        inboxes: &[[u8; 32]],
    ) -> Result<Appends, StoreError> {
        let mut locked: Vec<Vec<u8>> = inboxes.iter().map(|k| k.to_vec()).collect();
        locked.sort();
        locked.dedup();
        let mut appends = Appends {
            last: HashMap::with_capacity(locked.len()),
            locked,
            touched: BTreeSet::new(),
            inboxes: Vec::new(),
            seqs: Vec::new(),
            data: Vec::new(),
        };
        if appends.locked.is_empty() {
            return Ok(appends);
        }
        txn.execute(
            "INSERT INTO inbox_meta (inbox, last_seq, acked) \
               SELECT k, 0, 0 FROM unnest($1::BYTEA[]) AS k ORDER BY k ON CONFLICT (inbox) DO NOTHING",
            &[&appends.locked],
        )
        .await
        .map_err(pg)?;
        let rows = txn
            .query(
                "SELECT inbox, last_seq FROM inbox_meta WHERE inbox = ANY($1) ORDER BY inbox FOR UPDATE",
                &[&appends.locked],
            )
            .await
            .map_err(pg)?;
        appends.note_last_seqs(rows)?;
        Ok(appends)
    }

    /// Takes the next seq of `inbox` for `payload`; written by the next flush.
    pub(super) fn push(
        &mut self,
        inbox: &IdentityKey,
        payload: Vec<u8>,
    ) -> Result<u64, StoreError> {
        let last = self.last.get_mut(&inbox.0).ok_or_else(|| {
            StoreError::Corrupt(format!("inbox {inbox:?} written but not locked"))
        })?;
        *last += 1;
        self.touched.insert(inbox.0);
        self.inboxes.push(inbox.0.to_vec());
        self.seqs.push(i(*last));
        self.data.push(payload);
        Ok(*last)
    }

    /// Writes the messages taken since the last flush, and their inboxes'
    /// last seqs.
    pub(super) async fn flush(&mut self, txn: &Transaction<'_>) -> Result<(), StoreError> {
        if self.inboxes.is_empty() {
            return Ok(());
        }
        txn.execute(
            "INSERT INTO messages (inbox, seq, kind, data) \
               SELECT i, s, 0, d FROM unnest($1::BYTEA[], $2::BIGINT[], $3::BYTEA[]) AS t(i, s, d)",
            &[&self.inboxes, &self.seqs, &self.data],
        )
        .await
        .map_err(pg)?;
        let (touched, lasts): (Vec<&[u8]>, Vec<i64>) = self
            .touched
            .iter()
            .map(|k| (&k[..], i(self.last.get(k).copied().unwrap_or(0))))
            .unzip();
        txn.execute(
            "UPDATE inbox_meta m SET last_seq = v.s \
               FROM unnest($1::BYTEA[], $2::BIGINT[]) AS v(i, s) WHERE m.inbox = v.i",
            &[&touched, &lasts],
        )
        .await
        .map_err(pg)?;
        self.touched.clear();
        self.inboxes.clear();
        self.seqs.clear();
        self.data.clear();
        Ok(())
    }

    /// Reads the locked inboxes' last seqs again (after SQL of its own wrote some).
    pub(super) async fn reload(&mut self, txn: &Transaction<'_>) -> Result<(), StoreError> {
        let rows = txn
            .query(
                "SELECT inbox, last_seq FROM inbox_meta WHERE inbox = ANY($1)",
                &[&self.locked],
            )
            .await
            .map_err(pg)?;
        self.note_last_seqs(rows)
    }

    /// Takes the `(inbox, last_seq)` rows read for the locked inboxes.
    fn note_last_seqs(&mut self, rows: Vec<tokio_postgres::Row>) -> Result<(), StoreError> {
        for r in rows {
            self.last.insert(key32(r.get(0))?, u(r.get(1)));
        }
        Ok(())
    }
}

/// What was dropped for `inbox` and not yet told.
pub(super) async fn missed(
    txn: &Transaction<'_>,
    inbox: &IdentityKey,
) -> Result<Missed, StoreError> {
    let row = txn
        .query_opt(
            "SELECT missed FROM inbox_meta WHERE inbox = $1",
            &[&&inbox.0[..]],
        )
        .await
        .map_err(pg)?;
    match row.and_then(|r| r.get::<_, Option<Vec<u8>>>(0)) {
        None => Ok(Missed::default()),
        Some(bytes) => Missed::decode(&bytes).map_err(|_| {
            StoreError::Corrupt(format!("unreadable missed record of inbox {inbox:?}"))
        }),
    }
}

/// Counts a message of `group` dropped because `inbox` was full.
pub(super) async fn record_missed(
    txn: &Transaction<'_>,
    inbox: &IdentityKey,
    group: &[u8],
) -> Result<(), StoreError> {
    let mut m = missed(txn, inbox).await?;
    m.add(group);
    txn.execute(
        "INSERT INTO inbox_meta AS t (inbox, last_seq, acked, missed) VALUES ($1, 0, 0, $2) \
         ON CONFLICT (inbox) DO UPDATE SET missed = $2",
        &[&&inbox.0[..], &m.encode()],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// Queues the missed-messages note of `inbox` and clears the count it tells;
/// returns its seq.
pub(super) async fn append_missed_marker(
    txn: &Transaction<'_>,
    inbox: &IdentityKey,
) -> Result<u64, StoreError> {
    let m = missed(txn, inbox).await?;
    let seq = append(txn, inbox, 2, &m.encode()).await?;
    txn.execute(
        "UPDATE inbox_meta SET missed = NULL WHERE inbox = $1",
        &[&&inbox.0[..]],
    )
    .await
    .map_err(pg)?;
    Ok(seq)
}

/// Deletes the messages of `inbox` up to `up_to` (and shared bodies whose last
/// reference goes); returns how many messages were deleted.
pub(super) async fn ack(
    txn: &Transaction<'_>,
    inbox: &IdentityKey,
    up_to: u64,
) -> Result<u64, StoreError> {
    let row = txn
        .query_one(
            "WITH gone AS (DELETE FROM messages WHERE inbox = $1 AND seq <= $2 RETURNING body), \
                  g AS (SELECT body, count(*)::INTEGER AS n FROM gone WHERE body IS NOT NULL GROUP BY body), \
                  dec AS (UPDATE bodies b SET refs = b.refs - g.n FROM g WHERE b.id = g.body AND b.refs > g.n), \
                  del AS (DELETE FROM bodies b USING g WHERE b.id = g.body AND b.refs <= g.n) \
             SELECT count(*) FROM gone",
            &[&&inbox.0[..], &i(up_to)],
        )
        .await
        .map_err(pg)?;
    txn.execute(
        "UPDATE inbox_meta SET acked = GREATEST(acked, LEAST($2, last_seq)) WHERE inbox = $1",
        &[&&inbox.0[..], &i(up_to)],
    )
    .await
    .map_err(pg)?;
    Ok(u(row.get(0)))
}

/// An inbox's marks and its count of missed messages, as of `txn`.
pub(super) async fn load(
    txn: &Transaction<'_>,
    inbox: &IdentityKey,
) -> Result<InboxMeta, StoreError> {
    let row = txn
        .query_opt(
            "SELECT last_seq, acked FROM inbox_meta WHERE inbox = $1",
            &[&&inbox.0[..]],
        )
        .await
        .map_err(pg)?;
    let Some(row) = row else {
        return Ok(InboxMeta::default());
    };
    Ok(InboxMeta {
        last_seq: u(row.get(0)),
        acked: u(row.get(1)),
        missed: missed(txn, inbox).await?.count,
    })
}

/// A group's fence as of `txn`, its row locked until the transaction ends.
pub(super) async fn group_fence(
    txn: &Transaction<'_>,
    group_id: &[u8],
) -> Result<(Option<u64>, Vec<[u8; 32]>), StoreError> {
    let row = txn
        .query_opt(
            "SELECT next_epoch, members FROM groups WHERE group_id = $1 FOR UPDATE",
            &[&group_id],
        )
        .await
        .map_err(pg)?;
    Ok(match row {
        Some(r) => (Some(u(r.get(0))), members_of(r.get(1))),
        None => (None, Vec::new()),
    })
}

/// How many live fences `device` created.
pub(super) async fn groups_created(
    txn: &Transaction<'_>,
    device: &[u8; 32],
) -> Result<u64, StoreError> {
    let row = txn
        .query_opt(
            "SELECT n FROM groups_created WHERE device = $1",
            &[&&device[..]],
        )
        .await
        .map_err(pg)?;
    Ok(row.map_or(0, |r| u(r.get(0))))
}

/// The bytes of the GroupInfos `device` published that are still kept, and of
/// those the bytes of `group_id`'s (0 if another device published it).
pub(super) async fn group_info_bytes(
    txn: &Transaction<'_>,
    device: &[u8; 32],
    group_id: &[u8],
) -> Result<(u64, u64), StoreError> {
    let row = txn
        .query_one(
            "SELECT COALESCE(SUM(group_info_bytes), 0)::BIGINT, \
                    COALESCE(SUM(group_info_bytes) FILTER (WHERE group_id = $2), 0)::BIGINT \
             FROM groups WHERE publisher = $1",
            &[&&device[..], &group_id],
        )
        .await
        .map_err(pg)?;
    Ok((u(row.get(0)), u(row.get(1))))
}

/// Writes a group's new fence, the member index and its GroupInfo (charged to
/// the committer: the one it replaces is no longer anybody's).
pub(super) async fn set_group_fence(
    txn: &Transaction<'_>,
    f: &FenceWrite,
) -> Result<(), StoreError> {
    let (_, before) = group_fence(txn, &f.group_id).await?;
    let gone: Vec<&[u8]> = before
        .iter()
        .filter(|m| !f.members.contains(m))
        .map(|m| &m[..])
        .collect();
    let new: Vec<&[u8]> = f
        .members
        .iter()
        .filter(|m| !before.contains(m))
        .map(|m| &m[..])
        .collect();
    txn.execute(
        "DELETE FROM member_groups WHERE group_id = $1 AND device = ANY($2)",
        &[&f.group_id, &gone],
    )
    .await
    .map_err(pg)?;
    txn.execute(
        "INSERT INTO member_groups (device, group_id) SELECT d, $1 FROM unnest($2::BYTEA[]) AS d \
         ON CONFLICT DO NOTHING",
        &[&f.group_id, &new],
    )
    .await
    .map_err(pg)?;
    if let Some(c) = &f.creator {
        txn.execute(
            "INSERT INTO groups_created AS t (device, n) VALUES ($1, 1) \
             ON CONFLICT (device) DO UPDATE SET n = t.n + 1",
            &[&&c[..]],
        )
        .await
        .map_err(pg)?;
    }
    // The GroupInfo is charged to its publisher by these two columns.
    let publisher = f.group_info.as_ref().map(|_| &f.publisher[..]);
    let bytes = f.group_info.as_ref().map(|i| i.len() as i64);
    txn.execute(
        "INSERT INTO groups AS t \
           (group_id, next_epoch, members, creator, group_info, publisher, group_info_bytes) \
           VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (group_id) DO UPDATE SET next_epoch = $2, members = $3, \
           creator = COALESCE($4, t.creator), group_info = $5, publisher = $6, \
           group_info_bytes = $7",
        &[
            &f.group_id,
            &i(f.next_epoch),
            &f.members.concat(),
            &f.creator.as_ref().map(|c| &c[..]),
            &f.group_info,
            &publisher,
            &bytes,
        ],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// Deletes the fences of the groups none of whose members `is_member_alive`;
/// returns how many.
pub(super) async fn collect_dead_group_fences(
    txn: &Transaction<'_>,
    is_member_alive: &dyn Fn(&[u8; 32]) -> bool,
) -> Result<usize, StoreError> {
    let rows = txn
        .query(
            "SELECT group_id, members, creator FROM groups ORDER BY group_id FOR UPDATE",
            &[],
        )
        .await
        .map_err(pg)?;
    let mut dead = 0;
    for r in rows {
        let members = members_of(r.get(1));
        if members.iter().any(is_member_alive) {
            continue;
        }
        let group_id: Vec<u8> = r.get(0);
        txn.execute("DELETE FROM groups WHERE group_id = $1", &[&group_id])
            .await
            .map_err(pg)?;
        txn.execute(
            "DELETE FROM member_groups WHERE group_id = $1",
            &[&group_id],
        )
        .await
        .map_err(pg)?;
        if let Some(c) = r.get::<_, Option<Vec<u8>>>(2) {
            txn.execute(
                "UPDATE groups_created SET n = n - 1 WHERE device = $1",
                &[&c],
            )
            .await
            .map_err(pg)?;
            txn.execute(
                "DELETE FROM groups_created WHERE device = $1 AND n <= 0",
                &[&c],
            )
            .await
            .map_err(pg)?;
        }
        dead += 1;
    }
    Ok(dead)
}
