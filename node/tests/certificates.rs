//! Certificates as operators have them: nodes presenting a certificate from the
//! deployment's own CA (with its chain), and clients trusting the CA bundle and
//! the node's name instead of pinning one certificate.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{BIN, ServerProcess, assert_one_line_error};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A CA, an intermediate it signed, and a node certificate for `node.test` and
/// `localhost` signed by the intermediate; the node's PEM file carries the
/// chain (leaf, then intermediate). Returns (CA bundle, node cert, node key).
fn deployment(dir: &Path, ca_name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca_params = |cn: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, cn);
        p
    };
    let root_key = KeyPair::generate().unwrap();
    let root = ca_params(ca_name).self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(ca_params(ca_name), root_key);
    let mid_key = KeyPair::generate().unwrap();
    let mid_name = format!("{ca_name} intermediate");
    let mid = ca_params(&mid_name)
        .signed_by(&mid_key, &root_issuer)
        .unwrap();
    let mid_issuer = Issuer::new(ca_params(&mid_name), mid_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["node.test".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &mid_issuer)
        .unwrap();
    let bundle = dir.join(format!("{ca_name}-ca.pem"));
    let cert = dir.join(format!("{ca_name}-node.pem"));
    let key = dir.join(format!("{ca_name}-node-key.pem"));
    std::fs::write(&bundle, root.pem()).unwrap();
    std::fs::write(&cert, format!("{}{}", leaf.pem(), mid.pem())).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    (bundle, cert, key)
}

/// A node whose config file names the deployment's certificate and key.
fn node(dir: &Path, name: &str, cert: &Path, key: &Path) -> ServerProcess {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "tls_cert = {:?}\ntls_key = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    ServerProcess::start(&dir.join(name), &["--config", &config])
}

fn health(dir: &Path, server: &str, trust: &[&str]) -> Output {
    std::process::Command::new(BIN)
        .args(["health", "--server", server, "--state"])
        .arg(dir.join("profile"))
        .args(trust)
        .env_remove("QPC_CA_CERT")
        .env_remove("QPC_CA_BUNDLE")
        .output()
        .unwrap()
}

fn ok(out: &Output) -> bool {
    let done = out.status.success();
    assert!(done || !out.stderr.is_empty(), "a failure says why");
    done
}

#[test]
fn a_client_with_the_ca_bundle_reaches_every_node_of_the_deployment_and_checks_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (bundle, cert, key) = deployment(dir, "ours");
    let (other_bundle, _, _) = deployment(dir, "theirs");
    let bundle = bundle.display().to_string();
    // Two nodes of one deployment, one certificate.
    let a = node(dir, "a", &cert, &key);
    let b = node(dir, "b", &cert, &key);
    for n in [&a, &b] {
        let at = n.addr.to_string();
        let out = health(
            dir,
            &at,
            &["--ca-bundle", &bundle, "--server-name", "node.test"],
        );
        assert!(ok(&out), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok"));
    }
    // Without --server-name the name is the host of --server.
    let by_name = format!("localhost:{}", a.addr.port());
    let out = health(dir, &by_name, &["--ca-bundle", &bundle]);
    assert!(ok(&out), "{}", String::from_utf8_lossy(&out.stderr));

    // Refused: a name the certificate does not carry (here the bare IP), a
    // bundle of another CA.
    let at = a.addr.to_string();
    let out = health(dir, &at, &["--ca-bundle", &bundle]);
    assert!(!ok(&out));
    assert_one_line_error(&String::from_utf8_lossy(&out.stderr), "certificate");
    let out = health(
        dir,
        &at,
        &["--ca-bundle", &bundle, "--server-name", "other.test"],
    );
    assert!(!ok(&out));
    assert_one_line_error(&String::from_utf8_lossy(&out.stderr), "certificate");
    let other = other_bundle.display().to_string();
    let out = health(
        dir,
        &at,
        &["--ca-bundle", &other, "--server-name", "node.test"],
    );
    assert!(!ok(&out));
    assert_one_line_error(&String::from_utf8_lossy(&out.stderr), "certificate");

    // Pinning the node's certificate itself still works (PEM with its chain: the
    // first certificate is the one pinned).
    let pinned = cert.display().to_string();
    let out = health(dir, &at, &["--ca-cert", &pinned]);
    assert!(ok(&out), "{}", String::from_utf8_lossy(&out.stderr));

    // A name without a bundle is a usage error; an unreadable bundle says so.
    let out = health(dir, &at, &["--server-name", "node.test"]);
    assert_eq!(out.status.code(), Some(2));
    let missing = dir.join("missing.pem").display().to_string();
    let out = health(dir, &at, &["--ca-bundle", &missing]);
    assert!(!ok(&out));
    assert_one_line_error(&String::from_utf8_lossy(&out.stderr), "missing.pem");
}
