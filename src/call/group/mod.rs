//! Group calls through an SFU that cannot decrypt: each member runs the two-party handshake
//! with every other member through signaling, sends its own group key to each over the pair's
//! sealed channel ([`crate::group`] holds the rules), seals its voice under that key, and sends
//! it to the SFU, which forwards the loudest few members to everyone. The SFU holds no key.

mod media;
mod session;

pub(crate) use session::run;
