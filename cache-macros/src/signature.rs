//! What the fn is: its parameters and the names they bind, its type parameters, the shape of
//! its return type, and (in [`is_handler`], the one place that decides it) whether it is an
//! axum handler. Nothing here reports an error: `check` does, from these facts.

use proc_macro2::Span;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned as _;
use syn::visit::Visit;
use syn::{FnArg, GenericArgument, Ident, ItemFn, Pat, PathArguments, ReturnType, Type, TypeParamBound};

/// The facts about a fn that the options are checked against.
pub(crate) struct Signature {
    pub(crate) has_self: bool,
    /// The names the parameters bind, in order (`Path(id): Path<u64>` binds `id`).
    pub(crate) names: Vec<Ident>,
    /// The typed parameters, in order.
    pub(crate) params: Vec<Param>,
    /// The return type; `None` when there is none (`()`).
    pub(crate) output: Option<Type>,
    /// Every type parameter of the fn (a `<T>` placeholder may name any of them).
    pub(crate) type_params: Vec<Ident>,
    /// The fn's type parameters that its return type mentions: each instantiation stores
    /// another type, so each needs its own key (`<T>` in a template names one).
    pub(crate) returned_types: Vec<Ident>,
    /// No receiver, no generics, and no parameter type that borrows: the body can be moved
    /// into a `'static` task.
    pub(crate) owns_its_parameters: bool,
}

/// One typed parameter.
pub(crate) struct Param {
    /// The span of its pattern.
    pub(crate) span: Span,
    /// The names its pattern binds.
    pub(crate) names: Vec<Ident>,
    /// The last path segment of its type (`Path` for `axum::extract::Path<u64>`), or empty.
    pub(crate) type_name: String,
    /// Its type.
    pub(crate) ty: Type,
}

impl Signature {
    pub(crate) fn of(func: &ItemFn) -> Self {
        let mut names = Vec::new();
        let mut params = Vec::new();
        let mut has_self = false;
        for input in &func.sig.inputs {
            match input {
                FnArg::Receiver(_) => has_self = true,
                FnArg::Typed(pat) => {
                    let mut bound = Vec::new();
                    bound_names(&pat.pat, &mut bound);
                    names.extend(bound.iter().cloned());
                    let type_name = match strip(&pat.ty) {
                        Type::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()).unwrap_or_default(),
                        _ => String::new(),
                    };
                    params.push(Param { span: pat.pat.span(), names: bound, type_name, ty: (*pat.ty).clone() });
                }
            }
        }
        let type_params: Vec<Ident> = func.sig.generics.type_params().map(|p| p.ident.clone()).collect();
        let output = match &func.sig.output {
            ReturnType::Type(_, ty) => Some((**ty).clone()),
            ReturnType::Default => None,
        };
        let returned_types = match &output {
            Some(ty) => {
                let mentioned = mentions(ty, &[]).idents;
                type_params.iter().filter(|p| mentioned.contains(p)).cloned().collect()
            }
            None => Vec::new(),
        };
        let owns_its_parameters = owns_its_parameters(func);
        Signature { has_self, names, params, output, type_params, returned_types, owns_its_parameters }
    }
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

/// Parameter types that mark a fn as an axum handler (the last path segment is compared).
const EXTRACTORS: &[&str] = &[
    "Path",
    "Query",
    "State",
    "Json",
    "Form",
    "Extension",
    "HeaderMap",
    "TypedHeader",
    "Method",
    "Uri",
    "OriginalUri",
    "ConnectInfo",
    "MatchedPath",
    "Host",
    "Request",
    "RawQuery",
    "RawForm",
    "Multipart",
];

/// Return types that mark a fn as an axum handler (any path segment or `impl` bound).
const RESPONSES: &[&str] =
    &["IntoResponse", "Response", "Json", "Html", "Redirect", "StatusCode", "Sse", "ErrorResponse"];

/// Extractors that never change which response a request gets.
pub(crate) const NEUTRAL_EXTRACTORS: &[&str] = &["State", "Extension"];
/// Extractors read from the request's path and query: part of the default key.
pub(crate) const URI_EXTRACTORS: &[&str] = &["Path", "Query", "RawQuery", "Uri", "OriginalUri", "MatchedPath"];

/// Handler mode: forced (the `http` option), an axum extractor parameter, or a response
/// return type.
pub(crate) fn is_handler(forced: bool, sig: &Signature) -> bool {
    forced
        || sig.params.iter().any(|p| EXTRACTORS.contains(&p.type_name.as_str()))
        || sig.output.as_ref().is_some_and(|ty| mentions(ty, RESPONSES).found)
}

/// What the return type says about what is stored.
pub(crate) enum Returns {
    /// Not spelled `Result`/`Option` (it may still be one behind an alias: the type decides).
    Plain,
    /// `Option<T>`: `T`.
    Option(Type),
    /// `Result<T, E>`: `T`.
    Result(Type),
}

/// `ty` without parentheses or invisible groups around it.
pub(crate) fn strip(ty: &Type) -> &Type {
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

/// What `ty`, the return type, says about what is stored.
pub(crate) fn returns(ty: &Type) -> Returns {
    if let Type::Path(path) = strip(ty) {
        if let Some(last) = path.path.segments.last() {
            if let Some(inner) = first_type_arg(&last.arguments) {
                if last.ident == "Option" {
                    return Returns::Option(inner.clone());
                }
                if last.ident == "Result" {
                    return Returns::Result(inner.clone());
                }
            }
        }
    }
    Returns::Plain
}

/// The fn's type parameter that `ty` is, if it is one (`-> T`).
pub(crate) fn type_parameter<'a>(ty: &'a Type, generics: &syn::Generics) -> Option<&'a Ident> {
    let Type::Path(path) = strip(ty) else { return None };
    let ident = path.path.get_ident().filter(|_| path.qself.is_none())?;
    generics.type_params().any(|p| p.ident == *ident).then_some(ident)
}

/// Whether `ty` has an `impl Trait` anywhere in it.
pub(crate) fn has_impl_trait(ty: &Type) -> bool {
    mentions(ty, &[]).impl_trait
}

/// The bounds of every `impl Trait` in `ty`.
pub(crate) fn impl_bounds(ty: &Type) -> Vec<Punctuated<TypeParamBound, syn::Token![+]>> {
    mentions(ty, &[]).impl_bounds
}

/// The first reference in `ty` that a stored value would hold (`&'static str`, the `&[u8]` of
/// `Vec<&[u8]>`): none inside `PhantomData`, a fn pointer, a trait object or a macro.
pub(crate) fn borrowed(ty: &Type) -> Option<&syn::TypeReference> {
    struct First<'ast>(Option<&'ast syn::TypeReference>);
    impl<'ast> Visit<'ast> for First<'ast> {
        fn visit_type(&mut self, ty: &'ast Type) {
            if self.0.is_some() {
                return;
            }
            match ty {
                Type::Reference(r) => self.0 = Some(r),
                Type::BareFn(_) | Type::TraitObject(_) | Type::ImplTrait(_) | Type::Macro(_) => {}
                Type::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == "PhantomData") => {}
                _ => syn::visit::visit_type(self, ty),
            }
        }
    }
    let mut first = First(None);
    first.visit_type(ty);
    first.0
}

struct Mentions<'a> {
    names: &'a [&'a str],
    found: bool,
    impl_trait: bool,
    /// The bounds of every `impl Trait` in the type.
    impl_bounds: Vec<Punctuated<TypeParamBound, syn::Token![+]>>,
    /// Every path segment's identifier (to find the type parameters a type mentions).
    idents: Vec<Ident>,
}

impl<'ast> Visit<'ast> for Mentions<'_> {
    fn visit_path_segment(&mut self, seg: &'ast syn::PathSegment) {
        if self.names.iter().any(|n| seg.ident == n) {
            self.found = true;
        }
        self.idents.push(seg.ident.clone());
        syn::visit::visit_path_segment(self, seg);
    }

    fn visit_type_impl_trait(&mut self, it: &'ast syn::TypeImplTrait) {
        self.impl_trait = true;
        self.impl_bounds.push(it.bounds.clone());
        syn::visit::visit_type_impl_trait(self, it);
    }
}

fn mentions<'a>(ty: &Type, names: &'a [&'a str]) -> Mentions<'a> {
    let mut m = Mentions { names, found: false, impl_trait: false, impl_bounds: Vec::new(), idents: Vec::new() };
    m.visit_type(ty);
    m
}

/// No receiver, no generics, and no parameter type that borrows (`&`, a lifetime, `impl`,
/// `dyn`): the body can be moved into a `'static` task.
fn owns_its_parameters(func: &ItemFn) -> bool {
    struct Borrows(bool);
    impl<'ast> Visit<'ast> for Borrows {
        fn visit_type_reference(&mut self, _: &'ast syn::TypeReference) {
            self.0 = true;
        }
        fn visit_lifetime(&mut self, _: &'ast syn::Lifetime) {
            self.0 = true;
        }
        fn visit_type_impl_trait(&mut self, _: &'ast syn::TypeImplTrait) {
            self.0 = true;
        }
        fn visit_type_trait_object(&mut self, _: &'ast syn::TypeTraitObject) {
            self.0 = true;
        }
    }
    if !func.sig.generics.params.is_empty() {
        return false;
    }
    func.sig.inputs.iter().all(|input| match input {
        FnArg::Receiver(_) => false,
        FnArg::Typed(pat) => {
            let mut b = Borrows(false);
            b.visit_type(&pat.ty);
            !b.0
        }
    })
}

/// How a batch parameter holds its elements.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Collection {
    /// `Vec<K>`, `HashSet<K>`, `BTreeSet<K>`: rebuilt from the missing elements by `collect`.
    Owned,
    /// `&[K]`: a slice of the missing elements.
    Slice,
}

/// Whether `ty` can be a batch parameter: `Vec<K>`, `HashSet<K>`, `BTreeSet<K>` or `&[K]`.
pub(crate) fn collection(ty: &Type) -> Option<Collection> {
    match strip(ty) {
        Type::Reference(r) if matches!(strip(&r.elem), Type::Slice(_)) => Some(Collection::Slice),
        Type::Path(p) => {
            let last = p.path.segments.last()?;
            let named = ["Vec", "HashSet", "BTreeSet"].iter().any(|n| last.ident == n);
            (named && first_type_arg(&last.arguments).is_some()).then_some(Collection::Owned)
        }
        _ => None,
    }
}

/// What a batch fn's return type spells.
pub(crate) enum BatchReturns {
    /// A map whose values it names: `V` of `HashMap<K, V>`, `BTreeMap<K, V>` or `Vec<(K, V)>`;
    /// `fallible`: inside a `Result<…, E>`.
    Map { value: Box<Type>, fallible: bool },
    /// A name that may stand for a map, or (outside a spelled `Result`) for a `Result` of one: an
    /// alias (`AppResult<HashMap<u64, Product>>`, `Products`), a type of the user's. The type
    /// decides; `fallible`: inside a spelled `Result<…, E>`.
    Named { fallible: bool },
    /// A type that is never a map: another standard type (`Vec<String>`, `Option<…>`, `String`),
    /// a tuple, a reference, an array.
    NotMap,
}

/// Standard types that are never a batch's map (a `Vec` is one only of pairs).
const NEVER_MAPS: &[&str] = &[
    "Option", "Vec", "VecDeque", "HashSet", "BTreeSet", "HashMap", "BTreeMap", "String", "str", "Box", "Rc", "Arc",
    "Cow", "bool", "char", "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128", "isize",
    "f32", "f64",
];

/// What `ty`, a batch fn's return type, spells: a map (inside a `Result` or not), a name whose
/// type decides, or a type that is never a map.
pub(crate) fn batch_returns(ty: &Type) -> BatchReturns {
    let (map, fallible) = match returns(ty) {
        Returns::Result(inner) => (inner, true),
        Returns::Plain => (ty.clone(), false),
        Returns::Option(_) => return BatchReturns::NotMap,
    };
    let path = match strip(&map) {
        Type::Path(p) => p,
        // A macro may expand to any type.
        Type::Macro(_) => return BatchReturns::Named { fallible },
        _ => return BatchReturns::NotMap,
    };
    let Some(last) = path.path.segments.last() else { return BatchReturns::NotMap };
    let types: Vec<&Type> = match &last.arguments {
        PathArguments::AngleBracketed(args) => args
            .args
            .iter()
            .filter_map(|a| match a {
                GenericArgument::Type(t) => Some(t),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let value = match (last.ident.to_string().as_str(), types.as_slice()) {
        ("HashMap" | "BTreeMap", [_, value, ..]) => Some((*value).clone()),
        ("Vec", [pair]) => match strip(pair) {
            Type::Tuple(t) if t.elems.len() == 2 => t.elems.iter().nth(1).cloned(),
            _ => None,
        },
        _ => None,
    };
    match value {
        Some(value) => BatchReturns::Map { value: Box::new(value), fallible },
        None if path.qself.is_none() && NEVER_MAPS.iter().any(|n| last.ident == n) => BatchReturns::NotMap,
        None => BatchReturns::Named { fallible },
    }
}
