//! Moving a redb node database into an empty PostgreSQL one (`admin
//! copy-to-postgres`): every record, in one transaction, so a failure leaves
//! the target as empty as it was.

use tokio_postgres::types::ToSql;

use super::{PgStore, i, pg};
use crate::store::StoreError;
use crate::store::snapshot::Snapshot;

/// Runs `sql` once per row of `rows` (a prepared statement).
async fn each<R>(
    txn: &tokio_postgres::Transaction<'_>,
    sql: &str,
    rows: &[R],
    params: impl Fn(&R) -> Vec<Box<dyn ToSql + Sync + Send + '_>>,
) -> Result<(), StoreError> {
    let statement = txn.prepare(sql).await.map_err(pg)?;
    for row in rows {
        let owned = params(row);
        let refs: Vec<&(dyn ToSql + Sync)> = owned.iter().map(|b| &**b as _).collect();
        txn.execute(&statement, &refs).await.map_err(pg)?;
    }
    Ok(())
}

impl PgStore {
    /// Writes every record of `s` into this database, which must hold no node
    /// data yet ([`StoreError::TargetNotEmpty`] otherwise).
    pub async fn import(&self, s: &Snapshot) -> Result<(), StoreError> {
        let mut client = self.connect().await?;
        let txn = client.transaction().await.map_err(pg)?;
        let used: bool = txn
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM secrets) OR EXISTS (SELECT 1 FROM users) \
                 OR EXISTS (SELECT 1 FROM inbox_meta) OR EXISTS (SELECT 1 FROM groups)",
                &[],
            )
            .await
            .map_err(pg)?
            .get(0);
        if used {
            return Err(StoreError::TargetNotEmpty);
        }
        let b = |v: &[u8; 32]| v.to_vec();
        each(
            &txn,
            "INSERT INTO secrets VALUES ($1, $2)",
            &s.secrets,
            |(k, v)| vec![Box::new(k.clone()), Box::new(v.clone())],
        )
        .await?;
        each(
            &txn,
            "INSERT INTO users VALUES ($1, $2)",
            &s.users,
            |(k, v)| vec![Box::new(k.clone()), Box::new(v.clone())],
        )
        .await?;
        each(
            &txn,
            "INSERT INTO devices VALUES ($1, $2, $3)",
            &s.devices,
            |(d, u, t)| vec![Box::new(b(d)), Box::new(u.clone()), Box::new(i(*t))],
        )
        .await?;
        each(
            &txn,
            "INSERT INTO sessions VALUES ($1, $2, $3)",
            &s.sessions,
            |(h, d, t)| vec![Box::new(b(h)), Box::new(b(d)), Box::new(i(*t))],
        )
        .await?;
        each(
            &txn,
            "INSERT INTO key_packages VALUES ($1, $2, $3, $4)",
            &s.key_packages,
            |(d, suite, n, kp)| {
                vec![
                    Box::new(b(d)),
                    Box::new(*suite),
                    Box::new(i(*n)),
                    Box::new(kp.clone()),
                ]
            },
        )
        .await?;
        each(
            &txn,
            "INSERT INTO kp_stats VALUES ($1, $2, $3, $4, $5)",
            &s.kp_stats,
            |(d, suite, next, served, kp)| {
                vec![
                    Box::new(b(d)),
                    Box::new(*suite),
                    Box::new(i(*next)),
                    Box::new(i(*served)),
                    Box::new(kp.clone()),
                ]
            },
        )
        .await?;
        each(
            &txn,
            "INSERT INTO hybrid_keys VALUES ($1, $2)",
            &s.hybrid_keys,
            |(d, k)| vec![Box::new(b(d)), Box::new(k.clone())],
        )
        .await?;
        each(
            &txn,
            "INSERT INTO access_keys VALUES ($1, $2)",
            &s.access_keys,
            |(d, h)| vec![Box::new(b(d)), Box::new(b(h))],
        )
        .await?;
        each(
            &txn,
            "INSERT INTO inbox_meta VALUES ($1, $2, $3, $4)",
            &s.inboxes,
            |(k, last, acked, missed)| {
                vec![
                    Box::new(b(k)),
                    Box::new(i(*last)),
                    Box::new(i(*acked)),
                    Box::new(missed.clone()),
                ]
            },
        )
        .await?;
        each(
            &txn,
            "INSERT INTO bodies (id, data, refs) OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3)",
            &s.bodies,
            |(id, data, refs)| {
                vec![
                    Box::new(i(*id)),
                    Box::new(data.clone()),
                    Box::new((*refs).min(i32::MAX as u64) as i32),
                ]
            },
        )
        .await?;
        // New bodies get ids after the copied ones.
        txn.execute(
            "SELECT setval(pg_get_serial_sequence('bodies', 'id'), \
               GREATEST((SELECT COALESCE(max(id), 0) FROM bodies), 1))",
            &[],
        )
        .await
        .map_err(pg)?;
        each(
            &txn,
            "INSERT INTO messages VALUES ($1, $2, $3, $4, $5, $6)",
            &s.messages,
            |(inbox, seq, kind, data, body, part)| {
                vec![
                    Box::new(b(inbox)),
                    Box::new(i(*seq)),
                    Box::new(*kind),
                    Box::new(data.clone()),
                    Box::new(body.map(i)),
                    Box::new(part.clone()),
                ]
            },
        )
        .await?;
        each(
            &txn,
            "INSERT INTO groups (group_id, next_epoch, members, creator, group_info) \
             VALUES ($1, $2, $3, $4, $5)",
            &s.groups,
            |(g, next, members, creator, info)| {
                vec![
                    Box::new(g.clone()),
                    Box::new(i(*next)),
                    Box::new(members.clone()),
                    Box::new(creator.as_ref().map(b)),
                    Box::new(info.clone()),
                ]
            },
        )
        .await?;
        each(
            &txn,
            "INSERT INTO groups_created VALUES ($1, $2)",
            &s.groups_created,
            |(d, n)| vec![Box::new(b(d)), Box::new(i(*n))],
        )
        .await?;
        each(
            &txn,
            "INSERT INTO member_groups VALUES ($1, $2)",
            &s.member_groups,
            |(d, g)| vec![Box::new(b(d)), Box::new(g.clone())],
        )
        .await?;
        txn.commit().await.map_err(pg)?;
        Ok(())
    }
}
