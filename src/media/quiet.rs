//! Keeps the sound libraries' own diagnostics off stderr.
//!
//! Enumerating devices makes ALSA try every PCM its configuration names (cards that are absent,
//! OSS, PulseAudio, JACK), and each failed attempt prints to stderr from inside libasound or
//! libjack: dozens of lines on a machine without a sound card, none of them about the device
//! the user asked for. Both libraries take a process-wide handler; these route the messages to
//! `tracing` at debug level (target `alsa` / `jack`) instead. Failures the caller must see still
//! come back as errors from cpal.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::Once;

static INSTALL: Once = Once::new();

/// Installs the handlers once per process; cheap to call before every device operation.
pub(crate) fn silence_sound_libraries() {
    INSTALL.call_once(|| {
        install_alsa_handler();
        install_jack_handlers();
    });
}

/// ALSA's handler type is variadic (`const char *fmt, ...`). The handler below reads only the
/// five fixed arguments and never touches the variadic ones, which is sound on the System V
/// and AAPCS64 ABIs Linux uses: fixed arguments are passed the same way in both cases.
type AlsaHandler = unsafe extern "C" fn(*const c_char, c_int, *const c_char, c_int, *const c_char);

unsafe extern "C" {
    // libasound is linked already (cpal's ALSA host through alsa-sys).
    fn snd_lib_error_set_handler(handler: Option<AlsaHandler>) -> c_int;
}

/// Text of a C string from a library, or "" for NULL.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that outlives the call.
unsafe fn text<'a>(p: *const c_char) -> std::borrow::Cow<'a, str> {
    if p.is_null() {
        return "".into();
    }
    // SAFETY: the caller guarantees a NUL-terminated string.
    unsafe { CStr::from_ptr(p) }.to_string_lossy()
}

unsafe extern "C" fn alsa_message(
    file: *const c_char,
    line: c_int,
    function: *const c_char,
    err: c_int,
    fmt: *const c_char,
) {
    // SAFETY: libasound passes string literals (file, function, format) or NULL.
    let (file, function, fmt) = unsafe { (text(file), text(function), text(fmt)) };
    // The format's arguments are not read (see `AlsaHandler`): the template is enough to debug.
    tracing::debug!(target: "alsa", "{file}:{line} {function}: {fmt} (err {err})");
}

fn install_alsa_handler() {
    // SAFETY: sets a process-wide function pointer; `alsa_message` is valid for the whole
    // program and only reads its fixed arguments.
    let rc = unsafe { snd_lib_error_set_handler(Some(alsa_message)) };
    if rc != 0 {
        tracing::debug!(rc, "could not install the ALSA error handler");
    }
}

unsafe extern "C" fn jack_message(msg: *const c_char) {
    // SAFETY: libjack passes a NUL-terminated message.
    let msg = unsafe { text(msg) };
    tracing::debug!(target: "jack", "{}", msg.trim_end());
}

/// ALSA's JACK plugin loads libjack on demand, and libjack prints through its own handlers.
/// Loading the library first (the plugin then shares this copy) lets us set them; a machine
/// without libjack has nothing to silence.
fn install_jack_handlers() {
    // SAFETY: dlopen/dlsym with NUL-terminated names; the handle is kept for the process's
    // life (never dlclosed), so the function pointers stay valid.
    unsafe {
        let lib = libc::dlopen(c"libjack.so.0".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
        if lib.is_null() {
            return;
        }
        for name in [c"jack_set_error_function", c"jack_set_info_function"] {
            let sym: *mut c_void = libc::dlsym(lib, name.as_ptr());
            if sym.is_null() {
                continue;
            }
            let set: unsafe extern "C" fn(unsafe extern "C" fn(*const c_char)) =
                std::mem::transmute(sym);
            set(jack_message);
        }
    }
}
