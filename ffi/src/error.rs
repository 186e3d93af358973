//! Status codes, the per-thread last error, and the guard every entry point runs in.

use std::cell::RefCell;
use std::ffi::{CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// What a sotto function returns: `SOTTO_OK` or why it failed (`sotto_last_error()` says
/// more).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum sotto_status {
    /// Success.
    SOTTO_OK = 0,
    /// A required pointer is NULL.
    SOTTO_ERR_NULL = 1,
    /// A bad argument: length, suite, key size, JSON, config value.
    SOTTO_ERR_INVALID = 2,
    /// The output buffer is too small; `*out_len` is set to the size needed.
    SOTTO_ERR_BUFFER_TOO_SMALL = 3,
    /// A frame is malformed, failed authentication, is a replay (or too old for the replay
    /// window), or names a KID without a key.
    SOTTO_ERR_AUTH = 4,
    /// The object is in the wrong state (call already ended, counter exhausted, ...).
    SOTTO_ERR_STATE = 5,
    /// Files, devices, network.
    SOTTO_ERR_IO = 6,
    /// A Rust panic was caught at the boundary; the object it happened on should be freed.
    SOTTO_ERR_PANIC = 7,
    /// A bug or a failure of the platform (for example a thread that cannot start).
    SOTTO_ERR_INTERNAL = 8,
}

pub(crate) use sotto_status::*;

/// A failure on its way to the caller.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) status: sotto_status,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(status: sotto_status, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn null(what: &str) -> Self {
        Failure::new(SOTTO_ERR_NULL, format!("{what} is NULL"))
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Failure::new(SOTTO_ERR_INVALID, message)
    }
}

pub(crate) type Result<T> = std::result::Result<T, Failure>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // A message with a NUL in it is cut there rather than lost.
    let text = message.split('\0').next().unwrap_or_default();
    let c = CString::new(text).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown".into());
    format!("internal panic (caught at the sotto boundary): {what}")
}

/// Runs one entry point: catches panics, sets the calling thread's last error, and turns the
/// outcome into a status.
pub(crate) fn guard(f: impl FnOnce() -> Result<()>) -> sotto_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            set_last_error("");
            SOTTO_OK
        }
        Ok(Err(failure)) => {
            set_last_error(&failure.message);
            failure.status
        }
        Err(payload) => {
            set_last_error(&panic_message(payload.as_ref()));
            SOTTO_ERR_PANIC
        }
    }
}

/// Like [`guard`] for functions that return a value rather than a status: `fallback` if `f`
/// panics.
pub(crate) fn guard_value<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

/// The message of the last failed sotto call on this thread, NUL-terminated UTF-8; "" after
/// a success. Never NULL.
///
/// Thread-safety: each thread has its own message. Ownership: the string belongs to the
/// library and stays valid until this thread's next sotto call; copy it to keep it.
#[unsafe(no_mangle)]
pub extern "C" fn sotto_last_error() -> *const c_char {
    static EMPTY: &[u8] = b"\0";
    guard_value(EMPTY.as_ptr().cast(), || {
        LAST_ERROR.with(|e| e.borrow().as_ptr())
    })
}

/// The library's version, e.g. "0.1.0".
///
/// Thread-safety: any thread. Ownership: a static string; never free it.
#[unsafe(no_mangle)]
pub extern "C" fn sotto_version() -> *const c_char {
    static VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    VERSION.as_ptr().cast()
}

/// A C byte buffer as a slice. NULL is allowed only with length 0 when `null_ok`.
///
/// # Safety
/// `ptr` must be NULL or point at `len` readable bytes that outlive the returned slice.
pub(crate) unsafe fn bytes<'a>(
    ptr: *const u8,
    len: usize,
    what: &str,
    null_ok: bool,
) -> Result<&'a [u8]> {
    if ptr.is_null() {
        return if len == 0 && null_ok {
            Ok(&[])
        } else {
            Err(Failure::null(what))
        };
    }
    if len > isize::MAX as usize {
        return Err(Failure::invalid(format!(
            "{what}: length {len} is too large"
        )));
    }
    // SAFETY: the caller promises `len` readable bytes at `ptr`, non-NULL as checked.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// An output buffer as a slice: NULL is allowed with capacity 0 (to ask for the size).
///
/// # Safety
/// `ptr` must be NULL or point at `cap` writable bytes, not aliased, that outlive the slice.
pub(crate) unsafe fn out_bytes<'a>(ptr: *mut u8, cap: usize) -> Result<&'a mut [u8]> {
    if ptr.is_null() {
        return if cap == 0 {
            Ok(&mut [])
        } else {
            Err(Failure::null("out"))
        };
    }
    if cap > isize::MAX as usize {
        return Err(Failure::invalid(format!("out_cap {cap} is too large")));
    }
    // SAFETY: as promised by the caller, and non-NULL as checked.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, cap) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last_error() -> String {
        // SAFETY: sotto_last_error never returns NULL and the string lives until our next call.
        unsafe { CStr::from_ptr(sotto_last_error()) }
            .to_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn a_panic_inside_becomes_a_status_and_a_message() {
        let status = guard(|| panic!("boom inside"));
        assert_eq!(status, SOTTO_ERR_PANIC);
        assert!(last_error().contains("boom inside"), "{}", last_error());
        // The next success clears it.
        assert_eq!(guard(|| Ok(())), SOTTO_OK);
        assert_eq!(last_error(), "");
        assert_eq!(guard_value(7u8, || panic!("again")), 7);
    }

    #[test]
    fn errors_are_per_thread_and_nul_safe() {
        assert_eq!(
            guard(|| Err(Failure::invalid("bad\0tail"))),
            SOTTO_ERR_INVALID
        );
        assert_eq!(last_error(), "bad");
        let other = std::thread::spawn(last_error).join().unwrap();
        assert_eq!(other, "");
    }

    #[test]
    fn version_is_the_crate_version() {
        // SAFETY: a static NUL-terminated string.
        let v = unsafe { CStr::from_ptr(sotto_version()) };
        assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }
}
