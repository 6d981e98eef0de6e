//! A detector and policy plugin in Rust (no dependencies: the ABI is plain C)
//! whose code panics on input containing "kaboom". A panic must not unwind
//! into the gateway, so every callback runs inside `catch_unwind` and turns a
//! panic into an error status: the gateway then fails closed.

use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

#[repr(C)]
pub struct SluiceBuf {
    ptr: *mut u8,
    len: usize,
}

type CallFn = unsafe extern "C" fn(*mut c_void, *const u8, usize, *mut SluiceBuf) -> i32;

#[repr(C)]
pub struct SluicePluginV1 {
    abi_version: u32,
    capabilities: u32,
    name: *const c_char,
    init: Option<unsafe extern "C" fn(*const u8, usize, *mut *mut c_void, *mut SluiceBuf) -> i32>,
    destroy: Option<unsafe extern "C" fn(*mut c_void)>,
    free_buf: Option<unsafe extern "C" fn(*mut u8, usize)>,
    detect: Option<CallFn>,
    decide: Option<CallFn>,
    notify: Option<CallFn>,
    audit: Option<CallFn>,
}

// SAFETY: the vtable is immutable and its pointers are to static data and functions.
unsafe impl Sync for SluicePluginV1 {}

const OK: i32 = 0;
const ERROR: i32 = 1;

/// Hands `bytes` to the host; it comes back through `free_buf`.
unsafe fn give(out: *mut SluiceBuf, bytes: Vec<u8>) {
    let boxed = bytes.into_boxed_slice();
    let len = boxed.len();
    let ptr = Box::into_raw(boxed) as *mut u8;
    unsafe { *out = SluiceBuf { ptr, len } };
}

unsafe extern "C" fn free_buf(ptr: *mut u8, len: usize) {
    drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len)) });
}

unsafe extern "C" fn init(_: *const u8, _: usize, handle: *mut *mut c_void, _: *mut SluiceBuf) -> i32 {
    unsafe { *handle = std::ptr::null_mut() };
    OK
}

unsafe extern "C" fn destroy(_: *mut c_void) {}

/// Runs `f` on the input; a panic becomes an error status with a message.
unsafe fn guarded(input: *const u8, len: usize, out: *mut SluiceBuf, f: fn(&[u8]) -> Vec<u8>) -> i32 {
    let input = unsafe { std::slice::from_raw_parts(input, len) };
    match catch_unwind(AssertUnwindSafe(|| f(input))) {
        Ok(answer) => {
            unsafe { give(out, answer) };
            OK
        }
        Err(_) => {
            unsafe { give(out, b"the plugin panicked".to_vec()) };
            ERROR
        }
    }
}

fn check(input: &[u8]) {
    if input.windows(6).any(|w| w == b"kaboom") {
        panic!("kaboom in the input");
    }
}

unsafe extern "C" fn detect(_: *mut c_void, input: *const u8, len: usize, out: *mut SluiceBuf) -> i32 {
    unsafe {
        guarded(input, len, out, |i| {
            check(i);
            b"[]".to_vec()
        })
    }
}

unsafe extern "C" fn decide(_: *mut c_void, input: *const u8, len: usize, out: *mut SluiceBuf) -> i32 {
    unsafe {
        guarded(input, len, out, |i| {
            check(i);
            br#"{"action":"allow"}"#.to_vec()
        })
    }
}

static VTABLE: SluicePluginV1 = SluicePluginV1 {
    abi_version: 1,
    capabilities: (1 << 1) | (1 << 2),
    name: c"panicky".as_ptr(),
    init: Some(init),
    destroy: Some(destroy),
    free_buf: Some(free_buf),
    detect: Some(detect),
    decide: Some(decide),
    notify: None,
    audit: None,
};

#[no_mangle]
pub extern "C" fn sluice_plugin_entry() -> *const SluicePluginV1 {
    &VTABLE
}
