//! The plugin side of the ABI, for plugins written in Rust: implement
//! [`Guest`] and call [`export_plugin!`](crate::export_plugin) once in a
//! `cdylib` crate. The generated callbacks copy the host's buffers, run the
//! safe trait methods inside `catch_unwind` (a panic becomes an error status,
//! never an unwind across the boundary) and hand answers back as buffers the
//! host returns through `free_buf`.

use crate::abi::{SluiceBuf, SluicePluginV1, STATUS_ERROR, STATUS_OK};
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// A plugin's behaviour. Methods for capabilities it does not declare are
/// never called; their defaults return an error.
pub trait Guest: Sized + Send + Sync + 'static {
    /// Builds the plugin from its `[[plugins]] config` (a JSON object).
    fn init(config: &[u8]) -> Result<Self, String>;

    /// `detector`: a JSON array of spans for one value.
    fn detect(&self, _value: &[u8]) -> Result<Vec<u8>, String> {
        Err("not a detector".into())
    }

    /// `policy`: a JSON verdict for one command request.
    fn decide(&self, _request: &[u8]) -> Result<Vec<u8>, String> {
        Err("not a policy hook".into())
    }

    /// `notifier`: one approval event.
    fn notify(&self, _event: &[u8]) -> Result<(), String> {
        Err("not a notifier".into())
    }

    /// `audit_sink`: one audit event.
    fn audit(&self, _event: &[u8]) -> Result<(), String> {
        Err("not an audit sink".into())
    }
}

/// The vtable in a `static` (its `name` pointer is to static data).
#[repr(transparent)]
pub struct StaticVtable(pub SluicePluginV1);

// SAFETY: the vtable is never written after construction; its pointers are to
// a static string and to functions, which may be shared between threads.
unsafe impl Sync for StaticVtable {}

/// Hands `bytes` to the host as a plugin-owned buffer.
///
/// # Safety
/// `out` must be null or valid for a write.
unsafe fn give(out: *mut SluiceBuf, bytes: Vec<u8>) {
    if out.is_null() {
        return;
    }
    let boxed = bytes.into_boxed_slice();
    let len = boxed.len();
    let ptr = Box::into_raw(boxed).cast::<u8>();
    // SAFETY: `out` is valid for a write (caller); the buffer is released by
    // `free_buf` with the same length.
    unsafe { *out = SluiceBuf { ptr, len } };
}

/// Copies a host buffer.
///
/// # Safety
/// `ptr` must be null or point to `len` readable bytes.
unsafe fn input<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: valid for `len` bytes during the call (ABI, caller).
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

/// Runs `f`, mapping an error or a panic to `STATUS_ERROR` with a message.
fn guarded(out: *mut SluiceBuf, f: impl FnOnce() -> Result<Option<Vec<u8>>, String>) -> i32 {
    let (status, bytes) = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(answer)) => (STATUS_OK, answer),
        Ok(Err(message)) => (STATUS_ERROR, Some(message.into_bytes())),
        Err(_) => (STATUS_ERROR, Some(b"the plugin panicked".to_vec())),
    };
    if let Some(bytes) = bytes {
        // SAFETY: `out` is the host's out-pointer for this call (ABI).
        unsafe { give(out, bytes) };
    }
    status
}

/// `init` for `G`.
///
/// # Safety
/// Called by the host per the ABI: valid config buffer and out-pointers.
pub unsafe extern "C" fn init<G: Guest>(
    config: *const u8,
    len: usize,
    handle: *mut *mut c_void,
    error: *mut SluiceBuf,
) -> i32 {
    // SAFETY: the host passes a valid config buffer (ABI).
    let config = unsafe { input(config, len) };
    guarded(error, || {
        let plugin = Box::new(G::init(config)?);
        if !handle.is_null() {
            // SAFETY: `handle` is the host's out-pointer (ABI).
            unsafe { *handle = Box::into_raw(plugin).cast::<c_void>() };
        }
        Ok(None)
    })
}

/// `destroy` for `G`.
///
/// # Safety
/// `handle` came from `init::<G>` and is destroyed once (ABI).
pub unsafe extern "C" fn destroy<G: Guest>(handle: *mut c_void) {
    if !handle.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: made by `Box::into_raw` in `init::<G>`, released once.
            drop(unsafe { Box::from_raw(handle.cast::<G>()) });
        }));
    }
}

/// `free_buf` for buffers made by `give`.
///
/// # Safety
/// `ptr`/`len` came from `give` and are freed once (ABI).
pub unsafe extern "C" fn free_buf(ptr: *mut u8, len: usize) {
    if !ptr.is_null() {
        // SAFETY: `ptr` and `len` describe a `Box<[u8]>` leaked by `give`.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len)) });
    }
}

/// Borrows the plugin behind a handle.
///
/// # Safety
/// `handle` came from `init::<G>` and is not destroyed.
unsafe fn this<'a, G: Guest>(handle: *mut c_void) -> Result<&'a G, String> {
    // SAFETY: per the caller, a live `G` made by `init::<G>` (or null).
    unsafe { handle.cast::<G>().as_ref() }.ok_or_else(|| "no plugin state".to_string())
}

macro_rules! callback {
    ($name:ident, $method:ident, $answer:expr) => {
        /// The ABI callback for the trait method of the same name.
        ///
        /// # Safety
        /// Called by the host per the ABI: a live handle, a valid input
        /// buffer and out-pointer.
        pub unsafe extern "C" fn $name<G: Guest>(
            handle: *mut c_void,
            ptr: *const u8,
            len: usize,
            out: *mut SluiceBuf,
        ) -> i32 {
            guarded(out, || {
                // SAFETY: a live handle and a valid input buffer (ABI).
                let (plugin, bytes) = unsafe { (this::<G>(handle)?, input(ptr, len)) };
                plugin.$method(bytes).map($answer)
            })
        }
    };
}

callback!(detect, detect, Some);
callback!(decide, decide, Some);
callback!(notify, notify, |()| None);
callback!(audit, audit, |()| None);

/// Exports `sluice_plugin_entry` for a [`Guest`] type:
/// `sluice_plugin::export_plugin!(MyPlugin, c"name", sluice_plugin::abi::CAP_NOTIFIER);`
/// The invoking crate must allow `unsafe_code` on the invocation
/// (`#[no_mangle]` is an unsafe attribute).
#[macro_export]
macro_rules! export_plugin {
    ($ty:ty, $name:expr, $caps:expr) => {
        static SLUICE_PLUGIN_VTABLE: $crate::guest::StaticVtable =
            $crate::guest::StaticVtable($crate::abi::SluicePluginV1 {
                abi_version: $crate::abi::ABI_VERSION,
                capabilities: $caps,
                name: ($name as &'static ::std::ffi::CStr).as_ptr(),
                init: Some($crate::guest::init::<$ty>),
                destroy: Some($crate::guest::destroy::<$ty>),
                free_buf: Some($crate::guest::free_buf),
                detect: Some($crate::guest::detect::<$ty>),
                decide: Some($crate::guest::decide::<$ty>),
                notify: Some($crate::guest::notify::<$ty>),
                audit: Some($crate::guest::audit::<$ty>),
            });

        /// The Sluice plugin ABI entry point.
        #[no_mangle]
        pub extern "C" fn sluice_plugin_entry() -> *const $crate::abi::SluicePluginV1 {
            &SLUICE_PLUGIN_VTABLE.0
        }
    };
}
