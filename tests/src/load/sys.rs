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

// Linux reports CPU time in clock ticks; USER_HZ is 100 on every platform we
// run on.
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds (user + system) used so far by process `pid`, all its threads
/// together; `None` when it cannot be read (gone, or not Linux).
pub(crate) fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_ticks(&stat).map(|t| t as f64 / TICKS_PER_SECOND)
}

/// utime + stime of a `/proc/…/stat` line.
fn stat_ticks(stat: &str) -> Option<u64> {
    // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime = fields.get(11)?.parse::<u64>().ok()?;
    let stime = fields.get(12)?.parse::<u64>().ok()?;
    Some(utime + stime)
}

/// CPU seconds (user + system) used so far by this process's threads whose name
/// starts with one of `prefixes`.
pub(crate) fn thread_cpu_seconds(prefixes: &[&str]) -> f64 {
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
        ticks += stat_ticks(&stat).unwrap_or(0);
    }
    ticks as f64 / TICKS_PER_SECOND
}

/// Names of every thread that does the node's work.
pub(crate) const NODE_THREADS: [&str; 3] = [super::NODE_THREAD, "store-writer", "rpc"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_past_a_thread_name_with_spaces_and_parentheses() {
        let stat = "42 (rpc (0) x) S 1 42 42 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 3 0";
        assert_eq!(stat_ticks(stat), Some(287));
    }

    #[test]
    fn this_process_has_a_readable_cpu_time() {
        assert!(process_cpu_seconds(std::process::id()).is_some());
    }
}
