pub mod sframe;
