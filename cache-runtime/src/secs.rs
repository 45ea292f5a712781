//! A seconds option given as a constant expression (`expire = TTL`, `expire = 5 * 60`,
//! `expire = Duration::from_secs(60)`): `#[cached]` emits one call,
//! `seconds(<expr>).get("<option>", "<expr>")`, inside the `const` it builds the options in,
//! so the checks below run at compile time and a failed one is a compile error at the
//! user's expression (the methods that panic are `#[track_caller]`).
//!
//! A const fn cannot call a trait method on stable Rust, so the two accepted types are told
//! apart by inherent methods of [`Seconds<u64>`] and [`Seconds<Duration>`]; an untyped integer
//! expression (`5 * 60`) still infers as `u64`, the one integer type with a `get`. A value of
//! another type stops at the bound of [`seconds`] (one error that names both types);
//! [`SecondsOther`] keeps the `get` after it from adding a second error.

use core::time::Duration;

/// A seconds option's value, of a type [`seconds`] accepts.
#[derive(Debug, Clone, Copy)]
pub struct Seconds<T>(T);

/// The types a seconds option takes: `u64` (seconds) and `Duration` (whole seconds).
#[diagnostic::on_unimplemented(
    message = "a number of seconds is a `u64` or a `Duration`, not `{Self}`",
    label = "expected `u64` or `core::time::Duration`, found `{Self}`",
    note = "write whole seconds as a `u64` (`60`, `TTL`, `5 * 60`) or a `Duration` (`Duration::from_secs(60)`)"
)]
pub trait SecondsType: Copy {}

#[diagnostic::do_not_recommend]
impl SecondsType for u64 {}

#[diagnostic::do_not_recommend]
impl SecondsType for Duration {}

/// Wraps a seconds option's value; only a `u64` or a `Duration` gets through.
#[inline]
pub const fn seconds<T: SecondsType>(value: T) -> Seconds<T> {
    Seconds(value)
}

impl Seconds<u64> {
    /// The seconds, at least 1.
    #[track_caller]
    pub const fn get(self, option: &'static str, _expr: &'static str) -> u64 {
        if self.0 == 0 {
            let msg = Message::new().code(option).text(" must be at least 1 second");
            panic!("{}", msg.as_str());
        }
        self.0
    }
}

impl Seconds<Duration> {
    /// The whole seconds of the duration, at least 1.
    #[track_caller]
    pub const fn get(self, option: &'static str, expr: &'static str) -> u64 {
        let d = self.0;
        if d.is_zero() {
            let msg = Message::new()
                .code(option)
                .text(" must be at least 1 second: ")
                .code(expr)
                .text(" is zero; write `Duration::from_secs(1)` or more");
            panic!("{}", msg.as_str());
        }
        if d.subsec_nanos() != 0 || d.as_secs() == 0 {
            // The nearest whole number of seconds (halves up), at least 1.
            let nearest = d.as_secs() + (d.subsec_nanos() >= 500_000_000) as u64;
            let nearest = if nearest == 0 { 1 } else { nearest };
            let msg = Message::new()
                .code(option)
                .text(" is counted in whole seconds: ")
                .code(expr)
                .text(" is not; write `Duration::from_secs(")
                .int(nearest)
                .text(")`");
            panic!("{}", msg.as_str());
        }
        d.as_secs()
    }
}

/// Only reached for a value [`seconds`] already refused (its bound is the one error then).
pub trait SecondsOther {
    /// Never called: a `Seconds<T>` of another type cannot be built.
    fn get(self, option: &'static str, expr: &'static str) -> u64;
}

impl<T> SecondsOther for Seconds<T> {
    fn get(self, _: &'static str, _: &'static str) -> u64 {
        unreachable!("`seconds` takes a `u64` or a `Duration`")
    }
}

/// A compile-time error message: a const fn can only panic with a `&str`, so it is built in
/// a buffer (what does not fit is cut at a character boundary, and ends in `…`).
struct Message {
    buf: [u8; 256],
    len: usize,
    cut: bool,
}

impl Message {
    const fn new() -> Self {
        Message { buf: [0; 256], len: 0, cut: false }
    }

    const fn text(mut self, s: &str) -> Self {
        let bytes = s.as_bytes();
        let mut i = 0;
        while i < bytes.len() && !self.cut {
            // Room for this character and a final `…` (3 bytes).
            let width = utf8_width(bytes[i]);
            if self.len + width + 3 > self.buf.len() {
                self = self.push(&[0xE2, 0x80, 0xA6]);
                self.cut = true;
                return self;
            }
            let (_, rest) = bytes.split_at(i);
            let (ch, _) = rest.split_at(width);
            self = self.push(ch);
            i += width;
        }
        self
    }

    const fn push(mut self, bytes: &[u8]) -> Self {
        let mut i = 0;
        while i < bytes.len() {
            self.buf[self.len] = bytes[i];
            self.len += 1;
            i += 1;
        }
        self
    }

    /// `s` in backquotes.
    const fn code(self, s: &str) -> Self {
        self.text("`").text(s).text("`")
    }

    const fn int(self, mut n: u64) -> Self {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let (_, digits) = digits.split_at(start);
        match core::str::from_utf8(digits) {
            Ok(s) => self.text(s),
            Err(_) => self,
        }
    }

    const fn as_str(&self) -> &str {
        let (text, _) = self.buf.split_at(self.len);
        match core::str::from_utf8(text) {
            Ok(s) => s,
            Err(_) => "invalid seconds option",
        }
    }
}

/// The length of the UTF-8 character that starts with `first`.
const fn utf8_width(first: u8) -> usize {
    match first {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_seconds_pass() {
        assert_eq!(seconds(60).get("expire", "60"), 60);
        assert_eq!(seconds(5 * 60).get("expire", "5 * 60"), 300);
        assert_eq!(seconds(Duration::from_secs(90)).get("expire", ""), 90);
        assert_eq!(seconds(Duration::from_millis(2000)).get("expire", ""), 2);
        const AT_COMPILE_TIME: u64 = seconds(Duration::from_secs(7)).get("stale", "");
        assert_eq!(AT_COMPILE_TIME, 7);
    }

    fn message(f: impl FnOnce() -> u64 + std::panic::UnwindSafe) -> String {
        let err = std::panic::catch_unwind(f).unwrap_err();
        err.downcast_ref::<String>().cloned().unwrap_or_else(|| err.downcast_ref::<&str>().unwrap().to_string())
    }

    #[test]
    fn other_durations_say_what_to_write() {
        assert_eq!(message(|| seconds(0).get("expire", "NEVER")), "`expire` must be at least 1 second");
        assert_eq!(
            message(|| seconds(Duration::from_millis(1500)).get("expire", "Duration::from_millis(1500)")),
            "`expire` is counted in whole seconds: `Duration::from_millis(1500)` is not; write \
             `Duration::from_secs(2)`"
        );
        assert_eq!(
            message(|| seconds(Duration::from_millis(300)).get("lock", "D")),
            "`lock` is counted in whole seconds: `D` is not; write `Duration::from_secs(1)`"
        );
        assert_eq!(
            message(|| seconds(Duration::ZERO).get("stale", "Duration::ZERO")),
            "`stale` must be at least 1 second: `Duration::ZERO` is zero; write `Duration::from_secs(1)` or more"
        );
    }

    #[test]
    fn long_messages_are_cut_at_a_character() {
        let expr: &'static str = Box::leak("é".repeat(300).into_boxed_str());
        let msg = message(move || seconds(Duration::ZERO).get("expire", expr));
        assert!(msg.len() <= 256 && msg.starts_with("`expire` must be at least 1 second: `é"), "{msg}");
        assert!(msg.ends_with("é…"), "{msg}");
    }
}
