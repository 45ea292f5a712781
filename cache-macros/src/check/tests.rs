//! Unit tests of the rules (the UI tests pin the messages as users see them).

use quote::quote;

use crate::attr::{self, Macro};

/// The errors `#[cached(<args>)]` gives `func`, one message each.
fn errors(args: proc_macro2::TokenStream, func: syn::ItemFn) -> Vec<String> {
    match super::cached(attr::parse(Macro::Cached, args).unwrap(), func) {
        Ok(_) => Vec::new(),
        Err(err) => err.into_iter().map(|e| e.to_string()).collect(),
    }
}

/// What is stored must not borrow, and the message names the owned type to write; an `Err`,
/// a handler's return type and `Cow<'static, str>` (always decoded owned) may borrow.
#[test]
fn a_stored_value_must_be_owned() {
    let wrote = |func: syn::ItemFn| {
        let errors = errors(quote!(expire = 60), func);
        let message = errors.iter().find(|e| e.contains("owned type"))?;
        Some(message.split("; ").last().unwrap().to_owned())
    };
    let cases = [
        (
            syn::parse_quote!(
                async fn f() -> &'static str {
                    ""
                }
            ),
            "write `String` instead of `&'static str`",
        ),
        (
            syn::parse_quote!(
                async fn f() -> Option<&'static [u8]> {
                    None
                }
            ),
            "write `Vec<u8>` instead of `&'static [u8]`",
        ),
        (
            syn::parse_quote!(
                async fn f() -> Result<Vec<&'static Path>, String> {
                    Ok(vec![])
                }
            ),
            "write `Path` instead of `&'static Path`",
        ),
        (
            syn::parse_quote!(
                async fn f() -> HashMap<u64, &'static str> {
                    HashMap::new()
                }
            ),
            "write `String` instead of `&'static str`",
        ),
    ];
    for (func, expected) in cases {
        assert_eq!(wrote(func).as_deref(), Some(expected));
    }
    assert_eq!(
        wrote(syn::parse_quote!(
            async fn f() -> Result<String, &'static str> {
                Ok(String::new())
            }
        )),
        None
    );
    assert_eq!(
        wrote(syn::parse_quote!(
            async fn f() -> Cow<'static, str> {
                Cow::Borrowed("")
            }
        )),
        None
    );
    assert_eq!(
        wrote(syn::parse_quote!(
            async fn f() -> PhantomData<&'static str> {
                PhantomData
            }
        )),
        None
    );
    let handler: syn::ItemFn = syn::parse_quote!(
        async fn f(Path(id): Path<u64>) -> &'static str {
            ""
        }
    );
    assert!(errors(quote!(expire = 60, key = "<id>"), handler).is_empty());
    let batch: syn::ItemFn = syn::parse_quote!(
        async fn f(ids: Vec<u64>) -> Result<HashMap<u64, &'static str>, String> {
            todo!()
        }
    );
    let errors = errors(quote!(key = "k:<ids>", batch), batch);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].ends_with("write `String` instead of `&'static str`"), "{errors:?}");
}
