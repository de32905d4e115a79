//! `Envelope::encode` makes at most one allocation (its output buffer).
#![allow(unsafe_code)] // a counting global allocator needs `unsafe impl GlobalAlloc`

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use hydratecache_core::{Envelope, PublisherId, Ttl};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn encode_allocates_once_and_decode_bytes_does_not_copy_the_payload() {
    for size in [0usize, 128, 1024, 64 * 1024] {
        let env = Envelope {
            ttl: Some(Ttl::starting_now(Duration::from_secs(30))),
            version: Some(7),
            publisher: PublisherId::random(),
            sequence: 99,
            ..Envelope::update("user:12345", vec![1u8; size])
        };
        let mut encoded = Vec::new();
        let n = allocations_during(|| encoded = env.encode().expect("encode"));
        assert_eq!(n, 1, "encode of a {size}-byte payload made {n} allocations");
        let wire = bytes::Bytes::from(encoded);
        let n = allocations_during(|| {
            std::hint::black_box(Envelope::decode_bytes(&wire).expect("decode"));
        });
        // The key's String, plus the header `bytes` allocates once when a
        // buffer built from a Vec is first shared; the payload is not copied.
        assert!(
            n <= 2,
            "decode_bytes of a {size}-byte payload made {n} allocations"
        );
    }
}
