//! Each group member's voice on its own, for applications that place, record or analyse voices
//! separately (spatial audio, per-speaker captions, a level meter per tile).

use std::sync::{Arc, Mutex};

/// Receives each member's decoded voice in a group call, before the voices are mixed into the
/// call's sink (which still gets the mix).
///
/// Calls come on the playback thread, once per frame for each member being played (real,
/// recovered or concealed audio; a member silent long enough to leave the mix gets none):
/// return quickly and never block. Two-party calls do not use it: their sink carries the one
/// peer's voice.
pub trait ParticipantAudio: Send {
    /// One frame of `member`'s voice (its canonical name, as in
    /// [`CallEvent::ParticipantJoined`](crate::call::CallEvent::ParticipantJoined)): 48 kHz
    /// mono, samples in -1..1, the call's frame length (10 or 20 ms).
    fn frame(&mut self, member: &str, samples: &[f32]);
}

/// The application's per-member receiver, shared by whichever group playback runs (a call
/// can enter its group mode more than once).
pub(crate) type SharedParticipantAudio = Arc<Mutex<Box<dyn ParticipantAudio>>>;
