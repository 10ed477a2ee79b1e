//! What holds secrets on disk is owner-only: the node's data folder, its database
//! (OPAQUE server setup and password records) and TLS key; a client profile's
//! folder and database (identity key, MLS secrets, session token). Created so,
//! and tightened when found wider.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use quicnprotochat::client::ClientState;
use quicnprotochat::client::state::STATE_FILE;
use quicnprotochat::server::DB_FILE;
use quicnprotochat::tls::KEY_FILE;
use quicnprotochat_tests::{TestNode, local};

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
