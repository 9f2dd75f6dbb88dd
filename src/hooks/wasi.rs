//! The host's own WASI preview1 surface: just enough for the Rust and Go wasip1 runtimes, and
//! nothing that reaches outside the call.
//!
//! Why not `wasmtime_wasi::p1`: its `poll_oneoff` sleeps the host thread for as long as the
//! guest asks (epoch interruption cannot stop a host call, so one `sleep(1h)` would pin a
//! blocking thread for an hour), and its sync functions enter a Tokio runtime with `block_on`
//! (which panics when called from an async worker thread). Cost is not the reason: measured
//! (tests/hooks.rs `measure`), a call costs the same either way (~115 µs for deny-latest) and
//! building a `WasiP1Ctx` takes ~0.5 µs. This shim grants:
//!
//! - stdout and stderr, captured into bounded in-memory buffers; stdin reads as empty;
//! - no arguments, no environment variables, no preopened directories (so no filesystem);
//! - the realtime and monotonic clocks (language runtimes need them), and `random_get`;
//! - `poll_oneoff` on clocks, which sleeps at most until the call's deadline;
//! - `sched_yield`, and `proc_exit`, which ends the call with the exit code.
//!
//! Every other preview1 function exists with its real signature, so modules link, and returns
//! `ENOSYS`. No sockets, no files.

use std::sync::LazyLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wasmtime::{
    Caller, Extern, FuncType, Linker, Memory, ResourceLimiter, StoreLimits, StoreLimitsBuilder,
    Val, ValType,
};

pub(super) const MODULE: &str = "wasi_snapshot_preview1";

const ESUCCESS: i32 = 0;
const EBADF: i32 = 8;
const EFAULT: i32 = 21;
const EINVAL: i32 = 28;
const ENOSYS: i32 = 52;
const ESPIPE: i32 = 70;

/// Per-call state kept in the wasmtime `Store`.
pub struct CallState {
    pub(super) limiter: CallLimiter,
    pub(super) stdout: Capture,
    pub(super) stderr: Capture,
    pub(super) deadline: Instant,
}

impl CallState {
    pub(super) fn new(memory_limit_bytes: usize, stdio_limit: usize, deadline: Instant) -> Self {
        Self {
            limiter: CallLimiter::new(memory_limit_bytes),
            stdout: Capture::new(stdio_limit),
            stderr: Capture::new(stdio_limit),
            deadline,
        }
    }
}

/// [`StoreLimits`] plus a record of the growth it refused, so the error can say so.
pub(super) struct CallLimiter {
    limits: StoreLimits,
    pub(super) memory_limit_bytes: usize,
}

impl CallLimiter {
    fn new(memory_limit_bytes: usize) -> Self {
        Self {
            limits: StoreLimitsBuilder::new()
                .memory_size(memory_limit_bytes)
                .memories(1)
                .instances(1)
                .tables(4)
                .table_elements(100_000)
                .build(),
            memory_limit_bytes,
        }
    }
}

/// Raised (as the call's error) when a plugin asks for more memory than its cap.
#[derive(Debug, thiserror::Error)]
#[error("memory limit of {limit} bytes exceeded (asked for {desired} bytes)")]
pub(super) struct MemoryCapExceeded {
    pub(super) desired: usize,
    pub(super) limit: usize,
}

impl ResourceLimiter for CallLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if self.limits.memory_growing(current, desired, maximum)? {
            Ok(true)
        } else {
            // Trap at once: a refused grow would otherwise surface as an unrelated abort in the
            // guest's allocator.
            Err(wasmtime::Error::new(MemoryCapExceeded {
                desired,
                limit: self.memory_limit_bytes,
            }))
        }
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }
    fn tables(&self) -> usize {
        self.limits.tables()
    }
    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// The last `limit` bytes a plugin wrote to one stream, and how many were dropped before them.
#[derive(Debug, Default)]
pub(super) struct Capture {
    buf: Vec<u8>,
    limit: usize,
    dropped: u64,
}

impl Capture {
    fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            limit,
            dropped: 0,
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        if self.limit == 0 {
            self.dropped += bytes.len() as u64;
            return;
        }
        self.buf.extend_from_slice(bytes);
        // Trim lazily (at twice the limit) so a chatty plugin costs amortised O(1) per byte.
        if self.buf.len() > 2 * self.limit {
            let excess = self.buf.len() - self.limit;
            self.buf.drain(..excess);
            self.dropped += excess as u64;
        }
    }

    /// The kept text (lossily decoded), prefixed with a marker when bytes were dropped.
    pub(super) fn text(&self) -> String {
        let start = self.buf.len().saturating_sub(self.limit);
        let dropped = self.dropped + start as u64;
        let text = String::from_utf8_lossy(&self.buf[start..]);
        if dropped > 0 {
            format!("[{dropped} bytes dropped] {text}")
        } else {
            text.into_owned()
        }
    }
}

/// Raised when a plugin calls `proc_exit`.
#[derive(Debug, thiserror::Error)]
#[error("the plugin called proc_exit({0})")]
pub(super) struct ProcExit(pub(super) i32);

/// Raised when `poll_oneoff` would sleep past the call's deadline.
#[derive(Debug, thiserror::Error)]
#[error("the plugin slept past its deadline")]
pub(super) struct SleptPastDeadline;

/// Whether the host provides this preview1 function.
pub(super) fn provides(name: &str) -> bool {
    PREVIEW1.iter().any(|(n, _)| *n == name)
}

/// Every preview1 function with its core signature: `i` = i32, `I` = i64 parameters; all
/// return an errno (i32) except `proc_exit`.
const PREVIEW1: &[(&str, &str)] = &[
    ("args_get", "ii"),
    ("args_sizes_get", "ii"),
    ("environ_get", "ii"),
    ("environ_sizes_get", "ii"),
    ("clock_res_get", "ii"),
    ("clock_time_get", "iIi"),
    ("fd_advise", "iIIi"),
    ("fd_allocate", "iII"),
    ("fd_close", "i"),
    ("fd_datasync", "i"),
    ("fd_fdstat_get", "ii"),
    ("fd_fdstat_set_flags", "ii"),
    ("fd_fdstat_set_rights", "iII"),
    ("fd_filestat_get", "ii"),
    ("fd_filestat_set_size", "iI"),
    ("fd_filestat_set_times", "iIIi"),
    ("fd_pread", "iiiIi"),
    ("fd_prestat_get", "ii"),
    ("fd_prestat_dir_name", "iii"),
    ("fd_pwrite", "iiiIi"),
    ("fd_read", "iiii"),
    ("fd_readdir", "iiiIi"),
    ("fd_renumber", "ii"),
    ("fd_seek", "iIii"),
    ("fd_sync", "i"),
    ("fd_tell", "ii"),
    ("fd_write", "iiii"),
    ("path_create_directory", "iii"),
    ("path_filestat_get", "iiiii"),
    ("path_filestat_set_times", "iiiiIIi"),
    ("path_link", "iiiiiii"),
    ("path_open", "iiiiiIIii"),
    ("path_readlink", "iiiiii"),
    ("path_remove_directory", "iii"),
    ("path_rename", "iiiiii"),
    ("path_symlink", "iiiii"),
    ("path_unlink_file", "iii"),
    ("poll_oneoff", "iiii"),
    ("proc_exit", "i"),
    ("proc_raise", "i"),
    ("sched_yield", ""),
    ("random_get", "ii"),
    ("sock_accept", "iii"),
    ("sock_recv", "iiiiii"),
    ("sock_send", "iiiii"),
    ("sock_shutdown", "ii"),
];

/// The functions with a real implementation above; the rest of [`PREVIEW1`] returns `ENOSYS`.
const IMPLEMENTED: &[&str] = &[
    "args_sizes_get",
    "environ_sizes_get",
    "args_get",
    "environ_get",
    "clock_res_get",
    "clock_time_get",
    "fd_write",
    "fd_read",
    "fd_close",
    "fd_fdstat_get",
    "fd_fdstat_set_flags",
    "fd_filestat_get",
    "fd_seek",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "poll_oneoff",
    "sched_yield",
    "random_get",
    "proc_exit",
];

/// Anchor of the monotonic clock the guest sees.
static MONOTONIC_ANCHOR: LazyLock<Instant> = LazyLock::new(Instant::now);

pub(super) fn add_to_linker(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    linker.func_wrap(MODULE, "args_sizes_get", sizes_zero)?;
    linker.func_wrap(MODULE, "environ_sizes_get", sizes_zero)?;
    linker.func_wrap(
        MODULE,
        "args_get",
        |_: Caller<'_, CallState>, _: i32, _: i32| ESUCCESS,
    )?;
    linker.func_wrap(
        MODULE,
        "environ_get",
        |_: Caller<'_, CallState>, _: i32, _: i32| ESUCCESS,
    )?;
    linker.func_wrap(MODULE, "clock_res_get", clock_res_get)?;
    linker.func_wrap(MODULE, "clock_time_get", clock_time_get)?;
    linker.func_wrap(MODULE, "fd_write", fd_write)?;
    linker.func_wrap(MODULE, "fd_read", fd_read)?;
    linker.func_wrap(MODULE, "fd_close", |_: Caller<'_, CallState>, fd: i32| {
        if is_stdio(fd) { ESUCCESS } else { EBADF }
    })?;
    linker.func_wrap(MODULE, "fd_fdstat_get", fd_fdstat_get)?;
    linker.func_wrap(
        MODULE,
        "fd_fdstat_set_flags",
        |_: Caller<'_, CallState>, fd: i32, _: i32| if is_stdio(fd) { ESUCCESS } else { EBADF },
    )?;
    linker.func_wrap(MODULE, "fd_filestat_get", fd_filestat_get)?;
    linker.func_wrap(
        MODULE,
        "fd_seek",
        |_: Caller<'_, CallState>, fd: i32, _: i64, _: i32, _: i32| {
            if is_stdio(fd) { ESPIPE } else { EBADF }
        },
    )?;
    // Nothing is preopened: the guest's preopen scan ends at the first descriptor.
    linker.func_wrap(
        MODULE,
        "fd_prestat_get",
        |_: Caller<'_, CallState>, _: i32, _: i32| EBADF,
    )?;
    linker.func_wrap(
        MODULE,
        "fd_prestat_dir_name",
        |_: Caller<'_, CallState>, _: i32, _: i32, _: i32| EBADF,
    )?;
    linker.func_wrap(MODULE, "poll_oneoff", poll_oneoff)?;
    linker.func_wrap(MODULE, "sched_yield", |_: Caller<'_, CallState>| ESUCCESS)?;
    linker.func_wrap(MODULE, "random_get", random_get)?;
    linker.func_wrap(
        MODULE,
        "proc_exit",
        |_: Caller<'_, CallState>, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::new(ProcExit(code)))
        },
    )?;

    let engine = linker.engine().clone();
    for (name, params) in PREVIEW1 {
        if IMPLEMENTED.contains(name) {
            continue;
        }
        let params = params
            .chars()
            .map(|c| if c == 'I' { ValType::I64 } else { ValType::I32 });
        let ty = FuncType::new(&engine, params, [ValType::I32]);
        linker.func_new(MODULE, name, ty, |_, _: &[Val], results: &mut [Val]| {
            results[0] = Val::I32(ENOSYS);
            Ok(())
        })?;
    }
    Ok(())
}

#[cfg(test)]
fn dummy_store(engine: &wasmtime::Engine) -> wasmtime::Store<CallState> {
    wasmtime::Store::new(engine, CallState::new(0, 0, Instant::now()))
}

fn is_stdio(fd: i32) -> bool {
    (0..=2).contains(&fd)
}

fn memory(caller: &mut Caller<'_, CallState>) -> Option<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(memory)) => Some(memory),
        _ => None,
    }
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

fn read_u64(data: &[u8], at: usize) -> Option<u64> {
    let bytes = data.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// Writes `bytes` at `ptr` in the guest's memory; `EFAULT` when out of bounds.
fn write(caller: &mut Caller<'_, CallState>, ptr: i32, bytes: &[u8]) -> i32 {
    let Some(memory) = memory(caller) else {
        return EFAULT;
    };
    match memory.write(caller, ptr as u32 as usize, bytes) {
        Ok(()) => ESUCCESS,
        Err(_) => EFAULT,
    }
}

fn sizes_zero(mut caller: Caller<'_, CallState>, count_ptr: i32, size_ptr: i32) -> i32 {
    match write(&mut caller, count_ptr, &0u32.to_le_bytes()) {
        ESUCCESS => write(&mut caller, size_ptr, &0u32.to_le_bytes()),
        errno => errno,
    }
}

fn clock_res_get(mut caller: Caller<'_, CallState>, id: i32, ptr: i32) -> i32 {
    match id {
        0 | 1 => write(&mut caller, ptr, &1u64.to_le_bytes()),
        _ => EINVAL,
    }
}

fn now_nanos(id: i32) -> Option<u64> {
    let nanos = match id {
        0 => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()?
            .as_nanos(),
        1 => MONOTONIC_ANCHOR.elapsed().as_nanos(),
        _ => return None,
    };
    u64::try_from(nanos).ok()
}

fn clock_time_get(mut caller: Caller<'_, CallState>, id: i32, _precision: i64, ptr: i32) -> i32 {
    match now_nanos(id) {
        Some(nanos) => write(&mut caller, ptr, &nanos.to_le_bytes()),
        None => EINVAL,
    }
}

/// Gathers the iovec list `(ptr, len)*` at `iovs` into one buffer.
fn gather(data: &[u8], iovs: i32, iovs_len: i32) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for i in 0..iovs_len as u32 as usize {
        let at = (iovs as u32 as usize).checked_add(i.checked_mul(8)?)?;
        let ptr = read_u32(data, at)? as usize;
        let len = read_u32(data, at + 4)? as usize;
        out.extend_from_slice(data.get(ptr..ptr.checked_add(len)?)?);
    }
    Some(out)
}

fn fd_write(
    mut caller: Caller<'_, CallState>,
    fd: i32,
    iovs: i32,
    iovs_len: i32,
    nwritten: i32,
) -> i32 {
    if fd != 1 && fd != 2 {
        return EBADF;
    }
    let Some(memory) = memory(&mut caller) else {
        return EFAULT;
    };
    let Some(bytes) = gather(memory.data(&caller), iovs, iovs_len) else {
        return EFAULT;
    };
    let state = caller.data_mut();
    if fd == 1 {
        state.stdout.write(&bytes);
    } else {
        state.stderr.write(&bytes);
    }
    // Report everything as written so a chatty guest never retries.
    write(&mut caller, nwritten, &(bytes.len() as u32).to_le_bytes())
}

fn fd_read(mut caller: Caller<'_, CallState>, fd: i32, _iovs: i32, _len: i32, nread: i32) -> i32 {
    if fd != 0 {
        return EBADF;
    }
    write(&mut caller, nread, &0u32.to_le_bytes())
}

fn fd_fdstat_get(mut caller: Caller<'_, CallState>, fd: i32, ptr: i32) -> i32 {
    if !is_stdio(fd) {
        return EBADF;
    }
    // struct fdstat { u8 filetype; u16 flags @2; u64 rights_base @8; u64 rights_inheriting @16 }
    let mut stat = [0u8; 24];
    stat[0] = 2; // character device
    let rights: u64 = if fd == 0 { 1 << 1 } else { 1 << 6 }; // fd_read / fd_write
    stat[8..16].copy_from_slice(&rights.to_le_bytes());
    write(&mut caller, ptr, &stat)
}

fn fd_filestat_get(mut caller: Caller<'_, CallState>, fd: i32, ptr: i32) -> i32 {
    if !is_stdio(fd) {
        return EBADF;
    }
    // struct filestat { dev, ino, u8 filetype @16, nlink, size, atim, mtim, ctim } = 64 bytes
    let mut stat = [0u8; 64];
    stat[16] = 2; // character device
    write(&mut caller, ptr, &stat)
}

fn random_get(mut caller: Caller<'_, CallState>, ptr: i32, len: i32) -> i32 {
    let mut bytes = vec![0u8; len as u32 as usize];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return EINVAL;
    }
    write(&mut caller, ptr, &bytes)
}

/// `poll_oneoff(in, out, nsubscriptions, nevents)`: stdio subscriptions are ready at once;
/// clock subscriptions sleep until the earliest one fires, but never past the call's deadline.
fn poll_oneoff(
    mut caller: Caller<'_, CallState>,
    subs: i32,
    events: i32,
    nsubs: i32,
    nevents: i32,
) -> wasmtime::Result<i32> {
    const SUB_SIZE: usize = 48;
    const EVENT_SIZE: usize = 32;
    let n = nsubs as u32 as usize;
    if n == 0 {
        return Ok(EINVAL);
    }
    let Some(memory) = memory(&mut caller) else {
        return Ok(EFAULT);
    };
    let data = memory.data(&caller);
    let base = subs as u32 as usize;
    let mut ready = Vec::new();
    let mut earliest: Option<(u64, Duration)> = None;
    for i in 0..n {
        let at = base + i * SUB_SIZE;
        let (Some(userdata), Some(tag)) = (read_u64(data, at), data.get(at + 8).copied()) else {
            return Ok(EFAULT);
        };
        match tag {
            0 => {
                let (Some(id), Some(timeout), Some(flags)) = (
                    read_u32(data, at + 16),
                    read_u64(data, at + 24),
                    data.get(at + 40).copied(),
                ) else {
                    return Ok(EFAULT);
                };
                let wait = if flags & 1 == 1 {
                    // Absolute time on the subscription's clock.
                    let now = now_nanos(id as i32).unwrap_or(0);
                    Duration::from_nanos(timeout.saturating_sub(now))
                } else {
                    Duration::from_nanos(timeout)
                };
                if earliest.is_none_or(|(_, w)| wait < w) {
                    earliest = Some((userdata, wait));
                }
            }
            // fd_read / fd_write: stdio is always ready, any other descriptor is bad.
            1 | 2 => {
                let fd = read_u32(data, at + 16).unwrap_or(u32::MAX) as i32;
                let errno = if is_stdio(fd) { ESUCCESS } else { EBADF };
                ready.push((userdata, errno, tag));
            }
            _ => return Ok(EINVAL),
        }
    }
    if ready.is_empty() {
        let Some((userdata, wait)) = earliest else {
            return Ok(EINVAL);
        };
        let deadline = caller.data().deadline;
        let wake = Instant::now() + wait;
        if wake > deadline {
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
            return Err(wasmtime::Error::new(SleptPastDeadline));
        }
        std::thread::sleep(wait);
        ready.push((userdata, ESUCCESS, 0));
    }
    let mut out = Vec::with_capacity(ready.len() * EVENT_SIZE);
    for (userdata, errno, tag) in &ready {
        let mut event = [0u8; EVENT_SIZE];
        event[0..8].copy_from_slice(&userdata.to_le_bytes());
        event[8..10].copy_from_slice(&(*errno as u16).to_le_bytes());
        event[10] = *tag;
        out.extend_from_slice(&event);
    }
    let errno = write(&mut caller, events, &out);
    if errno != ESUCCESS {
        return Ok(errno);
    }
    Ok(write(
        &mut caller,
        nevents,
        &(ready.len() as u32).to_le_bytes(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our table must match wasmtime-wasi's own preview1 definitions, name for name and type
    /// for type, so that any wasip1 module links against us exactly as against wasmtime-wasi.
    #[test]
    fn preview1_table_matches_wasmtime_wasi() {
        let engine = wasmtime::Engine::default();
        let mut reference: Linker<wasmtime_wasi::p1::WasiP1Ctx> = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut reference, |ctx| ctx).unwrap();
        let store = wasmtime::Store::new(&engine, wasmtime_wasi::WasiCtxBuilder::new().build_p1());
        let expected = signatures(&reference, store);

        let mut ours: Linker<CallState> = Linker::new(&engine);
        add_to_linker(&mut ours).unwrap();
        let actual = signatures(&ours, dummy_store(&engine));
        assert_eq!(actual, expected);
    }

    /// `(name, type)` of every preview1 function in `linker`, sorted.
    fn signatures<T: 'static>(
        linker: &Linker<T>,
        mut store: wasmtime::Store<T>,
    ) -> Vec<(String, String)> {
        let externs: Vec<(String, Extern)> = linker
            .iter(&mut store)
            .filter(|(module, _, _)| *module == MODULE)
            .map(|(_, name, ext)| (name.to_string(), ext))
            .collect();
        let mut out: Vec<(String, String)> = externs
            .into_iter()
            .map(|(name, ext)| match ext {
                Extern::Func(func) => (name, func.ty(&store).to_string()),
                _ => (name, "not a function".to_string()),
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn capture_keeps_the_tail_and_counts_what_it_dropped() {
        let mut capture = Capture::new(4);
        capture.write(b"0123456789");
        capture.write(b"ab");
        assert_eq!(capture.text(), "[8 bytes dropped] 89ab");
    }
}
