//! Parsing and validating the options of `#[cached(...)]`.
//!
//! Every option is parsed into a value with the span of the token that set it, so each error
//! lands on the option that caused it; all errors of one attribute are reported together.

use proc_macro2::{Span, TokenStream};
use quote::{quote_spanned, ToTokens};
use syn::ext::IdentExt as _;
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned as _;
use syn::{Expr, Ident, Lit, LitStr, Path, Token};

use crate::template::{self, Segment};

/// Every option `#[cached]` accepts, in the order the "unknown option" error lists them.
const CACHED_OPTIONS: &[&str] = &[
    "expire",
    "key",
    "tags",
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
    "stale",
    "stale_if_error",
    "early",
    "beta",
    "lock",
];

/// Options that only make sense on an axum handler.
pub(crate) const HTTP_OPTIONS: &[&str] =
    &["public", "private", "s_maxage", "cdn_max_age", "vary", "last_modified", "honor_no_cache"];

/// Options that may be written alone (`public`) as well as `= true` / `= false`.
const FLAGS: &[&str] = &["cache_none", "http", "public", "private", "honor_no_cache", "early", "lock"];

/// A value with the span of the option that set it.
#[derive(Debug, Clone)]
pub(crate) struct Spanned<T> {
    pub(crate) value: T,
    pub(crate) span: Span,
}

/// `cache_none = true` uses the entry ttl; `cache_none = <secs>` gives negative entries their own.
#[derive(Debug, Clone)]
pub(crate) enum CacheNone {
    SameTtl,
    Ttl(Secs),
}

/// A number of seconds given to an option: a literal (checked here), or a constant expression
/// (`expire = TTL`, `expire = 5 * 60`: the compiler checks that it is a `u64` constant, and a
/// constant assertion that it is at least 1).
#[derive(Debug, Clone)]
pub(crate) enum Secs {
    Lit(u64),
    Const { expr: Box<Expr>, option: &'static str },
}

impl ToTokens for Secs {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        match self {
            Secs::Lit(secs) => secs.to_tokens(tokens),
            Secs::Const { expr, option } => {
                let message = format!("`{option}` must be at least 1 second");
                tokens.extend(quote_spanned! {expr.span()=> {
                    const __CR_SECS: u64 = #expr;
                    const _: () = ::core::assert!(__CR_SECS > 0, #message);
                    __CR_SECS
                }});
            }
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct CachedArgs {
    pub(crate) expire: Option<Spanned<Secs>>,
    pub(crate) key: Option<Spanned<Vec<Segment>>>,
    pub(crate) tags: Vec<Spanned<Vec<Segment>>>,
    pub(crate) namespace: Option<Spanned<String>>,
    pub(crate) skip: Vec<Ident>,
    pub(crate) cache_none: Option<Spanned<CacheNone>>,
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
    pub(crate) stale: Option<Spanned<Secs>>,
    pub(crate) stale_if_error: Option<Spanned<Secs>>,
    /// `early` (β = 1) or `beta = f`.
    pub(crate) early: Option<Spanned<f64>>,
    /// `lock` (10 s) or `lock = N`: seconds the cross-replica lock is held at most.
    pub(crate) lock: Option<Spanned<Secs>>,
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

fn int_secs(name: &str, lit: &Lit) -> syn::Result<Secs> {
    let Lit::Int(int) = lit else {
        return Err(syn::Error::new(
            lit.span(),
            format!(
                "`{name}` expects a whole number of seconds: a literal (`{name} = 60`) or a `u64` constant \
                 (`{name} = TTL`, `{name} = 5 * 60`)"
            ),
        ));
    };
    let secs: u64 = int.base10_parse()?;
    if secs == 0 {
        return Err(syn::Error::new(lit.span(), format!("`{name}` must be at least 1 second")));
    }
    Ok(Secs::Lit(secs))
}

/// The options whose value is a number of seconds (`lock` and `cache_none` also take a flag).
const SECONDS: &[&str] = &["expire", "stale", "stale_if_error", "s_maxage", "cdn_max_age", "lock", "cache_none"];

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

/// The loop every attribute shares: `name`, `name = value`, comma-separated. Unknown names
/// stop parsing (the message lists the valid ones); duplicates and bad values are collected.
/// `on_value` parses one value, `on_flag` handles a flag written alone.
fn parse_options(
    input: ParseStream<'_>,
    macro_name: &str,
    valid: &[&str],
    flags: &[&str],
    mut on_flag: impl FnMut(&str, Span),
    mut on_value: impl FnMut(&Ident, ParseStream<'_>) -> syn::Result<()>,
) -> syn::Result<()> {
    let mut seen: Vec<String> = Vec::new();
    let mut errors = Errors::default();
    while !input.is_empty() {
        let name = Ident::parse_any(input)?;
        let name_str = name.to_string();
        if !valid.contains(&name_str.as_str()) {
            return Err(syn::Error::new(
                name.span(),
                format!("unknown option `{name_str}`; the options of `#[{macro_name}]` are: {}", valid.join(", ")),
            ));
        }
        if seen.contains(&name_str) {
            errors.push(syn::Error::new(name.span(), format!("duplicate option `{name_str}`")));
        }
        seen.push(name_str.clone());
        // A flag alone means `= true`.
        if flags.contains(&name_str.as_str()) && (input.is_empty() || input.peek(Token![,])) {
            on_flag(&name_str, name.span());
        } else {
            input.parse::<Token![=]>()?;
            if let Err(err) = on_value(&name, input) {
                errors.push(err);
            }
        }
        if input.is_empty() {
            break;
        }
        input.parse::<Token![,]>()?;
    }
    errors.finish()
}

/// `"tmpl"` or `["tmpl", ...]`, each parsed as a key template.
fn templates(name: &str, input: ParseStream<'_>) -> syn::Result<Vec<Spanned<Vec<Segment>>>> {
    let lits: Vec<LitStr> = if input.peek(syn::token::Bracket) {
        let content;
        syn::bracketed!(content in input);
        content.parse_terminated(|p| p.parse::<LitStr>(), Token![,])?.into_iter().collect()
    } else {
        let lit: Lit = input.parse()?;
        vec![lit_str(name, &lit, "[\"users\", \"user:<id>\"]")?]
    };
    lits.iter()
        .map(|s| {
            let segments = template::parse(&s.value()).map_err(|msg| syn::Error::new(s.span(), msg))?;
            Ok(Spanned { value: segments, span: s.span() })
        })
        .collect()
}

fn namespace_lit(lit: &Lit) -> syn::Result<Spanned<String>> {
    let s = lit_str("namespace", lit, "\"users\"")?;
    if !valid_segment(&s.value()) {
        return Err(syn::Error::new(
            s.span(),
            "a namespace is non-empty ASCII letters, digits and `-_./@+=,` (no `:`, braces or whitespace)",
        ));
    }
    Ok(Spanned { value: s.value(), span: s.span() })
}

impl Parse for CachedArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let args = std::cell::RefCell::new(CachedArgs::default());
        parse_options(
            input,
            "cached",
            CACHED_OPTIONS,
            FLAGS,
            |name, span| {
                let mut args = args.borrow_mut();
                if HTTP_OPTIONS.contains(&name) && args.first_http_option.is_none() {
                    args.first_http_option = Some((name.to_owned(), span));
                }
                set_flag(&mut args, name, span);
            },
            |name, input| {
                let mut args = args.borrow_mut();
                let name_str = name.to_string();
                if HTTP_OPTIONS.contains(&name_str.as_str()) && args.first_http_option.is_none() {
                    args.first_http_option = Some((name_str, name.span()));
                }
                parse_value(&mut args, name, input)
            },
        )?;
        Ok(args.into_inner())
    }
}

/// Every option `#[invalidates]` accepts.
const INVALIDATES_OPTIONS: &[&str] = &["key", "keys", "tags", "namespace", "before", "cache", "crate", "http"];

#[derive(Default)]
pub(crate) struct InvalidatesArgs {
    pub(crate) keys: Vec<Spanned<Vec<Segment>>>,
    pub(crate) tags: Vec<Spanned<Vec<Segment>>>,
    pub(crate) namespace: Option<Spanned<String>>,
    pub(crate) before: bool,
    pub(crate) http: bool,
    pub(crate) cache: Option<Expr>,
    pub(crate) krate: Option<Path>,
}

impl Parse for InvalidatesArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let span = input.span();
        let args = std::cell::RefCell::new(InvalidatesArgs::default());
        parse_options(
            input,
            "invalidates",
            INVALIDATES_OPTIONS,
            &["before", "http"],
            |name, _| match name {
                "before" => args.borrow_mut().before = true,
                _ => args.borrow_mut().http = true,
            },
            |name, input| {
                let mut args = args.borrow_mut();
                match name.to_string().as_str() {
                    "key" | "keys" => args.keys.extend(templates("keys", input)?),
                    "tags" => args.tags.extend(templates("tags", input)?),
                    "cache" => args.cache = Some(input.parse()?),
                    name => {
                        let lit: Lit = input.parse()?;
                        match (name, &lit) {
                            ("namespace", lit) => args.namespace = Some(namespace_lit(lit)?),
                            ("before", Lit::Bool(b)) => args.before = b.value,
                            ("http", Lit::Bool(b)) => args.http = b.value,
                            ("crate", lit) => args.krate = Some(lit_str("crate", lit, "\"my_cache\"")?.parse()?),
                            (name, other) => {
                                return Err(syn::Error::new(
                                    other.span(),
                                    format!("`{name}` expects `true` or `false`, or nothing"),
                                ))
                            }
                        }
                    }
                }
                Ok(())
            },
        )?;
        let args = args.into_inner();
        if args.keys.is_empty() && args.tags.is_empty() && args.namespace.is_none() {
            return Err(syn::Error::new(
                span,
                "`#[invalidates]` needs something to invalidate: `key`, `keys`, `tags` or `namespace`",
            ));
        }
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
        "early" => args.early = Some(Spanned { value: 1.0, span }),
        "lock" => args.lock = Some(Spanned { value: Secs::Lit(10), span }),
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
        "tags" => {
            args.tags = templates("tags", input)?;
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
    let lit: Lit = if let Some(&option) = SECONDS.iter().find(|o| **o == name_str) {
        // A literal, or a constant expression (`TTL`, `5 * 60`, `crate::ttl::USER`).
        match input.parse::<Expr>()? {
            Expr::Lit(syn::ExprLit { lit, attrs }) if attrs.is_empty() => lit,
            expr => {
                let span = expr.span();
                let value = Secs::Const { expr: Box::new(expr), option };
                match option {
                    "expire" => args.expire = Some(Spanned { value, span }),
                    "stale" => args.stale = Some(Spanned { value, span }),
                    "stale_if_error" => args.stale_if_error = Some(Spanned { value, span }),
                    "s_maxage" => args.s_maxage = Some(Spanned { value, span }),
                    "cdn_max_age" => args.cdn_max_age = Some(Spanned { value, span }),
                    "lock" => args.lock = Some(Spanned { value, span }),
                    _ => args.cache_none = Some(Spanned { value: CacheNone::Ttl(value), span }),
                }
                return Ok(());
            }
        }
    } else {
        input.parse()?
    };
    match name_str.as_str() {
        "expire" => args.expire = Some(Spanned { value: int_secs("expire", &lit)?, span: lit.span() }),
        "key" => {
            let s = lit_str("key", &lit, "\"user:<id>\"")?;
            let segments = template::parse(&s.value()).map_err(|msg| syn::Error::new(s.span(), msg))?;
            args.key = Some(Spanned { value: segments, span: s.span() });
        }
        "namespace" => args.namespace = Some(namespace_lit(&lit)?),
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
        "stale" => args.stale = Some(Spanned { value: int_secs("stale", &lit)?, span: lit.span() }),
        "lock" => match &lit {
            Lit::Bool(b) if b.value => args.lock = Some(Spanned { value: Secs::Lit(10), span: lit.span() }),
            Lit::Bool(_) => {}
            _ => args.lock = Some(Spanned { value: int_secs("lock", &lit)?, span: lit.span() }),
        },
        "stale_if_error" => {
            args.stale_if_error = Some(Spanned { value: int_secs("stale_if_error", &lit)?, span: lit.span() });
        }
        "beta" => {
            let beta = match &lit {
                Lit::Float(f) => f.base10_parse::<f64>()?,
                Lit::Int(i) => i.base10_parse::<f64>()?,
                other => {
                    return Err(syn::Error::new(other.span(), "`beta` expects a positive number, e.g. `beta = 1.5`"))
                }
            };
            if !(beta > 0.0 && beta.is_finite()) {
                return Err(syn::Error::new(lit.span(), "`beta` must be a positive number"));
            }
            args.early = Some(Spanned { value: beta, span: lit.span() });
        }
        "http" | "public" | "private" | "honor_no_cache" | "early" => match &lit {
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
