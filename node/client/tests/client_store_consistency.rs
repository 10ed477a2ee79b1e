//! The client's OpenMLS storage lives in the profile's redb file: what one MLS
//! operation writes reaches disk in one transaction or not at all, and profiles
//! written before this storage existed (OpenMLS' memory store mirrored into the
//! same table) open unchanged.

use openmls_memory_storage::MemoryStorage;
use quicnprotochat_client::ClientState;
use quicnprotochat_crypto::mls::{GroupMember, Suite};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

fn open(dir: &std::path::Path) -> ClientState {
    ClientState::open(dir).expect("profile opens")
}

#[test]
fn uncommitted_mls_writes_stay_in_their_overlay_and_vanish_on_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let state = open(dir.path());
    let identity = state.identity().unwrap();
    let alice = state.mls_member(&identity).unwrap();
    let group = alice.create_group(Suite::Classic, "team").unwrap();
    let gid = group.group_id();
    let storage = alice.provider().storage_provider();
    assert!(storage.has_uncommitted());

    // Another view of the same profile (another group actor) does not see it.
    let other = state.mls_member(&identity).unwrap();
    assert!(other.load_group(&gid).unwrap().is_none());
    // The writer itself reads its own writes.
    assert_eq!(alice.load_group(&gid).unwrap().unwrap().epoch(), 0);

    storage.rollback();
    assert!(!storage.has_uncommitted());
    assert!(alice.load_group(&gid).unwrap().is_none());
}

#[test]
fn a_committed_operation_survives_reopening_and_an_uncommitted_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let (kept, lost, epoch_after_update) = {
        let state = open(dir.path());
        let identity = state.identity().unwrap();
        let member = state.mls_member(&identity).unwrap();
        let kept = member.create_group(Suite::Classic, "kept").unwrap();
        state.save_mls(&member).unwrap();

        let mut g = member.load_group(&kept.group_id()).unwrap().unwrap();
        g.self_update(&member).unwrap();
        g.confirm_commit(&member).unwrap();
        state.save_mls(&member).unwrap();
        let epoch = g.epoch();

        // The process "dies" after these writes, before their transaction.
        let lost = member.create_group(Suite::PostQuantum, "lost").unwrap();
        let mut g = member.load_group(&kept.group_id()).unwrap().unwrap();
        g.self_update(&member).unwrap();
        g.confirm_commit(&member).unwrap();
        (kept.group_id(), lost.group_id(), epoch)
    };
    let state = open(dir.path());
    let member = state.mls_member(&state.identity().unwrap()).unwrap();
    let g = member
        .load_group(&kept)
        .unwrap()
        .expect("committed group kept");
    assert_eq!(g.epoch(), epoch_after_update, "half-done epoch change lost");
    assert_eq!(epoch_after_update, 1);
    assert!(member.load_group(&lost).unwrap().is_none());
}

#[test]
fn a_profile_written_by_the_mirrored_memory_store_opens_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (gid, authenticator) = {
        let state = open(dir.path());
        let identity = state.identity().unwrap();
        drop(state);
        // What earlier versions did: OpenMLS' memory store, copied key by key into
        // the profile's `mls_storage` table.
        let member = GroupMember::new(&identity, MemoryStorage::default()).unwrap();
        let mut g = member.create_group(Suite::Classic, "old").unwrap();
        g.self_update(&member).unwrap();
        g.confirm_commit(&member).unwrap();
        let values = member
            .provider()
            .storage_provider()
            .values
            .read()
            .unwrap()
            .clone();
        let db = Database::create(dir.path().join("client.redb")).unwrap();
        let table: TableDefinition<&[u8], &[u8]> = TableDefinition::new("mls_storage");
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(table).unwrap();
            for (k, v) in &values {
                t.insert(k.as_slice(), v.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
        (g.group_id(), g.epoch_authenticator())
    };
    let state = open(dir.path());
    let member = state.mls_member(&state.identity().unwrap()).unwrap();
    let mut g = member.load_group(&gid).unwrap().expect("old group opens");
    assert_eq!(g.epoch(), 1);
    assert_eq!(g.epoch_authenticator(), authenticator);
    // And it keeps working: the next epoch change commits through redb.
    g.self_update(&member).unwrap();
    g.confirm_commit(&member).unwrap();
    state.save_mls(&member).unwrap();
    drop(member);
    let member = state.mls_member(&state.identity().unwrap()).unwrap();
    assert_eq!(member.load_group(&gid).unwrap().unwrap().epoch(), 2);
}

#[test]
fn the_ratchet_tree_is_stored_in_binary_not_json() {
    // As JSON every key byte costs ~3.6 bytes; a 1,000-member X-Wing tree
    // became ~5 MB rewritten in every member's profile on every commit.
    let dir = tempfile::tempdir().unwrap();
    let gid = {
        let state = open(dir.path());
        let identity = state.identity().unwrap();
        let member = state.mls_member(&identity).unwrap();
        let mut g = member.create_group(Suite::PostQuantum, "pq").unwrap();
        g.self_update(&member).unwrap();
        g.confirm_commit(&member).unwrap();
        state.save_mls(&member).unwrap();
        g.group_id()
    };
    let tree_bytes = {
        let db = Database::open(dir.path().join("client.redb")).unwrap();
        let table: TableDefinition<&[u8], &[u8]> = TableDefinition::new("mls_storage");
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(table).unwrap();
        let mut sizes = t
            .iter()
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|(k, _)| k.value().starts_with(b"Tree"))
            .map(|(_, v)| v.value().len());
        let size = sizes.next().expect("the tree is stored");
        assert!(sizes.next().is_none());
        size
    };
    // One leaf: an X-Wing public key (1,216 bytes), an Ed25519 key, a credential,
    // a signature. Sealed binary: well under 2 × the KEM key; JSON: over 4 KB.
    assert!(tree_bytes < 2 * 1216, "tree stored in {tree_bytes} bytes");
    // And it reads back after reopening.
    let state = open(dir.path());
    let member = state.mls_member(&state.identity().unwrap()).unwrap();
    assert_eq!(member.load_group(&gid).unwrap().unwrap().epoch(), 1);
}
