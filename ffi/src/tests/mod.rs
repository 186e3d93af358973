//! Tests that call the exported functions as C would.

mod call;
mod sframe;

use std::ffi::CStr;

/// The calling thread's last error, as C sees it.
pub(crate) fn last_error() -> String {
    // SAFETY: sotto_last_error never returns NULL and the string lives until our next call.
    unsafe { CStr::from_ptr(crate::sotto_last_error()) }
        .to_str()
        .expect("UTF-8")
        .to_owned()
}
