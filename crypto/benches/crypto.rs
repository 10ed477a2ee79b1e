//! Costs of the cryptographic operations on the message path, with OpenMLS called
//! directly beside our wrapper so the wrapper's own overhead is visible.
//!
//! `cargo bench -p quicnprotochat-crypto`; `QPC_BENCH_LARGE=1` adds groups of 1000.
//! Figures and the machine they were taken on: `docs/performance.md`.

use std::cell::RefCell;

use divan::Bencher;
use openmls::prelude::tls_codec::{Deserialize, Serialize};
use openmls::prelude::{
    KeyPackageIn, MlsMessageBodyIn, MlsMessageIn, ProtocolMessage, ProtocolVersion,
};
use openmls_memory_storage::MemoryStorage;
use openmls_traits::OpenMlsProvider;
use quicnprotochat_crypto::Identity;
use quicnprotochat_crypto::envelope::{HybridKeyPair, HybridPublicKey, open, seal};
use quicnprotochat_crypto::mls::{Group, GroupMember, Suite};

fn main() {
    divan::main();
}

const KIB: usize = 1024;

fn sizes() -> Vec<usize> {
    let mut s = vec![10, 100];
    if std::env::var_os("QPC_BENCH_LARGE").is_some() {
        s.push(1000);
    }
    s
}

#[derive(Debug, Clone, Copy)]
struct Case {
    suite: Suite,
    members: usize,
}

fn cases() -> Vec<Case> {
    Suite::ALL
        .into_iter()
        .flat_map(|suite| {
            sizes()
                .into_iter()
                .map(move |members| Case { suite, members })
        })
        .collect()
}

fn member() -> GroupMember<MemoryStorage> {
    GroupMember::new(&Identity::generate(), MemoryStorage::default()).unwrap()
}

/// alice and bob in a group of `members` (the others never need to act).
struct Pair {
    alice: GroupMember<MemoryStorage>,
    bob: GroupMember<MemoryStorage>,
    alice_group: Group,
    bob_group: Group,
    suite: Suite,
}

fn pair(suite: Suite, members: usize) -> Pair {
    let alice = member();
    let bob = member();
    let mut alice_group = alice.create_group(suite, "bench").unwrap();
    let mut kps = vec![bob.generate_key_package(suite, false).unwrap()];
    for _ in 2..members {
        kps.push(member().generate_key_package(suite, false).unwrap());
    }
    let out = alice_group.add_members(&alice, &kps).unwrap();
    alice_group.confirm_commit(&alice).unwrap();
    let bob_group = bob.join(&out.welcome.unwrap()).unwrap();
    Pair {
        alice,
        bob,
        alice_group,
        bob_group,
        suite,
    }
}

mod envelope {
    use super::*;

    fn recipient() -> (HybridKeyPair, HybridPublicKey) {
        let id = Identity::generate();
        let keys = HybridKeyPair::generate(0);
        let public =
            HybridPublicKey::verify(&keys.signed_public(&id).to_bytes(), &id.public_key()).unwrap();
        (keys, public)
    }

    #[divan::bench]
    fn seal_1kib(b: Bencher) {
        let (_, public) = recipient();
        let payload = vec![7u8; KIB];
        b.bench_local(|| seal(&public, &payload, b""));
    }

    #[divan::bench]
    fn open_1kib(b: Bencher) {
        let (keys, public) = recipient();
        let env = seal(&public, &[7u8; KIB], b"");
        b.bench_local(|| open(&keys, &env, b"").unwrap());
    }
}

mod key_package {
    use super::*;

    #[divan::bench(args = Suite::ALL)]
    fn generate(b: Bencher, suite: Suite) {
        let m = member();
        b.bench_local(|| m.generate_key_package(suite, false).unwrap());
    }
}

mod application {
    use super::*;

    #[divan::bench(args = Suite::ALL)]
    fn encrypt_1kib(b: Bencher, suite: Suite) {
        let mut p = pair(suite, 2);
        let msg = vec![1u8; KIB];
        b.bench_local(|| p.alice_group.encrypt(&p.alice, &msg).unwrap());
    }

    #[divan::bench(args = Suite::ALL)]
    fn encrypt_1kib_openmls(b: Bencher, suite: Suite) {
        let mut p = pair(suite, 2);
        let msg = vec![1u8; KIB];
        b.bench_local(|| {
            let out = p
                .alice_group
                .openmls_group_mut()
                .create_message(p.alice.provider(), p.alice.signer(), &msg)
                .unwrap();
            out.tls_serialize_detached().unwrap()
        });
    }

    #[divan::bench(args = Suite::ALL)]
    fn decrypt_1kib(b: Bencher, suite: Suite) {
        let p = RefCell::new(pair(suite, 2));
        let msg = vec![1u8; KIB];
        b.with_inputs(|| {
            let mut p = p.borrow_mut();
            let Pair {
                alice, alice_group, ..
            } = &mut *p;
            alice_group.encrypt(alice, &msg).unwrap()
        })
        .bench_local_values(|ct| {
            let mut p = p.borrow_mut();
            let Pair { bob, bob_group, .. } = &mut *p;
            bob_group.process(bob, &ct).unwrap()
        });
    }

    #[divan::bench(args = Suite::ALL)]
    fn decrypt_1kib_openmls(b: Bencher, suite: Suite) {
        let p = RefCell::new(pair(suite, 2));
        let msg = vec![1u8; KIB];
        b.with_inputs(|| {
            let mut p = p.borrow_mut();
            let Pair {
                alice, alice_group, ..
            } = &mut *p;
            alice_group.encrypt(alice, &msg).unwrap()
        })
        .bench_local_values(|ct| {
            let mut p = p.borrow_mut();
            let Pair { bob, bob_group, .. } = &mut *p;
            let MlsMessageBodyIn::PrivateMessage(pm) =
                MlsMessageIn::tls_deserialize_exact(&ct).unwrap().extract()
            else {
                unreachable!()
            };
            bob_group
                .openmls_group_mut()
                .process_message(bob.provider(), ProtocolMessage::from(pm))
                .unwrap()
        });
    }
}

mod add_member {
    use super::*;

    /// Creating the commit (and Welcome) that adds one member to a group of N.
    #[divan::bench(args = cases(), sample_count = 10, sample_size = 1)]
    fn commit(b: Bencher, case: Case) {
        let p = RefCell::new(pair(case.suite, case.members));
        let newcomer = member();
        b.with_inputs(|| newcomer.generate_key_package(case.suite, false).unwrap())
            .bench_local_values(|kp| {
                let mut p = p.borrow_mut();
                let Pair {
                    alice, alice_group, ..
                } = &mut *p;
                let out = alice_group.add_members(alice, &[kp]).unwrap();
                alice_group.discard_commit(alice).unwrap();
                out
            });
    }

    #[divan::bench(args = cases(), sample_count = 10, sample_size = 1)]
    fn commit_openmls(b: Bencher, case: Case) {
        let p = RefCell::new(pair(case.suite, case.members));
        let newcomer = member();
        b.with_inputs(|| {
            let bytes = newcomer.generate_key_package(case.suite, false).unwrap();
            let crypto = openmls_rust_crypto::RustCrypto::default();
            KeyPackageIn::tls_deserialize_exact(&bytes)
                .unwrap()
                .validate(&crypto, ProtocolVersion::Mls10)
                .unwrap()
        })
        .bench_local_values(|kp| {
            let mut p = p.borrow_mut();
            let Pair {
                alice, alice_group, ..
            } = &mut *p;
            let group = alice_group.openmls_group_mut();
            let out = group
                .add_members(alice.provider(), alice.signer(), &[kp])
                .unwrap();
            group
                .clear_pending_commit(alice.provider().storage())
                .unwrap();
            out
        });
    }

    /// An existing member processing that commit.
    #[divan::bench(args = cases(), sample_count = 10, sample_size = 1)]
    fn process(b: Bencher, case: Case) {
        let p = RefCell::new(pair(case.suite, case.members));
        b.with_inputs(|| {
            let mut p = p.borrow_mut();
            let suite = p.suite;
            let Pair {
                alice, alice_group, ..
            } = &mut *p;
            let kp = member().generate_key_package(suite, false).unwrap();
            let out = alice_group.add_members(alice, &[kp]).unwrap();
            alice_group.confirm_commit(alice).unwrap();
            out.commit
        })
        .bench_local_values(|commit| {
            let mut p = p.borrow_mut();
            let Pair { bob, bob_group, .. } = &mut *p;
            bob_group.process(bob, &commit).unwrap()
        });
    }

    #[divan::bench(args = cases(), sample_count = 10, sample_size = 1)]
    fn process_openmls(b: Bencher, case: Case) {
        let p = RefCell::new(pair(case.suite, case.members));
        b.with_inputs(|| {
            let mut p = p.borrow_mut();
            let suite = p.suite;
            let Pair {
                alice, alice_group, ..
            } = &mut *p;
            let kp = member().generate_key_package(suite, false).unwrap();
            let out = alice_group.add_members(alice, &[kp]).unwrap();
            alice_group.confirm_commit(alice).unwrap();
            out.commit
        })
        .bench_local_values(|commit| {
            let mut p = p.borrow_mut();
            let Pair { bob, bob_group, .. } = &mut *p;
            let msg: ProtocolMessage = match MlsMessageIn::tls_deserialize_exact(&commit)
                .unwrap()
                .extract()
            {
                MlsMessageBodyIn::PrivateMessage(m) => m.into(),
                MlsMessageBodyIn::PublicMessage(m) => m.into(),
                _ => unreachable!(),
            };
            let group = bob_group.openmls_group_mut();
            let processed = group.process_message(bob.provider(), msg).unwrap();
            if let openmls::prelude::ProcessedMessageContent::StagedCommitMessage(staged) =
                processed.into_content()
            {
                group.merge_staged_commit(bob.provider(), *staged).unwrap();
            }
        });
    }
}

/// What a sender spends on one 1 KiB message to a group of N: the MLS encryption
/// and the shared body (signed once; on the classic suite also its key wrapped
/// with X-Wing for each of the N-1 recipients).
mod group_send {
    use super::*;
    use quicnprotochat_crypto::envelope::{BodyProtection, seal_shared};

    fn recipients(n: usize) -> Vec<HybridPublicKey> {
        (0..n)
            .map(|_| {
                let id = Identity::generate();
                let keys = HybridKeyPair::generate(0);
                HybridPublicKey::verify(&keys.signed_public(&id).to_bytes(), &id.public_key())
                    .unwrap()
            })
            .collect()
    }

    #[divan::bench(args = cases(), sample_count = 10, sample_size = 1)]
    fn message_1kib(b: Bencher, case: Case) {
        let mut p = pair(case.suite, case.members);
        let (protection, keys) = match case.suite {
            Suite::PostQuantum => (BodyProtection::Mls, Vec::new()),
            Suite::Classic => (BodyProtection::Wrapped, recipients(case.members - 1)),
        };
        let sender = Identity::generate();
        let msg = vec![1u8; KIB];
        b.bench_local(|| {
            let mls = p.alice_group.encrypt(&p.alice, &msg).unwrap();
            seal_shared(&sender, &mls, 0, protection, &keys)
        });
    }
}
