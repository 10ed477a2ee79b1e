//! OPAQUE through our wrappers: registration and login agree on a session key,
//! wrong passwords and unknown users fail the same way, and the server's answer
//! to an unknown user looks like its answer to a known one.

use quicnprotochat_crypto::opaque::*;

fn register(setup: &ServerSetup, username: &str, password: &[u8]) -> Vec<u8> {
    let (state, request) = client_register_start(password).unwrap();
    let response = server_register_start(setup, &request, username).unwrap();
    let upload = client_register_finish(state, password, &response, username).unwrap();
    server_register_finish(&upload).unwrap()
}

/// The client's and the server's session keys.
type SessionKeys = (Vec<u8>, Vec<u8>);

/// Logs in; returns the size of the server's answer and the outcome.
fn login(
    setup: &ServerSetup,
    record: Option<&[u8]>,
    username: &str,
    password: &[u8],
) -> (usize, Result<SessionKeys, OpaqueError>) {
    let (state, request) = client_login_start(password).unwrap();
    let (server_state, response) = server_login_start(setup, record, &request, username).unwrap();
    let len = response.len();
    let result = client_login_finish(state, password, &response, username).and_then(|c| {
        let server_key = server_login_finish(server_state, &c.finalization, username)?;
        Ok((c.session_key.to_vec(), server_key.to_vec()))
    });
    (len, result)
}

#[test]
fn register_then_login_agrees_on_a_session_key() {
    let setup = ServerSetup::generate();
    let record = register(&setup, "alice", b"correct horse battery staple");
    let (_, result) = login(
        &setup,
        Some(&record),
        "alice",
        b"correct horse battery staple",
    );
    let (client_key, server_key) = result.unwrap();
    assert_eq!(client_key, server_key);
    assert_eq!(client_key.len(), 64);
    // A second login gets a different key.
    let (_, again) = login(
        &setup,
        Some(&record),
        "alice",
        b"correct horse battery staple",
    );
    assert_ne!(again.unwrap().0, client_key);
}

#[test]
fn wrong_password_unknown_user_and_wrong_username_all_fail_alike() {
    let setup = ServerSetup::generate();
    let record = register(&setup, "alice", b"pw");
    let (known_len, wrong_pw) = login(&setup, Some(&record), "alice", b"pW");
    assert_eq!(wrong_pw.unwrap_err(), OpaqueError::Unauthorized);
    let (unknown_len, unknown) = login(&setup, None, "mallory", b"pw");
    assert_eq!(unknown.unwrap_err(), OpaqueError::Unauthorized);
    assert_eq!(
        known_len, unknown_len,
        "the fake record answer has the real one's size"
    );
    // alice's record presented under another name does not log in.
    let (_, renamed) = login(&setup, Some(&record), "alicia", b"pw");
    assert_eq!(renamed.unwrap_err(), OpaqueError::Unauthorized);
}

#[test]
fn server_setup_survives_serialization() {
    let setup = ServerSetup::generate();
    let record = register(&setup, "bob", b"hunter2");
    let restored = ServerSetup::from_bytes(&setup.to_bytes()).unwrap();
    let (_, result) = login(&restored, Some(&record), "bob", b"hunter2");
    assert!(result.is_ok());
    assert_eq!(
        ServerSetup::from_bytes(b"short").unwrap_err(),
        OpaqueError::Malformed
    );
    assert!(!format!("{setup:?}").contains(&format!("{:?}", &setup.to_bytes()[..4])));
}

#[test]
fn malformed_messages_are_refused_typed() {
    let setup = ServerSetup::generate();
    assert_eq!(
        server_register_start(&setup, b"junk", "a").unwrap_err(),
        OpaqueError::Malformed
    );
    assert_eq!(
        server_register_finish(b"junk").unwrap_err(),
        OpaqueError::Malformed
    );
    let (_, request) = client_login_start(b"pw").unwrap();
    assert_eq!(
        server_login_start(&setup, Some(b"not a record"), &request, "a").unwrap_err(),
        OpaqueError::Malformed
    );
}
