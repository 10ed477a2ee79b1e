//! The committed generated code must be exactly what `capnp` makes of `schemas/`.
//!
//! Run with `QPC_REGEN_WIRE=1` to rewrite the committed file instead (that is what
//! `scripts/regen-wire.sh` does). Needs Debian's `capnp` compiler; when it is absent the
//! check is skipped with a message, unless `QPC_REQUIRE_CAPNP=1` (set by `.ci/run`)
//! makes that a failure.

use std::path::{Path, PathBuf};

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn capnp_available() -> bool {
    std::process::Command::new("capnp")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn generate_into(out: &Path) {
    let schemas = manifest_dir().join("../schemas");
    capnpc::CompilerCommand::new()
        .src_prefix(&schemas)
        .file(schemas.join("node.capnp"))
        .output_path(out)
        .run()
        .expect("capnp compile of schemas/node.capnp");
}

#[test]
fn committed_generated_code_matches_schema() {
    if !capnp_available() {
        assert!(
            std::env::var_os("QPC_REQUIRE_CAPNP").is_none(),
            "QPC_REQUIRE_CAPNP is set but the `capnp` compiler is not installed"
        );
        eprintln!("skipping schema drift check: `capnp` compiler not installed");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    generate_into(out.path());
    let fresh = std::fs::read_to_string(out.path().join("node_capnp.rs")).unwrap();
    let committed_path = manifest_dir().join("src/generated/node_capnp.rs");
    if std::env::var_os("QPC_REGEN_WIRE").is_some() {
        std::fs::write(&committed_path, &fresh).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    assert!(
        committed == fresh,
        "wire/src/generated/node_capnp.rs is out of date with schemas/node.capnp: \
         run scripts/regen-wire.sh and commit the result"
    );
}
