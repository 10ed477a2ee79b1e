//! OPAQUE (RFC 9807) password authentication over opaque-ke: the server never sees
//! the password, and a stolen server database does not allow offline guessing
//! without the OPRF key.
//!
//! Suite: Ristretto255 OPRF, TripleDH over Ristretto255 with SHA-512, Argon2id as
//! the key-stretching function. Stretching runs on the *client* only (OPAQUE
//! evaluates it after unblinding), so its cost protects passwords against an
//! attacker who stole the server's records and costs the server nothing: a login
//! flood cannot use it to exhaust the node. We pick the OWASP baseline for
//! Argon2id, m = 19 MiB, t = 2, p = 1 (tens of milliseconds per login on this
//! 2-core machine, see `docs/performance.md`). Changing it changes every password
//! record: it is part of the format.

use argon2::{Algorithm, Argon2, Params, Version};
use opaque_ke::{
    CipherSuite, ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialFinalization, CredentialRequest,
    CredentialResponse, Identifiers, RegistrationRequest, RegistrationResponse, RegistrationUpload,
    Ristretto255, ServerLogin, ServerLoginParameters, ServerRegistration, TripleDh,
};
use zeroize::Zeroizing;

/// Our OPAQUE ciphersuite.
pub struct Suite;

/// The OPRF of our suite: ristretto255-SHA512.
pub type Oprf = Ristretto255;
/// The key exchange of our suite: 3DH over ristretto255 with SHA-512.
pub type KeyExchange = TripleDh<Ristretto255, sha2::Sha512>;

impl CipherSuite for Suite {
    type OprfCs = Oprf;
    type KeyExchange = KeyExchange;
    // RFC 9807's vectors use the identity KSF; ours stretches with Argon2id
    // (the vectors run with our OPRF and key exchange and the identity KSF).
    type Ksf = Argon2<'static>;
}

/// Argon2id memory cost in KiB.
pub const ARGON2_M_KIB: u32 = 19 * 1024;
/// Argon2id iterations.
pub const ARGON2_T: u32 = 2;
/// Argon2id lanes.
pub const ARGON2_P: u32 = 1;

/// The server's name in the OPAQUE transcript.
const SERVER_ID: &[u8] = b"quicnprotochat";
/// Context string bound into every login.
const CONTEXT: &[u8] = b"quicnprotochat/opaque/v1";

fn ksf() -> Argon2<'static> {
    Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, None).expect("valid Argon2 parameters"),
    )
}

fn identifiers(username: &str) -> Identifiers<'_> {
    Identifiers {
        client: Some(username.as_bytes()),
        server: Some(SERVER_ID),
    }
}

/// Why an OPAQUE step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpaqueError {
    /// A message or stored record does not parse.
    #[error("malformed OPAQUE message")]
    Malformed,
    /// Login failed: wrong password, or no such user. Deliberately one variant.
    #[error("wrong username or password")]
    Unauthorized,
    /// Any other protocol failure.
    #[error("OPAQUE protocol error: {0}")]
    Protocol(String),
}

fn protocol(e: opaque_ke::errors::ProtocolError) -> OpaqueError {
    match e {
        opaque_ke::errors::ProtocolError::InvalidLoginError => OpaqueError::Unauthorized,
        opaque_ke::errors::ProtocolError::SerializationError => OpaqueError::Malformed,
        other => OpaqueError::Protocol(other.to_string()),
    }
}

/// The server's long-term OPAQUE secrets (OPRF seed and key pair). Generated once
/// per node and persisted; losing it invalidates every password record.
pub struct ServerSetup(opaque_ke::ServerSetup<Suite>);

impl ServerSetup {
    /// A fresh server setup (OPRF seed and AKE key pair).
    pub fn generate() -> ServerSetup {
        ServerSetup(opaque_ke::ServerSetup::new(&mut rand08::rngs::OsRng))
    }

    /// Serialized form, to persist. Secret: store it like a private key.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.0.serialize().to_vec())
    }

    /// Reads a setup written by [`ServerSetup::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<ServerSetup, OpaqueError> {
        opaque_ke::ServerSetup::deserialize(bytes)
            .map(ServerSetup)
            .map_err(|_| OpaqueError::Malformed)
    }
}

impl std::fmt::Debug for ServerSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerSetup(<redacted>)")
    }
}

/// Client state between registration start and finish.
pub struct ClientRegistrationState(ClientRegistration<Suite>);

/// Client: starts registering; returns the state to keep and the request to send.
pub fn client_register_start(
    password: &[u8],
) -> Result<(ClientRegistrationState, Vec<u8>), OpaqueError> {
    let r =
        ClientRegistration::<Suite>::start(&mut rand08::rngs::OsRng, password).map_err(protocol)?;
    Ok((
        ClientRegistrationState(r.state),
        r.message.serialize().to_vec(),
    ))
}

/// Server: answers a registration request for `username`.
pub fn server_register_start(
    setup: &ServerSetup,
    request: &[u8],
    username: &str,
) -> Result<Vec<u8>, OpaqueError> {
    let request =
        RegistrationRequest::<Suite>::deserialize(request).map_err(|_| OpaqueError::Malformed)?;
    let r = ServerRegistration::<Suite>::start(&setup.0, request, username.as_bytes())
        .map_err(protocol)?;
    Ok(r.message.serialize().to_vec())
}

/// Client: finishes registering; returns the upload for the server.
pub fn client_register_finish(
    state: ClientRegistrationState,
    password: &[u8],
    response: &[u8],
    username: &str,
) -> Result<Vec<u8>, OpaqueError> {
    let response =
        RegistrationResponse::<Suite>::deserialize(response).map_err(|_| OpaqueError::Malformed)?;
    let ksf = ksf();
    let r = state
        .0
        .finish(
            &mut rand08::rngs::OsRng,
            password,
            response,
            ClientRegistrationFinishParameters::new(identifiers(username), Some(&ksf)),
        )
        .map_err(protocol)?;
    Ok(r.message.serialize().to_vec())
}

/// Server: turns the client's upload into the password record to store.
pub fn server_register_finish(upload: &[u8]) -> Result<Vec<u8>, OpaqueError> {
    let upload =
        RegistrationUpload::<Suite>::deserialize(upload).map_err(|_| OpaqueError::Malformed)?;
    Ok(ServerRegistration::<Suite>::finish(upload)
        .serialize()
        .to_vec())
}

/// Client state between login start and finish.
pub struct ClientLoginState(ClientLogin<Suite>);

/// Client: starts a login; returns the state to keep and the request to send.
pub fn client_login_start(password: &[u8]) -> Result<(ClientLoginState, Vec<u8>), OpaqueError> {
    let r = ClientLogin::<Suite>::start(&mut rand08::rngs::OsRng, password).map_err(protocol)?;
    Ok((ClientLoginState(r.state), r.message.serialize().to_vec()))
}

/// Server state between login start and finish.
pub struct ServerLoginState(ServerLogin<Suite>);

/// Server: answers a login request. `password_file` is `None` for an unknown
/// user: the answer is then computed from a fake record and is indistinguishable
/// from a real one (same size, same work), so usernames cannot be enumerated.
pub fn server_login_start(
    setup: &ServerSetup,
    password_file: Option<&[u8]>,
    request: &[u8],
    username: &str,
) -> Result<(ServerLoginState, Vec<u8>), OpaqueError> {
    let request =
        CredentialRequest::<Suite>::deserialize(request).map_err(|_| OpaqueError::Malformed)?;
    let file = password_file
        .map(ServerRegistration::<Suite>::deserialize)
        .transpose()
        .map_err(|_| OpaqueError::Malformed)?;
    let r = ServerLogin::start(
        &mut rand08::rngs::OsRng,
        &setup.0,
        file,
        request,
        username.as_bytes(),
        ServerLoginParameters {
            context: Some(CONTEXT),
            identifiers: identifiers(username),
        },
    )
    .map_err(protocol)?;
    Ok((ServerLoginState(r.state), r.message.serialize().to_vec()))
}

/// What a successful client login yields.
pub struct ClientLoginFinish {
    /// The message that lets the server finish.
    pub finalization: Vec<u8>,
    /// A key shared with the server, known to nobody else.
    pub session_key: Zeroizing<Vec<u8>>,
}

/// Client: finishes a login. A wrong password (or unknown user) is
/// [`OpaqueError::Unauthorized`].
pub fn client_login_finish(
    state: ClientLoginState,
    password: &[u8],
    response: &[u8],
    username: &str,
) -> Result<ClientLoginFinish, OpaqueError> {
    let response =
        CredentialResponse::<Suite>::deserialize(response).map_err(|_| OpaqueError::Malformed)?;
    let ksf = ksf();
    let r = state
        .0
        .finish(
            &mut rand08::rngs::OsRng,
            password,
            response,
            ClientLoginFinishParameters::new(Some(CONTEXT), identifiers(username), Some(&ksf)),
        )
        .map_err(protocol)?;
    Ok(ClientLoginFinish {
        finalization: r.message.serialize().to_vec(),
        session_key: Zeroizing::new(r.session_key.to_vec()),
    })
}

/// Server: checks the client's finalization; returns the shared session key.
pub fn server_login_finish(
    state: ServerLoginState,
    finalization: &[u8],
    username: &str,
) -> Result<Zeroizing<Vec<u8>>, OpaqueError> {
    let finalization = CredentialFinalization::<Suite>::deserialize(finalization)
        .map_err(|_| OpaqueError::Malformed)?;
    let r = state
        .0
        .finish(
            finalization,
            ServerLoginParameters {
                context: Some(CONTEXT),
                identifiers: identifiers(username),
            },
        )
        .map_err(protocol)?;
    Ok(Zeroizing::new(r.session_key.to_vec()))
}

macro_rules! redacted_debug {
    ($($t:ty),*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($t), "(<redacted>)"))
            }
        }
    )*};
}

redacted_debug!(
    ClientRegistrationState,
    ClientLoginState,
    ServerLoginState,
    ClientLoginFinish
);
