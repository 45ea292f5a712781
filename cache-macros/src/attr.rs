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
const CACHED_OPTIONS: &[&str] = &["expire", "key", "namespace", "skip", "cache_none", "cache", "crate"];

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
            // `cache_none` alone means `cache_none = true`.
            if name_str == "cache_none" && (input.is_empty() || input.peek(Token![,])) {
                args.cache_none = Some(Spanned { value: CacheNone::SameTtl, span: name.span() });
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
        "crate" => {
            let s = lit_str("crate", &lit, "\"my_cache\"")?;
            args.krate = Some(s.parse::<Path>()?);
        }
        _ => unreachable!("every name in CACHED_OPTIONS is handled"),
    }
    Ok(())
}
