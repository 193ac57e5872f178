//! `If-Match` on the admin API's config writes (RFC 9110 §13.1.1).
//!
//! Owns: parsing the header lines into an [`IfMatch`]: `*`, or a list of
//! entity-tags (`"3"`, `W/"3"`, comma-separated, over one or more lines).
//! Weak tags are dropped here because the comparison is strong and a weak tag
//! never matches. A bare version number (`If-Match: 3`) is accepted as the tag
//! `"3"`: the README documented `If-Match: <version>` before the quoted form.
//!
//! Never: compares with the version in force (only the control plane knows
//! it, under its lock). A header that parses but names no current version is a
//! failed precondition (412), decided there; only a header that is not an
//! entity-tag list at all is a bad request (400), decided here.

use crate::control::IfMatch;

/// Why an `If-Match` header is not an entity-tag list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("If-Match must be `*` or a list of entity-tags such as \"3\" (from the ETag of GET /v1/config), got {raw:?}: {why}")]
pub struct BadIfMatch {
    pub raw: String,
    pub why: &'static str,
}

/// Parses every `If-Match` line of a request (the lines form one list).
pub fn parse<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Result<IfMatch, BadIfMatch> {
    let lines: Vec<&[u8]> = lines.into_iter().collect();
    let raw = lines
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect::<Vec<_>>()
        .join(", ");
    let bad = |why| BadIfMatch {
        raw: raw.clone(),
        why,
    };
    let mut tags = Vec::new();
    let mut star = false;
    let mut any_element = false;
    for line in &lines {
        let mut rest = *line;
        loop {
            rest = rest.trim_ascii_start();
            // Empty list elements (`a, , b`) are allowed by the list rule.
            if let Some(r) = rest.strip_prefix(b",") {
                rest = r;
                continue;
            }
            if rest.is_empty() {
                break;
            }
            any_element = true;
            let (element, after) = element(rest).ok_or_else(|| bad("not an entity-tag"))?;
            match element {
                Element::Star => star = true,
                Element::Strong(t) => tags.push(t),
                Element::Weak => {}
            }
            rest = after.trim_ascii_start();
            match rest.first() {
                None => break,
                Some(b',') => rest = &rest[1..],
                Some(_) => return Err(bad("entity-tags must be separated by commas")),
            }
        }
    }
    if !any_element {
        return Err(bad("no entity-tag"));
    }
    if star {
        // `*` stands alone: it is not a member of a tag list.
        return if tags.is_empty() && lines.len() == 1 && raw.trim() == "*" {
            Ok(IfMatch::Any)
        } else {
            Err(bad("`*` cannot be combined with entity-tags"))
        };
    }
    Ok(IfMatch::Tags(tags))
}

enum Element {
    Star,
    Strong(String),
    Weak,
}

/// One list element at the start of `s`, and what follows it.
fn element(s: &[u8]) -> Option<(Element, &[u8])> {
    if let Some(rest) = s.strip_prefix(b"*") {
        return Some((Element::Star, rest));
    }
    if let Some(rest) = s.strip_prefix(b"W/") {
        let (_, after) = opaque(rest)?;
        return Some((Element::Weak, after));
    }
    if s.first() == Some(&b'"') {
        let (tag, after) = opaque(s)?;
        return Some((Element::Strong(tag), after));
    }
    // Compatibility: a bare version number is the tag of that version.
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits > 0 {
        let after = &s[digits..];
        if after
            .first()
            .is_none_or(|b| *b == b',' || b.is_ascii_whitespace())
        {
            let tag = String::from_utf8_lossy(&s[..digits]).into_owned();
            return Some((Element::Strong(tag), after));
        }
    }
    None
}

/// `opaque-tag = DQUOTE *etagc DQUOTE`, `etagc = %x21 / %x23-7E / obs-text`.
fn opaque(s: &[u8]) -> Option<(String, &[u8])> {
    let body = s.strip_prefix(b"\"")?;
    let end = body.iter().position(|&b| b == b'"')?;
    let tag = &body[..end];
    if !tag
        .iter()
        .all(|&b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80)
    {
        return None;
    }
    Some((String::from_utf8_lossy(tag).into_owned(), &body[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Result<IfMatch, BadIfMatch> {
        parse([s.as_bytes()])
    }

    fn tags(t: &[&str]) -> IfMatch {
        IfMatch::Tags(t.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn entity_tags_parse_and_weak_ones_are_dropped() {
        assert_eq!(one("*"), Ok(IfMatch::Any));
        assert_eq!(one(" * "), Ok(IfMatch::Any));
        assert_eq!(one(r#""3""#), Ok(tags(&["3"])));
        assert_eq!(one(r#""stale-0""#), Ok(tags(&["stale-0"])));
        assert_eq!(one(r#"W/"3""#), Ok(tags(&[])));
        assert_eq!(one(r#"W/"3", "4" ,, "x""#), Ok(tags(&["4", "x"])));
        assert_eq!(one(r#""""#), Ok(tags(&[""])));
        assert_eq!(one("12"), Ok(tags(&["12"])));
        assert_eq!(
            parse([&b"\"1\""[..], &b"W/\"2\", \"3\""[..]]),
            Ok(tags(&["1", "3"]))
        );
    }

    #[test]
    fn what_is_not_an_entity_tag_list_is_refused() {
        for bad in [
            "",
            " , ",
            "stale-0",
            "\"open",
            "W/3",
            "w/\"3\"",
            "\"3\" \"4\"",
            "\"3\", x",
            "*, \"3\"",
            "3a",
            "\"a b\"",
        ] {
            assert!(one(bad).is_err(), "{bad:?} parsed");
        }
        assert!(parse([&b"*"[..], &b"*"[..]]).is_err());
    }

    #[test]
    fn the_comparison_is_strong() {
        assert!(tags(&["3"]).matches(3));
        assert!(!tags(&["03"]).matches(3));
        assert!(!tags(&["stale-0"]).matches(0));
        assert!(!tags(&[]).matches(3));
        assert!(IfMatch::Any.matches(3));
        assert!(IfMatch::version(7).matches(7));
    }
}
