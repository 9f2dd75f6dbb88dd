//! The ABI shim: the only place in the SDK with `unsafe`. Everything else works on bytes.
//!
//! Memory ownership: `alloc(len)` leaks a buffer the host writes the input into; the output is
//! leaked too and returned as `ptr << 32 | len`. The operator throws the whole instance away
//! after one call, so nothing is freed.

use crate::types::{Input, Output, Settings, ValidateInput, ValidateOutput};

/// A buffer of `len` bytes that lives until the instance ends; returns its address.
#[doc(hidden)]
pub fn alloc_buffer(len: u32) -> u32 {
    let buffer: &'static mut [u8] = Vec::leak(vec![0u8; len as usize]);
    address(buffer.as_ptr())
}

/// Leaks `bytes` and packs their address and length as the ABI's `i64` result.
#[doc(hidden)]
pub fn pack(bytes: Vec<u8>) -> u64 {
    let bytes: &'static [u8] = Vec::leak(bytes);
    (u64::from(address(bytes.as_ptr())) << 32) | bytes.len() as u64
}

#[cfg(target_arch = "wasm32")]
fn address(ptr: *const u8) -> u32 {
    ptr as usize as u32
}

// Natively the harness never passes pointers; keep the shape so `pack` still builds.
#[cfg(not(target_arch = "wasm32"))]
fn address(ptr: *const u8) -> u32 {
    ptr as usize as u32
}

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
#[doc(hidden)]
pub mod wasm {
    /// The input the host wrote into a buffer from `alloc`.
    ///
    /// # Safety
    /// `ptr` and `len` must describe a buffer returned by `alloc(len)` that the host filled.
    pub unsafe fn input(ptr: u32, len: u32) -> &'static [u8] {
        // SAFETY: guaranteed by the caller (the host follows the ABI).
        unsafe { core::slice::from_raw_parts(ptr as usize as *const u8, len as usize) }
    }
}

/// `validate_settings`: parses the settings as `S` and calls [`Settings::validate`].
#[doc(hidden)]
pub fn validate_bytes<S: Settings>(input: &[u8]) -> Vec<u8> {
    let answer = match serde_json::from_slice::<ValidateInput<S>>(input) {
        Err(e) => ValidateOutput::invalid(format!("settings: {e}")),
        Ok(input) => match input.settings.validate() {
            Ok(()) => ValidateOutput::valid(),
            Err(message) => ValidateOutput::invalid(message),
        },
    };
    serde_json::to_vec(&answer).unwrap_or_default()
}

/// `evaluate`: parses the input, runs the hook and serializes its output.
#[doc(hidden)]
pub fn evaluate_bytes<S: Settings>(input: &[u8], hook: fn(Input<S>) -> Output) -> Vec<u8> {
    let output = match serde_json::from_slice::<Input<S>>(input) {
        Ok(input) => hook(input),
        Err(e) => Output::deny(format!("the plugin could not read its input: {e}")),
    };
    serde_json::to_vec(&output).unwrap_or_default()
}
