//! The piece store under the record layer: round trips, rewrites, sharing, damage.

use super::*;
use crate::record_pieces::PIECE_BYTES;

const LABEL: &[u8] = b"Tree";

fn store() -> (tempfile::TempDir, RedbMlsStorage) {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::create(dir.path().join("t.redb")).unwrap();
    let s = RedbMlsStorage::new(Arc::new(db), Arc::new(ProfileKey::generate()));
    (dir, s)
}

fn put(s: &RedbMlsStorage, key: &[u8], value: Option<Vec<u8>>) {
    match value {
        Some(v) => s.write::<CURRENT_VERSION>(LABEL, key, v).unwrap(),
        None => s.delete::<CURRENT_VERSION>(LABEL, key).unwrap(),
    }
    let txn = s.db.begin_write().unwrap();
    s.write_overlay(&txn, &s.take_overlay()).unwrap();
    txn.commit().unwrap();
}

fn get(s: &RedbMlsStorage, key: &[u8]) -> Option<Vec<u8>> {
    s.get_raw(&build_key_from_vec::<CURRENT_VERSION>(LABEL, key.to_vec()))
        .unwrap()
}

fn pieces(s: &RedbMlsStorage) -> (usize, u64) {
    record_pieces::census(&s.db)
}

/// `len` bytes with no two pieces alike.
fn value(len: usize, seed: u8) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64 ^ u64::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn a_large_record_is_stored_in_pieces_and_reads_back_the_same() {
    let (_d, s) = store();
    let big = value(10 * PIECE_BYTES + 123, 1);
    put(&s, b"a", Some(big.clone()));
    assert_eq!(get(&s, b"a"), Some(big));
    assert_eq!(pieces(&s), (11, 11));
    let small = value(100, 2);
    put(&s, b"b", Some(small.clone()));
    assert_eq!(get(&s, b"b"), Some(small));
    assert_eq!(pieces(&s), (11, 11), "small records are not cut");
}

#[test]
fn rewriting_a_large_record_stores_only_the_changed_pieces_and_frees_the_old_ones() {
    let (_d, s) = store();
    let mut v = value(8 * PIECE_BYTES, 3);
    put(&s, b"a", Some(v.clone()));
    for round in 0..20u8 {
        // One byte in the 5th piece changes, as a ratchet step does.
        v[4 * PIECE_BYTES + 10] = round;
        put(&s, b"a", Some(v.clone()));
        assert_eq!(get(&s, b"a").as_ref(), Some(&v));
        assert_eq!(pieces(&s), (8, 8), "round {round}: old pieces freed");
    }
    // Shrinking to a small record frees every piece.
    put(&s, b"a", Some(value(10, 4)));
    assert_eq!(pieces(&s), (0, 0));
}

#[test]
fn a_piece_shared_by_two_records_lives_until_the_last_one_goes() {
    let (_d, s) = store();
    let v = value(5 * PIECE_BYTES, 5);
    put(&s, b"a", Some(v.clone()));
    put(&s, b"b", Some(v.clone()));
    assert_eq!(pieces(&s), (5, 10));
    put(&s, b"a", None);
    assert_eq!(get(&s, b"a"), None);
    assert_eq!(get(&s, b"b"), Some(v), "b still reads whole");
    assert_eq!(pieces(&s), (5, 5));
    put(&s, b"b", None);
    assert_eq!(pieces(&s), (0, 0));
}

#[test]
fn a_missing_piece_is_a_typed_error_not_a_wrong_value() {
    let (_d, s) = store();
    put(&s, b"a", Some(value(4 * PIECE_BYTES, 6)));
    record_pieces::lose_a_piece(&s.db);
    let err = s
        .get_raw(&build_key_from_vec::<CURRENT_VERSION>(LABEL, b"a".to_vec()))
        .unwrap_err();
    assert!(matches!(err, MlsStoreError::Inconsistent(_)), "{err}");
}
