//! One call into a plugin, following the workerpool plugin ABI (docs/plugins.md):
//! a fresh `Store` with a memory cap and a deadline, instantiation from the module's
//! `InstancePre`, `_initialize` when exported, `alloc(len)` for the input, then
//! `validate_settings(ptr, len)` or `evaluate(ptr, len)` returning `ptr << 32 | len`.
//!
//! Memory ownership: the host writes the input into the buffer the guest returned from `alloc`;
//! the output buffer belongs to the guest. The instance is thrown away after the call, so
//! nothing is ever freed explicitly.

use std::time::{Duration, Instant};

use wasmtime::{Store, Trap, TypedFunc};

use super::host::{CompiledModule, WasmHost};
use super::wasi::{CallState, MemoryCapExceeded, ProcExit, SleptPastDeadline};

/// The export whose presence marks a module as built for version 1 of this ABI.
pub const ABI_MARKER: &str = "workerpool_abi_v1";
/// The ABI version written into every input document as `"abi"`.
pub const ABI_VERSION: u32 = 1;

/// Which ABI entry point to call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    ValidateSettings,
    Evaluate,
}

impl Entry {
    fn export(self) -> &'static str {
        match self {
            Entry::ValidateSettings => "validate_settings",
            Entry::Evaluate => "evaluate",
        }
    }
}

/// The limits of one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallLimits {
    pub timeout: Duration,
    pub memory_limit_bytes: usize,
    pub max_output_bytes: usize,
    pub max_stdio_bytes: usize,
}

/// What a call returned, before it is parsed.
#[derive(Debug)]
pub struct RawOutput {
    pub bytes: Vec<u8>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Why a call failed. The caller prefixes the plugin's name.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(
        "timed out after {} ms (raise timeoutMillis if the plugin needs longer, for a pool plugin up to the operator's limits.maxPluginTimeoutMillis)",
        limit.as_millis()
    )]
    Timeout { limit: Duration },
    #[error(
        "exceeded its memory limit of {} (it asked for {}; raise memoryLimitMib if it needs more, for a pool plugin up to the operator's limits.maxPluginMemoryLimitMib)",
        mib(*limit),
        mib(*desired)
    )]
    MemoryLimit { limit: usize, desired: usize },
    #[error("trapped: {trap}{}", stderr_suffix(stderr))]
    Trap { trap: String, stderr: String },
    #[error("exited with proc_exit({code}){}", stderr_suffix(stderr))]
    Exit { code: i32, stderr: String },
    #[error("returned {len} bytes of output, more than the limit of {limit} bytes")]
    OutputTooLarge { len: usize, limit: usize },
    #[error("returned output at {ptr:#x} (+{len} bytes) outside its {memory}-byte memory")]
    OutputOutOfBounds { ptr: u32, len: u32, memory: usize },
    #[error("alloc({len}) returned {ptr:#x}, which is outside its {memory}-byte memory")]
    BadAlloc { len: usize, ptr: u32, memory: usize },
    #[error("the input document is {len} bytes, more than the ABI's 4 GiB")]
    InputTooLarge { len: usize },
}

impl CallError {
    /// A short, stable word for metrics (`kind` label).
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Timeout { .. } => "timeout",
            CallError::MemoryLimit { .. } => "memory",
            CallError::Trap { .. } | CallError::Exit { .. } => "trap",
            CallError::OutputTooLarge { .. }
            | CallError::OutputOutOfBounds { .. }
            | CallError::BadAlloc { .. }
            | CallError::InputTooLarge { .. } => "abi",
        }
    }
}

fn mib(bytes: usize) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    }
}

fn stderr_suffix(stderr: &str) -> String {
    let stderr = stderr.trim();
    if stderr.is_empty() {
        String::new()
    } else {
        // Rust panics end with a line of advice about RUST_BACKTRACE that helps nobody here.
        let stderr = stderr
            .lines()
            .filter(|line| !line.starts_with("note: run with `RUST_BACKTRACE"))
            .collect::<Vec<_>>()
            .join(" | ");
        format!(" (stderr: {stderr})")
    }
}

/// Calls `entry` with `input` in a fresh instance of `module`.
pub fn call(
    host: &WasmHost,
    module: &CompiledModule,
    entry: Entry,
    input: &[u8],
    limits: &CallLimits,
) -> Result<RawOutput, CallError> {
    let started = Instant::now();
    let deadline = started + limits.timeout;
    let mut store = Store::new(
        host.engine(),
        CallState::new(limits.memory_limit_bytes, limits.max_stdio_bytes, deadline),
    );
    store.limiter(|state| &mut state.limiter);
    store.set_epoch_deadline(host.deadline_ticks(limits.timeout));
    store.epoch_deadline_trap();

    let result = run(&mut store, module, entry, input, limits);
    let state = store.into_data();
    let stdout = state.stdout.text();
    let stderr = state.stderr.text();
    match result {
        Ok(bytes) => Ok(RawOutput {
            bytes,
            stdout,
            stderr,
            elapsed: started.elapsed(),
        }),
        Err(Failure::Abi(error)) => Err(error),
        Err(Failure::Wasm(error)) => Err(classify(error, limits, stderr)),
    }
}

enum Failure {
    Abi(CallError),
    Wasm(wasmtime::Error),
}

impl From<wasmtime::Error> for Failure {
    fn from(error: wasmtime::Error) -> Self {
        Failure::Wasm(error)
    }
}

fn run(
    store: &mut Store<CallState>,
    module: &CompiledModule,
    entry: Entry,
    input: &[u8],
    limits: &CallLimits,
) -> Result<Vec<u8>, Failure> {
    let instance = module.instance_pre.instantiate(&mut *store)?;
    if module.has_initialize {
        instance
            .get_typed_func::<(), ()>(&mut *store, "_initialize")?
            .call(&mut *store, ())?;
    }
    let memory = instance
        .get_memory(&mut *store, "memory")
        .ok_or_else(|| wasmtime::Error::msg("the module has no `memory` export"))?;
    let len = u32::try_from(input.len())
        .map_err(|_| Failure::Abi(CallError::InputTooLarge { len: input.len() }))?;
    let alloc: TypedFunc<i32, i32> = instance.get_typed_func(&mut *store, "alloc")?;
    let ptr = alloc.call(&mut *store, len as i32)? as u32;
    memory
        .write(&mut *store, ptr as usize, input)
        .map_err(|_| {
            Failure::Abi(CallError::BadAlloc {
                len: input.len(),
                ptr,
                memory: memory.data_size(&*store),
            })
        })?;
    let func: TypedFunc<(i32, i32), i64> = instance.get_typed_func(&mut *store, entry.export())?;
    let packed = func.call(&mut *store, (ptr as i32, len as i32))? as u64;
    let (out_ptr, out_len) = ((packed >> 32) as u32, packed as u32);
    if out_len as usize > limits.max_output_bytes {
        return Err(Failure::Abi(CallError::OutputTooLarge {
            len: out_len as usize,
            limit: limits.max_output_bytes,
        }));
    }
    let data = memory.data(&*store);
    let start = out_ptr as usize;
    data.get(start..start + out_len as usize)
        .map(<[u8]>::to_vec)
        .ok_or(Failure::Abi(CallError::OutputOutOfBounds {
            ptr: out_ptr,
            len: out_len,
            memory: data.len(),
        }))
}

fn classify(error: wasmtime::Error, limits: &CallLimits, stderr: String) -> CallError {
    if let Some(cap) = error.downcast_ref::<MemoryCapExceeded>() {
        return CallError::MemoryLimit {
            limit: cap.limit,
            desired: cap.desired,
        };
    }
    if error.downcast_ref::<SleptPastDeadline>().is_some()
        || error.downcast_ref::<Trap>() == Some(&Trap::Interrupt)
    {
        return CallError::Timeout {
            limit: limits.timeout,
        };
    }
    if let Some(ProcExit(code)) = error.downcast_ref::<ProcExit>() {
        return CallError::Exit {
            code: *code,
            stderr,
        };
    }
    let trap = match error.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => error.to_string(),
    };
    let trap = trap.trim_start_matches("wasm trap: ").to_string();
    CallError::Trap { trap, stderr }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::hooks::host::HostLimits;

    fn limits() -> CallLimits {
        CallLimits {
            timeout: Duration::from_millis(100),
            memory_limit_bytes: 64 << 20,
            max_output_bytes: 1 << 20,
            max_stdio_bytes: 1 << 10,
        }
    }

    /// A module whose `evaluate` body is `body`; `alloc` hands out offset 1024.
    fn module(host: &Arc<crate::hooks::host::WasmHost>, body: &str) -> Arc<CompiledModule> {
        let wat = format!(
            r#"(module
                (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
                (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
                (memory (export "memory") 1)
                (data (i32.const 16) "{{\"allowed\":true}}")
                (data (i32.const 64) "boom\n")
                (func (export "workerpool_abi_v1"))
                (func (export "alloc") (param i32) (result i32) i32.const 1024)
                (func (export "validate_settings") (param i32 i32) (result i64) i64.const 0)
                (func (export "evaluate") (param $ptr i32) (param $len i32) (result i64) {body}))"#
        );
        host.compile(wat.as_bytes()).expect("compiles")
    }

    fn evaluate(body: &str) -> Result<RawOutput, CallError> {
        let host = crate::hooks::host::WasmHost::new(HostLimits::default()).unwrap();
        let module = module(&host, body);
        call(&host, &module, Entry::Evaluate, b"{}", &limits())
    }

    #[test]
    fn output_is_read_from_the_packed_pointer() {
        let out = evaluate("i64.const 0x0000001000000010").unwrap();
        assert_eq!(out.bytes, b"{\"allowed\":true}");
    }

    #[test]
    fn input_is_written_where_alloc_said() {
        // Return the input itself: ptr=1024, len=$len.
        let out =
            evaluate("i64.const 0x40000000000 local.get $len i64.extend_i32_u i64.or").unwrap();
        assert_eq!(out.bytes, b"{}");
    }

    #[test]
    fn an_infinite_loop_times_out() {
        let err = evaluate("(loop br 0) i64.const 0").unwrap_err();
        assert_eq!(
            err.to_string(),
            "timed out after 100 ms (raise timeoutMillis if the plugin needs longer, for a pool plugin up to the operator's limits.maxPluginTimeoutMillis)"
        );
    }

    #[test]
    fn a_long_sleep_times_out_without_pinning_the_thread() {
        // One relative clock subscription of an hour at offset 256.
        let body = "(i64.store (i32.const 280) (i64.const 3600000000000))
                    (drop (call $poll (i32.const 256) (i32.const 512) (i32.const 1) (i32.const 600)))
                    i64.const 0";
        let started = Instant::now();
        let err = evaluate(body).unwrap_err();
        assert!(matches!(err, CallError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn growing_past_the_cap_is_reported_as_memory() {
        let err = evaluate("(drop (memory.grow (i32.const 2000))) i64.const 0").unwrap_err();
        assert_eq!(
            err.to_string(),
            "exceeded its memory limit of 64 MiB (it asked for 125.1 MiB; raise memoryLimitMib \
             if it needs more, for a pool plugin up to the operator's limits.maxPluginMemoryLimitMib)"
        );
    }

    #[test]
    fn a_trap_reports_stderr() {
        let body = "(i32.store (i32.const 200) (i32.const 64)) (i32.store (i32.const 204) (i32.const 5))
                    (drop (call $fd_write (i32.const 2) (i32.const 200) (i32.const 1) (i32.const 208)))
                    unreachable";
        let err = evaluate(body).unwrap_err();
        assert_eq!(
            err.to_string(),
            "trapped: wasm `unreachable` instruction executed (stderr: boom)"
        );
    }

    #[test]
    fn huge_and_out_of_bounds_outputs_are_refused() {
        let err = evaluate("i64.const 0x0000001000200000").unwrap_err();
        assert_eq!(
            err.to_string(),
            "returned 2097152 bytes of output, more than the limit of 1048576 bytes"
        );
        let err = evaluate("i64.const 0x0000FFFF00000010").unwrap_err();
        assert_eq!(
            err.to_string(),
            "returned output at 0xffff (+16 bytes) outside its 65536-byte memory"
        );
    }
}
