//! What the kernel says about this process: resident memory, and CPU time of the
//! node's threads.

/// Resident set size of this process, in bytes.
pub(crate) fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// CPU seconds (user + system) used so far by this process's threads whose name
/// starts with one of `prefixes`.
pub(crate) fn thread_cpu_seconds(prefixes: &[&str]) -> f64 {
    // Linux reports in clock ticks; USER_HZ is 100 on every platform we run on.
    const TICKS_PER_SECOND: f64 = 100.0;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut ticks = 0u64;
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !prefixes.iter().any(|p| comm.trim_end().starts_with(p)) {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime = fields
                .get(11)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            let stime = fields
                .get(12)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            ticks += utime + stime;
        }
    }
    ticks as f64 / TICKS_PER_SECOND
}

/// Names of every thread that does the node's work.
pub(crate) const NODE_THREADS: [&str; 3] = [super::NODE_THREAD, "store-writer", "rpc"];
