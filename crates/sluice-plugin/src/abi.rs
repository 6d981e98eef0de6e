//! The plugin ABI, version 1: what a shared library exports and what the host
//! calls. Only C types cross the boundary: integers, pointers to bytes with a
//! length, and function pointers. Text is UTF-8 (JSON for structured data).
//!
//! The same definitions as a C header are in `docs/plugins.md`.

use std::ffi::{c_char, c_void};

/// The ABI version this host speaks. A plugin reporting another is refused.
pub const ABI_VERSION: u32 = 1;

/// The symbol every plugin exports: `const SluicePluginV1 *sluice_plugin_entry(void)`.
/// The function returns a pointer to a vtable that lives as long as the library.
pub const ENTRY_SYMBOL: &[u8] = b"sluice_plugin_entry\0";

/// A call succeeded.
pub const STATUS_OK: i32 = 0;
/// A call failed; an output buffer, if set, holds a UTF-8 message.
pub const STATUS_ERROR: i32 = 1;

/// Capability flags (`SluicePluginV1::capabilities`).
pub const CAP_NOTIFIER: u32 = 1;
pub const CAP_DETECTOR: u32 = 1 << 1;
pub const CAP_POLICY: u32 = 1 << 2;
pub const CAP_AUDIT_SINK: u32 = 1 << 3;

/// A buffer the plugin allocated and hands to the host; the host gives it
/// back with `free_buf` once read. `ptr` null means empty.
#[repr(C)]
#[derive(Debug)]
pub struct SluiceBuf {
    pub ptr: *mut u8,
    pub len: usize,
}

impl SluiceBuf {
    pub fn empty() -> Self {
        SluiceBuf {
            ptr: std::ptr::null_mut(),
            len: 0,
        }
    }
}

/// `init(config, config_len, &handle, &error) -> status`: `config` is a JSON
/// object (the `[[plugins]] config` table). On `STATUS_OK` `*handle` is the
/// plugin's state (may be null), passed to every other call.
pub type InitFn = unsafe extern "C" fn(
    config: *const u8,
    config_len: usize,
    handle: *mut *mut c_void,
    error: *mut SluiceBuf,
) -> i32;

/// Releases what `init` made. Called at most once per handle.
pub type DestroyFn = unsafe extern "C" fn(handle: *mut c_void);

/// Releases a buffer the plugin returned in a `SluiceBuf`.
pub type FreeBufFn = unsafe extern "C" fn(ptr: *mut u8, len: usize);

/// A call with bytes in and, optionally, bytes out:
/// `f(handle, input, input_len, &output) -> status`.
pub type CallFn = unsafe extern "C" fn(
    handle: *mut c_void,
    input: *const u8,
    input_len: usize,
    output: *mut SluiceBuf,
) -> i32;

/// The vtable, version 1. Field order is part of the ABI; later versions only
/// append fields, and `abi_version` stays first.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SluicePluginV1 {
    /// Must equal [`ABI_VERSION`].
    pub abi_version: u32,
    /// `CAP_*` flags: which callbacks below are set.
    pub capabilities: u32,
    /// The plugin's name, NUL-terminated, static (for logs and audit counts).
    pub name: *const c_char,
    pub init: Option<InitFn>,
    pub destroy: Option<DestroyFn>,
    pub free_buf: Option<FreeBufFn>,
    /// Detector: input is one value (raw bytes, usually UTF-8 text); output is
    /// a JSON array of `{"start": N, "end": N, "label": "name"}` byte spans
    /// to mask (`[]` or an empty buffer when nothing is found).
    pub detect: Option<CallFn>,
    /// Policy: input is a JSON command request; output is a JSON verdict,
    /// `{"action": "allow"}` or `{"action": "deny", "message": "…"}`.
    pub decide: Option<CallFn>,
    /// Notifier: input is a JSON approval event; output is ignored.
    pub notify: Option<CallFn>,
    /// Audit sink: input is a JSON audit event; output is ignored.
    pub audit: Option<CallFn>,
}

/// The exported entry point's type.
pub type EntryFn = unsafe extern "C" fn() -> *const SluicePluginV1;
