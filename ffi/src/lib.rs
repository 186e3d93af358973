//! The C ABI of sotto: SFrame (RFC 9605) frame protection and end-to-end encrypted voice
//! calls for C, C++, Python (ctypes/cffi) and any language with a C FFI.
//!
//! The header is `include/sotto.h`, generated from this crate by cbindgen. Every function
//! catches panics at the boundary, checks its pointers and lengths, and reports failures as a
//! [`sotto_status`] with a message from [`sotto_last_error`].

// The exported names are C's, not Rust's.
#![allow(non_camel_case_types)]

mod call;
mod error;
mod sframe;

pub use call::{
    sotto_audio_io, sotto_audio_read_cb, sotto_audio_write_cb, sotto_call, sotto_call_free,
    sotto_call_hang_up, sotto_call_send_message, sotto_call_set_disappearing_timer,
    sotto_call_set_muted, sotto_call_start, sotto_call_start_with_audio, sotto_call_stats_json,
    sotto_call_verify, sotto_call_wait, sotto_event_cb,
};
pub use error::{sotto_last_error, sotto_status, sotto_version};
pub use sframe::{
    sotto_sframe_decrypt, sotto_sframe_encrypt, sotto_sframe_overhead, sotto_sframe_receiver,
    sotto_sframe_receiver_add_key, sotto_sframe_receiver_decrypt, sotto_sframe_receiver_free,
    sotto_sframe_receiver_new, sotto_sframe_sender, sotto_sframe_sender_encrypt,
    sotto_sframe_sender_free, sotto_sframe_sender_new,
};

#[cfg(test)]
mod tests;
