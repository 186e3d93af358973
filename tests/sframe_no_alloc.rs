//! The per-frame SFrame calls do not touch the heap: a counting allocator sees zero
//! allocations per frame once the contexts exist, for every suite, with and without metadata.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use sotto::sframe::{CipherSuite, MAX_HEADER_LEN, ReceiverContext, SenderContext};

struct CountingAllocator;

thread_local! {
    // Per thread, so allocations by the test harness's other threads are not counted.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: defers to the system allocator; only adds a thread-local counter.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn allocations() -> u64 {
    ALLOCATIONS.with(|a| a.get())
}

#[test]
fn per_frame_encrypt_and_decrypt_do_not_allocate() {
    const FRAMES: usize = 500;
    for suite in CipherSuite::ALL {
        for metadata in [&b""[..], b"rtp header extension"] {
            let key = b"base key for the allocation test";
            let mut tx = SenderContext::new(suite, 42, key).unwrap();
            let mut rx = ReceiverContext::new();
            rx.add_key(suite, 42, key).unwrap();
            let payload = [0x3cu8; 1200];
            let mut frame = [0u8; 1200 + 64];
            let mut out = [0u8; 1200 + 64];

            let before = allocations();
            for _ in 0..FRAMES {
                // In place: the payload sits after MAX_HEADER_LEN bytes of headroom.
                frame[MAX_HEADER_LEN..MAX_HEADER_LEN + payload.len()].copy_from_slice(&payload);
                let range = tx
                    .encrypt_in_place(metadata, &mut frame, MAX_HEADER_LEN, payload.len())
                    .unwrap();
                let decrypted = rx.decrypt_in_place(metadata, &mut frame[range]).unwrap();
                assert_eq!(decrypted.payload, &payload[..]);

                // Into a caller's buffer.
                let n = tx.encrypt(metadata, &payload, &mut frame).unwrap();
                let (_, len) = rx.decrypt(metadata, &frame[..n], &mut out).unwrap();
                assert_eq!(&out[..len], &payload[..]);

                // A refused frame (replay) does not allocate either.
                assert!(rx.decrypt(metadata, &frame[..n], &mut out).is_err());
            }
            let per_frame = allocations() - before;
            assert_eq!(
                per_frame, 0,
                "{suite}: {per_frame} allocations in {FRAMES} frames"
            );
        }
    }
}

#[test]
fn the_counter_sees_allocations() {
    // Guards the test above against a counter that never counts.
    let before = allocations();
    let v = std::hint::black_box(vec![1u8; 100]);
    drop(v);
    assert!(allocations() > before);
}
