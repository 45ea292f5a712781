//! Key templates: `"user:<id>"`, `"feed:<user.id>:<q.page>"`.

use std::ops::Range;

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Lit(String),
    /// `<root.field.sub>`
    Placeholder {
        root: String,
        fields: Vec<String>,
        /// Where each field is in the template's text (byte ranges), for errors about one field.
        field_at: Vec<Range<usize>>,
    },
}

/// Characters a template's literal text may not contain: they would break the key layout
/// (`{` `}`), be read as an escape (`%`), or as a glob pattern, or are whitespace.
fn bad_literal_char(c: char) -> bool {
    matches!(c, '{' | '}' | '%' | '*' | '?' | '[' | ']' | '\\' | '"') || c.is_whitespace() || c.is_control()
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_alphabetic()) && chars.all(|c| c == '_' || c.is_alphanumeric())
}

/// A tuple field as Rust writes it (`0`, `1`, … no sign, no leading zero) that fits the `u32`
/// of a `syn::Index`.
fn is_tuple_index(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0')) && s.parse::<u32>().is_ok()
}

/// Parses `template`; the error is a sentence meant to be spanned at the literal.
pub(crate) fn parse(template: &str) -> Result<Vec<Segment>, String> {
    let mut segments = Vec::new();
    let mut rest = template;
    while !rest.is_empty() {
        let next = rest.find(['<', '>']).unwrap_or(rest.len());
        let lit = &rest[..next];
        if let Some(c) = lit.chars().find(|&c| bad_literal_char(c)) {
            return Err(format!(
                "key template {template:?} contains {c:?}; a key's literal text may not contain whitespace, \
                 `{{` `}}` `%` `*` `?` `[` `]` `\\` or `\"`"
            ));
        }
        if !lit.is_empty() {
            segments.push(Segment::Lit(lit.to_owned()));
        }
        rest = &rest[next..];
        if rest.is_empty() {
            break;
        }
        if rest.starts_with('>') {
            return Err(format!("unbalanced `>` in key template {template:?}: there is no `<` before it"));
        }
        let Some(close) = rest.find('>') else {
            return Err(format!("unbalanced `<` in key template {template:?}: close the placeholder with `>`"));
        };
        let inner = &rest[1..close];
        if inner.contains('<') {
            return Err(format!("unbalanced `<` in key template {template:?}: placeholders cannot nest"));
        }
        // Each dot-separated part, trimmed, with where it is in `template`.
        let mut at = template.len() - rest.len() + 1;
        let mut parts = inner.split('.').map(|part| {
            let start = at + (part.len() - part.trim_start().len());
            at += part.len() + 1;
            (part.trim(), start..start + part.trim().len())
        });
        let root = parts.next().map(|(root, _)| root).unwrap_or_default();
        let (fields, field_at): (Vec<&str>, Vec<Range<usize>>) = parts.unzip();
        if !is_ident(root) || fields.iter().any(|f| !is_ident(f) && !is_tuple_index(f)) {
            return Err(format!(
                "invalid placeholder `<{inner}>` in key template {template:?}: expected a parameter name, \
                 optionally followed by fields, e.g. `<id>` or `<q.page>`"
            ));
        }
        if matches!(segments.last(), Some(Segment::Placeholder { .. })) {
            return Err(format!(
                "placeholders must be separated by literal text in key template {template:?} \
                 (e.g. `<a>:<b>`), otherwise two different argument lists could share a key"
            ));
        }
        segments.push(Segment::Placeholder {
            root: root.to_owned(),
            fields: fields.into_iter().map(str::to_owned).collect(),
            field_at,
        });
        rest = &rest[close + 1..];
    }
    if segments.is_empty() {
        return Err("the key template is empty".to_owned());
    }
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &str) -> Segment {
        Segment::Lit(s.to_owned())
    }

    /// A placeholder whose fields are at `at` in the template.
    fn ph(root: &str, fields: &[(&str, Range<usize>)]) -> Segment {
        Segment::Placeholder {
            root: root.to_owned(),
            fields: fields.iter().map(|(f, _)| (*f).to_owned()).collect(),
            field_at: fields.iter().map(|(_, at)| at.clone()).collect(),
        }
    }

    #[test]
    fn parses_placeholders_and_fields() {
        assert_eq!(parse("user:<id>").unwrap(), vec![lit("user:"), ph("id", &[])]);
        assert_eq!(
            parse("feed:<user.id>:<q.page>").unwrap(),
            vec![lit("feed:"), ph("user", &[("id", 11..13)]), lit(":"), ph("q", &[("page", 18..22)])]
        );
        assert_eq!(parse("<self.tenant>:x").unwrap(), vec![ph("self", &[("tenant", 6..12)]), lit(":x")]);
        // Spaces around a part are not part of it.
        assert_eq!(parse("l:< f . genre . 0 >").unwrap(), vec![lit("l:"), ph("f", &[("genre", 8..13), ("0", 16..17)])]);
    }

    #[test]
    fn rejects_bad_templates() {
        assert!(parse("user:<id").unwrap_err().contains("unbalanced `<`"));
        assert!(parse("user:id>").unwrap_err().contains("unbalanced `>`"));
        assert!(parse("user:<<id>>").unwrap_err().contains("cannot nest"));
        assert!(parse("user:<>").unwrap_err().contains("invalid placeholder"));
        // Tuple fields: as Rust writes them, and only what a `syn::Index` holds (a larger one
        // made the macro panic instead of reporting an error).
        assert_eq!(parse("<t.0>").unwrap(), vec![ph("t", &[("0", 3..4)])]);
        for field in ["99999999999", "+1", "01", "1e3"] {
            assert!(parse(&format!("<t.{field}>")).unwrap_err().contains("invalid placeholder"), "{field}");
        }
        assert!(parse("<a><b>").unwrap_err().contains("separated"));
        assert!(parse("user {x}").unwrap_err().contains("literal text"));
        assert!(parse("").is_err());
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any text is either a template or a clear error: never a panic.
        #[test]
        fn parsing_never_panics(text in "\\PC{0,64}") {
            let _ = parse(&text);
        }

        /// Each field's range is where the field is in the text.
        #[test]
        fn fields_are_where_they_are_written(
            fields in proptest::collection::vec("[a-z_][a-z0-9_]{0,6}|[0-9]", 1..4),
            spaces in proptest::collection::vec(" {0,2}", 8),
        ) {
            let text = format!("k:<{}root{}.{}>", spaces[0], spaces[1], fields.iter().enumerate()
                .map(|(i, f)| format!("{}{f}{}", spaces[2 + i], spaces[(5 + i) % 8]))
                .collect::<Vec<_>>()
                .join("."));
            let segments = parse(&text).unwrap();
            let Segment::Placeholder { fields: parsed, field_at, .. } = &segments[1] else { panic!("{segments:?}") };
            prop_assert_eq!(parsed, &fields);
            for (field, at) in fields.iter().zip(field_at) {
                prop_assert_eq!(&text[at.clone()], field.as_str());
            }
        }

        /// Templates built from valid pieces parse back to those pieces.
        #[test]
        fn valid_templates_round_trip(
            parts in proptest::collection::vec(("[a-z:_./-]{1,8}", "[a-z_][a-z0-9_]{0,6}"), 1..5),
        ) {
            let text: String = parts.iter().map(|(lit, name)| format!("{lit}<{name}>")).collect();
            let segments = parse(&text).unwrap();
            prop_assert_eq!(segments.len(), parts.len() * 2);
            for (i, (lit, name)) in parts.iter().enumerate() {
                prop_assert_eq!(&segments[2 * i], &Segment::Lit(lit.clone()));
                prop_assert_eq!(
                    &segments[2 * i + 1],
                    &Segment::Placeholder { root: name.clone(), fields: vec![], field_at: vec![] }
                );
            }
        }
    }
}
