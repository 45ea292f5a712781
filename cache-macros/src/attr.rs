//! The options of `#[cached(...)]` and `#[invalidates(...)]`: one table, and the parser it drives.
//!
//! [`OPTIONS`] is the single source for which options exist, which macro takes each, which
//! only apply to axum handlers and what value each takes: parsing, the "unknown option" message
//! and the README's option tables (checked by a test below) all follow it. Every option is
//! parsed into a value with the span of the token that set it, so each error lands on the
//! option that caused it; all errors of one attribute are reported together.

use std::ops::Range;

use proc_macro2::Span;
use syn::ext::IdentExt as _;
use syn::parse::{ParseStream, Parser as _};
use syn::spanned::Spanned as _;
use syn::{Expr, Ident, Lit, LitStr, Path, Token};

use crate::template::{self, Segment};

/// The attribute macros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Macro {
    Cached,
    Invalidates,
}

impl Macro {
    fn name(self) -> &'static str {
        match self {
            Macro::Cached => "cached",
            Macro::Invalidates => "invalidates",
        }
    }
}

/// The fns an option applies to (the README's "applies to" column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AppliesTo {
    AnyFn,
    /// Only axum handlers: on any other fn the option is an error.
    Handlers,
}

use AppliesTo::{AnyFn, Handlers};

/// One option: its name, the macros that take it, the fns it applies to, and what value it
/// takes (which also says where the parsed value goes).
pub(crate) struct OptionDef {
    pub(crate) name: &'static str,
    pub(crate) macros: &'static [Macro],
    pub(crate) applies_to: AppliesTo,
    pub(crate) kind: Kind,
}

/// What an option's value is. Each kind has one parser; its function stores the parsed value.
pub(crate) enum Kind {
    /// Written alone, `= true` or `= false` (which sets nothing).
    Flag(fn(&mut Options, Span)),
    /// A whole number of seconds: a literal of at least 1, or a constant expression of type `u64`
    /// (seconds) or `Duration` (whole seconds).
    Secs(fn(&mut Options, Spanned<Secs>)),
    /// A flag, or a number of seconds. `other`: the message for a literal that is neither a
    /// `bool` nor an integer (`None`: the message of [`Kind::Secs`]).
    FlagOrSecs { flag: fn(&mut Options, Span), secs: fn(&mut Options, Spanned<Secs>), other: Option<&'static str> },
    /// A positive number literal.
    Positive(fn(&mut Options, Spanned<f64>)),
    /// One key template in a string.
    Template(fn(&mut Options, TemplateLit)),
    /// A key template, or a list of them.
    Templates(fn(&mut Options, Vec<TemplateLit>)),
    /// One key segment in a string (a namespace).
    Segment(fn(&mut Options, Spanned<String>)),
    /// A field name in a string.
    Field(fn(&mut Options, Spanned<String>)),
    /// A path in a string.
    Path(fn(&mut Options, Path)),
    /// A parameter name, or a list of them.
    Params(fn(&mut Options, Vec<Ident>)),
    /// A request header name, or a list of them.
    Headers(fn(&mut Options, Spanned<Vec<String>>)),
    /// Any expression.
    Expr(fn(&mut Options, Expr)),
    /// A name for an item the macro generates.
    Name(fn(&mut Options, Ident)),
}

const CACHED: &[Macro] = &[Macro::Cached];
const INVALIDATES: &[Macro] = &[Macro::Invalidates];
const BOTH: &[Macro] = &[Macro::Cached, Macro::Invalidates];

const fn def(name: &'static str, macros: &'static [Macro], applies_to: AppliesTo, kind: Kind) -> OptionDef {
    OptionDef { name, macros, applies_to, kind }
}

/// Every option, in the order the "unknown option" message lists them.
#[rustfmt::skip]
pub(crate) const OPTIONS: &[OptionDef] = &[
    def("expire", CACHED, AnyFn, Kind::Secs(|o, v| o.expire = Some(v))),
    def("key", CACHED, AnyFn, Kind::Template(|o, v| o.key = Some(v))),
    def("key", INVALIDATES, AnyFn, Kind::Templates(|o, v| o.keys.extend(v))),
    def("keys", INVALIDATES, AnyFn, Kind::Templates(|o, v| o.keys.extend(v))),
    def("tags", BOTH, AnyFn, Kind::Templates(|o, v| o.tags.extend(v))),
    def("namespace", BOTH, AnyFn, Kind::Segment(|o, v| o.namespace = Some(v))),
    def("in_namespace", INVALIDATES, AnyFn, Kind::Segment(|o, v| o.in_namespace = Some(v))),
    def("skip", CACHED, AnyFn, Kind::Params(|o, v| o.skip = v)),
    def("cache_none", CACHED, AnyFn, Kind::FlagOrSecs {
        flag: |o, span| o.cache_none = Some(Spanned { value: CacheNone::SameTtl, span }),
        secs: |o, v| o.cache_none = Some(Spanned { value: CacheNone::Ttl(v.value), span: v.span }),
        other: Some("`cache_none` expects `true` or a ttl in seconds for cached `None`s, e.g. `cache_none = 10`"),
    }),
    def("before", INVALIDATES, AnyFn, Kind::Flag(|o, span| o.before = Some(span))),
    def("cache", BOTH, AnyFn, Kind::Expr(|o, v| o.cache = Some(v))),
    def("crate", BOTH, AnyFn, Kind::Path(|o, v| o.krate = Some(v))),
    def("http", BOTH, AnyFn, Kind::Flag(|o, span| o.http = Some(span))),
    def("public", CACHED, Handlers, Kind::Flag(|o, span| o.public = Some(span))),
    def("private", CACHED, Handlers, Kind::Flag(|o, span| o.private = Some(span))),
    def("s_maxage", CACHED, Handlers, Kind::Secs(|o, v| o.s_maxage = Some(v))),
    def("cdn_max_age", CACHED, Handlers, Kind::Secs(|o, v| o.cdn_max_age = Some(v))),
    def("vary", CACHED, Handlers, Kind::Headers(|o, v| o.vary = Some(v))),
    def("last_modified", CACHED, Handlers, Kind::Field(|o, v| o.last_modified = Some(v))),
    def("honor_no_cache", CACHED, Handlers, Kind::Flag(|o, span| o.honor_no_cache = Some(span))),
    def("cdn_tags", CACHED, Handlers, Kind::Flag(|o, span| o.cdn_tags = Some(span))),
    def("stale", CACHED, AnyFn, Kind::Secs(|o, v| o.stale = Some(v))),
    def("stale_if_error", CACHED, AnyFn, Kind::Secs(|o, v| o.stale_if_error = Some(v))),
    // `early` is β = 1; `beta = f` sets β.
    def("early", CACHED, AnyFn, Kind::Flag(|o, span| o.early = Some(Spanned { value: 1.0, span }))),
    def("beta", CACHED, AnyFn, Kind::Positive(|o, v| o.early = Some(v))),
    // `lock` holds the cross-replica lock 10 s at most, `lock = N` N s.
    def("batch", CACHED, AnyFn, Kind::Flag(|o, span| o.batch = Some(span))),
    def("unless", CACHED, AnyFn, Kind::Expr(|o, v| o.unless = Some(v))),
    def("expire_with", CACHED, AnyFn, Kind::Expr(|o, v| o.expire_with = Some(v))),
    def("lock", CACHED, AnyFn, Kind::FlagOrSecs {
        flag: |o, span| o.lock = Some(Spanned { value: Secs::Lit(10), span }),
        secs: |o, v| o.lock = Some(v),
        other: None,
    }),
    def("key_fn", CACHED, AnyFn, Kind::Name(|o, v| o.key_fn = Some(v))),
];

/// The options `mac` takes, in table order.
pub(crate) fn options_of(mac: Macro) -> impl Iterator<Item = &'static OptionDef> {
    OPTIONS.iter().filter(move |o| o.macros.contains(&mac))
}

/// A value with the span of the option that set it.
#[derive(Debug, Clone)]
pub(crate) struct Spanned<T> {
    pub(crate) value: T,
    pub(crate) span: Span,
}

/// A key or tag template, parsed, and the string literal it was written in.
#[derive(Debug, Clone)]
pub(crate) struct TemplateLit {
    pub(crate) segments: Vec<Segment>,
    pub(crate) lit: LitStr,
}

impl TemplateLit {
    /// Where errors about the whole template go: the string literal.
    pub(crate) fn span(&self) -> Span {
        self.lit.span()
    }

    /// The span of the template text at `at` (a byte range of the template), inside the string
    /// literal. Only a nightly compiler gives spans inside a literal (`Literal::subspan`), and
    /// only a literal whose text is the template as is (no escapes) maps byte for byte: `None`
    /// otherwise.
    pub(crate) fn subspan(&self, at: Range<usize>) -> Option<Span> {
        let token = self.lit.token();
        let source = token.to_string();
        let value = self.lit.value();
        // `"…"`, `r"…"`, `r#"…"#`: the value, as is, between the opening quote (after any
        // prefix) and the closing one (before any `#`).
        let open = source.find('"')? + 1;
        let close = source.get(open + value.len()..)?;
        let as_is = source.get(open..open + value.len())? == value
            && close.starts_with('"')
            && close[1..].bytes().all(|b| b == b'#');
        as_is.then(|| token.subspan(open + at.start..open + at.end)).flatten()
    }
}

/// `cache_none = true` uses the entry ttl; `cache_none = <secs>` gives negative entries their own.
#[derive(Debug, Clone)]
pub(crate) enum CacheNone {
    SameTtl,
    Ttl(Secs),
}

/// A number of seconds given to an option: a literal (checked here), or a constant expression
/// (`expire = TTL`, `expire = 5 * 60`, `expire = Duration::from_secs(60)`): the compiler checks
/// that it is a `u64` or a `Duration` constant, and the runtime's `__private::seconds`, evaluated
/// in a `const`, that it is whole seconds and at least 1.
#[derive(Debug, Clone)]
pub(crate) enum Secs {
    Lit(u64),
    Const { expr: Box<Expr>, option: &'static str },
}

/// The options of one attribute as written, each with its span; `check` decides what they
/// mean together and for this fn.
#[derive(Debug)]
pub(crate) struct Options {
    /// Where the attribute's arguments start.
    pub(crate) span: Span,
    pub(crate) expire: Option<Spanned<Secs>>,
    /// `#[cached]`'s one key template.
    pub(crate) key: Option<TemplateLit>,
    /// `#[invalidates]`'s keys (`key` and `keys`).
    pub(crate) keys: Vec<TemplateLit>,
    pub(crate) tags: Vec<TemplateLit>,
    pub(crate) namespace: Option<Spanned<String>>,
    /// `#[cached]`: the name of the generated fn that renders the key.
    pub(crate) key_fn: Option<Ident>,
    /// `#[invalidates]`: the namespace its `key` / `keys` are in.
    pub(crate) in_namespace: Option<Spanned<String>>,
    pub(crate) skip: Vec<Ident>,
    pub(crate) cache_none: Option<Spanned<CacheNone>>,
    pub(crate) before: Option<Span>,
    pub(crate) cache: Option<Expr>,
    pub(crate) krate: Option<Path>,
    /// `http`: force handler mode.
    pub(crate) http: Option<Span>,
    pub(crate) public: Option<Span>,
    pub(crate) private: Option<Span>,
    pub(crate) s_maxage: Option<Spanned<Secs>>,
    pub(crate) cdn_max_age: Option<Spanned<Secs>>,
    pub(crate) vary: Option<Spanned<Vec<String>>>,
    pub(crate) last_modified: Option<Spanned<String>>,
    pub(crate) honor_no_cache: Option<Span>,
    /// `cdn_tags`: the entry's tags go out as `Surrogate-Key` / `Cache-Tag`.
    pub(crate) cdn_tags: Option<Span>,
    pub(crate) stale: Option<Spanned<Secs>>,
    pub(crate) stale_if_error: Option<Spanned<Secs>>,
    /// `early` (β = 1) or `beta = f`.
    pub(crate) early: Option<Spanned<f64>>,
    /// `lock` (10 s) or `lock = N`: seconds the cross-replica lock is held at most.
    pub(crate) lock: Option<Spanned<Secs>>,
    /// `batch`: the fn loads many elements at once (one parameter is the batch).
    pub(crate) batch: Option<Span>,
    /// `unless = <expr>`: a value for which it says `true` is not stored.
    pub(crate) unless: Option<Expr>,
    /// `expire_with = <expr>`: an entry's lifetime, from its value.
    pub(crate) expire_with: Option<Expr>,
    /// The first handler-only option written, with the span of its name.
    pub(crate) first_handler_option: Option<(&'static str, Span)>,
}

impl Options {
    fn new(span: Span) -> Self {
        Options {
            span,
            expire: None,
            key: None,
            keys: Vec::new(),
            tags: Vec::new(),
            namespace: None,
            in_namespace: None,
            key_fn: None,
            skip: Vec::new(),
            cache_none: None,
            before: None,
            cache: None,
            krate: None,
            http: None,
            public: None,
            private: None,
            s_maxage: None,
            cdn_max_age: None,
            vary: None,
            last_modified: None,
            honor_no_cache: None,
            cdn_tags: None,
            stale: None,
            stale_if_error: None,
            early: None,
            lock: None,
            batch: None,
            unless: None,
            expire_with: None,
            first_handler_option: None,
        }
    }
}

/// Collects errors so one compile reports every bad option.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, err: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(err),
            None => self.0 = Some(err),
        }
    }

    pub(crate) fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

/// Parses the arguments of `#[mac(...)]`: `name` or `name = value`, comma-separated. An
/// unknown name stops parsing (the message lists the valid ones); duplicates and bad values
/// are collected.
pub(crate) fn parse(mac: Macro, args: proc_macro2::TokenStream) -> syn::Result<Options> {
    (|input: ParseStream<'_>| parse_options(mac, input)).parse2(args)
}

fn parse_options(mac: Macro, input: ParseStream<'_>) -> syn::Result<Options> {
    let mut options = Options::new(input.span());
    let mut seen: Vec<&str> = Vec::new();
    let mut errors = Errors::default();
    while !input.is_empty() {
        let name = Ident::parse_any(input)?;
        let Some(def) = options_of(mac).find(|o| name == o.name) else {
            let valid: Vec<&str> = options_of(mac).map(|o| o.name).collect();
            return Err(syn::Error::new(
                name.span(),
                format!("unknown option `{name}`; the options of `#[{}]` are: {}", mac.name(), valid.join(", ")),
            ));
        };
        if seen.contains(&def.name) {
            errors.push(syn::Error::new(name.span(), format!("duplicate option `{name}`")));
        }
        seen.push(def.name);
        if def.applies_to == Handlers && options.first_handler_option.is_none() {
            options.first_handler_option = Some((def.name, name.span()));
        }
        match def.kind {
            // A flag alone means `= true`.
            Kind::Flag(set) | Kind::FlagOrSecs { flag: set, .. } if input.is_empty() || input.peek(Token![,]) => {
                set(&mut options, name.span());
            }
            _ => {
                input.parse::<Token![=]>()?;
                if let Err(err) = parse_value(def, input, &mut options) {
                    errors.push(err);
                }
            }
        }
        if input.is_empty() {
            break;
        }
        input.parse::<Token![,]>()?;
    }
    errors.finish()?;
    Ok(options)
}

/// Parses the value after `name =` as `def.kind` says, and stores it.
fn parse_value(def: &OptionDef, input: ParseStream<'_>, options: &mut Options) -> syn::Result<()> {
    let name = def.name;
    match def.kind {
        Kind::Flag(set) => {
            if let Some(span) = flag_value(name, &input.parse()?)? {
                set(options, span);
            }
        }
        Kind::Secs(set) => match literal_or_const(name, input)? {
            Ok(lit) => set(options, Spanned { value: int_secs(name, &lit)?, span: lit.span() }),
            Err(secs) => set(options, secs),
        },
        Kind::FlagOrSecs { flag, secs, other } => match literal_or_const(name, input)? {
            Ok(Lit::Bool(b)) => {
                if b.value {
                    flag(options, b.span);
                }
            }
            Ok(lit) => match other {
                Some(message) if !matches!(lit, Lit::Int(_)) => return Err(syn::Error::new(lit.span(), message)),
                _ => secs(options, Spanned { value: int_secs(name, &lit)?, span: lit.span() }),
            },
            Err(value) => secs(options, value),
        },
        Kind::Positive(set) => set(options, positive(name, &input.parse()?)?),
        Kind::Template(set) => {
            let s = lit_str(name, &input.parse()?, "\"user:<id>\"")?;
            set(options, template(&s)?);
        }
        Kind::Templates(set) => set(options, templates(name, input)?),
        Kind::Segment(set) => set(options, segment(name, &input.parse()?)?),
        Kind::Field(set) => {
            let s = lit_str(name, &input.parse()?, "\"updated_at\"")?;
            if s.value().is_empty() {
                return Err(syn::Error::new(s.span(), format!("`{name}` names a field of the response body")));
            }
            set(options, Spanned { value: s.value(), span: s.span() });
        }
        Kind::Path(set) => set(options, lit_str(name, &input.parse()?, "\"my_cache\"")?.parse()?),
        Kind::Params(set) => set(options, params(input)?),
        Kind::Headers(set) => set(options, headers(input)?),
        Kind::Expr(set) => set(options, input.parse()?),
        // One token, consumed whatever it is (so the next option still parses).
        Kind::Name(set) => match input.parse::<proc_macro2::TokenTree>()? {
            proc_macro2::TokenTree::Ident(ident) => set(options, ident),
            other => {
                return Err(syn::Error::new(
                    other.span(),
                    format!("`{name}` expects a name for the fn it generates, e.g. `{name} = user_key`"),
                ))
            }
        },
    }
    Ok(())
}

/// `true` sets a flag (at the literal), `false` leaves it unset.
fn flag_value(name: &str, lit: &Lit) -> syn::Result<Option<Span>> {
    match lit {
        Lit::Bool(b) => Ok(b.value.then_some(b.span)),
        other => Err(syn::Error::new(other.span(), format!("`{name}` expects `true` or `false`, or nothing"))),
    }
}

/// A literal, or (`Err`) a constant expression (`TTL`, `5 * 60`, `crate::ttl::USER`,
/// `Duration::from_secs(60)`) whose checks are left to the compiler.
fn literal_or_const(option: &'static str, input: ParseStream<'_>) -> syn::Result<Result<Lit, Spanned<Secs>>> {
    Ok(match input.parse::<Expr>()? {
        Expr::Lit(syn::ExprLit { lit, attrs }) if attrs.is_empty() => Ok(lit),
        expr => {
            let span = expr.span();
            Err(Spanned { value: Secs::Const { expr: Box::new(expr), option }, span })
        }
    })
}

fn int_secs(name: &str, lit: &Lit) -> syn::Result<Secs> {
    let Lit::Int(int) = lit else {
        return Err(syn::Error::new(
            lit.span(),
            format!(
                "`{name}` expects a whole number of seconds: a literal (`{name} = 60`), a `u64` constant \
                 (`{name} = TTL`, `{name} = 5 * 60`) or a `Duration` (`{name} = Duration::from_secs(60)`)"
            ),
        ));
    };
    let secs: u64 = int.base10_parse()?;
    if secs == 0 {
        return Err(syn::Error::new(lit.span(), format!("`{name}` must be at least 1 second")));
    }
    Ok(Secs::Lit(secs))
}

fn positive(name: &str, lit: &Lit) -> syn::Result<Spanned<f64>> {
    let value = match lit {
        Lit::Float(f) => f.base10_parse::<f64>()?,
        Lit::Int(i) => i.base10_parse::<f64>()?,
        other => {
            return Err(syn::Error::new(
                other.span(),
                format!("`{name}` expects a positive number, e.g. `{name} = 1.5`"),
            ))
        }
    };
    if !(value > 0.0 && value.is_finite()) {
        return Err(syn::Error::new(lit.span(), format!("`{name}` must be a positive number")));
    }
    Ok(Spanned { value, span: lit.span() })
}

fn lit_str(name: &str, lit: &Lit, example: &str) -> syn::Result<LitStr> {
    match lit {
        Lit::Str(s) => Ok(s.clone()),
        other => Err(syn::Error::new(other.span(), format!("`{name}` expects a string, e.g. `{name} = {example}`"))),
    }
}

fn template(s: &LitStr) -> syn::Result<TemplateLit> {
    let segments = template::parse(&s.value()).map_err(|msg| syn::Error::new(s.span(), msg))?;
    Ok(TemplateLit { segments, lit: s.clone() })
}

/// `"tmpl"` or `["tmpl", ...]`, each parsed as a key template.
fn templates(name: &str, input: ParseStream<'_>) -> syn::Result<Vec<TemplateLit>> {
    let lits: Vec<LitStr> = if input.peek(syn::token::Bracket) {
        let content;
        syn::bracketed!(content in input);
        content.parse_terminated(|p| p.parse::<LitStr>(), Token![,])?.into_iter().collect()
    } else {
        vec![lit_str(name, &input.parse()?, "[\"users\", \"user:<id>\"]")?]
    };
    lits.iter().map(template).collect()
}

/// A namespace (and, at run time, a prefix) is one key segment: no separator, brace, glob
/// character, escape character or whitespace.
fn segment(name: &str, lit: &Lit) -> syn::Result<Spanned<String>> {
    let s = lit_str(name, lit, "\"users\"")?;
    let valid = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./@+=,".contains(&b));
    if !valid(&s.value()) {
        return Err(syn::Error::new(
            s.span(),
            "a namespace is non-empty ASCII letters, digits and `-_./@+=,` (no `:`, braces or whitespace)",
        ));
    }
    Ok(Spanned { value: s.value(), span: s.span() })
}

/// `name` or `[name, ...]`.
fn params(input: ParseStream<'_>) -> syn::Result<Vec<Ident>> {
    Ok(if input.peek(syn::token::Bracket) {
        let content;
        syn::bracketed!(content in input);
        content.parse_terminated(Ident::parse_any, Token![,])?.into_iter().collect()
    } else {
        vec![input.parse()?]
    })
}

/// `"name"` or `["name", ...]`, each a valid HTTP header name (RFC 9110 token), lowercased.
fn headers(input: ParseStream<'_>) -> syn::Result<Spanned<Vec<String>>> {
    let span = input.span();
    let names: Vec<LitStr> = if input.peek(syn::token::Bracket) {
        let content;
        syn::bracketed!(content in input);
        content.parse_terminated(|p| p.parse::<LitStr>(), Token![,])?.into_iter().collect()
    } else {
        vec![input.parse()?]
    };
    let valid =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    let mut values = Vec::new();
    for lit in &names {
        let value = lit.value().to_ascii_lowercase();
        if !valid(&value) {
            return Err(syn::Error::new(lit.span(), format!("`{}` is not a valid HTTP header name", lit.value())));
        }
        values.push(value);
    }
    Ok(Spanned { value: values, span })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The options tables (`| option | …`) of a Markdown text, in order: for each, its
    /// header cells and, per row, its cells.
    fn tables(doc: &str) -> Vec<(Vec<String>, Vec<Vec<String>>)> {
        let cells = |line: &str| line.trim().trim_matches('|').split('|').map(|c| c.trim().to_owned()).collect();
        let mut tables = Vec::new();
        let mut lines = doc.lines().peekable();
        while let Some(line) = lines.next() {
            if !line.starts_with("| option |") {
                continue;
            }
            let mut rows = Vec::new();
            while let Some(row) = lines.next_if(|l| l.starts_with('|')) {
                if !row.starts_with("|---") {
                    rows.push(cells(row));
                }
            }
            tables.push((cells(line), rows));
        }
        tables
    }

    /// The option names a row documents: every `name` in code in its first cell.
    fn names(row: &[String]) -> Vec<&str> {
        row[0].split('`').skip(1).step_by(2).collect()
    }

    /// A documented options table lists each option of `mac`, and nothing else; with an
    /// "applies to" column, that column says "handlers" exactly for the handler-only options
    /// (and for `http`, which makes any fn a handler).
    fn assert_documents(mac: Macro, (header, rows): &(Vec<String>, Vec<Vec<String>>), doc: &str) {
        let mut documented: Vec<&str> = rows.iter().flat_map(|row| names(row)).collect();
        let mut table: Vec<&str> = options_of(mac).map(|o| o.name).collect();
        documented.sort_unstable();
        table.sort_unstable();
        assert_eq!(documented, table, "{doc}: the options table of `#[{}]`", mac.name());
        if header.get(1).map(String::as_str) != Some("applies to") {
            return;
        }
        for row in rows {
            for name in names(row) {
                let def = options_of(mac).find(|o| o.name == name).unwrap();
                let applies = row[1].as_str();
                assert!(
                    (def.applies_to == Handlers) == applies.starts_with("handlers") || name == "http",
                    "{doc}: `{name}` applies to {applies:?} in the docs, to {:?} in the table",
                    def.applies_to
                );
            }
        }
    }

    #[test]
    fn the_docs_list_exactly_the_options_of_the_table() {
        let readme = tables(include_str!("../../README.md"));
        assert_eq!(readme.len(), 2, "README.md: one options table per macro");
        assert_documents(Macro::Cached, &readme[0], "README.md");
        assert_documents(Macro::Invalidates, &readme[1], "README.md");
        for (mac, doc, text) in [
            (Macro::Cached, "docs/CACHED.md", include_str!("../../docs/CACHED.md")),
            (Macro::Invalidates, "docs/INVALIDATES.md", include_str!("../../docs/INVALIDATES.md")),
        ] {
            let tables = tables(text);
            assert_eq!(tables.len(), 1, "{doc}: one options table");
            assert_documents(mac, &tables[0], doc);
        }
    }

    #[test]
    fn no_macro_takes_an_option_twice() {
        for mac in [Macro::Cached, Macro::Invalidates] {
            let mut names: Vec<&str> = options_of(mac).map(|o| o.name).collect();
            names.sort_unstable();
            let count = names.len();
            names.dedup();
            assert_eq!(names.len(), count, "`#[{}]`", mac.name());
        }
    }

    fn parse_cached(args: &str) -> syn::Result<Options> {
        parse(Macro::Cached, args.parse().unwrap())
    }

    #[test]
    fn unknown_options_list_the_options_of_the_macro() {
        let err = parse_cached("expires = 60").unwrap_err().to_string();
        assert!(
            err.starts_with("unknown option `expires`; the options of `#[cached]` are: expire, key, tags,"),
            "{err}"
        );
        let err = parse(Macro::Invalidates, "expire = 60".parse().unwrap()).unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown option `expire`; the options of `#[invalidates]` are: key, keys, tags, namespace, in_namespace, before, cache, \
             crate, http"
        );
    }

    #[test]
    fn every_bad_value_of_one_attribute_is_reported() {
        let err = parse_cached("expire = \"x\", key = 5, expire = 0, public = 1").unwrap_err();
        let messages: Vec<String> = err.into_iter().map(|e| e.to_string()).collect();
        assert_eq!(messages.len(), 5, "{messages:?}");
        assert!(messages[2].starts_with("duplicate option `expire`"), "{messages:?}");
    }

    #[test]
    fn flags_and_values() {
        let o = parse_cached("lock, early, cache_none = 10, http = false, public = true, vary = [\"X-A\"]").unwrap();
        assert!(matches!(o.lock, Some(Spanned { value: Secs::Lit(10), .. })));
        assert!(matches!(o.early, Some(Spanned { value, .. }) if value == 1.0));
        assert!(matches!(o.cache_none, Some(Spanned { value: CacheNone::Ttl(Secs::Lit(10)), .. })));
        assert!(o.http.is_none() && o.public.is_some());
        assert_eq!(o.vary.unwrap().value, ["x-a"]);
        assert_eq!(o.first_handler_option.map(|(name, _)| name), Some("public"));
        let o = parse_cached("lock = 5, beta = 2, expire = TTL * 2, stale = Duration::from_secs(60)").unwrap();
        assert!(matches!(o.lock, Some(Spanned { value: Secs::Lit(5), .. })));
        assert!(matches!(o.early, Some(Spanned { value, .. }) if value == 2.0));
        assert!(matches!(o.expire, Some(Spanned { value: Secs::Const { option: "expire", .. }, .. })));
        assert!(matches!(o.stale, Some(Spanned { value: Secs::Const { option: "stale", .. }, .. })));
    }
}
