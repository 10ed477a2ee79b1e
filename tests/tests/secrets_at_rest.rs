//! What holds secrets on disk is owner-only: the node's data folder, its database
//! (OPAQUE server setup and password records) and TLS key; a client profile's
//! folder and database (identity key, MLS secrets, session token). Created so,
//! and tightened when found wider.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use quicnprotochat::server::DB_FILE;
use quicnprotochat_client::ClientState;
use quicnprotochat_client::state::STATE_FILE;
use quicnprotochat_tests::{TestNode, local};
use quicnprotochat_wire::tls::KEY_FILE;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_keeps_its_data_owner_only() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let node = TestNode::start(&data).await;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join(DB_FILE)), 0o600);
    assert_eq!(mode(&data.join(KEY_FILE)), 0o600);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_tightens_data_an_older_version_left_readable() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    TestNode::start(&data).await.stop().await;
    set_mode(&data, 0o755);
    set_mode(&data.join(DB_FILE), 0o644);
    set_mode(&data.join(KEY_FILE), 0o644);
    let node = TestNode::start(&data).await;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join(DB_FILE)), 0o600);
    assert_eq!(mode(&data.join(KEY_FILE)), 0o600);
    // Still the same node: the database was opened, not replaced.
    local(async { node.connect().await.expect("serves").close().await }).await;
    node.stop().await;
}

#[test]
fn a_client_profile_is_owner_only_and_tightened_on_open() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("profile");
    let identity = {
        let state = ClientState::open(&dir).unwrap();
        state.identity().unwrap().public_key()
    };
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(STATE_FILE)), 0o600);
    set_mode(&dir, 0o755);
    set_mode(&dir.join(STATE_FILE), 0o644);
    let state = ClientState::open(&dir).unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(STATE_FILE)), 0o600);
    assert_eq!(state.identity().unwrap().public_key(), identity);
}

/// Whether `needle` occurs anywhere in the file at `path`.
fn file_contains(path: &Path, needle: &[u8]) -> bool {
    let bytes = std::fs::read(path).unwrap();
    bytes.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_profile_s_secrets_are_sealed_in_its_database_and_open_only_with_its_key_file() {
    use quicnprotochat_client::profile_key::KEY_FILE;
    use quicnprotochat_client::state::SavedLogin;
    use quicnprotochat_crypto::mls::Suite;

    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("profile");
    let token = b"a-session-token-of-32-bytes-0123".to_vec();
    let (identity, seed, gid) = {
        let state = ClientState::open(&dir).unwrap();
        let identity = state.identity().unwrap();
        let seed = *state.hybrid_key().unwrap().seed();
        state
            .save_login(&SavedLogin {
                username: "zoe".into(),
                token: token.clone(),
                expires_at_ms: 1,
            })
            .unwrap();
        let member = state.mls_member(&identity).unwrap();
        let group = member.create_group(Suite::Classic, "g").unwrap();
        state.save_mls(&member).unwrap();
        (identity, seed, group.group_id())
    };
    assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
    let db = dir.join(STATE_FILE);
    for (what, secret) in [
        ("identity key", &identity.secret_bytes()[..]),
        ("hybrid key seed", &seed[..]),
        ("session token", &token[..]),
    ] {
        assert!(
            !file_contains(&db, secret),
            "the {what} is in the database in the clear"
        );
    }
    // With its key file, everything opens as it was.
    {
        let state = ClientState::open(&dir).unwrap();
        assert_eq!(
            state.identity().unwrap().public_key(),
            identity.public_key()
        );
        assert_eq!(state.saved_login().unwrap().unwrap().token, token);
        let member = state.mls_member(&identity).unwrap();
        assert!(
            member.load_group(&gid).unwrap().is_some(),
            "the MLS group opens"
        );
    }
    // Without it, the profile refuses to open rather than invent a new identity;
    // with another key, nothing opens.
    let key = std::fs::read(dir.join(KEY_FILE)).unwrap();
    std::fs::remove_file(dir.join(KEY_FILE)).unwrap();
    let err = ClientState::open(&dir)
        .err()
        .expect("refused without its key");
    assert!(err.to_string().contains("profile key file"), "{err}");
    std::fs::write(dir.join(KEY_FILE), [7u8; 32]).unwrap();
    let state = ClientState::open(&dir).unwrap();
    assert!(state.identity().is_err(), "another key opens nothing");
    drop(state);
    std::fs::write(dir.join(KEY_FILE), &key).unwrap();
    assert_eq!(
        ClientState::open(&dir)
            .unwrap()
            .identity()
            .unwrap()
            .public_key(),
        identity.public_key()
    );
}

#[test]
fn a_profile_written_before_sealing_opens_and_is_sealed_on_open() {
    use quicnprotochat_crypto::Identity;
    use quicnprotochat_crypto::at_rest::is_sealed;
    use redb::{Database, ReadableDatabase, TableDefinition};

    const IDENTITY: TableDefinition<&str, &[u8]> = TableDefinition::new("identity");
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("old");
    std::fs::create_dir_all(&dir).unwrap();
    let identity = Identity::generate();
    {
        // As the previous version wrote it: the secret in the clear, no key file.
        let db = Database::create(dir.join(STATE_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(IDENTITY)
            .unwrap()
            .insert("ed25519_secret", &identity.secret_bytes()[..])
            .unwrap();
        txn.commit().unwrap();
    }
    let state = ClientState::open(&dir).unwrap();
    assert_eq!(
        state.identity().unwrap().public_key(),
        identity.public_key()
    );
    drop(state);
    let db = Database::create(dir.join(STATE_FILE)).unwrap();
    let txn = db.begin_read().unwrap();
    let stored = txn
        .open_table(IDENTITY)
        .unwrap()
        .get("ed25519_secret")
        .unwrap()
        .unwrap()
        .value()
        .to_vec();
    assert!(is_sealed(&stored), "sealed when the profile was opened");
}
