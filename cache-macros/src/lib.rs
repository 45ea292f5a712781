//! Attribute macros for `cache-runtime`. Depend on `cache-runtime` and use them from there:
//! `use cache_runtime::cached;`. The generated code calls only
//! `::cache_runtime::__private::…` (or the path given with `crate = "…"`).
//!
//! Each macro runs parse → check → emit, and this file only drives the three:
//! - `attr`: the one table of options, and parsing an attribute's arguments with it;
//! - `template`: key templates (`"user:<id>"`);
//! - `signature`: what the fn is (its parameters, its return type, whether it is a handler);
//! - `check`: the rules between options and the fn, giving a validated plan;
//! - `expand`: writing a plan out as code (it reports no errors).

use proc_macro::TokenStream;

mod attr;
mod check;
mod expand;
mod signature;
mod template;

use attr::Macro;

/// Caches an async fn's result. Documented, with examples, on `cache_runtime::cached`.
#[proc_macro_attribute]
pub fn cached(args: TokenStream, item: TokenStream) -> TokenStream {
    drive(args, item, |args, item| {
        let plan = check::cached(attr::parse(Macro::Cached, args)?, item)?;
        Ok(expand::cached(&plan))
    })
}

/// Invalidates keys, tags or a namespace when an async fn succeeds. Documented, with examples,
/// on `cache_runtime::invalidates`.
#[proc_macro_attribute]
pub fn invalidates(args: TokenStream, item: TokenStream) -> TokenStream {
    drive(args, item, |args, item| {
        let plan = check::invalidates(attr::parse(Macro::Invalidates, args)?, item)?;
        Ok(expand::invalidates(&plan))
    })
}

/// Parses the item, runs `run` (parse the options, check, emit), and on an error emits the
/// error beside the user's item unchanged, so one mistake does not cascade into follow-on errors.
fn drive(
    args: TokenStream,
    item: TokenStream,
    run: impl FnOnce(proc_macro2::TokenStream, syn::ItemFn) -> syn::Result<proc_macro2::TokenStream>,
) -> TokenStream {
    let item2 = proc_macro2::TokenStream::from(item.clone());
    let func = match syn::parse2::<syn::ItemFn>(item2.clone()) {
        Ok(func) => func,
        Err(err) => {
            let mut out = err.to_compile_error();
            out.extend(item2);
            return out.into();
        }
    };
    match run(args.into(), func) {
        Ok(tokens) => tokens.into(),
        Err(err) => {
            let mut out = err.to_compile_error();
            out.extend(item2);
            out.into()
        }
    }
}
