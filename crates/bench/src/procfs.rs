//! What `/proc` tells about a process or a thread: memory and CPU time (Linux).

/// A numeric field (`VmRSS:`, …) of `/proc/PID/status`.
pub(crate) fn proc_field(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime of a process, in clock ticks (1/100 s on Linux).
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat_cpu(&s)?.1)
}

/// The command name and utime + stime (clock ticks) of a `/proc/…/stat` line
/// (`pid (comm) state …`: utime and stime are the 12th and 13th fields after the comm).
pub(crate) fn stat_cpu(stat: &str) -> Option<(&str, u64)> {
    let (head, after) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    Some((
        comm,
        f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
    ))
}
