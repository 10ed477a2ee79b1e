//! The Authentication Service's tables. Written only through the store writer's
//! custom transactions (`auth.rs`), read with plain read transactions.

use quicnprotochat_crypto::mls::Suite;
use redb::TableDefinition;

/// Node secrets: the OPAQUE server setup.
pub const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
pub const OPAQUE_SETUP_KEY: &str = "opaque_server_setup";

/// username → OPAQUE password record.
pub const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
/// device identity key → username.
pub const DEVICES: TableDefinition<&[u8; 32], &str> = TableDefinition::new("devices");
/// (username, device identity key) → time added (ms since the epoch).
pub const ACCOUNT_DEVICES: TableDefinition<(&str, &[u8; 32]), u64> =
    TableDefinition::new("account_devices");
/// SHA-256 of a session token → (device identity key, expiry ms since the epoch).
pub const SESSIONS: TableDefinition<&[u8; 32], (&[u8; 32], u64)> = TableDefinition::new("sessions");
/// (device, package number) → one-time KeyPackage.
pub const KEY_PACKAGES: TableDefinition<(&[u8; 32], u64), &[u8]> =
    TableDefinition::new("key_packages");
/// device → last-resort KeyPackage.
pub const LAST_RESORT: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("last_resort");
/// device → (next package number, times the last-resort package was served).
pub const KP_STATS: TableDefinition<&[u8; 32], (u64, u64)> = TableDefinition::new("kp_stats");
/// The post-quantum suite's KeyPackages, in tables of their own (the tables above
/// are the mandatory suite's and keep their names, so older files open as they are).
pub const KEY_PACKAGES_PQ: TableDefinition<(&[u8; 32], u64), &[u8]> =
    TableDefinition::new("key_packages_pq");
pub const LAST_RESORT_PQ: TableDefinition<&[u8; 32], &[u8]> =
    TableDefinition::new("last_resort_pq");
pub const KP_STATS_PQ: TableDefinition<&[u8; 32], (u64, u64)> = TableDefinition::new("kp_stats_pq");

/// The KeyPackage tables of one ciphersuite.
#[derive(Clone, Copy)]
pub struct KeyPackageTables {
    pub one_time: TableDefinition<'static, (&'static [u8; 32], u64), &'static [u8]>,
    pub last_resort: TableDefinition<'static, &'static [u8; 32], &'static [u8]>,
    pub stats: TableDefinition<'static, &'static [u8; 32], (u64, u64)>,
}

pub fn key_package_tables(suite: Suite) -> KeyPackageTables {
    match suite {
        Suite::Classic => KeyPackageTables {
            one_time: KEY_PACKAGES,
            last_resort: LAST_RESORT,
            stats: KP_STATS,
        },
        Suite::PostQuantum => KeyPackageTables {
            one_time: KEY_PACKAGES_PQ,
            last_resort: LAST_RESORT_PQ,
            stats: KP_STATS_PQ,
        },
    }
}

/// device → signed hybrid (X-Wing) public key.
pub const HYBRID_KEYS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("hybrid_keys");
/// device → SHA-256 of its sealed-sender access key.
pub const ACCESS_KEYS: TableDefinition<&[u8; 32], &[u8; 32]> = TableDefinition::new("access_keys");
