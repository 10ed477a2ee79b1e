//! `disk`: what one durable write costs on this machine's disk, the floor under
//! every acknowledged enqueue: 4 KiB appended to a file and `fdatasync`ed, again
//! and again (the `deliver` goal is stated against its p99).

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use super::report::{Latency, Report, histogram, record};

/// Appends `syncs` blocks of 4 KiB to a fresh file in `dir`, each followed by
/// `fdatasync`, and reports the latency of each write + sync.
pub fn disk(dir: &Path, syncs: u64) -> anyhow::Result<Report> {
    const BLOCK: usize = 4096;
    let mut report = Report::new("disk")
        .param("block", BLOCK)
        .param("syncs", syncs);
    let file_dir = tempfile::tempdir_in(dir)?;
    let mut file = std::fs::File::create(file_dir.path().join("fsync-probe"))?;
    let block = vec![0x5au8; BLOCK];
    let mut h = histogram();
    let started = Instant::now();
    for _ in 0..syncs {
        let t = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        record(&mut h, t.elapsed());
    }
    report.figure(
        "syncs_per_s",
        syncs as f64 / started.elapsed().as_secs_f64(),
    );
    report.latency = Some(Latency::of(&h));
    Ok(report)
}
