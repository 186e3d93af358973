//! An SFU that can be made to forget a room's members mid-call, as a restarted SFU would:
//! their media paths die, and they must reconnect. Shared by the engine's and the page's tests.
#![allow(dead_code)] // each test binary uses its own part

use std::sync::Mutex;

/// The hosted SFU, wrapped: it records who joined, and forgets them on demand.
#[derive(Debug)]
pub struct ForgetfulSfu {
    sfu: sotto_sfu::Sfu,
    seated: Mutex<Vec<(String, String)>>,
}

impl ForgetfulSfu {
    pub fn new(sfu: sotto_sfu::Sfu) -> Self {
        ForgetfulSfu {
            sfu,
            seated: Mutex::default(),
        }
    }

    /// Drops every member of `room` from the SFU; returns how many there were.
    pub fn forget(&self, room: &str) -> usize {
        let seated = std::mem::take(&mut *self.seated.lock().unwrap());
        seated
            .iter()
            .filter(|(r, peer)| r == room && self.sfu.leave(r, peer))
            .count()
    }

    /// Members that joined since the last `forget`.
    pub fn seated(&self) -> usize {
        self.seated.lock().unwrap().len()
    }
}

impl sotto_signaling::SfuLink for ForgetfulSfu {
    fn join(
        &self,
        room: &str,
        peer: &str,
        offer_sdp: &str,
    ) -> Result<String, sotto_signaling::SfuRefusal> {
        let answer = sotto_signaling::SfuLink::join(&self.sfu, room, peer, offer_sdp)?;
        self.seated
            .lock()
            .unwrap()
            .push((room.to_owned(), peer.to_owned()));
        Ok(answer)
    }
    fn leave(&self, room: &str, peer: &str) {
        sotto_signaling::SfuLink::leave(&self.sfu, room, peer);
    }
    fn render_metrics(&self) -> String {
        self.sfu.render_metrics()
    }
}
