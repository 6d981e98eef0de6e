//! Loading a plugin library and calling through its vtable. Every call is
//! wrapped: a panic on the host side of the boundary is caught, a bad status
//! or a malformed answer is an error, so each adapter can fail closed.

use crate::abi::{self, SluiceBuf, SluicePluginV1};
use sluice_core::config::{PluginConfig, PluginKind};
use std::ffi::{c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Why a plugin could not be loaded; every message names the library.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("plugin {path}: cannot load the library: {reason}")]
    Unloadable { path: PathBuf, reason: String },
    #[error("plugin {path}: no `sluice_plugin_entry` symbol (is it a Sluice plugin?): {reason}")]
    MissingSymbol { path: PathBuf, reason: String },
    #[error("plugin {path}: ABI version {found}, this gateway speaks version {expected}; rebuild the plugin against ABI version {expected}")]
    AbiVersion {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("plugin {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("plugin {path}: its init refused the config: {reason}")]
    Init { path: PathBuf, reason: String },
}

/// Why one call into a plugin failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin {plugin}: {reason}")]
pub struct CallError {
    pub plugin: String,
    pub reason: String,
}

/// An initialised plugin: its vtable and its handle. The library stays loaded
/// for the rest of the process (it is never unloaded), so the vtable's
/// function pointers stay valid; `destroy` runs when this is dropped.
pub struct Plugin {
    name: String,
    path: PathBuf,
    kind: PluginKind,
    vtable: Calls,
    handle: Handle,
}

/// The vtable's function pointers (its `name` pointer is read once at load).
struct Calls {
    destroy: Option<abi::DestroyFn>,
    free_buf: Option<abi::FreeBufFn>,
    detect: Option<abi::CallFn>,
    decide: Option<abi::CallFn>,
    notify: Option<abi::CallFn>,
    audit: Option<abi::CallFn>,
}

/// The plugin's state pointer.
struct Handle(*mut c_void);

// SAFETY: the ABI requires plugins to accept calls on any thread and
// concurrently (docs/plugins.md, "Threads"); the host never dereferences the
// pointer itself, it only passes it back to the plugin.
unsafe impl Send for Handle {}
// SAFETY: as above: shared use only hands the pointer back to the plugin,
// whose callbacks must be thread-safe by contract.
unsafe impl Sync for Handle {}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

fn capability(kind: PluginKind) -> (u32, &'static str) {
    match kind {
        PluginKind::Notifier => (abi::CAP_NOTIFIER, "notifier"),
        PluginKind::Detector => (abi::CAP_DETECTOR, "detector"),
        PluginKind::Policy => (abi::CAP_POLICY, "policy"),
        PluginKind::AuditSink => (abi::CAP_AUDIT_SINK, "audit_sink"),
    }
}

/// Opens the library and keeps it loaded for the life of the process.
fn open(path: &Path) -> Result<&'static libloading::Library, LoadError> {
    // SAFETY: loading a library runs its initialisers; the operator named this
    // file in the config as a Sluice plugin, which is the trust decision. The
    // library is leaked on purpose: it is never unloaded, so no function
    // pointer taken from it can dangle.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| LoadError::Unloadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(Box::leak(Box::new(lib)))
}

impl Plugin {
    /// Loads `config.path`, checks its ABI version and capabilities, and runs
    /// its `init` with `config.config` as JSON.
    pub fn load(config: &PluginConfig) -> Result<Plugin, LoadError> {
        let path = config.path.clone();
        let invalid = |reason: &str| LoadError::Invalid {
            path: path.clone(),
            reason: reason.to_string(),
        };
        let lib = open(&path)?;
        // SAFETY: the symbol's type is fixed by the ABI (`EntryFn`); a library
        // exporting `sluice_plugin_entry` with another type breaks the ABI
        // contract it claims by exporting that name.
        let entry: libloading::Symbol<'static, abi::EntryFn> =
            unsafe { lib.get(abi::ENTRY_SYMBOL) }.map_err(|e| LoadError::MissingSymbol {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let entry: abi::EntryFn = *entry;
        // SAFETY: `entry` takes no arguments and returns a pointer (ABI); a
        // panic cannot unwind out of a C function (plugins must not unwind).
        let table = unsafe { entry() };
        if table.is_null() {
            return Err(invalid("sluice_plugin_entry returned no vtable"));
        }
        // SAFETY: every ABI version starts with a `u32` version field, so the
        // first four bytes are readable whatever the version; nothing else is
        // read before the version matches.
        let found = unsafe { std::ptr::read(table.cast::<u32>()) };
        if found != abi::ABI_VERSION {
            return Err(LoadError::AbiVersion {
                path,
                found,
                expected: abi::ABI_VERSION,
            });
        }
        // SAFETY: the version matches, so `table` points to a version-1 vtable
        // that lives as long as the (never unloaded) library.
        let vtable: SluicePluginV1 = unsafe { std::ptr::read(table) };
        let name = if vtable.name.is_null() {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "plugin".into())
        } else {
            // SAFETY: the ABI says `name` is a static NUL-terminated string.
            unsafe { CStr::from_ptr(vtable.name) }
                .to_string_lossy()
                .into_owned()
        };
        let (cap, kind_name) = capability(config.kind);
        if vtable.capabilities & cap == 0 {
            return Err(invalid(&format!(
                "configured as kind = \"{kind_name}\" but the plugin does not declare that capability"
            )));
        }
        let callback = match config.kind {
            PluginKind::Notifier => vtable.notify,
            PluginKind::Detector => vtable.detect,
            PluginKind::Policy => vtable.decide,
            PluginKind::AuditSink => vtable.audit,
        };
        if callback.is_none() {
            return Err(invalid(&format!(
                "declares the {kind_name} capability but its callback is null"
            )));
        }
        let (Some(init), Some(_), Some(_)) = (vtable.init, vtable.destroy, vtable.free_buf) else {
            return Err(invalid("init, destroy and free_buf must all be set"));
        };
        let json = serde_json::to_vec(&config.config).map_err(|e| invalid(&e.to_string()))?;
        let mut handle: *mut c_void = std::ptr::null_mut();
        let mut error = SluiceBuf::empty();
        // SAFETY: `json` outlives the call; `handle` and `error` are valid
        // out-pointers for the duration of the call.
        let status = unsafe { init(json.as_ptr(), json.len(), &mut handle, &mut error) };
        let message = take_buf(vtable.free_buf, error);
        if status != abi::STATUS_OK {
            let reason = message
                .map(|m| String::from_utf8_lossy(&m).into_owned())
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| format!("status {status}"));
            return Err(LoadError::Init { path, reason });
        }
        Ok(Plugin {
            name,
            path,
            kind: config.kind,
            vtable: Calls {
                destroy: vtable.destroy,
                free_buf: vtable.free_buf,
                detect: vtable.detect,
                decide: vtable.decide,
                notify: vtable.notify,
                audit: vtable.audit,
            },
            handle: Handle(handle),
        })
    }

    /// The name the plugin reports.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn kind(&self) -> PluginKind {
        self.kind
    }

    /// Calls this plugin's callback for its kind with `input`; returns its
    /// output. A non-OK status, a panic on the host side or a missing
    /// callback is an error.
    pub fn call(&self, input: &[u8]) -> Result<Vec<u8>, CallError> {
        let callback = match self.kind {
            PluginKind::Notifier => self.vtable.notify,
            PluginKind::Detector => self.vtable.detect,
            PluginKind::Policy => self.vtable.decide,
            PluginKind::AuditSink => self.vtable.audit,
        };
        let fail = |reason: String| CallError {
            plugin: self.name.clone(),
            reason,
        };
        let Some(f) = callback else {
            return Err(fail("no callback".into()));
        };
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut out = SluiceBuf::empty();
            // SAFETY: `input` outlives the call and `out` is a valid
            // out-pointer; the handle came from this plugin's `init` and has
            // not been destroyed (`destroy` runs only in `Drop`).
            let status = unsafe { f(self.handle.0, input.as_ptr(), input.len(), &mut out) };
            (status, take_buf(self.vtable.free_buf, out))
        }));
        match result {
            Ok((abi::STATUS_OK, out)) => Ok(out.unwrap_or_default()),
            Ok((status, out)) => {
                let detail = out
                    .map(|m| String::from_utf8_lossy(&m).into_owned())
                    .filter(|m| !m.is_empty())
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                Err(fail(format!("returned status {status}{detail}")))
            }
            Err(_) => Err(fail("panicked during the call".into())),
        }
    }
}

/// Copies a plugin-allocated buffer and gives it back to the plugin.
fn take_buf(free: Option<abi::FreeBufFn>, buf: SluiceBuf) -> Option<Vec<u8>> {
    if buf.ptr.is_null() {
        return None;
    }
    // SAFETY: a non-null `ptr` points to `len` initialised bytes the plugin
    // allocated for the host (ABI), valid until handed to `free_buf`.
    let bytes = unsafe { std::slice::from_raw_parts(buf.ptr, buf.len) }.to_vec();
    if let Some(free) = free {
        // SAFETY: the buffer came from this plugin and is freed exactly once.
        unsafe { free(buf.ptr, buf.len) };
    }
    Some(bytes)
}

impl Drop for Plugin {
    fn drop(&mut self) {
        if let Some(destroy) = self.vtable.destroy {
            // SAFETY: the handle came from `init` and is destroyed once, here;
            // no call can be in flight since `self` is being dropped.
            let _ = catch_unwind(AssertUnwindSafe(|| unsafe { destroy(self.handle.0) }));
        }
    }
}
