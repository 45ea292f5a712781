//! Parsing and validating the options of `#[cached(...)]`.
//!
//! Every option is parsed into a value with the span of the token that set it, so each error
//! lands on the option that caused it; all errors of one attribute are reported together.

use proc_macro2::Span;
use syn::ext::IdentExt as _;
use syn::parse::{Parse, ParseStream};
use syn::{Expr, Ident, Lit, LitStr, Path, Token};

use crate::template::{self, Segment};

/// Every option `#[cached]` accepts, in the order the "unknown option" error lists them.
const CACHED_OPTIONS: &[&str] = &[
    "expire",
    "key",
    "namespace",
    "skip",
    "cache_none",
    "cache",
    "crate",
    "http",
    "public",
    "private",
    "s_maxage",
    "cdn_max_age",
    "vary",
    "last_modified",
    "honor_no_cache",
];

/// Options that only make sense on an axum handler.
pub(crate) const HTTP_OPTIONS: &[&str] =
    &["public", "private", "s_maxage", "cdn_max_age", "vary", "last_modified", "honor_no_cache"];

/// Options that may be written alone (`public`) as well as `= true` / `= false`.
const FLAGS: &[&str] = &["cache_none", "http", "public", "private", "honor_no_cache"];

/// A value with the span of the option that set it.
#[derive(Debug, Clone)]
pub(crate) struct Spanned<T> {
    pub(crate) value: T,
    pub(crate) span: Span,
}

/// `cache_none = true` uses the entry ttl; `cache_none = <secs>` gives negative entries their own.
#[derive(Debug, Clone, Copy)]
pub(crate) enum CacheNone {
    SameTtl,
    Ttl(u64),
}

#[derive(Debug, Default)]
pub(crate) struct CachedArgs {
    pub(crate) expire: Option<Spanned<u64>>,
    pub(crate) key: Option<Spanned<Vec<Segment>>>,
    pub(crate) namespace: Option<Spanned<String>>,
    pub(crate) skip: Vec<Ident>,
    pub(crate) cache_none: Option<Spanned<CacheNone>>,
    pub(crate) cache: Option<Expr>,
    pub(crate) krate: Option<Path>,
    /// `http`: force handler mode.
    pub(crate) http: Option<Span>,
    pub(crate) public: Option<Span>,
    pub(crate) private: Option<Span>,
    pub(crate) s_maxage: Option<Spanned<u64>>,
    pub(crate) cdn_max_age: Option<Spanned<u64>>,
    pub(crate) vary: Option<Spanned<Vec<String>>>,
    pub(crate) last_modified: Option<Spanned<String>>,
    pub(crate) honor_no_cache: Option<Span>,
    /// The first handler-only option used, for the "not a handler" error.
    pub(crate) first_http_option: Option<(String, Span)>,
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

fn int_secs(name: &str, lit: &Lit) -> syn::Result<u64> {
    let Lit::Int(int) = lit else {
        return Err(syn::Error::new(
            lit.span(),
            format!("`{name}` expects a whole number of seconds, e.g. `{name} = 60`"),
        ));
    };
    let secs: u64 = int.base10_parse()?;
    if secs == 0 {
        return Err(syn::Error::new(lit.span(), format!("`{name}` must be at least 1 second")));
    }
    Ok(secs)
}

fn lit_str(name: &str, lit: &Lit, example: &str) -> syn::Result<LitStr> {
    match lit {
        Lit::Str(s) => Ok(s.clone()),
        other => Err(syn::Error::new(other.span(), format!("`{name}` expects a string, e.g. `{name} = {example}`"))),
    }
}

/// A namespace (and, at run time, a prefix) is one key segment: no separator, brace, glob
/// character, escape character or whitespace.
fn valid_segment(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./@+=,".contains(&b))
}

impl Parse for CachedArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = CachedArgs::default();
        let mut seen: Vec<String> = Vec::new();
        let mut errors = Errors::default();
        while !input.is_empty() {
            let name = Ident::parse_any(input)?;
            let name_str = name.to_string();
            if !CACHED_OPTIONS.contains(&name_str.as_str()) {
                return Err(syn::Error::new(
                    name.span(),
                    format!(
                        "unknown option `{name_str}`; the options of `#[cached]` are: {}",
                        CACHED_OPTIONS.join(", ")
                    ),
                ));
            }
            if seen.contains(&name_str) {
                errors.push(syn::Error::new(name.span(), format!("duplicate option `{name_str}`")));
            }
            seen.push(name_str.clone());
            if HTTP_OPTIONS.contains(&name_str.as_str()) && args.first_http_option.is_none() {
                args.first_http_option = Some((name_str.clone(), name.span()));
            }
            // A flag alone means `= true`.
            if FLAGS.contains(&name_str.as_str()) && (input.is_empty() || input.peek(Token![,])) {
                set_flag(&mut args, &name_str, name.span());
            } else {
                input.parse::<Token![=]>()?;
                if let Err(err) = parse_value(&mut args, &name, input) {
                    errors.push(err);
                }
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        errors.finish()?;
        Ok(args)
    }
}

fn set_flag(args: &mut CachedArgs, name: &str, span: Span) {
    match name {
        "cache_none" => args.cache_none = Some(Spanned { value: CacheNone::SameTtl, span }),
        "http" => args.http = Some(span),
        "public" => args.public = Some(span),
        "private" => args.private = Some(span),
        "honor_no_cache" => args.honor_no_cache = Some(span),
        _ => unreachable!("every flag is handled"),
    }
}

/// Whether `s` is a valid HTTP header name (RFC 9110 token).
fn valid_header_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn parse_value(args: &mut CachedArgs, name: &Ident, input: ParseStream<'_>) -> syn::Result<()> {
    let name_str = name.to_string();
    match name_str.as_str() {
        "cache" => {
            args.cache = Some(input.parse()?);
            return Ok(());
        }
        "skip" => {
            args.skip = if input.peek(syn::token::Bracket) {
                let content;
                syn::bracketed!(content in input);
                content.parse_terminated(Ident::parse_any, Token![,])?.into_iter().collect()
            } else {
                vec![input.parse()?]
            };
            return Ok(());
        }
        "vary" => {
            let span = input.span();
            let names: Vec<LitStr> = if input.peek(syn::token::Bracket) {
                let content;
                syn::bracketed!(content in input);
                content.parse_terminated(|p| p.parse::<LitStr>(), Token![,])?.into_iter().collect()
            } else {
                vec![input.parse()?]
            };
            let mut values = Vec::new();
            for lit in &names {
                let value = lit.value().to_ascii_lowercase();
                if !valid_header_name(&value) {
                    return Err(syn::Error::new(
                        lit.span(),
                        format!("`{}` is not a valid HTTP header name", lit.value()),
                    ));
                }
                values.push(value);
            }
            args.vary = Some(Spanned { value: values, span });
            return Ok(());
        }
        _ => {}
    }
    let lit: Lit = input.parse()?;
    match name_str.as_str() {
        "expire" => args.expire = Some(Spanned { value: int_secs("expire", &lit)?, span: lit.span() }),
        "key" => {
            let s = lit_str("key", &lit, "\"user:<id>\"")?;
            let segments = template::parse(&s.value()).map_err(|msg| syn::Error::new(s.span(), msg))?;
            args.key = Some(Spanned { value: segments, span: s.span() });
        }
        "namespace" => {
            let s = lit_str("namespace", &lit, "\"users\"")?;
            if !valid_segment(&s.value()) {
                return Err(syn::Error::new(
                    s.span(),
                    "a namespace is non-empty ASCII letters, digits and `-_./@+=,` (no `:`, braces or whitespace)",
                ));
            }
            args.namespace = Some(Spanned { value: s.value(), span: s.span() });
        }
        "cache_none" => {
            let value =
                match &lit {
                    Lit::Bool(b) if b.value => CacheNone::SameTtl,
                    Lit::Bool(_) => return Ok(()),
                    Lit::Int(_) => CacheNone::Ttl(int_secs("cache_none", &lit)?),
                    other => return Err(syn::Error::new(
                        other.span(),
                        "`cache_none` expects `true` or a ttl in seconds for cached `None`s, e.g. `cache_none = 10`",
                    )),
                };
            args.cache_none = Some(Spanned { value, span: lit.span() });
        }
        "http" | "public" | "private" | "honor_no_cache" => match &lit {
            Lit::Bool(b) if b.value => set_flag(args, &name_str, lit.span()),
            Lit::Bool(_) => {}
            other => {
                return Err(syn::Error::new(
                    other.span(),
                    format!("`{name_str}` expects `true` or `false`, or nothing"),
                ))
            }
        },
        "s_maxage" => args.s_maxage = Some(Spanned { value: int_secs("s_maxage", &lit)?, span: lit.span() }),
        "cdn_max_age" => args.cdn_max_age = Some(Spanned { value: int_secs("cdn_max_age", &lit)?, span: lit.span() }),
        "last_modified" => {
            let s = lit_str("last_modified", &lit, "\"updated_at\"")?;
            if s.value().is_empty() {
                return Err(syn::Error::new(s.span(), "`last_modified` names a field of the response body"));
            }
            args.last_modified = Some(Spanned { value: s.value(), span: s.span() });
        }
        "crate" => {
            let s = lit_str("crate", &lit, "\"my_cache\"")?;
            args.krate = Some(s.parse::<Path>()?);
        }
        _ => unreachable!("every name in CACHED_OPTIONS is handled"),
    }
    Ok(())
}
