//! Process placement: pin the load generator to one CPU, run it at real-time priority, and allow
//! a socket per client.

use anyhow::Context;
use nix::sched::{CpuSet, sched_setaffinity};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::unistd::Pid;

/// Pins the calling thread (and the threads it starts later) to `cpu`.
pub fn to_cpu(cpu: usize) -> anyhow::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).context("CPU number out of range")?;
    sched_setaffinity(Pid::from_raw(0), &set).context("sched_setaffinity")?;
    Ok(())
}

/// Raises the open-file limit to at least `needed` (beyond the hard limit only where the process
/// may raise that).
pub fn raise_fd_limit(needed: usize) -> anyhow::Result<()> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit")?;
    let needed = needed as u64;
    if soft >= needed {
        return Ok(());
    }
    if hard < needed {
        // Raising the hard limit takes privilege (CAP_SYS_RESOURCE); without it, say so.
        return setrlimit(Resource::RLIMIT_NOFILE, needed, needed).map_err(|_| {
            anyhow::anyhow!("this run needs {needed} open files; the hard limit is {hard}")
        });
    }
    setrlimit(Resource::RLIMIT_NOFILE, needed.max(soft), hard).context("setrlimit")?;
    Ok(())
}

/// Runs the calling thread under `SCHED_FIFO` at `priority` (1–99): the machine's housekeeping
/// threads then wait for the generator instead of stalling its sends for milliseconds (which the
/// node would see as bursts no set of independent clients sends). Needs `CAP_SYS_NICE` or root.
pub fn realtime(priority: u8) -> anyhow::Result<()> {
    use thread_priority::{
        RealtimeThreadSchedulePolicy, ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    anyhow::ensure!(
        (1..=99).contains(&priority),
        "real-time priority {priority} is outside 1–99"
    );
    let value = ThreadPriorityValue::try_from(priority).map_err(anyhow::Error::msg)?;
    set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Crossplatform(value),
        ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo),
    )
    .map_err(|e| {
        anyhow::anyhow!("SCHED_FIFO priority {priority}: {e} (needs CAP_SYS_NICE or root)")
    })
}
