//! The rules between options, and between the options and the fn (as in serde_derive's
//! `internals/check.rs`): the parsed [`Options`] and the fn's [`Signature`] become a validated
//! plan, or every error of the attribute at once. `expand` only writes a plan out.

use proc_macro2::Span;
use syn::spanned::Spanned as _;
use syn::{Expr, FnArg, Ident, ItemFn, Member, Pat, Path, Type};

use crate::attr::{CacheNone, Errors, Options, Secs, TemplateLit};
use crate::signature::{self, is_handler, BatchReturns, Param, Returns, Signature, NEUTRAL_EXTRACTORS, URI_EXTRACTORS};
use crate::template::Segment;

/// What `#[cached]` generates, validated.
pub(crate) struct CachedPlan {
    pub(crate) func: ItemFn,
    /// The fn's return type.
    pub(crate) ret_ty: Type,
    pub(crate) has_self: bool,
    pub(crate) krate: Option<Path>,
    pub(crate) cache: Option<Expr>,
    pub(crate) namespace: Option<String>,
    pub(crate) key: Key,
    /// `key_fn`: the fn to generate beside the cached one.
    pub(crate) key_fn: Option<KeyFn>,
    pub(crate) tags: Vec<Template>,
    pub(crate) opts: CallOpts,
    /// A refresh may run in a background task: the body owns everything it uses.
    pub(crate) background: bool,
    pub(crate) mode: Mode,
    /// `unless` / `expire_with`: over the value (a service fn) or the response (a handler).
    pub(crate) policy: Policy,
}

/// `unless` and `expire_with` (`expire`, when set, caps the second).
pub(crate) struct Policy {
    pub(crate) unless: Option<Expr>,
    pub(crate) expire_with: Option<Expr>,
}

/// How the fn's outcome is stored and answered.
pub(crate) enum Mode {
    /// An axum handler: a response, stored when 2xx.
    Handler(HttpOpts),
    /// A service fn: the return type says what is stored.
    Service(Returns),
    /// `batch`: a service fn that loads many elements at once.
    Batch(Box<BatchPlan>),
}

/// A batch fn: its batch parameter (one element stands for it in the templates) and what its
/// map holds.
pub(crate) struct BatchPlan {
    pub(crate) param: Ident,
    pub(crate) param_ty: Type,
    pub(crate) collection: signature::Collection,
    /// Whether the return type is a `Result` of the map: `Some` when its spelling says so
    /// (`Result<map, E>`, or a map), `None` when the type decides (an alias).
    pub(crate) fallible: Option<bool>,
    /// `V` of the map, when the return type spells it.
    pub(crate) value_ty: Option<Type>,
}

/// The options of every cached call.
pub(crate) struct CallOpts {
    pub(crate) expire: Option<Secs>,
    pub(crate) stale: Option<Secs>,
    pub(crate) stale_if_error: Option<Secs>,
    /// β of the early refresh.
    pub(crate) early: Option<f64>,
    pub(crate) lock: Option<Secs>,
    pub(crate) cache_none: Option<CacheNone>,
}

/// The handler-only options.
pub(crate) struct HttpOpts {
    pub(crate) public: bool,
    pub(crate) s_maxage: Option<Secs>,
    pub(crate) cdn_max_age: Option<Secs>,
    /// Lowercased header names.
    pub(crate) vary: Option<Vec<String>>,
    pub(crate) last_modified: Option<String>,
    pub(crate) honor_no_cache: bool,
    pub(crate) cdn_tags: bool,
}

/// Where the key comes from.
pub(crate) enum Key {
    /// `key = "…"`.
    Template(Template),
    /// A handler without `key`: the fn's path, then the request's path and query.
    Request,
    /// A service fn without `key`: the fn's path, then every argument not skipped.
    Args { args: Vec<Ident>, params: usize, returned_types: Vec<Ident> },
}

/// `key_fn = name`: the fn that renders the key, and the parameters it takes (each
/// placeholder's root once, by reference, with its declared type).
pub(crate) struct KeyFn {
    pub(crate) name: Ident,
    pub(crate) params: Vec<(Ident, Type)>,
}

/// A key or tag template whose placeholders all name something the fn has.
#[derive(Clone)]
pub(crate) struct Template(pub(crate) Vec<Part>);

/// One piece of a resolved template; every token made from a placeholder is spanned at its
/// template, so rustc's errors about it (not `Display`, no such field) land there.
#[derive(Clone)]
pub(crate) enum Part {
    Lit(String),
    /// `<T>`: the name of the type a type parameter is instantiated with.
    TypeName(Ident),
    /// `<param.field…>` or `<self.field…>`: a value rendered into the key.
    Value {
        root: Ident,
        fields: Vec<Member>,
        span: Span,
    },
}

/// What `#[invalidates]` generates, validated.
pub(crate) struct InvalidatesPlan {
    pub(crate) func: ItemFn,
    pub(crate) krate: Option<Path>,
    pub(crate) cache: Option<Expr>,
    pub(crate) keys: Vec<Template>,
    pub(crate) tags: Vec<Template>,
    /// The namespace to clear.
    pub(crate) namespace: Option<String>,
    /// The namespace `keys` are in (`None`: the default one).
    pub(crate) key_namespace: Option<String>,
    pub(crate) before: bool,
    pub(crate) handler: bool,
}

pub(crate) fn cached(options: Options, func: ItemFn) -> syn::Result<CachedPlan> {
    let mut errors = Errors::default();
    if func.sig.asyncness.is_none() {
        errors.push(syn::Error::new(
            func.sig.fn_token.span,
            "`#[cached]` can only be used on an `async fn` (reading the cache may wait for Redis): make it `async`, \
             or, for a sync computation, cache it where it is called with \
             `cache.get_or_fetch(key, ttl, || async { … }).await` (the plain API)",
        ));
    }
    let sig = Signature::of(&func);
    for skipped in &options.skip {
        if !sig.names.contains(skipped) {
            errors.push(syn::Error::new(
                skipped.span(),
                format!("`skip` names `{skipped}`, which is not a parameter; the parameters are: {}", list(&sig.names)),
            ));
        }
    }
    let handler = is_handler(options.http.is_some(), &sig);
    let ret_ty = sig
        .output
        .clone()
        .ok_or_else(|| syn::Error::new(func.sig.ident.span(), "a `#[cached]` fn must return the value to cache"));
    if let Err(err) = &ret_ty {
        errors.push(err.clone());
    }
    if handler {
        check_handler_options(&options, &mut errors);
        check_handler_params(&options, &sig, &mut errors);
    } else {
        check_service_fn(&options, &sig, &func.sig.generics, &mut errors);
        check_owned(&options, &sig, &mut errors);
    }
    let batch = options.batch.and_then(|span| check_batch(span, &options, &sig, handler, &mut errors));
    if options.batch.is_none() {
        check_cache_none(&options, &sig, handler, &mut errors);
    }
    check_key_types(&options, &sig, &func.sig.ident, &mut errors);
    let key = match &options.key {
        Some(template) => Key::Template(resolve(template, &sig, &options.skip, &mut errors)),
        None if handler => Key::Request,
        None => Key::Args {
            args: sig.names.iter().filter(|n| !options.skip.contains(n)).cloned().collect(),
            params: sig.names.len(),
            returned_types: sig.returned_types.clone(),
        },
    };
    let key_fn = options.key_fn.as_ref().and_then(|name| check_key_fn(name, &options, &func, &key, &mut errors));
    let tags = options.tags.iter().map(|tag| resolve(tag, &sig, &options.skip, &mut errors)).collect();
    errors.finish()?;
    let ret_ty = ret_ty?;
    let mode = match batch {
        Some(batch) => Mode::Batch(Box::new(batch)),
        None if handler => Mode::Handler(http_opts(&options)),
        None => Mode::Service(signature::returns(&ret_ty)),
    };
    Ok(CachedPlan {
        // A batch refreshes its stale elements in its own body run.
        background: (options.stale.is_some() || options.early.is_some())
            && sig.owns_its_parameters
            && options.batch.is_none(),
        has_self: sig.has_self,
        krate: options.krate,
        cache: options.cache,
        namespace: options.namespace.map(|ns| ns.value),
        opts: CallOpts {
            expire: options.expire.map(|s| s.value),
            stale: options.stale.map(|s| s.value),
            stale_if_error: options.stale_if_error.map(|s| s.value),
            early: options.early.map(|s| s.value),
            lock: options.lock.map(|s| s.value),
            cache_none: options.cache_none.map(|s| s.value),
        },
        policy: Policy { unless: options.unless, expire_with: options.expire_with },
        func,
        ret_ty,
        key,
        key_fn,
        tags,
        mode,
    })
}

/// `key_fn = name`: a fn beside the cached one that renders its key from the placeholders'
/// parameters (by reference), as the plain API and `#[invalidates]` take it. Needs a `key`
/// template whose placeholders name parameters declared as `name: Type`.
fn check_key_fn(name: &Ident, options: &Options, func: &ItemFn, key: &Key, errors: &mut Errors) -> Option<KeyFn> {
    let fail = |errors: &mut Errors, span: Span, why: String| {
        errors.push(syn::Error::new(span, why));
        None
    };
    let Key::Template(template) = key else {
        return fail(
            errors,
            name.span(),
            format!("`key_fn = {name}` renders the `key` template: give one, e.g. `key = \"user:<id>\"`"),
        );
    };
    if options.batch.is_some() {
        return fail(
            errors,
            name.span(),
            "`key_fn` is for single-key fns: a batch element's key is the one its single-key fn renders (give that fn the `key_fn`)".to_owned(),
        );
    }
    if let Some(param) = func.sig.generics.type_params().next() {
        return fail(errors, param.ident.span(), format!("`key_fn = {name}` is not available on a generic fn"));
    }
    let mut params: Vec<(Ident, Type)> = Vec::new();
    for part in &template.0 {
        match part {
            Part::Lit(_) => {}
            Part::TypeName(ty) => {
                return fail(
                    errors,
                    ty.span(),
                    format!("`key_fn = {name}` cannot render a `<{ty}>` placeholder (a type)"),
                );
            }
            Part::Value { root, span, .. } => {
                if params.iter().any(|(p, _)| p == root) {
                    continue;
                }
                let declared = func.sig.inputs.iter().find_map(|input| match input {
                    FnArg::Typed(typed) => match &*typed.pat {
                        Pat::Ident(ident) if ident.ident == *root => Some((*typed.ty).clone()),
                        _ => None,
                    },
                    FnArg::Receiver(_) => None,
                });
                match declared {
                    Some(ty) => params.push((root.clone(), ty)),
                    None => {
                        return fail(
                            errors,
                            *span,
                            format!(
                                "`key_fn = {name}` takes the placeholders' parameters as declared (`{root}: Type`); \
                                 `<{root}>` is `self` or bound by a pattern (`Path({root})`): render the key with \
                                 `cache_runtime::key_of(…)` instead"
                            ),
                        );
                    }
                }
            }
        }
    }
    Some(KeyFn { name: name.clone(), params })
}

fn http_opts(options: &Options) -> HttpOpts {
    HttpOpts {
        public: options.public.is_some(),
        s_maxage: options.s_maxage.as_ref().map(|s| s.value.clone()),
        cdn_max_age: options.cdn_max_age.as_ref().map(|s| s.value.clone()),
        vary: options.vary.as_ref().map(|v| v.value.clone()),
        last_modified: options.last_modified.as_ref().map(|f| f.value.clone()),
        honor_no_cache: options.honor_no_cache.is_some(),
        cdn_tags: options.cdn_tags.is_some(),
    }
}

pub(crate) fn invalidates(options: Options, func: ItemFn) -> syn::Result<InvalidatesPlan> {
    let mut errors = Errors::default();
    if options.keys.is_empty() && options.tags.is_empty() && options.namespace.is_none() {
        errors.push(syn::Error::new(
            options.span,
            "`#[invalidates]` needs something to invalidate: `key`, `keys`, `tags` or `namespace`",
        ));
    }
    match (&options.namespace, &options.in_namespace) {
        // `namespace` clears a namespace; with keys, a reader may take it for the keys' own.
        (Some(ns), None) if !options.keys.is_empty() => errors.push(syn::Error::new(
            ns.span,
            format!(
                "ambiguous: `namespace = \"{ns}\"` clears the whole namespace `{ns}`, and `key`/`keys` are in the \
                 default namespace. To invalidate these keys in `{ns}` (and nothing else there), write \
                 `in_namespace = \"{ns}\"` instead; to clear `{ns}` and invalidate the keys in the default \
                 namespace, add `in_namespace = \"default\"`",
                ns = ns.value
            ),
        )),
        (_, Some(ns)) if options.keys.is_empty() => errors.push(syn::Error::new(
            ns.span,
            format!(
                "`in_namespace` is the namespace of `key`/`keys`, and there are none: to clear the namespace, write \
                 `namespace = \"{}\"`",
                ns.value
            ),
        )),
        _ => {}
    }
    if func.sig.asyncness.is_none() {
        errors.push(syn::Error::new(func.sig.fn_token.span, "`#[invalidates]` can only be used on an `async fn`"));
    }
    let sig = Signature::of(&func);
    if let Some(param) = sig.output.as_ref().and_then(|ty| signature::type_parameter(ty, &func.sig.generics)) {
        errors.push(type_parameter_error(
            param,
            "#[invalidates]",
            "whether the fn succeeded (only then it invalidates)",
        ));
    }
    let keys = options.keys.iter().map(|key| resolve(key, &sig, &[], &mut errors)).collect();
    let tags = options.tags.iter().map(|tag| resolve(tag, &sig, &[], &mut errors)).collect();
    errors.finish()?;
    Ok(InvalidatesPlan {
        handler: is_handler(options.http.is_some(), &sig),
        krate: options.krate,
        cache: options.cache,
        namespace: options.namespace.map(|ns| ns.value),
        key_namespace: options.in_namespace.map(|ns| ns.value),
        before: options.before.is_some(),
        func,
        keys,
        tags,
    })
}

fn list(names: &[Ident]) -> String {
    if names.is_empty() {
        "it has none".to_owned()
    } else {
        names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
    }
}

/// The span of a placeholder's field, for rustc's "no field `genr` on type `Filter`". A
/// compiler that gives spans inside a string literal (nightly) points at the field itself,
/// and its "a field with a similar name exists" fix-it then edits the field in the string.
/// Otherwise the field is spanned at the whole literal, with the macro's hygiene: field names
/// are not hygienic, so it still resolves, but rustc does not offer to replace the whole
/// string by a field name (a fix-it that would break the attribute).
fn field_span(template: &TemplateLit, at: std::ops::Range<usize>) -> Span {
    template.subspan(at).unwrap_or_else(|| template.span().resolved_at(Span::mixed_site()))
}

/// Resolves each placeholder of a template to what it names: `self`, a type parameter (with
/// no fields), or a parameter that is not skipped.
fn resolve(template: &TemplateLit, sig: &Signature, skip: &[Ident], errors: &mut Errors) -> Template {
    let span = template.span();
    let mut parts = Vec::new();
    for segment in &template.segments {
        let (root, fields, field_at) = match segment {
            Segment::Lit(text) => {
                parts.push(Part::Lit(text.clone()));
                continue;
            }
            Segment::Placeholder { root, fields, field_at } => (root, fields, field_at),
        };
        if root == "self" {
            if !sig.has_self {
                errors.push(syn::Error::new(span, "placeholder `<self…>` in a fn without a `self` parameter"));
                continue;
            }
        } else if sig.type_params.iter().any(|t| t == root) && fields.is_empty() {
            parts.push(Part::TypeName(Ident::new(root, span)));
            continue;
        } else if !sig.names.iter().any(|n| n == root) {
            errors.push(syn::Error::new(
                span,
                format!(
                    "unknown placeholder `<{root}>`: no parameter is named `{root}`; the parameters are: {}",
                    list(&sig.names)
                ),
            ));
            continue;
        } else if skip.iter().any(|s| s == root) {
            errors.push(syn::Error::new(
                span,
                format!("placeholder `<{root}>` names a skipped parameter; remove it from `skip` or from the key"),
            ));
            continue;
        }
        let fields = fields
            .iter()
            .zip(field_at)
            .map(|(f, at)| {
                let span = field_span(template, at.clone());
                match f.parse::<u32>() {
                    Ok(index) => Member::Unnamed(syn::Index { index, span }),
                    Err(_) => Member::Named(Ident::new(f, span)),
                }
            })
            .collect();
        parts.push(Part::Value { root: Ident::new(root, span), fields, span });
    }
    Template(parts)
}

/// The handler-only options must not be set on a fn that is not a handler, and what is
/// stored must be nameable and not decided per instantiation.
fn check_service_fn(options: &Options, sig: &Signature, generics: &syn::Generics, errors: &mut Errors) {
    if let Some((name, span)) = &options.first_handler_option {
        errors.push(syn::Error::new(
            *span,
            format!(
                "`{name}` only applies to axum handlers, and this fn is not recognised as one (no axum extractor \
                 parameter, no response return type); add `http` to treat it as a handler"
            ),
        ));
    }
    if let Some(Type::ImplTrait(it)) = sig.output.as_ref().map(signature::strip) {
        errors.push(syn::Error::new(
            it.span(),
            "a `#[cached]` fn must return a concrete type (an `impl Trait` value cannot be stored)",
        ));
    }
    if let Some(param) = sig.output.as_ref().and_then(|ty| signature::type_parameter(ty, generics)) {
        errors.push(type_parameter_error(
            param,
            "#[cached]",
            "which outcomes to store (an `Err` or a `None` never is)",
        ));
    }
}

/// What a service fn stores is decoded into a new value on a hit, and a decoded value cannot
/// borrow: `&'static str` would need a `Deserialize` for every lifetime, which rustc reports as
/// "implementation of `Deserialize` is not general enough". Only what is stored is checked:
/// the `Some` of an `Option`, the `Ok` of a `Result` (an `Err` may borrow), a batch's values.
fn check_owned(options: &Options, sig: &Signature, errors: &mut Errors) {
    let Some(ty) = &sig.output else { return };
    let stored = if options.batch.is_some() {
        match signature::batch_returns(ty) {
            BatchReturns::Map { value, .. } => *value,
            BatchReturns::Named { .. } | BatchReturns::NotMap => return,
        }
    } else {
        match signature::returns(ty) {
            Returns::Plain => ty.clone(),
            Returns::Option(value) | Returns::Result(value) => value,
        }
    };
    let Some(reference) = signature::borrowed(&stored) else { return };
    let owned = match signature::strip(&reference.elem) {
        Type::Path(p) if p.path.is_ident("str") => "`String`".to_owned(),
        Type::Slice(s) => format!("`Vec<{}>`", type_text(&s.elem)),
        Type::TraitObject(_) => "a type that owns its data".to_owned(),
        elem => format!("`{}`", type_text(elem)),
    };
    errors.push(syn::Error::new_spanned(
        reference,
        format!(
            "a `#[cached]` fn must return an owned type: cached values are stored, and decoded into new values \
             that cannot borrow; write {owned} instead of `{}`",
            type_text(&Type::Reference(reference.clone()))
        ),
    ));
}

/// A type as the user wrote it, near enough for a message: `&'static str`, `Vec<u8>` (the token
/// printer's spaces around `&`, `<`, `>`, `,` and `::` removed).
fn type_text(ty: &Type) -> String {
    let mut text = quote::ToTokens::to_token_stream(ty).to_string();
    for (from, to) in [("& ", "&"), (" < ", "<"), (" <", "<"), ("< ", "<"), (" >", ">"), (" ,", ","), (" :: ", "::")] {
        text = text.replace(from, to);
    }
    text
}

/// What a type parameter as the return type gets: whether it is a `Result` or an `Option`
/// is only known per call, after the macro ran.
fn type_parameter_error(param: &Ident, attribute: &str, decides: &str) -> syn::Error {
    syn::Error::new(
        param.span(),
        format!(
            "the return type `{param}` is a type parameter: `{attribute}` cannot tell whether it is a `Result` or an \
             `Option`, which decides {decides}; return a concrete type, or spell out `Result<…, …>` or \
             `Option<…>` around the type parameter"
        ),
    )
}

/// `cache_none` stores `None`s: it needs a fn returning `Option`, and no handler.
/// `batch`: a service fn whose key names exactly one collection parameter (`Vec<K>`, `&[K]`,
/// `HashSet<K>`, `BTreeSet<K>`: the placeholder stands for one element) and that returns a map.
fn check_batch(
    span: Span,
    options: &Options,
    sig: &Signature,
    handler: bool,
    errors: &mut Errors,
) -> Option<BatchPlan> {
    const SHAPES: &str = "`Vec<K>`, `&[K]`, `HashSet<K>` or `BTreeSet<K>`";
    if handler {
        errors.push(syn::Error::new(span, "`batch` applies to service fns, not to axum handlers"));
        return None;
    }
    let collections: Vec<&Param> = sig.params.iter().filter(|p| signature::collection(&p.ty).is_some()).collect();
    let Some(template) = &options.key else {
        errors.push(syn::Error::new(
            span,
            format!(
                "a batch fn needs `key`, with a placeholder for its batch parameter ({SHAPES}) that stands for one \
                 element: `key = \"user:<ids>\"` gives each element the entry `#[cached(key = \"user:<id>\")]` stores"
            ),
        ));
        return None;
    };
    let named: Vec<&Param> = collections
        .iter()
        .copied()
        .filter(|p| {
            template
                .segments
                .iter()
                .any(|s| matches!(s, Segment::Placeholder { root, .. } if p.names.iter().any(|n| n == root)))
        })
        .collect();
    let param = match named.as_slice() {
        [one] if one.names.len() == 1 => *one,
        [] if collections.is_empty() => {
            errors.push(syn::Error::new(span, format!("a batch fn needs a batch parameter: {SHAPES}")));
            return None;
        }
        [] => {
            errors.push(syn::Error::new(
                template.span(),
                format!("the key names no batch parameter: name the {SHAPES} parameter, which stands for one element"),
            ));
            return None;
        }
        [_] => {
            errors.push(syn::Error::new(span, "a batch parameter must be a plain name (`ids: Vec<u64>`)"));
            return None;
        }
        [first, second, ..] => {
            errors.push(syn::Error::new(
                second.span,
                format!(
                    "a batch has one batch parameter; the key names two: `{}` and `{}`",
                    first.names[0], second.names[0]
                ),
            ));
            return None;
        }
    };
    let ret_ty = sig.output.as_ref()?;
    // A name the macro cannot see through (an alias, maybe of a `Result`) is left to its type:
    // the runtime's `BatchMap` bound reports one that is not a map.
    let (fallible, value_ty) = match signature::batch_returns(ret_ty) {
        BatchReturns::Map { value, fallible } => (Some(fallible), Some(*value)),
        BatchReturns::Named { fallible: true } => (Some(true), None),
        BatchReturns::Named { fallible: false } => (None, None),
        BatchReturns::NotMap => {
            errors.push(syn::Error::new(
                ret_ty.span(),
                "a batch fn returns a map of its elements to their values: `HashMap<K, V>`, `BTreeMap<K, V>` or \
                 `Vec<(K, V)>`, or a `Result` of one (an element missing from it is not found)",
            ));
            return None;
        }
    };
    Some(BatchPlan {
        param: param.names[0].clone(),
        param_ty: param.ty.clone(),
        collection: signature::collection(&param.ty)?,
        fallible,
        value_ty,
    })
}

fn check_cache_none(options: &Options, sig: &Signature, handler: bool, errors: &mut Errors) {
    let (Some(cn), Some(ty)) = (&options.cache_none, &sig.output) else { return };
    if handler {
        errors.push(syn::Error::new(cn.span, "`cache_none` does not apply to handlers: only 2xx responses are stored"));
    } else if !matches!(signature::returns(ty), Returns::Option(_)) {
        errors.push(syn::Error::new(cn.span, "`cache_none` needs a fn returning `Option<T>`: it caches the `None`s"));
    }
}

/// A `key` must name every type parameter the return type depends on: `f::<A>` and `f::<B>`
/// store different types.
fn check_key_types(options: &Options, sig: &Signature, fn_name: &Ident, errors: &mut Errors) {
    let Some(template) = &options.key else { return };
    for ty in &sig.returned_types {
        let named = template
            .segments
            .iter()
            .any(|s| matches!(s, Segment::Placeholder { root, fields, .. } if ty == root && fields.is_empty()));
        if !named {
            errors.push(syn::Error::new(
                template.span(),
                format!(
                    "the key does not name the type parameter `{ty}`, which the return type depends on: \
                     `{fn_name}::<A>` and `{fn_name}::<B>` would share entries; add `<{ty}>` to the key (it renders \
                     the type's name), or leave out `key` (the default key includes it)"
                ),
            ));
        }
    }
}

fn check_handler_options(options: &Options, errors: &mut Errors) {
    if let (Some(_), Some(private)) = (options.public, options.private) {
        errors.push(syn::Error::new(private, "`public` and `private` exclude each other"));
    }
    if let (Some(s), None) = (&options.s_maxage, options.public) {
        errors
            .push(syn::Error::new(s.span, "`s_maxage` needs `public`: shared caches never store a `private` response"));
    }
}

/// Every extractor that can change the response must be part of the key (a placeholder; for
/// the default key, the URI), be covered by `vary`, or be listed in `skip`: otherwise two
/// requests that should get different responses (another page, another user) would share one.
fn check_handler_params(options: &Options, sig: &Signature, errors: &mut Errors) {
    let roots: Vec<&str> = options
        .key
        .iter()
        .flat_map(|k| k.segments.iter())
        .filter_map(|segment| match segment {
            Segment::Placeholder { root, .. } => Some(root.as_str()),
            Segment::Lit(_) => None,
        })
        .collect();
    for param in &sig.params {
        let kind = param.type_name.as_str();
        let from_uri = URI_EXTRACTORS.contains(&kind);
        if NEUTRAL_EXTRACTORS.contains(&kind) || (options.key.is_none() && from_uri) {
            continue;
        }
        // Header-derived extractors (an auth user, say) may be covered by `vary`.
        if options.vary.is_some() && !from_uri {
            continue;
        }
        let names = &param.names;
        if names.is_empty() || names.iter().any(|n| roots.contains(&n.to_string().as_str()) || options.skip.contains(n))
        {
            continue;
        }
        let name = &names[0];
        // A URI extractor is keyed by its values; anything else (a `HeaderMap`, an auth user, a
        // custom extractor) reads request headers: `vary` is the first way out.
        let fix = match (from_uri, options.key.is_some()) {
            (true, true) => format!("add `<{name}…>` to `key`"),
            (true, false) => format!("give a `key` with `<{name}…>`"),
            (false, true) => format!(
                "list the request headers it reads in `vary = [\"authorization\", …]` (one entry per value), or add \
                 `<{name}…>` to `key`"
            ),
            (false, false) => format!(
                "list the request headers it reads in `vary = [\"authorization\", …]` (one entry per value), or give \
                 a `key` with `<{name}…>`"
            ),
        };
        errors.push(syn::Error::new(
            param.span,
            format!(
                "`{name}` may change the response but is not part of the cache key, so requests that differ in it \
                 would share one entry: {fix}, or list it in `skip = [{name}]` if it never changes the response"
            ),
        ));
    }
}

#[cfg(test)]
mod tests;
