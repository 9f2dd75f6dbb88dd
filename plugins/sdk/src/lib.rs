//! Write [workerpool-operator](../../docs/plugins.md) hook plugins in Rust.
//!
//! A hook gets the run Pod that the operator is about to create, with the run's context, and
//! returns allow (optionally with a changed Pod, runner image or allowed image hosts) or deny:
//!
//! ```no_run
//! use workerpool_plugin_sdk::{Input, Output, export_hook};
//!
//! fn hook(input: Input) -> Output {
//!     if input.run().stage == "applying" && input.run().metadata.get("approved").is_none() {
//!         return Output::deny("applies need an approval");
//!     }
//!     Output::allow()
//! }
//!
//! export_hook!(hook);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip1` (crate type `cdylib`). Test the
//! hook natively with [`testing`]: the harness runs it through the same JSON documents as the
//! operator does.
//!
//! Typed settings: implement [`Settings`] and name the type, `export_hook!(hook, MySettings)`;
//! the operator then calls [`Settings::validate`] once when it loads the plugin and refuses
//! settings that fail to parse or validate.

#![deny(unsafe_code)]

mod abi;
pub mod image;
pub mod testing;
mod types;

pub use k8s_openapi;
pub use k8s_openapi::api::core::v1::Pod;
pub use serde_json;
pub use types::{Context, Input, Output, PoolInfo, Run, Settings, WorkerInfo};

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub use abi::wasm;
#[doc(hidden)]
pub use abi::{alloc_buffer, evaluate_bytes, pack, validate_bytes};

/// The ABI version this SDK speaks (the `workerpool_abi_v1` export).
pub const ABI_VERSION: u32 = 1;

/// Exports `hook` with the workerpool plugin ABI: `workerpool_abi_v1`, `alloc`,
/// `validate_settings` and `evaluate`.
///
/// `export_hook!(hook)` takes settings as free-form JSON (`serde_json::Value`);
/// `export_hook!(hook, MySettings)` parses and validates them as `MySettings`.
/// On targets other than wasm32 it exports nothing, so the crate still builds and tests natively.
#[macro_export]
macro_rules! export_hook {
    ($hook:path) => {
        $crate::export_hook!($hook, $crate::serde_json::Value);
    };
    ($hook:path, $settings:ty) => {
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        mod __workerpool_hook_exports {
            #[unsafe(no_mangle)]
            pub extern "C" fn workerpool_abi_v1() {}

            #[unsafe(no_mangle)]
            pub extern "C" fn alloc(len: u32) -> u32 {
                $crate::alloc_buffer(len)
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn validate_settings(ptr: u32, len: u32) -> u64 {
                // SAFETY: the host wrote `len` bytes at `ptr`, a buffer it got from `alloc`.
                let input = unsafe { $crate::wasm::input(ptr, len) };
                $crate::pack($crate::validate_bytes::<super::__WorkerpoolHookSettings>(
                    input,
                ))
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn evaluate(ptr: u32, len: u32) -> u64 {
                // SAFETY: as above.
                let input = unsafe { $crate::wasm::input(ptr, len) };
                $crate::pack($crate::evaluate_bytes::<super::__WorkerpoolHookSettings>(
                    input,
                    super::__hook,
                ))
            }
        }

        #[allow(dead_code)]
        type __WorkerpoolHookSettings = $settings;

        #[allow(dead_code)]
        fn __hook(input: $crate::Input<$settings>) -> $crate::Output {
            $hook(input)
        }
    };
}
