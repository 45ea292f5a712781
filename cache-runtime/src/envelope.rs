//! The stored form of an entry in Redis: a fixed binary header followed by the payload.
//!
//! One `GET` returns everything a read needs: the payload, when it was stored, until when it
//! is fresh and until when it may be served stale, its ETag, the time the value took to
//! compute, a fingerprint of the Rust type it was encoded from, and a hash of the full key it
//! was stored under (bytes copied under another key read as a miss, never as that key's value).
//!
//! Layout (little endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0 | magic `0xCA` |
//! | 1 | format version (2) |
//! | 2 | flags: bit 0 = negative entry (a cached `None`), bit 1 = MessagePack payload |
//! | 3 | ETag length `n` (0 = none) |
//! | 4..12 | type fingerprint |
//! | 12..20 | stored at, ms since the Unix epoch |
//! | 20..28 | fresh until, ms |
//! | 28..36 | stale until, ms (= fresh until when no stale window) |
//! | 36..40 | recompute time, ms |
//! | 40..42 | length `t` of the tag section |
//! | 42..50 | key hash: FNV-1a of the full stored key |
//! | 50..50+n | ETag bytes |
//! | 50+n..50+n+t | tags: `(name length u8, name, version u64)*`, the versions they had when the value was computed |
//! | 50+n+t.. | payload |

// The byte layout is what Redis holds; without the `redis` feature only `Meta` and the
// fingerprints are used.
#![cfg_attr(not(feature = "redis"), allow(dead_code))]

use crate::codec::Format;

const MAGIC: u8 = 0xCA;
const VERSION: u8 = 2;
const HEADER: usize = 50;
const FLAG_NEGATIVE: u8 = 1;
/// The payload is MessagePack (else JSON, or a format of its own such as a stored response).
const FLAG_MSGPACK: u8 = 2;

/// The metadata kept beside every value, in Redis and in process memory alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) fingerprint: u64,
    pub(crate) stored_at_ms: u64,
    pub(crate) fresh_until_ms: u64,
    pub(crate) stale_until_ms: u64,
    pub(crate) recompute_ms: u32,
    pub(crate) etag: Option<Box<str>>,
    /// `(tag, version)`: the entry is valid while every tag still has that version.
    pub(crate) tags: Vec<(String, u64)>,
}

/// A decoded envelope borrowing its payload and recorded tags from the bytes Redis returned.
#[derive(Debug)]
pub(crate) struct Decoded<'a> {
    /// Its metadata but for the tags, which stay in `tags` ([`into_meta`](Self::into_meta) has
    /// them all): a hit compares them in place and copies them only for a copy kept in memory.
    pub(crate) meta: Meta,
    pub(crate) tags: RecordedTags<'a>,
    /// [`key_hash`] of the key the entry was stored under.
    pub(crate) key_hash: u64,
    pub(crate) negative: bool,
    /// `None`: a format this build cannot read (MessagePack without the `msgpack` feature).
    pub(crate) format: Option<Format>,
    pub(crate) payload: &'a [u8],
}

/// Why bytes under one of our keys could not be read as an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Corrupt {
    TooShort,
    BadMagic,
    UnknownVersion(u8),
    BadEtag,
    BadTags,
}

impl std::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Corrupt::TooShort => f.write_str("shorter than the envelope header"),
            Corrupt::BadMagic => f.write_str("not an envelope (bad magic byte)"),
            Corrupt::UnknownVersion(v) => write!(f, "unknown envelope version {v}"),
            Corrupt::BadEtag => f.write_str("invalid ETag field"),
            Corrupt::BadTags => f.write_str("invalid tag section"),
        }
    }
}

/// The envelope up to its payload (header, `ETag`, recorded tags), with room for
/// `payload_hint` more bytes: the caller appends the payload. Fails only when the tags do not
/// fit (a name over 255 bytes, or over 64 KiB of tags): such an entry is not stored rather than
/// stored without its tags. `key`: the full key the entry is stored under.
pub(crate) fn head(
    key: &str,
    meta: &Meta,
    negative: bool,
    format: Format,
    payload_hint: usize,
) -> Result<Vec<u8>, &'static str> {
    let etag = meta.etag.as_deref().unwrap_or("").as_bytes();
    let etag_len = u8::try_from(etag.len()).unwrap_or(0);
    let etag = &etag[..usize::from(etag_len)];
    let mut tags_len = 0usize;
    for (name, _) in &meta.tags {
        u8::try_from(name.len()).map_err(|_| "a tag is longer than 255 bytes")?;
        tags_len += 1 + name.len() + 8;
    }
    let tags_len = u16::try_from(tags_len).map_err(|_| "the tags take more than 64 KiB")?;
    let mut out = Vec::with_capacity(HEADER + etag.len() + usize::from(tags_len) + payload_hint);
    out.push(MAGIC);
    out.push(VERSION);
    let format_flag = match format {
        Format::Json => 0,
        #[cfg(feature = "msgpack")]
        Format::MessagePack => FLAG_MSGPACK,
    };
    out.push(if negative { FLAG_NEGATIVE } else { 0 } | format_flag);
    out.push(etag_len);
    out.extend_from_slice(&meta.fingerprint.to_le_bytes());
    out.extend_from_slice(&meta.stored_at_ms.to_le_bytes());
    out.extend_from_slice(&meta.fresh_until_ms.to_le_bytes());
    out.extend_from_slice(&meta.stale_until_ms.to_le_bytes());
    out.extend_from_slice(&meta.recompute_ms.to_le_bytes());
    out.extend_from_slice(&tags_len.to_le_bytes());
    out.extend_from_slice(&key_hash(key).to_le_bytes());
    out.extend_from_slice(etag);
    for (name, version) in &meta.tags {
        // Checked above: at most 255 bytes.
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&version.to_le_bytes());
    }
    Ok(out)
}

/// The whole envelope of `payload` ([`head`], then the payload).
#[cfg(test)]
pub(crate) fn encode(
    key: &str,
    meta: &Meta,
    negative: bool,
    format: Format,
    payload: &[u8],
) -> Result<Vec<u8>, &'static str> {
    let mut out = head(key, meta, negative, format, payload.len())?;
    out.extend_from_slice(payload);
    Ok(out)
}

impl Decoded<'_> {
    /// The metadata with the recorded tags (a name that is not UTF-8 is shown lossily: a hit
    /// never has one, see `RecordedTags`).
    pub(crate) fn into_meta(self) -> Meta {
        let mut meta = self.meta;
        meta.tags = self.tags.map(|(name, version)| (String::from_utf8_lossy(name).into_owned(), version)).collect();
        meta
    }
}

/// The tags an entry recorded, each with the version it was stored under, read in place from
/// a section whose layout [`decode`] checked. Names are bytes: compared with the tags a read
/// carries, they are copied (and checked to be UTF-8) only when one must be fetched.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordedTags<'a>(&'a [u8]);

impl<'a> Iterator for RecordedTags<'a> {
    type Item = (&'a [u8], u64);

    fn next(&mut self) -> Option<(&'a [u8], u64)> {
        let (&len, rest) = self.0.split_first()?;
        let len = usize::from(len);
        let (name, version) = (rest.get(..len)?, rest.get(len..len + 8)?);
        self.0 = &rest[len + 8..];
        Some((name, u64_at(version, 0)))
    }
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Decoded<'_>, Corrupt> {
    if bytes.len() < HEADER {
        return Err(Corrupt::TooShort);
    }
    if bytes[0] != MAGIC {
        return Err(Corrupt::BadMagic);
    }
    if bytes[1] != VERSION {
        return Err(Corrupt::UnknownVersion(bytes[1]));
    }
    let etag_len = usize::from(bytes[3]);
    let tags_len = usize::from(u16::from_le_bytes([bytes[40], bytes[41]]));
    if bytes.len() < HEADER + etag_len + tags_len {
        return Err(Corrupt::TooShort);
    }
    let etag = if etag_len == 0 {
        None
    } else {
        let raw = std::str::from_utf8(&bytes[HEADER..HEADER + etag_len]).map_err(|_| Corrupt::BadEtag)?;
        Some(raw.into())
    };
    // The tag section's layout is checked here (walked to its end, each name and version
    // whole); its names are compared as bytes (one that is not UTF-8 matches no tag: the entry
    // is not served).
    let tags = RecordedTags(&bytes[HEADER + etag_len..HEADER + etag_len + tags_len]);
    let mut walk = tags;
    while walk.next().is_some() {}
    if !walk.0.is_empty() {
        return Err(Corrupt::BadTags);
    }
    let mut recompute = [0u8; 4];
    recompute.copy_from_slice(&bytes[36..40]);
    Ok(Decoded {
        meta: Meta {
            fingerprint: u64_at(bytes, 4),
            stored_at_ms: u64_at(bytes, 12),
            fresh_until_ms: u64_at(bytes, 20),
            stale_until_ms: u64_at(bytes, 28),
            recompute_ms: u32::from_le_bytes(recompute),
            etag,
            tags: Vec::new(),
        },
        tags,
        key_hash: u64_at(bytes, 42),
        negative: bytes[2] & FLAG_NEGATIVE != 0,
        format: if bytes[2] & FLAG_MSGPACK == 0 {
            Some(Format::Json)
        } else {
            #[cfg(feature = "msgpack")]
            {
                Some(Format::MessagePack)
            }
            #[cfg(not(feature = "msgpack"))]
            {
                None
            }
        },
        payload: &bytes[HEADER + etag_len + tags_len..],
    })
}

/// A 64-bit fingerprint of a Rust type (FNV-1a of its type name), stored in every entry so
/// that bytes written for one type are never decoded into another.
pub(crate) fn fingerprint<T: ?Sized>() -> u64 {
    fnv1a(std::any::type_name::<T>().as_bytes())
}

/// The hash of a full stored key recorded in its entry.
pub(crate) fn key_hash(key: &str) -> u64 {
    fnv1a(key.as_bytes())
}

/// 64-bit FNV-1a: a stable, fast hash for fingerprints and log redaction (not for anything an
/// attacker could aim at: `vary` values are hashed with SHA-256).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            fingerprint: fingerprint::<u32>(),
            stored_at_ms: 1,
            fresh_until_ms: 2,
            stale_until_ms: 3,
            recompute_ms: 4,
            etag: Some("\"abc\"".into()),
            tags: vec![("posts".to_owned(), 7), ("user:1".to_owned(), u64::MAX)],
        }
    }

    #[test]
    fn round_trip() {
        let bytes = encode("k", &meta(), false, Format::Json, b"{\"a\":1}").unwrap();
        let d = decode(&bytes).unwrap();
        assert_eq!(d.key_hash, key_hash("k"));
        assert_ne!(d.key_hash, key_hash("k2"));
        assert!(!d.negative);
        assert_eq!(d.payload, b"{\"a\":1}");
        assert_eq!(d.tags.collect::<Vec<_>>(), [(&b"posts"[..], 7), (&b"user:1"[..], u64::MAX)]);
        assert_eq!(d.into_meta(), meta());
    }

    #[test]
    fn garbage_is_rejected_not_panicking() {
        assert_eq!(decode(b"").unwrap_err(), Corrupt::TooShort);
        assert_eq!(
            decode(b"hello world, this is not an envelope at all, not even close").unwrap_err(),
            Corrupt::BadMagic
        );
        let mut bytes = encode("k", &meta(), true, Format::Json, b"").unwrap();
        bytes[1] = 9;
        assert_eq!(decode(&bytes).unwrap_err(), Corrupt::UnknownVersion(9));
        let mut bytes = encode("k", &meta(), true, Format::Json, b"").unwrap();
        bytes[3] = 200;
        assert_eq!(decode(&bytes).unwrap_err(), Corrupt::TooShort);
        for len in 0..bytes.len() {
            let _ = decode(&bytes[..len]).map(Decoded::into_meta);
        }
    }

    #[test]
    fn fingerprints_differ_by_type() {
        assert_ne!(fingerprint::<u32>(), fingerprint::<u64>());
        assert_eq!(fingerprint::<Vec<String>>(), fingerprint::<Vec<String>>());
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Arbitrary bytes under one of our keys decode or are rejected: never a panic.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes).map(Decoded::into_meta);
        }

        /// A valid envelope with corrupted bytes never panics either.
        #[test]
        fn corrupted_envelopes_never_panic(flip in 0usize..64, byte in any::<u8>(), cut in 0usize..80) {
            let meta = Meta {
                fingerprint: 1, stored_at_ms: 2, fresh_until_ms: 3, stale_until_ms: 4, recompute_ms: 5,
                etag: Some("\"e\"".into()), tags: vec![("t".into(), 9)],
            };
            let mut bytes = encode("k", &meta, false, Format::Json, b"{\"a\":1}").unwrap();
            let i = flip % bytes.len();
            bytes[i] = byte;
            bytes.truncate(cut.min(bytes.len()));
            let _ = decode(&bytes).map(Decoded::into_meta);
        }

        #[test]
        fn envelopes_round_trip(tags in proptest::collection::vec(("[a-z:0-9]{1,20}", any::<u64>()), 0..5), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let meta = Meta { fingerprint: 7, stored_at_ms: 1, fresh_until_ms: 2, stale_until_ms: 3, recompute_ms: 4, etag: None, tags };
            let bytes = encode("k", &meta, false, Format::Json, &payload).unwrap();
            let decoded = decode(&bytes).unwrap();
            prop_assert_eq!(decoded.payload, &payload[..]);
            prop_assert_eq!(decoded.into_meta(), meta);
        }
    }
}
