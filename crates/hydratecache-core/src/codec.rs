//! Codecs turn a channel's values into payload bytes and back.
//!
//! [`CborCodec`] is the default. Bring another format by implementing
//! [`Codec`] or by passing two functions to [`FnCodec`].

use std::fmt;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::BoxError;

/// Encodes and decodes values of type `T`.
pub trait Codec<T>: Send + Sync + 'static {
    /// The value as payload bytes.
    fn encode(&self, value: &T) -> Result<Vec<u8>, BoxError>;
    /// A value from payload bytes that arrived from the network: must not panic.
    fn decode(&self, bytes: &[u8]) -> Result<T, BoxError>;
}

/// A codec's `decode` panicked on a message's payload: the source of the
/// [`Error::Decode`](crate::Error::Decode) that a subscription which
/// [catches codec panics](crate::ChannelSubscription::catch_codec_panics)
/// yields instead of unwinding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the codec panicked: {message}")]
#[non_exhaustive]
pub struct CodecPanicked {
    /// The panic's message (`"(not a string)"` when it carried something else).
    pub message: String,
}

/// CBOR through `serde_cbor` (the default codec).
///
/// [`CborCodec::packed`] writes struct fields as integer keys (their
/// declaration index) instead of names, like Go's `keyasint`: smaller on the
/// wire, but adding a field anywhere but at the end changes the numbering.
/// Decoding accepts both forms.
///
/// ```
/// use hydratecache_core::{Codec, CborCodec};
/// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
/// struct User { id: u32, name: String }
/// let user = User { id: 7, name: "Ada".into() };
/// let named = CborCodec::new().encode(&user).unwrap();
/// let packed = CborCodec::packed().encode(&user).unwrap();
/// assert!(packed.len() < named.len());
/// assert_eq!(Codec::<User>::decode(&CborCodec::new(), &packed).unwrap(), user);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CborCodec {
    packed: bool,
}

impl CborCodec {
    /// Struct fields by name.
    pub fn new() -> CborCodec {
        CborCodec { packed: false }
    }

    /// Struct fields as integer keys.
    pub fn packed() -> CborCodec {
        CborCodec { packed: true }
    }
}

impl<T: Serialize + DeserializeOwned> Codec<T> for CborCodec {
    fn encode(&self, value: &T) -> Result<Vec<u8>, BoxError> {
        let mut out = Vec::new();
        let writer = serde_cbor::ser::IoWrite::new(&mut out);
        let mut ser = serde_cbor::Serializer::new(writer);
        if self.packed {
            ser = ser.packed_format();
        }
        value.serialize(&mut ser)?;
        Ok(out)
    }

    fn decode(&self, bytes: &[u8]) -> Result<T, BoxError> {
        Ok(serde_cbor::from_slice(bytes)?)
    }
}

/// Encoder function of a [`FnCodec`].
pub(crate) type EncodeFn<T> = dyn Fn(&T) -> Result<Vec<u8>, BoxError> + Send + Sync;
/// Decoder function of a [`FnCodec`].
pub(crate) type DecodeFn<T> = dyn Fn(&[u8]) -> Result<T, BoxError> + Send + Sync;

/// A codec made of two plain functions.
///
/// ```
/// use hydratecache_core::{Codec, FnCodec};
/// let codec = FnCodec::new(
///     |s: &String| Ok(s.as_bytes().to_vec()),
///     |b: &[u8]| Ok(String::from_utf8(b.to_vec())?),
/// );
/// assert_eq!(codec.decode(&codec.encode(&"hi".to_string())?)?, "hi");
/// # Ok::<(), hydratecache_core::BoxError>(())
/// ```
pub struct FnCodec<T> {
    encode: Box<EncodeFn<T>>,
    decode: Box<DecodeFn<T>>,
    _value: PhantomData<fn() -> T>,
}

impl<T> FnCodec<T> {
    /// A codec from an encoder and a decoder.
    pub fn new(
        encode: impl Fn(&T) -> Result<Vec<u8>, BoxError> + Send + Sync + 'static,
        decode: impl Fn(&[u8]) -> Result<T, BoxError> + Send + Sync + 'static,
    ) -> FnCodec<T> {
        FnCodec {
            encode: Box::new(encode),
            decode: Box::new(decode),
            _value: PhantomData,
        }
    }
}

impl<T> fmt::Debug for FnCodec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnCodec").finish_non_exhaustive()
    }
}

impl<T: 'static> Codec<T> for FnCodec<T> {
    fn encode(&self, value: &T) -> Result<Vec<u8>, BoxError> {
        (self.encode)(value)
    }

    fn decode(&self, bytes: &[u8]) -> Result<T, BoxError> {
        (self.decode)(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Item {
        id: u64,
        name: String,
        tags: Vec<String>,
    }

    fn item() -> Item {
        Item {
            id: 42,
            name: "näme".into(),
            tags: vec!["a".into(), "b".into()],
        }
    }

    #[test]
    fn cbor_named_and_packed_round_trip_and_interoperate() {
        let named = CborCodec::new().encode(&item()).unwrap();
        let packed = CborCodec::packed().encode(&item()).unwrap();
        assert!(
            packed.len() < named.len(),
            "{} !< {}",
            packed.len(),
            named.len()
        );
        for bytes in [&named, &packed] {
            let back: Item = CborCodec::new().decode(bytes).unwrap();
            assert_eq!(back, item());
            let back: Item = CborCodec::packed().decode(bytes).unwrap();
            assert_eq!(back, item());
        }
        // Packed form: a map whose first key is the integer 0, not "id".
        assert_eq!(packed[0], 0xa3);
        assert_eq!(packed[1], 0x00);
    }

    #[test]
    fn cbor_garbage_is_an_error() {
        let res: Result<Item, _> = CborCodec::new().decode(b"xyz\xff\xff");
        assert!(res.is_err());
    }
}
