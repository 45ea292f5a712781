//! Code generation. The expansion only builds a key and a future, then hands both to the
//! runtime (`__private::cached_*`); all caching logic lives in cache-runtime.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::spanned::Spanned as _;
use syn::{AttrStyle, Ident, ItemFn, ReturnType, Type};

use crate::attr::{CacheNone, Errors, Options, Secs, Spanned};
use crate::signature::{self, is_handler, Returns, Signature, NEUTRAL_EXTRACTORS, URI_EXTRACTORS};
use crate::template::Segment;

fn list(names: &[Ident]) -> String {
    if names.is_empty() {
        "it has none".to_owned()
    } else {
        names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
    }
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

pub(crate) fn cached(args: Options, func: ItemFn) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let sig = &func.sig;
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new(
            sig.fn_token.span,
            "`#[cached]` can only be used on an `async fn` (reading the cache may wait for Redis): make it `async`, \
             or, for a sync computation, cache it where it is called with \
             `cache.get_or_fetch(key, ttl, || async { … }).await` (the plain API)",
        ));
    }
    let params = Signature::of(&func);
    for skipped in &args.skip {
        if !params.names.contains(skipped) {
            errors.push(syn::Error::new(
                skipped.span(),
                format!(
                    "`skip` names `{skipped}`, which is not a parameter; the parameters are: {}",
                    list(&params.names)
                ),
            ));
        }
    }
    let handler = is_handler(args.http.is_some(), &params);
    let ret_ty = match &sig.output {
        ReturnType::Type(_, ty) => Some(&**ty),
        ReturnType::Default => {
            errors.push(syn::Error::new(sig.ident.span(), "a `#[cached]` fn must return the value to cache"));
            None
        }
    };
    if handler {
        check_handler_options(&args, &mut errors);
        check_handler_params(&params, &args, &mut errors);
    } else {
        if let Some((name, span)) = &args.first_handler_option {
            errors.push(syn::Error::new(
                *span,
                format!(
                    "`{name}` only applies to axum handlers, and this fn is not recognised as one (no axum extractor \
                     parameter, no response return type); add `http` to treat it as a handler"
                ),
            ));
        }
        if let Some(Type::ImplTrait(it)) = ret_ty.map(signature::strip) {
            errors.push(syn::Error::new(
                it.span(),
                "a `#[cached]` fn must return a concrete type (an `impl Trait` value cannot be stored)",
            ));
        }
        if let Some(param) = ret_ty.and_then(|ty| signature::type_parameter(ty, &sig.generics)) {
            errors.push(type_parameter_error(
                param,
                "#[cached]",
                "which outcomes to store (an `Err` or a `None` never is)",
            ));
        }
    }
    let mode = ret_ty.map(signature::returns);
    if let (Some(cn), Some(m)) = (&args.cache_none, &mode) {
        if handler {
            errors.push(syn::Error::new(
                cn.span,
                "`cache_none` does not apply to handlers: only 2xx responses are stored",
            ));
        } else if !matches!(m, Returns::Option(_)) {
            errors
                .push(syn::Error::new(cn.span, "`cache_none` needs a fn returning `Option<T>`: it caches the `None`s"));
        }
    }
    let krate = args.krate.clone().map_or_else(|| quote!(::cache_runtime), |p| p.into_token_stream());
    if let Some(template) = &args.key {
        for ty in &params.returned_types {
            let named = template.value.iter().any(
                |s| matches!(s, Segment::Placeholder { root, fields } if root == &ty.to_string() && fields.is_empty()),
            );
            if !named {
                errors.push(syn::Error::new(
                    template.span,
                    format!(
                        "the key does not name the type parameter `{ty}`, which the return type depends on: \
                         `{f}::<A>` and `{f}::<B>` would share entries; add `<{ty}>` to the key (it renders the \
                         type's name), or leave out `key` (the default key includes it)",
                        f = sig.ident
                    ),
                ));
            }
        }
    }
    let key = match &args.key {
        Some(template) => template_key(&template.value, template.span, &params, &args.skip, &krate, &mut errors),
        None if handler => default_handler_key(&func),
        None => default_key(&func, &params, &args.skip, &krate),
    };
    let tags = render_tags(&args.tags, &params, &args.skip, &krate, &mut errors);
    errors.finish()?;
    let (Some(ret_ty), Some(mode)) = (ret_ty, mode) else { unreachable!("reported above") };

    // A refresh can run in the background only if the body owns everything it uses.
    let background = (args.stale.is_some() || args.early.is_some()) && params.owns_its_parameters;
    let cache = cache_binding(args.cache.as_ref(), &krate, background);
    let (body_kw, spawner) = if background {
        (quote!(async move), quote!(#krate::__private::Spawner::background()))
    } else {
        (quote!(async), quote!(#krate::__private::Spawner::inline()))
    };
    let namespace = args.namespace.as_ref().map_or_else(
        || quote!(#krate::__private::DEFAULT_NAMESPACE),
        |ns| {
            let ns = &ns.value;
            quote!(#ns)
        },
    );
    let mut opts = quote!(#krate::__private::CallOpts::new());
    if let Some(expire) = &args.expire {
        let secs = &expire.value;
        opts.extend(quote!(.expire(#krate::__private::Duration::from_secs(#secs))));
    }
    if let Some(stale) = &args.stale {
        let secs = &stale.value;
        opts.extend(quote!(.stale(#krate::__private::Duration::from_secs(#secs))));
    }
    if let Some(stale) = &args.stale_if_error {
        let secs = &stale.value;
        opts.extend(quote!(.stale_if_error(#krate::__private::Duration::from_secs(#secs))));
    }
    if let Some(early) = &args.early {
        let beta = early.value;
        opts.extend(quote!(.early(#beta)));
    }
    if let Some(lock) = &args.lock {
        let secs = &lock.value;
        opts.extend(quote!(.lock(#krate::__private::Duration::from_secs(#secs))));
    }
    if let Some(cn) = &args.cache_none {
        opts.extend(match &cn.value {
            CacheNone::SameTtl => quote!(.cache_none(::core::option::Option::None)),
            CacheNone::Ttl(secs) => {
                quote!(.cache_none(::core::option::Option::Some(#krate::__private::Duration::from_secs(#secs))))
            }
        });
    }

    let ItemFn { attrs, vis, block, .. } = &func;
    let (outer, inner): (Vec<_>, Vec<_>) = attrs.iter().partition(|a| matches!(a.style, AttrStyle::Outer));
    let stmts = &block.stmts;
    let (key_builder, capacity) = key;
    let fake_return = fake_return(ret_ty);
    let tag_count = tags.len();
    let prologue = quote! {
        #(#inner)*
        #cache
        let mut __cr_w = #krate::__private::key_writer(__cr_cache, #namespace, #capacity);
        #key_builder
        const __CR_OPTS: #krate::__private::CallOpts = #opts;
        let __cr_tags: [::std::string::String; #tag_count] = [#(#tags),*];
        let __cr_body = #body_kw {
            #fake_return
            #(#stmts)*
        };
    };

    if handler {
        let http_opts = http_opts(&args, &krate);
        let mut sig = func.sig.clone();
        let at = usize::from(params.has_self);
        // Only a handler that reads more than the conditional headers copies the header map.
        let all_headers = args.vary.is_some() || args.honor_no_cache.is_some();
        // Only the default key (no `key`) reads the request's URI.
        let keep_uri = args.key.is_none();
        sig.inputs.insert(at, syn::parse_quote!(__cr_http: #krate::__private::HttpRequest<#all_headers, #keep_uri>));
        sig.output = syn::parse_quote!(-> #krate::__private::Response);
        // Naming the return type (when it can be named) puts "does not implement IntoResponse"
        // on it.
        let response_ty = if fake_return.is_some() { quote!(#ret_ty) } else { quote!(_) };
        let call = quote_spanned! {ret_ty.span()=>
            #krate::__private::cached_handler::<#response_ty, _, #all_headers, #keep_uri>(
                #krate::__private::Call {
                    cache: __cr_cache, key: __cr_w, namespace: #namespace, tags: &__cr_tags, opts: &__CR_OPTS,
                },
                __cr_http, &__CR_HTTP, __cr_body, #spawner,
            ).await
        };
        let uses_bounds = return_bounds(ret_ty, true);
        return Ok(quote! {
            #(#outer)*
            #vis #sig {
                #uses_bounds
                const __CR_HTTP: #krate::__private::HttpOpts = #http_opts;
                #prologue
                #call
            }
        });
    }

    let call_ctx = quote! {
        #krate::__private::Call {
            cache: __cr_cache, key: __cr_w.finish(), namespace: #namespace, tags: &__cr_tags, opts: &__CR_OPTS,
        }
    };
    let (runtime_fn, value_ty, infer) = match mode {
        Returns::Plain => {
            // Not spelled `Result<…>`/`Option<…>`: it may still be one behind an alias
            // (`CatalogResult<T>`). The type decides (see `cache_runtime::returns`).
            let call = quote_spanned! {ret_ty.span()=>
                {
                    #[allow(unused_imports)]
                    use #krate::__private::{ViaOption as _, ViaResult as _, ViaValue as _};
                    (&&#krate::__private::Returns::<#ret_ty>::new()).cached_by_type(
                        #call_ctx, __cr_body, #spawner,
                    ).await
                }
            };
            return Ok(quote! {
                #(#outer)*
                #vis #sig {
                    #prologue
                    #call
                }
            });
        }
        Returns::Option(t) => ("cached_option", t, quote!(_)),
        Returns::Result(t) => ("cached_result", t, quote!(_, _)),
    };
    let runtime_fn = Ident::new(runtime_fn, value_ty.span());
    // Spanned at the cached type, so "cannot be stored in the cache" points at it.
    let call = quote_spanned! {value_ty.span()=>
        #krate::__private::#runtime_fn::<#value_ty, #infer>(#call_ctx, __cr_body, #spawner).await
    };
    Ok(quote! {
        #(#outer)*
        #vis #sig {
            #prologue
            #call
        }
    })
}

/// Every extractor that can change the response must be part of the key (a placeholder; for
/// the default key, the URI), be covered by `vary`, or be listed in `skip`: otherwise two
/// requests that should get different responses (another page, another user) would share one.
fn check_handler_params(params: &Signature, args: &Options, errors: &mut Errors) {
    let roots: Vec<&str> = args
        .key
        .iter()
        .flat_map(|k| k.value.iter())
        .filter_map(|segment| match segment {
            Segment::Placeholder { root, .. } => Some(root.as_str()),
            Segment::Lit(_) => None,
        })
        .collect();
    for param in &params.params {
        let kind = &param.type_name;
        if NEUTRAL_EXTRACTORS.contains(&kind.as_str())
            || (args.key.is_none() && URI_EXTRACTORS.contains(&kind.as_str()))
        {
            continue;
        }
        // Header-derived extractors (an auth user, say) may be covered by `vary`.
        if args.vary.is_some() && !URI_EXTRACTORS.contains(&kind.as_str()) {
            continue;
        }
        let names = &param.names;
        if names.is_empty() || names.iter().any(|n| roots.contains(&n.to_string().as_str()) || args.skip.contains(n)) {
            continue;
        }
        let name = &names[0];
        // A URI extractor is keyed by its values; anything else (a `HeaderMap`, an auth user, a
        // custom extractor) reads request headers: `vary` is the first way out.
        let fix = match (URI_EXTRACTORS.contains(&kind.as_str()), args.key.is_some()) {
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

fn check_handler_options(args: &Options, errors: &mut Errors) {
    if let (Some(_), Some(private)) = (args.public, args.private) {
        errors.push(syn::Error::new(private, "`public` and `private` exclude each other"));
    }
    if let (Some(s), None) = (&args.s_maxage, args.public) {
        errors
            .push(syn::Error::new(s.span, "`s_maxage` needs `public`: shared caches never store a `private` response"));
    }
}

fn http_opts(args: &Options, krate: &TokenStream) -> TokenStream {
    let mut out = quote!(#krate::__private::HttpOpts::new());
    if args.public.is_some() {
        out.extend(quote!(.public()));
    }
    if let Some(s) = &args.s_maxage {
        let v = &s.value;
        out.extend(quote!(.s_maxage(#v)));
    }
    if let Some(s) = &args.cdn_max_age {
        let v = &s.value;
        out.extend(quote!(.cdn_max_age(#v)));
    }
    if let Some(vary) = &args.vary {
        let names = &vary.value;
        let joined = names.join(", ");
        out.extend(quote!(.vary(&[#(#names),*], #joined)));
    }
    if let Some(field) = &args.last_modified {
        let f = &field.value;
        out.extend(quote!(.last_modified_field(#f)));
    }
    if args.honor_no_cache.is_some() {
        out.extend(quote!(.honor_no_cache()));
    }
    if let Some(s) = &args.stale {
        let v = &s.value;
        out.extend(quote!(.stale_while_revalidate(#v)));
    }
    if let Some(s) = &args.stale_if_error {
        let v = &s.value;
        out.extend(quote!(.stale_if_error(#v)));
    }
    out
}

/// A handler without `key`: module path, fn name, then the request's path and query.
fn default_handler_key(func: &ItemFn) -> (TokenStream, usize) {
    let name = func.sig.ident.to_string();
    let out = quote! {
        __cr_w.lit(::core::module_path!());
        __cr_w.lit("::");
        __cr_w.lit(#name);
        __cr_w.lit(":");
        __cr_http.key_uri(&mut __cr_w);
    };
    (out, 96)
}

/// `key = "user:<id>"`: literal text as is, placeholders rendered with `Display`, escaped.
fn template_key(
    segments: &[Segment],
    span: Span,
    params: &Signature,
    skip: &[Ident],
    krate: &TokenStream,
    errors: &mut Errors,
) -> (TokenStream, usize) {
    let mut out = TokenStream::new();
    let mut capacity = 0;
    for segment in segments {
        match segment {
            Segment::Lit(text) => {
                capacity += text.len();
                out.extend(quote!(__cr_w.lit(#text);));
            }
            Segment::Placeholder { root, fields } => {
                capacity += 8;
                let root_ident = if root == "self" {
                    if !params.has_self {
                        errors.push(syn::Error::new(span, "placeholder `<self…>` in a fn without a `self` parameter"));
                        continue;
                    }
                    quote_spanned!(span=> self)
                } else if let Some(ty) = params.type_params.iter().find(|t| *t == root).filter(|_| fields.is_empty()) {
                    // `<T>`: the type the fn is instantiated with.
                    let ty = Ident::new(&ty.to_string(), span);
                    out.extend(quote_spanned!(span=> __cr_w.display(::core::any::type_name::<#ty>());));
                    continue;
                } else {
                    let Some(param) = params.names.iter().find(|n| *n == root) else {
                        errors.push(syn::Error::new(
                            span,
                            format!(
                                "unknown placeholder `<{root}>`: no parameter is named `{root}`; the parameters are: {}",
                                list(&params.names)
                            ),
                        ));
                        continue;
                    };
                    if skip.iter().any(|s| s == root) {
                        errors.push(syn::Error::new(
                            span,
                            format!("placeholder `<{root}>` names a skipped parameter; remove it from `skip` or from the key"),
                        ));
                        continue;
                    }
                    let ident = Ident::new(&param.to_string(), span);
                    quote!(#ident)
                };
                let fields = fields.iter().map(|f| match f.parse::<u32>() {
                    Ok(index) => {
                        let index = syn::Index { index, span };
                        quote!(.#index)
                    }
                    Err(_) => {
                        let f = Ident::new(f, span);
                        quote!(.#f)
                    }
                });
                // Integers and text skip `fmt`; the most specific `put` is chosen by method
                // resolution (see `cache_runtime::key::Part`).
                out.extend(quote_spanned!(span=> {
                    #[allow(unused_imports)]
                    use #krate::__private::{PartDisplay as _, PartInt as _, PartText as _};
                    (&&#krate::__private::Part(&#root_ident #(#fields)*)).put(&mut __cr_w);
                }));
            }
        }
    }
    (out, capacity)
}

/// No `key`: module path, (the `Self` type for methods,) fn name, then every parameter not
/// skipped, each JSON-encoded and escaped.
fn default_key(func: &ItemFn, params: &Signature, skip: &[Ident], krate: &TokenStream) -> (TokenStream, usize) {
    let name = func.sig.ident.to_string();
    let mut out = quote!(__cr_w.lit(::core::module_path!()); __cr_w.lit("::"););
    if params.has_self {
        // The `Self` type once, without repeating the module path the key starts with.
        out.extend(quote!(
            __cr_w.display(#krate::__private::type_in_module::<Self>(::core::module_path!()));
            __cr_w.lit("::");
        ));
    }
    out.extend(quote!(__cr_w.lit(#name);));
    // `get::<A>(1)` and `get::<B>(1)` store different types: different keys.
    for ty in &params.returned_types {
        out.extend(quote!(__cr_w.lit("<"); __cr_w.display(::core::any::type_name::<#ty>()); __cr_w.lit(">");));
    }
    out.extend(quote!(__cr_w.lit(":");));
    for param in params.names.iter().filter(|n| !skip.contains(n)) {
        let ident = format_ident!("{}", param, span = param.span());
        out.extend(quote_spanned!(param.span()=> __cr_w.arg(&#ident);));
    }
    (out, 48 + 12 * params.names.len())
}

/// Each tag template rendered into a `String` (placeholders escaped like key values).
fn render_tags(
    tags: &[Spanned<Vec<Segment>>],
    params: &Signature,
    skip: &[Ident],
    krate: &TokenStream,
    errors: &mut Errors,
) -> Vec<TokenStream> {
    tags.iter()
        .map(|tag| {
            let (stmts, capacity) = template_key(&tag.value, tag.span, params, skip, krate, errors);
            quote!({
                let mut __cr_w = #krate::__private::KeyWriter::tag(#capacity);
                #stmts
                __cr_w.finish_tag()
            })
        })
        .collect()
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

/// `#[invalidates(...)]`: render what to invalidate from the arguments, run the body, then
/// (or, with `before`, first) hand it to the runtime. Only a successful body invalidates: `Ok`,
/// `Some`, a 2xx response, or any value of another type.
pub(crate) fn invalidates(args: Options, func: ItemFn) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    if args.keys.is_empty() && args.tags.is_empty() && args.namespace.is_none() {
        errors.push(syn::Error::new(
            args.span,
            "`#[invalidates]` needs something to invalidate: `key`, `keys`, `tags` or `namespace`",
        ));
    }
    let sig = &func.sig;
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new(sig.fn_token.span, "`#[invalidates]` can only be used on an `async fn`"));
    }
    let params = Signature::of(&func);
    if let ReturnType::Type(_, ty) = &sig.output {
        if let Some(param) = signature::type_parameter(ty, &sig.generics) {
            errors.push(type_parameter_error(
                param,
                "#[invalidates]",
                "whether the fn succeeded (only then it invalidates)",
            ));
        }
    }
    let krate = args.krate.clone().map_or_else(|| quote!(::cache_runtime), |p| p.into_token_stream());
    let mut ops = Vec::new();
    for key in &args.keys {
        let (stmts, capacity) = template_key(&key.value, key.span, &params, &[], &krate, &mut errors);
        ops.push(quote!(.key({
            let mut __cr_w = #krate::__private::key_writer(__cr_cache, #krate::__private::DEFAULT_NAMESPACE, #capacity);
            #stmts
            __cr_w.finish()
        })));
    }
    for tag in render_tags(&args.tags, &params, &[], &krate, &mut errors) {
        ops.push(quote!(.tag(#tag)));
    }
    if let Some(ns) = &args.namespace {
        let ns = &ns.value;
        ops.push(quote!(.namespace(#ns)));
    }
    errors.finish()?;

    let handler = is_handler(args.http.is_some(), &params);
    // Owned (an `Arc` clone): the body may move what the `cache` expression borrows from.
    let cache = cache_binding(args.cache.as_ref(), &krate, true);
    let ItemFn { attrs, vis, block, .. } = &func;
    let (outer, inner): (Vec<_>, Vec<_>) = attrs.iter().partition(|a| matches!(a.style, AttrStyle::Outer));
    let stmts = &block.stmts;
    let ret_ty: Type = match &sig.output {
        ReturnType::Type(_, ty) => (**ty).clone(),
        ReturnType::Default => syn::parse_quote!(()),
    };
    let fake_return = fake_return(&ret_ty);
    let (before, after) = if args.before.is_some() {
        (quote!(__cr_inv.run().await;), quote!())
    } else {
        (
            quote!(),
            quote!(if __cr_ok {
                __cr_inv.run().await;
            }),
        )
    };
    let (sig, success, result) = if handler {
        let mut sig = sig.clone();
        sig.output = syn::parse_quote!(-> #krate::__private::Response);
        let into = quote_spanned!(ret_ty.span()=> #krate::__private::IntoResponse::into_response(__cr_out));
        (sig, quote!(let __cr_out = #into; let __cr_ok = __cr_out.status().is_success();), quote!(__cr_out))
    } else {
        // The type decides, however it is spelled: `Ok` of a `Result` (an alias included),
        // `Some` of an `Option`, any value of another type.
        let check = quote!({
            #[allow(unused_imports)]
            use #krate::__private::{SucceededOption as _, SucceededResult as _, SucceededValue as _};
            (&&#krate::__private::Outcome(&__cr_out)).succeeded()
        });
        (sig.clone(), quote!(let __cr_ok = #check;), quote!(__cr_out))
    };
    let uses_bounds = return_bounds(&ret_ty, handler);
    Ok(quote! {
        #(#outer)*
        #vis #sig {
            #(#inner)*
            #uses_bounds
            #cache
            let __cr_inv = #krate::__private::Invalidation::new(__cr_cache) #(#ops)*;
            #before
            let __cr_out = async {
                #fake_return
                #(#stmts)*
            }
            .await;
            #success
            #after
            #result
        }
    })
}

/// A fake return edge: fixes an async block's type so `?` and `return` infer as in the
/// user's fn. `None` for `impl Trait` return types (impossible to name, and not needed).
fn fake_return(ret_ty: &Type) -> Option<TokenStream> {
    (!signature::has_impl_trait(ret_ty)).then(|| {
        quote! {
            #[allow(unreachable_code, clippy::diverging_sub_expression, clippy::empty_loop, clippy::needless_return)]
            if false {
                let __cr_fake_return: #ret_ty = loop {};
                return __cr_fake_return;
            }
        }
    })
}

/// Binds `__cr_cache: &Cache`: the `cache = …` expression, or the global cache. `owned`: clone
/// it, so a body that moves its parameters (a background refresh) can still be built.
fn cache_binding(cache: Option<&syn::Expr>, krate: &TokenStream, owned: bool) -> TokenStream {
    match cache {
        Some(expr) if owned => quote_spanned! {expr.span()=>
            let __cr_cache_owned: #krate::__private::Cache =
                ::core::clone::Clone::clone(#krate::__private::as_cache(&(#expr)));
            let __cr_cache: &#krate::__private::Cache = &__cr_cache_owned;
        },
        Some(expr) => quote_spanned! {expr.span()=>
            let __cr_cache_ref = &(#expr);
            let __cr_cache: &#krate::__private::Cache = #krate::__private::as_cache(__cr_cache_ref);
        },
        // The enclosing `cache_runtime::scope`'s cache, else the global one.
        None => quote! {
            let __cr_cache_current = #krate::__private::current();
            let __cr_cache: &#krate::__private::Cache = &__cr_cache_current;
        },
    }
}

/// When the return type is replaced by `Response`, naming the bounds of its `impl Trait`s
/// keeps them (and the user's imports of them) checked and used.
fn return_bounds(ret_ty: &Type, replaced: bool) -> Option<TokenStream> {
    let bounds = signature::impl_bounds(ret_ty);
    if !replaced || bounds.is_empty() {
        return None;
    }
    let params = (0..bounds.len()).map(|i| format_ident!("__CrR{}", i));
    Some(quote! {
        #[allow(dead_code, non_snake_case)]
        fn __cr_return_bounds<#(#params: #bounds),*>() {}
    })
}
