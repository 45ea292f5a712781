//! Code generation. The expansion only builds a key and a future, then hands both to the
//! runtime (`__private::cached_*`); all caching logic lives in cache-runtime.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens as _};
use syn::spanned::Spanned as _;
use syn::{AttrStyle, FnArg, GenericArgument, Ident, ItemFn, Pat, PathArguments, ReturnType, Type};

use crate::attr::{CacheNone, CachedArgs, Errors};
use crate::template::Segment;

/// The names a fn's parameters bind, in order (`Path(id): Path<u64>` binds `id`).
struct Params {
    has_self: bool,
    names: Vec<Ident>,
}

fn bound_names(pat: &Pat, out: &mut Vec<Ident>) {
    match pat {
        Pat::Ident(p) => {
            out.push(p.ident.clone());
            if let Some((_, sub)) = &p.subpat {
                bound_names(sub, out);
            }
        }
        Pat::Tuple(p) => p.elems.iter().for_each(|e| bound_names(e, out)),
        Pat::TupleStruct(p) => p.elems.iter().for_each(|e| bound_names(e, out)),
        Pat::Struct(p) => p.fields.iter().for_each(|f| bound_names(&f.pat, out)),
        Pat::Reference(p) => bound_names(&p.pat, out),
        Pat::Slice(p) => p.elems.iter().for_each(|e| bound_names(e, out)),
        Pat::Type(p) => bound_names(&p.pat, out),
        Pat::Paren(p) => bound_names(&p.pat, out),
        _ => {}
    }
}

fn params(func: &ItemFn) -> Params {
    let mut names = Vec::new();
    let mut has_self = false;
    for input in &func.sig.inputs {
        match input {
            FnArg::Receiver(_) => has_self = true,
            FnArg::Typed(pat) => bound_names(&pat.pat, &mut names),
        }
    }
    Params { has_self, names }
}

fn list(names: &[Ident]) -> String {
    if names.is_empty() {
        "it has none".to_owned()
    } else {
        names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
    }
}

/// What the return type says about what is stored.
enum Mode<'a> {
    Plain(&'a Type),
    Option(&'a Type),
    Result(&'a Type),
}

fn strip(ty: &Type) -> &Type {
    match ty {
        Type::Paren(p) => strip(&p.elem),
        Type::Group(g) => strip(&g.elem),
        other => other,
    }
}

fn first_type_arg(args: &PathArguments) -> Option<&Type> {
    let PathArguments::AngleBracketed(args) = args else {
        return None;
    };
    args.args.iter().find_map(|a| match a {
        GenericArgument::Type(t) => Some(t),
        _ => None,
    })
}

fn mode(ty: &Type) -> Mode<'_> {
    if let Type::Path(path) = strip(ty) {
        if let Some(last) = path.path.segments.last() {
            if let Some(inner) = first_type_arg(&last.arguments) {
                if last.ident == "Option" {
                    return Mode::Option(inner);
                }
                if last.ident == "Result" {
                    return Mode::Result(inner);
                }
            }
        }
    }
    Mode::Plain(ty)
}

pub(crate) fn cached(args: CachedArgs, func: ItemFn) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let sig = &func.sig;
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new(sig.fn_token.span, "`#[cached]` can only be used on an `async fn`"));
    }
    let params = params(&func);
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
    let ret_ty = match &sig.output {
        ReturnType::Type(_, ty) => Some(&**ty),
        ReturnType::Default => {
            errors.push(syn::Error::new(sig.ident.span(), "a `#[cached]` fn must return the value to cache"));
            None
        }
    };
    if let Some(Type::ImplTrait(it)) = ret_ty.map(strip) {
        errors.push(syn::Error::new(
            it.span(),
            "a `#[cached]` fn must return a concrete type (an `impl Trait` value cannot be stored)",
        ));
    }
    let mode = ret_ty.map(mode);
    if let (Some(cn), Some(m)) = (&args.cache_none, &mode) {
        if !matches!(m, Mode::Option(_)) {
            errors
                .push(syn::Error::new(cn.span, "`cache_none` needs a fn returning `Option<T>`: it caches the `None`s"));
        }
    }
    let krate = args.krate.clone().map_or_else(|| quote!(::cache_runtime), |p| p.into_token_stream());
    let key = match &args.key {
        Some(template) => template_key(&template.value, template.span, &params, &args.skip, &mut errors),
        None => default_key(&func, &params, &args.skip),
    };
    errors.finish()?;
    let (Some(ret_ty), Some(mode)) = (ret_ty, mode) else { unreachable!("reported above") };

    let (runtime_fn, value_ty, infer) = match mode {
        Mode::Plain(t) => ("cached_value", t, quote!(_)),
        Mode::Option(t) => ("cached_option", t, quote!(_)),
        Mode::Result(t) => ("cached_result", t, quote!(_, _)),
    };
    let runtime_fn = Ident::new(runtime_fn, value_ty.span());
    // The callee is spanned at the cached type, so "cannot be stored in the cache" errors
    // point at the user's return type.
    let call = quote_spanned! {value_ty.span()=>
        #krate::__private::#runtime_fn::<#value_ty, #infer>(__cr_cache, __cr_key, &__CR_OPTS, __cr_body).await
    };
    let cache = match &args.cache {
        Some(expr) => quote_spanned! {expr.span()=>
            let __cr_cache_ref = &(#expr);
            let __cr_cache: &#krate::__private::Cache = #krate::__private::as_cache(__cr_cache_ref);
        },
        None => quote!(let __cr_cache: &#krate::__private::Cache = #krate::__private::global();),
    };
    let namespace = args.namespace.as_ref().map_or_else(
        || quote!(#krate::DEFAULT_NAMESPACE),
        |ns| {
            let ns = &ns.value;
            quote!(#ns)
        },
    );
    let mut opts = quote!(#krate::__private::CallOpts::new());
    if let Some(expire) = &args.expire {
        let secs = expire.value;
        opts.extend(quote!(.expire(#krate::__private::Duration::from_secs(#secs))));
    }
    if let Some(cn) = &args.cache_none {
        opts.extend(match cn.value {
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
    Ok(quote! {
        #(#outer)*
        #vis #sig {
            #(#inner)*
            #cache
            let __cr_key = {
                let mut __cr_w = #krate::__private::key_writer(__cr_cache, #namespace, #capacity);
                #key_builder
                __cr_w.finish()
            };
            const __CR_OPTS: #krate::__private::CallOpts = #opts;
            let __cr_body = async {
                // A fake return edge: fixes the block's type so `?` and `return` infer as in the
                // user's fn.
                #[allow(unreachable_code, clippy::diverging_sub_expression, clippy::empty_loop, clippy::needless_return)]
                if false {
                    let __cr_fake_return: #ret_ty = loop {};
                    return __cr_fake_return;
                }
                #(#stmts)*
            };
            #call
        }
    })
}

/// `key = "user:<id>"`: literal text as is, placeholders rendered with `Display`, escaped.
fn template_key(
    segments: &[Segment],
    span: Span,
    params: &Params,
    skip: &[Ident],
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
                out.extend(quote_spanned!(span=> __cr_w.display(&#root_ident #(#fields)*);));
            }
        }
    }
    (out, capacity)
}

/// No `key`: module path, (the `Self` type for methods,) fn name, then every parameter not
/// skipped, each JSON-encoded and escaped.
fn default_key(func: &ItemFn, params: &Params, skip: &[Ident]) -> (TokenStream, usize) {
    let name = func.sig.ident.to_string();
    let mut out = quote!(__cr_w.lit(::core::module_path!()); __cr_w.lit("::"););
    if params.has_self {
        out.extend(quote!(__cr_w.display(::core::any::type_name::<Self>()); __cr_w.lit("::");));
    }
    out.extend(quote!(__cr_w.lit(#name); __cr_w.lit(":");));
    for param in params.names.iter().filter(|n| !skip.contains(n)) {
        let ident = format_ident!("{}", param, span = param.span());
        out.extend(quote_spanned!(param.span()=> __cr_w.arg(&#ident);));
    }
    (out, 48 + 12 * params.names.len())
}
