//! Property tests of conditional requests and of the stored-response encoding.
use proptest::prelude::*;

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode};

use super::*;
use crate::codec::{Codec, Format};

fn stored() -> StoredResponse {
    StoredResponse::new(
        StatusCode::OK,
        vec![(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        Bytes::from_static(b"{}"),
        "\"abc\"",
        1_700_000_000_000,
    )
    .unwrap()
}

proptest! {
    /// Any bytes in If-None-Match / If-Modified-Since are evaluated or ignored: never a panic.
    #[test]
    fn conditional_headers_never_panic(inm in proptest::collection::vec(any::<u8>(), 0..64), ims in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_bytes(&inm) {
            headers.insert(header::IF_NONE_MATCH, v);
        }
        if let Ok(v) = HeaderValue::from_bytes(&ims) {
            headers.insert(header::IF_MODIFIED_SINCE, v);
        }
        let request = RequestParts::new(&Method::GET, None, &headers, false);
        let answered = not_modified(&request, &stored());
        // The documented outcome: a 304 only for a list naming the stored ETag (or `*`), or,
        // without If-None-Match, for a date (the shortest HTTP-date has 24 characters); a
        // malformed header is ignored, i.e. the answer is the unconditional one (a 200).
        let could_match = match headers.get(header::IF_NONE_MATCH) {
            Some(v) => String::from_utf8_lossy(v.as_bytes()).contains(['*']) || String::from_utf8_lossy(v.as_bytes()).contains("abc"),
            None => headers.get(header::IF_MODIFIED_SINCE).is_some_and(|v| v.len() >= 24),
        };
        prop_assert!(!answered || could_match, "304 for If-None-Match {inm:?} / If-Modified-Since {ims:?}");
    }

    /// Malformed validators beside a matching one are ignored, never a 304; a list that names
    /// the stored ETag among junk it can parse is a 304.
    #[test]
    fn malformed_validators_answer_in_full(junk in "[ -~]{0,20}") {
        let answer = |inm: &str| {
            let mut headers = HeaderMap::new();
            let Ok(v) = HeaderValue::from_str(inm) else { return None };
            headers.insert(header::IF_NONE_MATCH, v);
            Some(not_modified(&RequestParts::new(&Method::GET, None, &headers, false), &stored()))
        };
        let unquoted = junk.replace(['"', '*', ','], "");
        // Not an entity-tag (unquoted): ignored.
        if !unquoted.trim().is_empty() {
            prop_assert_eq!(answer(&format!("{unquoted}abc")), Some(false));
        }
        // A quoted tag that is not ours: no match.
        prop_assert_eq!(answer(&format!("\"x{unquoted}\"")), Some(false));
        // Ours in a list of well-formed tags: a match.
        let tag: String = unquoted.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        prop_assert_eq!(answer(&format!("\"x{tag}\", \"abc\"")), Some(true));
        prop_assert_eq!(answer(&format!("W/\"abc\", \"x{tag}\"")), Some(true));
        // Ours beside a malformed tag (white space inside its quotes): the field is
        // malformed, so ignored.
        prop_assert_eq!(answer(&format!("\"x {tag}\", \"abc\"")), Some(false));
    }

    /// Stored responses read back from arbitrary bytes decode or are rejected: never a panic.
    #[test]
    fn response_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = <ResponseCodec as Codec<Arc<StoredResponse>>>::decode(&bytes, Format::Json);
    }

    /// Any stored response reads back as itself; any prefix of it, or it with bytes appended,
    /// is rejected.
    #[test]
    fn stored_responses_round_trip_exactly(
        status in 200u16..600,
        headers in proptest::collection::vec(("[a-z][a-z0-9-]{0,15}", "[ -~]{0,30}"), 0..5),
        body in proptest::collection::vec(any::<u8>(), 0..200),
        last_modified_ms in any::<u64>(),
        extra in 1usize..8,
    ) {
        let headers: Vec<(HeaderName, HeaderValue)> = headers
            .iter()
            .filter(|(n, _)| n != "etag" && n != "last-modified" && n != "content-length")
            .map(|(n, v)| (HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v.trim()).unwrap()))
            .collect();
        let status = StatusCode::from_u16(status).unwrap();
        let original = Arc::new(StoredResponse::new(status, headers.clone(), Bytes::from(body.clone()), "\"e\"", last_modified_ms).unwrap());
        let bytes = <ResponseCodec as Codec<Arc<StoredResponse>>>::encode(&original, Format::Json).unwrap();
        let back = <ResponseCodec as Codec<Arc<StoredResponse>>>::decode(&bytes, Format::Json).unwrap();
        prop_assert_eq!(back.status, status);
        prop_assert_eq!(&back.body[..], &body[..]);
        prop_assert_eq!(back.last_modified_ms, last_modified_ms);
        prop_assert_eq!(&*back.etag_text, "\"e\"");
        prop_assert_eq!(&back.headers, &original.headers);
        let mut longer = bytes.clone();
        longer.extend(std::iter::repeat_n(0u8, extra));
        prop_assert!(<ResponseCodec as Codec<Arc<StoredResponse>>>::decode(&longer, Format::Json).is_err());
        prop_assert!(<ResponseCodec as Codec<Arc<StoredResponse>>>::decode(&bytes[..bytes.len() - 1], Format::Json).is_err());
    }
}

#[test]
fn answers_are_rendered_per_second_per_options_and_per_status() {
    let stored = stored();
    let private = HttpOpts::new().stale_while_revalidate(30);
    let public = HttpOpts::new().public().s_maxage(120);
    let cc = |opts: &HttpOpts, age, status| {
        opts.answer_headers(&stored, age, Label::x_cache(status))[header::CACHE_CONTROL].clone()
    };
    assert_eq!(cc(&private, 60, "HIT"), "private, max-age=60, stale-while-revalidate=30");
    assert_eq!(cc(&private, 60, "HIT"), "private, max-age=60, stale-while-revalidate=30");
    assert_eq!(cc(&private, 59, "HIT"), "private, max-age=59, stale-while-revalidate=30");
    assert_eq!(cc(&public, 59, "HIT"), "public, max-age=59, s-maxage=120");
    assert_eq!(private.answer_headers(&stored, 59, Label::x_cache("STALE"))[X_CACHE], "STALE");
    assert_eq!(private.answer_headers(&stored, 59, Label::x_cache("HIT"))[header::CONTENT_LENGTH], "2");
    assert_eq!(HttpOpts::new().cache_control(0), "private, max-age=0");
    assert_eq!(HttpOpts::new().cache_control(u64::MAX), "private, max-age=18446744073709551615");
}

#[test]
fn stored_responses_round_trip() {
    let original = Arc::new(stored());
    let bytes = <ResponseCodec as Codec<Arc<StoredResponse>>>::encode(&original, Format::Json).unwrap();
    let back = <ResponseCodec as Codec<Arc<StoredResponse>>>::decode(&bytes, Format::Json).unwrap();
    assert_eq!(
        (back.status, &back.body, &back.etag_text, back.last_modified_ms),
        (original.status, &original.body, &original.etag_text, original.last_modified_ms)
    );
    for cut in 0..bytes.len() {
        assert!(
            <ResponseCodec as Codec<Arc<StoredResponse>>>::decode(&bytes[..cut], Format::Json).is_err(),
            "a truncated entry is rejected ({cut})"
        );
    }
}
