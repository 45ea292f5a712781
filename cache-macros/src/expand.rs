//! Code generation from a checked plan. The expansion only builds a key and a future, then
//! hands both to the runtime (`__private::cached_*`); all caching logic lives in cache-runtime.
//! Nothing here reports an error: `attr` and `check` found them all.

use proc_macro2::{Delimiter, Group, Span, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::spanned::Spanned as _;
use syn::{AttrStyle, Attribute, Ident, ItemFn, Path, ReturnType, Type};

use crate::attr::{CacheNone, Secs};
use crate::check::{
    BatchPlan, CachedPlan, CallOpts, HttpOpts, InvalidatesPlan, Key, KeyFn, Mode, Part, Policy, Template,
};
use crate::signature::{self, Returns};

/// A number of seconds: a literal as is (`attr` checked it), or a constant expression (a `u64`
/// or a `Duration`) checked and converted at compile time by one call into the runtime,
/// `__private::seconds(<expr>).get("<option>", "<expr>")`, evaluated in the `const` the options
/// are built in. That call is spanned from the expression's first token to its last, so a
/// value the runtime refuses (zero, not whole seconds) is reported on the whole expression.
fn secs(secs: &Secs, krate: &TokenStream) -> TokenStream {
    match secs {
        Secs::Lit(secs) => secs.to_token_stream(),
        Secs::Const { expr, option } => {
            let mut tokens = expr.to_token_stream().into_iter();
            let first = tokens.next().map_or_else(Span::call_site, |t| t.span());
            let last = tokens.last().map_or(first, |t| t.span());
            let text = expr_text(expr);
            let head = respan(quote!(#krate::__private::seconds), first);
            let mut args = Group::new(Delimiter::Parenthesis, quote!(#option, #text));
            args.set_span(last);
            let mut value = Group::new(Delimiter::Parenthesis, expr.to_token_stream());
            value.set_span(last);
            let get = quote_spanned!(last=> .get #args);
            quote! {{
                #[allow(unused_imports)]
                use #krate::__private::SecondsOther as _;
                #head #value #get
            }}
        }
    }
}

/// `tokens` with every span set to `span`.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tree| {
            if let TokenTree::Group(g) = &tree {
                let mut group = Group::new(g.delimiter(), respan(g.stream(), span));
                group.set_span(span);
                tree = TokenTree::Group(group);
            } else {
                tree.set_span(span);
            }
            tree
        })
        .collect()
}

/// An expression as the user wrote it, near enough for a message: `Duration::from_millis(1500)`,
/// `5 * 60` (the token printer's spaces around `::`, `.` and delimiters removed).
fn expr_text(expr: &syn::Expr) -> String {
    let mut text = expr.to_token_stream().to_string();
    for (from, to) in [(" :: ", "::"), (":: ", "::"), (" . ", "."), (" (", "("), ("( ", "("), (" )", ")"), (" ,", ",")]
    {
        text = text.replace(from, to);
    }
    text
}

/// The path of cache-runtime: `crate = "…"`, or `::cache_runtime`.
fn krate(path: Option<&Path>) -> TokenStream {
    path.map_or_else(|| quote!(::cache_runtime), ToTokens::to_token_stream)
}

/// The fn's outer and inner attributes.
fn split_attrs(func: &ItemFn) -> (Vec<&Attribute>, Vec<&Attribute>) {
    func.attrs.iter().partition(|a| matches!(a.style, AttrStyle::Outer))
}

/// `#[cached(...)]`: bind the cache, build the key, tags and options, wrap the body in a future,
/// and hand them to the runtime's read-through for the fn's mode.
pub(crate) fn cached(plan: &CachedPlan) -> TokenStream {
    let krate = krate(plan.krate.as_ref());
    let ret_ty = &plan.ret_ty;
    let (outer, inner) = split_attrs(&plan.func);
    let cache = cache_binding(plan.cache.as_ref(), &krate, plan.background);
    let (body_kw, spawner) = if plan.background {
        (quote!(async move), quote!(#krate::__private::Spawner::background()))
    } else {
        (quote!(async), quote!(#krate::__private::Spawner::inline()))
    };
    let namespace =
        plan.namespace.as_ref().map_or_else(|| quote!(#krate::__private::DEFAULT_NAMESPACE), |ns| quote!(#ns));
    let opts = call_opts(&plan.opts, &krate);
    let site = function_site(&plan.func, &krate);
    let (key_builder, capacity) = match &plan.key {
        Key::Template(template) => template_key(template, &krate),
        Key::Request => default_handler_key(&plan.func),
        Key::Args { args, params, returned_types } => {
            default_key(&plan.func, plan.has_self, args, *params, returned_types, &krate)
        }
    };
    let tags = render_tags(&plan.tags, &krate);
    let stmts = &plan.func.block.stmts;
    let fake_return = fake_return(ret_ty);
    let tag_count = tags.len();
    let prologue = quote! {
        #(#inner)*
        #cache
        let mut __cr_w = #krate::__private::key_writer(__cr_cache, #namespace, #capacity);
        #key_builder
        const __CR_OPTS: #krate::__private::CallOpts = #opts;
        #site
        let __cr_tags: [::std::string::String; #tag_count] = [#(#tags),*];
        let __cr_body = #body_kw {
            #fake_return
            #(#stmts)*
        };
    };
    let (sig, head, call) = match &plan.mode {
        Mode::Handler(http) => handler_call(plan, http, &namespace, &spawner, &krate),
        // A batch renders a key per element and takes the missing elements: its own expansion.
        Mode::Batch(batch) => return cached_batch(plan, batch),
        Mode::Service(returns) => {
            (plan.func.sig.clone(), None, service_call(returns, ret_ty, &plan.policy, &namespace, &spawner, &krate))
        }
    };
    let vis = &plan.func.vis;
    let key_fn = plan.key_fn.as_ref().map(|key_fn| render_key_fn(plan, key_fn, &krate));
    quote! {
        #(#outer)*
        #vis #sig {
            #head
            #prologue
            #call
        }
        #key_fn
    }
}

/// `key_fn = name`: beside the cached fn (a free fn, or an associated fn in an `impl`), a fn
/// taking the placeholders' parameters by reference and returning the key the template renders.
fn render_key_fn(plan: &CachedPlan, key_fn: &KeyFn, krate: &TokenStream) -> TokenStream {
    let Key::Template(template) = &plan.key else { return TokenStream::new() };
    let (stmts, capacity) = template_key(template, krate);
    let (vis, name, cached) = (&plan.func.vis, &key_fn.name, &plan.func.sig.ident);
    let lifetimes = plan.func.sig.generics.lifetimes();
    let params = key_fn.params.iter().map(|(param, ty)| quote!(#param: &#ty));
    let namespace = plan.namespace.as_deref().unwrap_or("default");
    let doc = format!(
        "The key `{cached}` stores under, as the plain API and `#[invalidates]` take it (in the namespace \
         `{namespace}`): `cache.namespace(\"{namespace}\").invalidate(&{name}(…))`. Generated by `key_fn`."
    );
    quote! {
        #[doc = #doc]
        #[allow(clippy::trivially_copy_pass_by_ref, clippy::ptr_arg)]
        #vis fn #name<#(#lifetimes),*>(#(#params),*) -> ::std::string::String {
            let mut __cr_w = #krate::__private::KeyWriter::tag(#capacity);
            #stmts
            __cr_w.finish_tag()
        }
    }
}

/// `#[cached(batch)]`: each element's key and tags (the templates with the element in place of
/// the batch parameter), a body that takes the missing elements (rebound to the parameter's
/// type), and one call into the runtime's batch read-through.
fn cached_batch(plan: &CachedPlan, batch: &BatchPlan) -> TokenStream {
    let krate = krate(plan.krate.as_ref());
    let ret_ty = &plan.ret_ty;
    let (outer, inner) = split_attrs(&plan.func);
    // Owned: the body (moved into its closure) may move what the `cache` expression borrows.
    let cache = cache_binding(plan.cache.as_ref(), &krate, true);
    let namespace =
        plan.namespace.as_ref().map_or_else(|| quote!(#krate::__private::DEFAULT_NAMESPACE), |ns| quote!(#ns));
    let opts = call_opts(&plan.opts, &krate);
    let site = function_site(&plan.func, &krate);
    let element = Ident::new("__cr_el", Span::call_site());
    let per_element = |template: &Template| {
        Template(
            template
                .0
                .iter()
                .map(|part| match part {
                    Part::Value { root, fields, span } if *root == batch.param => {
                        Part::Value { root: element.clone(), fields: fields.clone(), span: *span }
                    }
                    other => other.clone(),
                })
                .collect(),
        )
    };
    let (key_builder, capacity) = match &plan.key {
        Key::Template(template) => template_key(&per_element(template), &krate),
        // A batch has a `key` (checked).
        Key::Request | Key::Args { .. } => return quote!(::core::compile_error!("a batch fn needs `key`");),
    };
    let tags = render_tags(&plan.tags.iter().map(per_element).collect::<Vec<_>>(), &krate);
    let param = &batch.param;
    let param_ty = &batch.param_ty;
    let rebind = match batch.collection {
        signature::Collection::Owned => {
            quote!(let #param: #param_ty = ::core::iter::FromIterator::from_iter(__cr_missing);)
        }
        signature::Collection::Slice => quote! {
            let __cr_owned: ::std::vec::Vec<_> = __cr_missing;
            let #param = &__cr_owned[..];
        },
    };
    let stmts = &plan.func.block.stmts;
    let fake_return = fake_return(ret_ty);
    let value = batch.value_ty.as_ref().map(ToTokens::to_token_stream);
    let policy =
        policy(&plan.policy, value.as_ref(), &krate).unwrap_or_else(|| quote!(#krate::__private::Policy::new()));
    let batch_call = quote! {
        #krate::__private::Batch {
            cache: __cr_cache, namespace: #namespace, opts: &__CR_OPTS, site: ::core::option::Option::Some(&__CR_FN),
            elements: __cr_elements,
        }
    };
    let call = match batch.fallible {
        Some(fallible) => {
            let runtime_fn = if fallible { quote!(cached_batch_result) } else { quote!(cached_batch) };
            quote_spanned! {ret_ty.span()=>
                #krate::__private::#runtime_fn(#batch_call, #policy, __cr_body).await
            }
        }
        // Spelled neither as a map nor as `Result<…>`: it may still be a `Result` behind an alias
        // (`AppResult<HashMap<u64, Product>>`). The type decides (see `cache_runtime::returns`).
        None => quote_spanned! {ret_ty.span()=>
            {
                #[allow(unused_imports)]
                use #krate::__private::{ViaBatchMap as _, ViaBatchResult as _};
                (&&#krate::__private::Returns::<#ret_ty>::new())
                    .cached_batch_by_type(#batch_call, #policy, __cr_body)
                    .await
            }
        },
    };
    let sig = &plan.func.sig;
    let vis = &plan.func.vis;
    quote! {
        #(#outer)*
        #vis #sig {
            #(#inner)*
            #cache
            const __CR_OPTS: #krate::__private::CallOpts = #opts;
            #site
            let __cr_elements: ::std::vec::Vec<_> = #param
                .iter()
                .cloned()
                .map(|#element| {
                    let mut __cr_w = #krate::__private::key_writer(__cr_cache, #namespace, #capacity);
                    #key_builder
                    let __cr_tags: ::std::vec::Vec<::std::string::String> = ::std::vec![#(#tags),*];
                    #krate::__private::Element { id: #element, key: __cr_w.finish(), tags: __cr_tags }
                })
                .collect();
            let __cr_body = move |__cr_missing: ::std::vec::Vec<_>| async move {
                #rebind
                #fake_return
                #(#stmts)*
            };
            #call
        }
    }
}

/// A handler's signature (it takes the request's parts and returns a `Response`), what its
/// body starts with, and its read-through call, after the prologue.
fn handler_call(
    plan: &CachedPlan,
    http: &HttpOpts,
    namespace: &TokenStream,
    spawner: &TokenStream,
    krate: &TokenStream,
) -> (syn::Signature, Option<TokenStream>, TokenStream) {
    let ret_ty = &plan.ret_ty;
    let mut http_opts = http_opts(http, &plan.opts, krate);
    if let Some(policy) = policy(&plan.policy, Some(&quote!(#krate::__private::Response)), krate) {
        http_opts.extend(quote!(.policy(#policy)));
    }
    let mut sig = plan.func.sig.clone();
    let at = usize::from(plan.has_self);
    // Only a handler that reads more than the conditional headers copies the header map.
    let all_headers = http.vary.is_some() || http.honor_no_cache;
    // Only the default key (no `key`) reads the request's URI.
    let keep_uri = matches!(plan.key, Key::Request);
    sig.inputs.insert(at, syn::parse_quote!(__cr_http: #krate::__private::HttpRequest<#all_headers, #keep_uri>));
    sig.output = syn::parse_quote!(-> #krate::__private::Response);
    // Naming the return type (when it can be named) puts "does not implement IntoResponse"
    // on it.
    let response_ty = if signature::has_impl_trait(ret_ty) { quote!(_) } else { quote!(#ret_ty) };
    let call = quote_spanned! {ret_ty.span()=>
        #krate::__private::cached_handler::<#response_ty, _, #all_headers, #keep_uri>(
            #krate::__private::Call {
                cache: __cr_cache, key: __cr_w, namespace: #namespace, tags: &__cr_tags, opts: &__CR_OPTS,
                site: ::core::option::Option::Some(&__CR_FN),
            },
            __cr_http, &__CR_HTTP, __cr_body, #spawner,
        ).await
    };
    let uses_bounds = return_bounds(ret_ty, true);
    // Without the runtime's `axum` feature: a compile error that says so, first.
    let support = quote_spanned!(plan.func.sig.ident.span()=> #krate::__private::handler_support!(););
    let head = quote! {
        #support
        #uses_bounds
        const __CR_HTTP: #krate::__private::HttpOpts = #http_opts;
    };
    (sig, Some(head), call)
}

/// The read-through call of a service fn, after the prologue.
fn service_call(
    returns: &Returns,
    ret_ty: &Type,
    policy_plan: &Policy,
    namespace: &TokenStream,
    spawner: &TokenStream,
    krate: &TokenStream,
) -> TokenStream {
    let call_ctx = quote! {
        #krate::__private::Call {
            cache: __cr_cache, key: __cr_w.finish(), namespace: #namespace, tags: &__cr_tags, opts: &__CR_OPTS,
            site: ::core::option::Option::Some(&__CR_FN),
        }
    };
    let policy_of = |value: Option<&TokenStream>| {
        policy(policy_plan, value, krate).unwrap_or_else(|| quote!(#krate::__private::Policy::new()))
    };
    let (runtime_fn, value_ty, infer) = match returns {
        // Not spelled `Result<…>`/`Option<…>`: it may still be one behind an alias
        // (`CatalogResult<T>`). The type decides (see `cache_runtime::returns`).
        Returns::Plain => {
            let policy = policy_of(None);
            return quote_spanned! {ret_ty.span()=>
                {
                    #[allow(unused_imports)]
                    use #krate::__private::{ViaOption as _, ViaResult as _, ViaValue as _};
                    (&&#krate::__private::Returns::<#ret_ty>::new()).cached_by_type(
                        #call_ctx, #policy, __cr_body, #spawner,
                    ).await
                }
            };
        }
        Returns::Option(t) => ("cached_option", t, quote!(_)),
        Returns::Result(t) => ("cached_result", t, quote!(_, _)),
    };
    let runtime_fn = Ident::new(runtime_fn, value_ty.span());
    let policy = policy_of(Some(&value_ty.to_token_stream()));
    // Spanned at the cached type, so "cannot be stored in the cache" points at it.
    quote_spanned! {value_ty.span()=>
        #krate::__private::#runtime_fn::<#value_ty, #infer>(
            #call_ctx, #policy, __cr_body, #spawner,
        ).await
    }
}

fn call_opts(opts: &CallOpts, krate: &TokenStream) -> TokenStream {
    let mut out = quote!(#krate::__private::CallOpts::new());
    let duration = |v: &Secs| {
        let v = secs(v, krate);
        quote!(#krate::__private::Duration::from_secs(#v))
    };
    if let Some(v) = &opts.expire {
        let v = duration(v);
        out.extend(quote!(.expire(#v)));
    }
    if let Some(v) = &opts.stale {
        let v = duration(v);
        out.extend(quote!(.stale(#v)));
    }
    if let Some(v) = &opts.stale_if_error {
        let v = duration(v);
        out.extend(quote!(.stale_if_error(#v)));
    }
    if let Some(beta) = opts.early {
        out.extend(quote!(.early(#beta)));
    }
    if let Some(v) = &opts.lock {
        let v = duration(v);
        out.extend(quote!(.lock(#v)));
    }
    if let Some(cn) = &opts.cache_none {
        out.extend(match cn {
            CacheNone::SameTtl => quote!(.cache_none(::core::option::Option::None)),
            CacheNone::Ttl(v) => {
                let v = duration(v);
                quote!(.cache_none(::core::option::Option::Some(#v)))
            }
        });
    }
    out
}

/// The fn's row in `function_stats`: a `static` named by its module path and name.
fn function_site(func: &ItemFn, krate: &TokenStream) -> TokenStream {
    let name = format!("::{}", func.sig.ident);
    quote! {
        static __CR_FN: #krate::__private::Function =
            #krate::__private::Function::new(::core::concat!(::core::module_path!(), #name));
    }
}

/// `unless` / `expire_with` as a `Policy` over `value` (the type the expressions see; inferred
/// from the runtime fn's signature when `None`), capped by `expire`; `None` when neither is set.
/// The expressions get their types from where they are passed (`|v| v.is_empty()` needs no
/// annotation when the value type is known), and a mismatch is reported at the expression.
fn policy(policy: &Policy, value: Option<&TokenStream>, krate: &TokenStream) -> Option<TokenStream> {
    if policy.unless.is_none() && policy.expire_with.is_none() {
        return None;
    }
    let some = |e: &Option<syn::Expr>| match e {
        Some(e) => quote_spanned!(e.span()=> ::core::option::Option::Some(#e)),
        None => quote!(::core::option::Option::None),
    };
    let (unless, expire_with) = (some(&policy.unless), some(&policy.expire_with));
    let value = value.map(|ty| quote!(::<#ty>));
    Some(quote!(#krate::__private::Policy #value ::of(#unless, #expire_with, __CR_OPTS.expire_bound())))
}

fn http_opts(http: &HttpOpts, opts: &CallOpts, krate: &TokenStream) -> TokenStream {
    let mut out = quote!(#krate::__private::HttpOpts::new());
    if http.public {
        out.extend(quote!(.public()));
    }
    if let Some(v) = &http.s_maxage {
        let v = secs(v, krate);
        out.extend(quote!(.s_maxage(#v)));
    }
    if let Some(v) = &http.cdn_max_age {
        let v = secs(v, krate);
        out.extend(quote!(.cdn_max_age(#v)));
    }
    if let Some(names) = &http.vary {
        let joined = names.join(", ");
        out.extend(quote!(.vary(&[#(#names),*], #joined)));
    }
    if let Some(f) = &http.last_modified {
        out.extend(quote!(.last_modified_field(#f)));
    }
    if http.honor_no_cache {
        out.extend(quote!(.honor_no_cache()));
    }
    if http.cdn_tags {
        out.extend(quote!(.cdn_tags()));
    }
    if opts.stale.is_some() || opts.stale_if_error.is_some() {
        // Read from the call's options, where they were evaluated (and checked) once.
        out.extend(quote!(.stale_windows_of(&__CR_OPTS)));
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
fn template_key(template: &Template, krate: &TokenStream) -> (TokenStream, usize) {
    let mut out = TokenStream::new();
    let mut capacity = 0;
    for part in &template.0 {
        match part {
            Part::Lit(text) => {
                capacity += text.len();
                out.extend(quote!(__cr_w.lit(#text);));
            }
            Part::TypeName(ty) => {
                capacity += 8;
                out.extend(quote_spanned!(ty.span()=> __cr_w.display(::core::any::type_name::<#ty>());));
            }
            Part::Value { root, fields, span } => {
                capacity += 8;
                let fields = fields.iter().map(|f| quote!(.#f));
                // Integers and text skip `fmt`; the most specific `put` is chosen by method
                // resolution (see `cache_runtime::key::Part`).
                out.extend(quote_spanned!(*span=> {
                    #[allow(unused_imports)]
                    use #krate::__private::{PartDisplay as _, PartInt as _, PartText as _};
                    (&&#krate::__private::Part(&#root #(#fields)*)).put(&mut __cr_w);
                }));
            }
        }
    }
    (out, capacity)
}

/// No `key`: module path, (the `Self` type for methods,) fn name, then every parameter not
/// skipped, each JSON-encoded and escaped.
fn default_key(
    func: &ItemFn,
    has_self: bool,
    args: &[Ident],
    params: usize,
    returned_types: &[Ident],
    krate: &TokenStream,
) -> (TokenStream, usize) {
    let name = func.sig.ident.to_string();
    let mut out = quote!(__cr_w.lit(::core::module_path!()); __cr_w.lit("::"););
    if has_self {
        // The `Self` type once, without repeating the module path the key starts with.
        out.extend(quote!(
            __cr_w.display(#krate::__private::type_in_module::<Self>(::core::module_path!()));
            __cr_w.lit("::");
        ));
    }
    out.extend(quote!(__cr_w.lit(#name);));
    // `get::<A>(1)` and `get::<B>(1)` store different types: different keys.
    for ty in returned_types {
        out.extend(quote!(__cr_w.lit("<"); __cr_w.display(::core::any::type_name::<#ty>()); __cr_w.lit(">");));
    }
    out.extend(quote!(__cr_w.lit(":");));
    for arg in args {
        let ident = format_ident!("{}", arg, span = arg.span());
        out.extend(quote_spanned!(arg.span()=> __cr_w.arg(&#ident);));
    }
    (out, 48 + 12 * params)
}

/// Each tag template rendered into a `String` (placeholders escaped like key values).
fn render_tags(tags: &[Template], krate: &TokenStream) -> Vec<TokenStream> {
    tags.iter()
        .map(|tag| {
            let (stmts, capacity) = template_key(tag, krate);
            quote!({
                let mut __cr_w = #krate::__private::KeyWriter::tag(#capacity);
                #stmts
                __cr_w.finish_tag()
            })
        })
        .collect()
}

/// `#[invalidates(...)]`: render what to invalidate from the arguments, run the body, then
/// (or, with `before`, first) hand it to the runtime. Only a successful body invalidates: `Ok`,
/// `Some`, a 2xx response, or any value of another type.
pub(crate) fn invalidates(plan: &InvalidatesPlan) -> TokenStream {
    let krate = krate(plan.krate.as_ref());
    let mut ops = Vec::new();
    let key_namespace =
        plan.key_namespace.as_ref().map_or_else(|| quote!(#krate::__private::DEFAULT_NAMESPACE), |ns| quote!(#ns));
    for key in &plan.keys {
        let (stmts, capacity) = template_key(key, &krate);
        ops.push(quote!(.key({
            let mut __cr_w = #krate::__private::key_writer(__cr_cache, #key_namespace, #capacity);
            #stmts
            __cr_w.finish()
        })));
    }
    for tag in render_tags(&plan.tags, &krate) {
        ops.push(quote!(.tag(#tag)));
    }
    if let Some(ns) = &plan.namespace {
        ops.push(quote!(.namespace(#ns)));
    }
    // Owned (an `Arc` clone): the body may move what the `cache` expression borrows from.
    let cache = cache_binding(plan.cache.as_ref(), &krate, true);
    let (outer, inner) = split_attrs(&plan.func);
    let ItemFn { vis, sig, block, .. } = &plan.func;
    let stmts = &block.stmts;
    let ret_ty: Type = match &sig.output {
        ReturnType::Type(_, ty) => (**ty).clone(),
        ReturnType::Default => syn::parse_quote!(()),
    };
    let fake_return = fake_return(&ret_ty);
    let (before, after) = if plan.before {
        (quote!(__cr_inv.run().await;), quote!())
    } else {
        (
            quote!(),
            quote!(if __cr_ok {
                __cr_inv.run().await;
            }),
        )
    };
    let (sig, success, result) = if plan.handler {
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
    let uses_bounds = return_bounds(&ret_ty, plan.handler);
    quote! {
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
    }
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
