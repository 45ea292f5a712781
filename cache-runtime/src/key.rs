//! Cache keys: rendering, escaping, and the stored key layout.
//!
//! A stored key is `prefix:{namespace:key}`. The braces are a Redis Cluster hash tag: the
//! entry and its bookkeeping keys (`…}:g` its generation, `…}:r` a refresh claim, `…}:l` a
//! `lock`) always share a slot.
//!
//! A key has **representations**: a service fn's value is stored under the key itself
//! (`prefix:{namespace:key}`); a handler's response under the key followed by `:h` and one
//! `.<header>=<hash>` per `vary` header (`prefix:{namespace:key}:h.authorization=…`). A fn and
//! a handler on one key therefore never overwrite each other, and never share a single-flight.
//! Every representation other than the fn's value records the key's implicit tag
//! (`key_tag`): invalidating the key drops its value and bumps that tag, which ends every
//! other representation at once (each `vary` variant included).
//!
//! Values put into a key through placeholders are escaped with percent-encoding, so they can
//! never contain the separators `:` `{` `}`, glob characters, whitespace or control bytes:
//! `id = "1:admin"` renders as `1%3Aadmin` and can never produce another entry's key.

use std::fmt::{self, Write as _};

/// Appends `value` to `out`, percent-encoding every byte a key separator, a glob pattern or
/// the Redis protocol could misread.
///
/// ```
/// let mut key = String::from("user:");
/// cache_runtime::key::escape_into(&mut key, "1:admin {x}");
/// assert_eq!(key, "user:1%3Aadmin%20%7Bx%7D");
/// ```
pub fn escape_into(out: &mut String, value: &str) {
    let bytes = value.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if needs_escape(b) {
            out.push_str(&value[start..i]);
            push_escaped(out, b);
            start = i + 1;
        }
    }
    out.push_str(&value[start..]);
}

#[inline]
fn needs_escape(b: u8) -> bool {
    !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/' | b'@' | b'+' | b'=' | b',') || b >= 0x80)
}

fn push_escaped(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(b >> 4)] as char);
    out.push(HEX[usize::from(b & 0xF)] as char);
}

/// `fmt::Write` adapter escaping everything written through it.
struct Escaper<'a>(&'a mut String);

impl fmt::Write for Escaper<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_into(self.0, s);
        Ok(())
    }
}

/// Whether `s` may be used verbatim as a key prefix or a namespace: non-empty ASCII letters,
/// digits and `-_./@+=,` (no separator, brace, glob character or whitespace).
///
/// ```
/// assert!(cache_runtime::key::is_valid_segment("users-v2"));
/// assert!(!cache_runtime::key::is_valid_segment("a:b"));
/// ```
pub fn is_valid_segment(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii() && !needs_escape(b))
}

/// `n` in decimal ASCII digits, written at the end of `digits` (no `fmt`: this is on every
/// hit).
pub(crate) fn decimal(mut n: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &digits[i..]
}

/// Builds one stored key. Used by the code `#[cached]` generates; the plain API builds keys
/// with it too, so both agree on the layout.
#[doc(hidden)]
#[derive(Debug)]
pub struct KeyWriter {
    buf: String,
    first_arg: bool,
}

impl KeyWriter {
    /// Starts `prefix:{namespace:`.
    pub(crate) fn new(prefix: &str, namespace: &str, capacity_hint: usize) -> Self {
        let mut buf = take_buffer(prefix.len() + namespace.len() + capacity_hint + 4);
        buf.push_str(prefix);
        buf.push_str(":{");
        buf.push_str(namespace);
        buf.push(':');
        KeyWriter { buf, first_arg: true }
    }

    #[doc(hidden)]
    /// A tag: rendered like a key, without prefix or namespace.
    pub fn tag(capacity_hint: usize) -> Self {
        KeyWriter { buf: String::with_capacity(capacity_hint), first_arg: true }
    }

    /// Ends a tag started with [`KeyWriter::tag`].
    pub fn finish_tag(self) -> String {
        self.buf
    }

    /// Literal text from a key template (validated at compile time).
    #[inline]
    pub fn lit(&mut self, s: &str) {
        self.buf.push_str(s);
    }

    /// A key given to the plain API, in the grammar keys are stored and listed in: a `%`
    /// followed by two hex digits is an escape and is kept (its digits in upper case); `:`
    /// separates segments as in a template; every other byte a placeholder's value would have
    /// escaped is escaped the same way. So `"user:a b"` and `"user:a%20b"` are both the key
    /// `#[cached(key = "user:<name>")]` gives the name `a b`, `"user:it's"` the one it gives
    /// `it's`, and every key `Namespace::keys` or `/admin/keys` lists names its own entry. A
    /// value with a `:` is written escaped (`"user:a%3Ab"` for the name `a:b`), or rendered
    /// by the fn's typed key.
    pub fn raw(&mut self, s: &str) {
        let bytes = s.as_bytes();
        let mut start = 0;
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            let escape = b == b'%'
                && bytes.len() > i + 2
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit();
            if escape || (b != b':' && needs_escape(b)) {
                self.buf.push_str(&s[start..i]);
                if escape {
                    self.buf.push('%');
                    self.buf.push(char::from(bytes[i + 1].to_ascii_uppercase()));
                    self.buf.push(char::from(bytes[i + 2].to_ascii_uppercase()));
                    i += 3;
                } else {
                    push_escaped(&mut self.buf, b);
                    i += 1;
                }
                start = i;
            } else {
                i += 1;
            }
        }
        self.buf.push_str(&s[start..]);
    }

    /// A placeholder value, rendered with `Display` and escaped.
    #[inline]
    pub fn display<D: fmt::Display + ?Sized>(&mut self, value: &D) {
        // Writing into a String cannot fail.
        let _ = write!(Escaper(&mut self.buf), "{value}");
    }

    /// An integer placeholder value: decimal digits, no formatting machinery.
    #[inline]
    pub fn uint(&mut self, n: u64) {
        let mut digits = [0u8; 20];
        // ASCII digits only.
        self.buf.push_str(std::str::from_utf8(decimal(n, &mut digits)).unwrap_or_default());
    }

    /// A signed integer placeholder value.
    #[inline]
    pub fn int(&mut self, n: i64) {
        if n < 0 {
            self.buf.push('-');
        }
        self.uint(n.unsigned_abs());
    }

    /// A text placeholder value, escaped.
    #[inline]
    pub fn text(&mut self, s: &str) {
        escape_into(&mut self.buf, s);
    }

    /// One argument of a default key: JSON-encoded (unambiguous for every type), escaped,
    /// `:`-separated from the previous one.
    pub fn arg<S: KeyArg + ?Sized>(&mut self, value: &S) {
        if !self.first_arg {
            self.buf.push(':');
        }
        self.first_arg = false;
        match serde_json::to_string(value) {
            Ok(json) => escape_into(&mut self.buf, &json),
            // A value whose Serialize impl fails still needs a key that no other value has.
            Err(err) => {
                self.buf.push_str("!err!");
                escape_into(&mut self.buf, &err.to_string());
            }
        }
    }

    pub fn finish(mut self) -> String {
        self.buf.push('}');
        self.buf
    }
}

thread_local! {
    /// Key buffers given back after a hit: a hit then allocates nothing for its key.
    static BUFFERS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn take_buffer(capacity: usize) -> String {
    let reused = BUFFERS.with(|b| b.borrow_mut().pop());
    match reused {
        Some(mut buf) => {
            buf.clear();
            buf.reserve(capacity);
            buf
        }
        None => String::with_capacity(capacity),
    }
}

/// Gives a key's buffer back for the next key built on this thread (when the key was only
/// read, not stored).
pub(crate) fn recycle(key: String) {
    if key.capacity() <= 1024 {
        BUFFERS.with(|b| {
            let mut b = b.borrow_mut();
            if b.len() < 8 {
                b.push(key);
            }
        });
    }
}

/// What follows a key's `}` in the stored key of a handler's response (see the module docs).
pub(crate) const RESPONSE: &str = ":h";

/// The stored key of the representation `stored` belongs to: `prefix:{namespace:key}` (the
/// key's own value: `stored` itself).
pub(crate) fn base(stored: &str) -> &str {
    // The prefix and namespace are segments without braces, and a key's own braces are
    // escaped: the first `}` closes the key.
    match stored.find('}') {
        Some(end) => &stored[..=end],
        None => stored,
    }
}

/// Whether `stored` names a representation of its key other than the key's own value (a
/// handler's response): one that records the key's implicit tag.
pub(crate) fn is_representation(stored: &str) -> bool {
    base(stored).len() < stored.len()
}

/// The implicit tag of every representation of `stored`'s key that is not the key's own value:
/// `%%k:namespace:key`. `%%` starts no rendered tag (see `store::namespace_tag`), so this never
/// meets a user's tag or a namespace's.
pub(crate) fn key_tag(stored: &str) -> String {
    let base = base(stored);
    let inner = base.find('{').map_or(base, |open| &base[open + 1..base.len().saturating_sub(1)]);
    let mut tag = String::with_capacity(inner.len() + 4);
    tag.push_str("%%k:");
    tag.push_str(inner);
    tag
}

/// The glob pattern matching every stored key of a namespace (for `SCAN MATCH`).
#[cfg(feature = "redis")]
pub(crate) fn namespace_pattern(prefix: &str, namespace: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + namespace.len() + 5);
    for part in [prefix, ":{", namespace, ":"] {
        for c in part.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
    }
    out.push('*');
    out
}

/// The key prefix every stored key of a namespace starts with.
pub(crate) fn namespace_start(prefix: &str, namespace: &str) -> String {
    format!("{prefix}:{{{namespace}:")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(parts: &[&str]) -> String {
        let mut k = KeyWriter::new("p", "ns", 0);
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                k.lit(":");
            }
            k.display(part);
        }
        k.finish()
    }

    #[test]
    fn escaped_values_never_collide() {
        assert_ne!(render(&["1:admin", ""]), render(&["1", ":admin"]));
        assert_ne!(render(&["1:admin"]), render(&["1", "admin"]));
        assert_eq!(render(&["1:admin"]), "p:{ns:1%3Aadmin}");
        assert_eq!(render(&["%3A"]), "p:{ns:%253A}");
    }

    #[test]
    fn default_key_args_are_unambiguous() {
        let key = |a: &str, b: &str| {
            let mut k = KeyWriter::new("p", "ns", 0);
            k.arg(a);
            k.arg(b);
            k.finish()
        };
        assert_ne!(key("1:admin", ""), key("1", ":admin"));
        assert_ne!(key("a\"", "b"), key("a", "\"b"));
    }

    #[test]
    #[cfg(feature = "redis")]
    fn namespace_pattern_escapes_globs() {
        assert_eq!(namespace_pattern("app", "users"), "app:{users:*");
        assert_eq!(namespace_pattern("a*", "n?"), "a\\*:{n\\?:*");
    }

    #[test]
    fn representations_share_their_key_and_its_tag() {
        let value = render(&["cart", "alice"]);
        let response = format!("{value}{RESPONSE}");
        let varied = format!("{response}.authorization=00ff");
        assert_eq!(value, "p:{ns:cart:alice}");
        for stored in [&value, &response, &varied] {
            assert_eq!(base(stored), value);
            assert_eq!(key_tag(stored), "%%k:ns:cart:alice");
        }
        assert!(!is_representation(&value));
        assert!(is_representation(&response) && is_representation(&varied));
        // An escaped brace in a value never ends the key early.
        let hostile = render(&["a}b"]);
        assert_eq!(base(&format!("{hostile}{RESPONSE}")), hostile);
    }

    #[test]
    fn raw_keys_keep_separators_but_not_braces() {
        let mut k = KeyWriter::new("p", "_", 0);
        k.raw("user:1 {x}");
        assert_eq!(k.finish(), "p:{_:user:1%20%7Bx%7D}");
    }

    /// Issue 27, finding 4: a plain key named the macro's entry only for some values, and a
    /// listed key (escaped) never.
    #[test]
    fn a_plain_key_is_the_key_a_template_renders_and_a_listed_key_is_itself() {
        let plain = |s: &str| {
            let mut k = KeyWriter::new("p", "ns", 0);
            k.raw(s);
            k.finish()
        };
        for name in ["a b", "it's", "x*y?", "50%", "a%b", "é ü", "[x]", "a\"b", "\u{0}"] {
            let rendered = render(&["user", name]);
            assert_eq!(plain(&format!("user:{name}")), rendered, "{name:?} written as is");
            let listed = rendered.strip_prefix("p:{ns:").and_then(|k| k.strip_suffix('}')).unwrap();
            assert_eq!(plain(listed), rendered, "{name:?} as listed ({listed})");
        }
        // A `:` in a value is written escaped, in either case of hex digit.
        assert_eq!(plain("user:a%3Ab"), render(&["user", "a:b"]));
        assert_eq!(plain("user:a%3ab"), render(&["user", "a:b"]));
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    fn hostile() -> impl Strategy<Value = String> {
        proptest::string::string_regex("([*{}:% \\n\\t\\r\\\\?\\[\\]\"]|\\PC){0,40}").unwrap()
    }

    proptest! {
        /// Two different argument lists never share a key, whatever their values.
        #[test]
        fn distinct_values_give_distinct_keys(a in proptest::collection::vec(hostile(), 1..4), b in proptest::collection::vec(hostile(), 1..4)) {
            let render = |values: &[String]| {
                let mut k = KeyWriter::new("p", "ns", 0);
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        k.lit(":");
                    }
                    k.display(v);
                }
                k.finish()
            };
            let arg_key = |values: &[String]| {
                let mut k = KeyWriter::new("p", "ns", 0);
                for v in values {
                    k.arg(v);
                }
                k.finish()
            };
            if a != b {
                prop_assert_ne!(arg_key(&a), arg_key(&b));
                if a.len() == b.len() {
                    prop_assert_ne!(render(&a), render(&b));
                }
            }
        }

        /// Escaped values never contain what breaks the layout or the protocol.
        #[test]
        fn escaped_values_are_safe(v in hostile()) {
            let mut out = String::new();
            escape_into(&mut out, &v);
            const UNSAFE: [char; 12] = [':', '{', '}', '*', '?', '[', ']', ' ', '\n', '\r', '\\', '"'];
            let safe = !out.contains(UNSAFE);
            prop_assert!(safe, "escaped {:?} as {:?}", v, out);
        }
    }
}

/// A placeholder value as the generated code passes it, `(&&Part(&value)).put(&mut key)`:
/// integers and text are written directly, anything else through `Display`. Method
/// resolution picks the most specific impl (the receiver `&&Part` matches [`PartInt`] (on
/// `&Part`) by value, then [`PartText`] (on `&&Part`) by autoref, then [`PartDisplay`] (on
/// `Part`) after a deref); all three render the same text.
#[doc(hidden)]
#[derive(Debug)]
pub struct Part<'a, T: ?Sized>(pub &'a T);

/// See [`Part`].
#[doc(hidden)]
pub trait PartInt {
    fn put(&self, key: &mut KeyWriter);
}

/// See [`Part`].
#[doc(hidden)]
pub trait PartText {
    fn put(&self, key: &mut KeyWriter);
}

/// A value a default key can encode: any `Serialize` type. (A trait of its own only for the
/// compiler's message when a parameter is not `Serialize`: most often a connection or a client,
/// which belongs in `skip`.)
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "a parameter of type `{Self}` cannot be part of the default cache key: it is not `Serialize`",
    label = "the default key encodes this parameter (every parameter not in `skip`)",
    note = "if it does not change the result (a connection, a client, a pool, a handle), add it to `skip = [...]`; \
            otherwise give a `key = \"…\"` that names what does change it, or make its type `Serialize`"
)]
pub trait KeyArg: serde::Serialize {}

impl<T: serde::Serialize + ?Sized> KeyArg for T {}

/// See [`Part`]. Implemented for every `Part<T>`; its `put` needs `T: KeyDisplay`, so a value
/// that is not `Display` is reported as such (not as a method that does not exist).
#[doc(hidden)]
pub trait PartDisplay<T: ?Sized> {
    fn put(&self, key: &mut KeyWriter)
    where
        T: KeyDisplay;
}

/// A value a key placeholder can render: any `Display` type. (A trait of its own only for the
/// compiler's message when a placeholder's value is not `Display`.)
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be rendered into a cache key: a key placeholder's value must be `Display`",
    label = "a placeholder of this key has a value of type `{Self}`",
    note = "ways out: name a field of it that is `Display` (`<param.field>`); leave out `key` (the default key \
            encodes every parameter); `skip` the parameter and key on something else; on a handler, list the \
            request headers it depends on in `vary = [\"…\"]`"
)]
pub trait KeyDisplay: fmt::Display {}

impl<T: fmt::Display + ?Sized> KeyDisplay for T {}

macro_rules! part_ints {
    ($($t:ty => $method:ident as $as:ty),*) => {$(
        impl PartInt for &Part<'_, $t> {
            #[inline]
            fn put(&self, key: &mut KeyWriter) {
                key.$method(<$as>::from(*self.0));
            }
        }
    )*};
}

part_ints!(u8 => uint as u64, u16 => uint as u64, u32 => uint as u64, u64 => uint as u64,
    i8 => int as i64, i16 => int as i64, i32 => int as i64, i64 => int as i64);

impl PartInt for &Part<'_, usize> {
    #[inline]
    fn put(&self, key: &mut KeyWriter) {
        key.uint(*self.0 as u64);
    }
}

impl PartInt for &Part<'_, isize> {
    #[inline]
    fn put(&self, key: &mut KeyWriter) {
        key.int(*self.0 as i64);
    }
}

impl PartText for &&Part<'_, str> {
    #[inline]
    fn put(&self, key: &mut KeyWriter) {
        key.text(self.0);
    }
}

impl PartText for &&Part<'_, String> {
    #[inline]
    fn put(&self, key: &mut KeyWriter) {
        key.text(self.0);
    }
}

impl PartText for &&Part<'_, &str> {
    #[inline]
    fn put(&self, key: &mut KeyWriter) {
        key.text(self.0);
    }
}

impl<T: ?Sized> PartDisplay<T> for Part<'_, T> {
    #[inline]
    fn put(&self, key: &mut KeyWriter)
    where
        T: KeyDisplay,
    {
        key.display(self.0);
    }
}

#[cfg(test)]
mod part_tests {
    use super::*;

    fn render(f: impl FnOnce(&mut KeyWriter)) -> String {
        let mut w = KeyWriter::tag(16);
        f(&mut w);
        w.finish_tag()
    }

    #[test]
    // The borrows are what the generated code writes: they choose the impl.
    #[allow(clippy::needless_borrow)]
    fn every_part_renders_like_display_escaped() {
        struct Custom;
        impl fmt::Display for Custom {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a b")
            }
        }
        let text = String::from("1:admin");
        let s: &str = "x{y}";
        assert_eq!(render(|w| (&&Part(&42u64)).put(w)), "42");
        assert_eq!(render(|w| (&&Part(&0u8)).put(w)), "0");
        assert_eq!(render(|w| (&&Part(&-7i32)).put(w)), "-7");
        assert_eq!(render(|w| (&&Part(&i64::MIN)).put(w)), i64::MIN.to_string());
        assert_eq!(render(|w| (&&Part(&u64::MAX)).put(w)), u64::MAX.to_string());
        assert_eq!(render(|w| (&&Part(&usize::MAX)).put(w)), usize::MAX.to_string());
        assert_eq!(render(|w| (&&Part(&text)).put(w)), "1%3Aadmin");
        assert_eq!(render(|w| (&&Part(&s)).put(w)), "x%7By%7D");
        assert_eq!(render(|w| (&&Part(s)).put(w)), "x%7By%7D");
        assert_eq!(render(|w| (&&Part(&Custom)).put(w)), "a%20b");
        assert_eq!(render(|w| (&&Part(&1.5f64)).put(w)), "1.5");
    }
}
