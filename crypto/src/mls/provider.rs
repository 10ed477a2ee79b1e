//! The OpenMLS provider: RustCrypto for crypto and randomness, any storage.

use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider;
use openmls_traits::storage::{CURRENT_VERSION, StorageProvider};

/// RustCrypto plus a storage provider of the caller's choosing.
#[derive(Default)]
pub struct MlsProvider<S> {
    crypto: RustCrypto,
    storage: S,
}

impl<S> MlsProvider<S> {
    /// A provider over `storage` with the Rust crypto backend.
    pub fn new(storage: S) -> Self {
        MlsProvider {
            crypto: RustCrypto::default(),
            storage,
        }
    }

    /// The storage provider (also reachable through `OpenMlsProvider`).
    pub fn storage_provider(&self) -> &S {
        &self.storage
    }
}

impl<S: StorageProvider<CURRENT_VERSION>> OpenMlsProvider for MlsProvider<S> {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = S;

    fn storage(&self) -> &S {
        &self.storage
    }

    fn crypto(&self) -> &RustCrypto {
        &self.crypto
    }

    fn rand(&self) -> &RustCrypto {
        &self.crypto
    }
}
