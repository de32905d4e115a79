//! Decoding untrusted bytes never panics, and whatever decodes re-encodes to
//! the same bytes.
#![no_main]

use hydratecache_core::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let copied = Envelope::decode(data);
    let shared = Envelope::decode_bytes(&bytes::Bytes::copy_from_slice(data));
    assert_eq!(copied, shared);
    if let Ok(envelope) = copied {
        let encoded = envelope.encode().expect("a decoded envelope re-encodes");
        assert_eq!(encoded, data, "decode then encode changed the bytes");
        assert_eq!(envelope.encoded_len(), data.len());
    }
});
