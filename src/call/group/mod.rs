//! Group calls through an SFU that cannot decrypt: each member runs the two-party handshake
//! with every other member through signaling, sends its own group key to each over the pair's
//! sealed channel ([`crate::group`] holds the rules), seals its voice under that key, and sends
//! it to the SFU, which forwards the loudest few members to everyone. The SFU holds no key.

mod media;
mod reconnect;
mod session;
mod video;

pub(crate) use video::GroupVideoHome;
pub use video::VideoSinkFactory;

pub(crate) use session::run;

/// Test only (`insecure-test-hooks`): where a group call leaves a handle on its group keys,
/// so a test can play a member that leaves, or joins, and keeps its keys to attack the
/// frames an SFU tap recorded. Never set it in an application.
#[cfg(feature = "insecure-test-hooks")]
#[derive(Clone, Default)]
pub struct GroupKeysTap(
    std::sync::Arc<
        std::sync::Mutex<Option<std::sync::Arc<std::sync::Mutex<crate::group::GroupKeys>>>>,
    >,
);

#[cfg(feature = "insecure-test-hooks")]
impl std::fmt::Debug for GroupKeysTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupKeysTap")
    }
}

#[cfg(feature = "insecure-test-hooks")]
impl GroupKeysTap {
    /// An empty tap.
    pub fn new() -> Self {
        Self::default()
    }

    /// The keys of the latest group session, as they are now (after the call: as they were
    /// when it ended).
    pub fn keys(&self) -> Option<std::sync::Arc<std::sync::Mutex<crate::group::GroupKeys>>> {
        self.0.lock().ok().and_then(|k| k.clone())
    }

    pub(crate) fn put(&self, keys: &std::sync::Arc<std::sync::Mutex<crate::group::GroupKeys>>) {
        if let Ok(mut k) = self.0.lock() {
            *k = Some(std::sync::Arc::clone(keys));
        }
    }
}
