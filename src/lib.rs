pub mod media;
pub mod playout;
pub mod sframe;
