//! The few top-level fields of a JSON request body that routing reads: the
//! `model` an experiment matches (and an arm rewrites) and the unit key field
//! (`user`).
//!
//! Owns: one pass over a complete body that finds the byte ranges of the
//! top-level string values of those names, skipping nested containers by
//! bracket matching (string aware) and long strings with `memchr`.
//! Never: allocates (except to decode a value written with escapes), reads a
//! key below the top level (`{"metadata": {"model": "x"}}` has no model), or
//! accepts anything that is not one JSON object: a body that is not JSON, or a
//! field that is not a string or appears twice, is reported absent, so the
//! match falls through and no rewrite happens.

use std::borrow::Cow;

use memchr::memchr2;

/// Containers nested deeper than this make the body unreadable (no request
/// nests anywhere near it; the skip keeps only a counter either way).
const MAX_DEPTH: u32 = 128;

/// The content of a JSON string value: `body[start..end]` lies between its
/// quotes, still escaped when `escaped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrSpan {
    pub start: usize,
    pub end: usize,
    pub escaped: bool,
}

impl StrSpan {
    /// The value, decoded when it holds escapes (`None` if they are invalid).
    pub fn text<'b>(&self, body: &'b [u8]) -> Option<Cow<'b, str>> {
        let raw = &body[self.start..self.end];
        if !self.escaped {
            return std::str::from_utf8(raw).ok().map(Cow::Borrowed);
        }
        serde_json::from_slice::<String>(&body[self.start - 1..self.end + 1])
            .ok()
            .map(Cow::Owned)
    }
}

/// What [`scan`] found. Both `None` when the body is not one JSON object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopFields {
    pub model: Option<StrSpan>,
    /// The field named by the experiment's `unit: { body: ... }`.
    pub unit: Option<StrSpan>,
}

/// What a peeked body gives routing: the decoded `model` and unit key, and
/// how long the body was (an experiment with a smaller `max_peek` ignores it).
#[derive(Debug, Clone, Default)]
pub struct BodyFields<'b> {
    pub model: Option<Cow<'b, str>>,
    pub unit: Option<Cow<'b, str>>,
    /// The whole body's length in bytes; `usize::MAX` when it was larger than
    /// the peek (then both fields are `None`).
    pub len: usize,
}

impl BodyFields<'_> {
    /// Fields of a body that could not be read whole.
    pub fn unread() -> Self {
        BodyFields {
            model: None,
            unit: None,
            len: usize::MAX,
        }
    }
}

/// Slot a string value is recorded in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    Model,
    Unit,
    None,
}

/// Scans a complete body for the top-level string fields `model` and
/// `unit_field` (`None`: only `model`). A field that occurs twice is absent:
/// parsers disagree on which one wins, and the backend must see what was matched.
pub fn scan(body: &[u8], unit_field: Option<&str>) -> TopFields {
    scan_inner(body, unit_field.map(str::as_bytes)).unwrap_or_default()
}

#[inline]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// The first `"` or `\` at or after `i`. Strings in requests are short
/// (keys, ids) or broken up by escapes (`\n`, `\"` in prompts), where
/// setting up a SIMD search per piece costs more than the search: the first
/// 64 bytes are searched a word at a time, the rest with `memchr2`.
#[inline]
fn quote_or_backslash(b: &[u8], mut i: usize) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const QUOTE: u64 = LO * b'"' as u64;
    const BACKSLASH: u64 = LO * b'\\' as u64;
    let word_end = (i + 64).min(b.len());
    while i + 8 <= word_end {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[i..i + 8]);
        let w = u64::from_le_bytes(w);
        let (q, s) = (w ^ QUOTE, w ^ BACKSLASH);
        // A zero byte of `q` or `s` is a match; the lowest flagged byte is
        // exact (borrows only flag bytes above a true zero).
        let hits = ((q.wrapping_sub(LO) & !q) | (s.wrapping_sub(LO) & !s)) & HI;
        if hits != 0 {
            return Some(i + (hits.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    while i < word_end {
        if b[i] == b'"' || b[i] == b'\\' {
            return Some(i);
        }
        i += 1;
    }
    if i >= b.len() {
        return None;
    }
    memchr2(b'"', b'\\', &b[i..]).map(|k| i + k)
}

/// Index just past the closing quote of the string whose opening quote is at
/// `i - 1`, and whether it held escapes.
#[inline]
fn string_end(b: &[u8], mut i: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    loop {
        let k = quote_or_backslash(b, i)?;
        if b[k] == b'"' {
            return Some((k + 1, escaped));
        }
        escaped = true;
        // Step over the escaped byte (a `\\"` does not end the string).
        i = k + 2;
        if i > b.len() {
            return None;
        }
    }
}

/// Index just past the container opened at `i - 1`: brackets are counted,
/// strings stepped over, nothing else checked.
fn container_end(b: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 1u32;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i = string_end(b, i + 1)?.0;
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return None;
                }
            }
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Whether key bytes (between quotes, maybe escaped) spell `name`.
fn key_is(raw: &[u8], escaped: bool, name: &[u8]) -> bool {
    if !escaped {
        return raw == name;
    }
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    serde_json::from_slice::<String>(&quoted).is_ok_and(|k| k.as_bytes() == name)
}

fn scan_inner(b: &[u8], unit: Option<&[u8]>) -> Option<TopFields> {
    let mut out = TopFields::default();
    let (mut model_seen, mut unit_seen) = (false, false);
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            // Key.
            if b.get(i) != Some(&b'"') {
                return None;
            }
            let (kend, kesc) = string_end(b, i + 1)?;
            let key = &b[i + 1..kend - 1];
            let want = if key_is(key, kesc, b"model") {
                Want::Model
            } else if unit.is_some_and(|u| key_is(key, kesc, u)) {
                Want::Unit
            } else {
                Want::None
            };
            i = skip_ws(b, kend);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i = skip_ws(b, i + 1);
            // Value.
            let mut span = None;
            match *b.get(i)? {
                b'"' => {
                    let (end, escaped) = string_end(b, i + 1)?;
                    span = Some(StrSpan {
                        start: i + 1,
                        end: end - 1,
                        escaped,
                    });
                    i = end;
                }
                b'{' | b'[' => i = container_end(b, i + 1)?,
                _ => {
                    // A number or literal: up to the next delimiter.
                    let start = i;
                    while i < b.len() && !matches!(b[i], b',' | b'}' | b' ' | b'\t' | b'\n' | b'\r')
                    {
                        i += 1;
                    }
                    if !scalar_ok(&b[start..i]) {
                        return None;
                    }
                }
            }
            match want {
                Want::Model => {
                    out.model = if model_seen { None } else { span };
                    model_seen = true;
                }
                Want::Unit => {
                    out.unit = if unit_seen { None } else { span };
                    unit_seen = true;
                }
                Want::None => {}
            }
            i = skip_ws(b, i);
            match b.get(i)? {
                b',' => i = skip_ws(b, i + 1),
                b'}' => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    // One object and nothing after it but whitespace.
    (skip_ws(b, i) == b.len()).then_some(out)
}

/// A JSON number or literal, checked loosely (its first byte and alphabet).
fn scalar_ok(s: &[u8]) -> bool {
    match s {
        b"true" | b"false" | b"null" => true,
        [first, ..] if *first == b'-' || first.is_ascii_digit() => s
            .iter()
            .all(|c| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E')),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(body: &str) -> Option<String> {
        let f = scan(body.as_bytes(), Some("user"));
        f.model
            .and_then(|s| s.text(body.as_bytes()))
            .map(|c| c.into_owned())
    }

    fn user(body: &str) -> Option<String> {
        let f = scan(body.as_bytes(), Some("user"));
        f.unit
            .and_then(|s| s.text(body.as_bytes()))
            .map(|c| c.into_owned())
    }

    #[test]
    fn finds_top_level_model_and_user() {
        let b = r#"{"model":"gpt-x","messages":[{"role":"user","content":"hi"}],"user":"u-1"}"#;
        assert_eq!(model(b).as_deref(), Some("gpt-x"));
        assert_eq!(user(b).as_deref(), Some("u-1"));
        let spaced =
            " {\n \"stream\" : true ,\n \"model\" : \"m\" , \"n\": -1.5e3, \"x\": null }\n";
        assert_eq!(model(spaced).as_deref(), Some("m"));
        assert_eq!(user(spaced), None);
        assert_eq!(model("{}"), None);
    }

    #[test]
    fn nested_model_keys_do_not_count() {
        for b in [
            r#"{"metadata":{"model":"gpt-x"}}"#,
            r#"{"messages":[{"model":"gpt-x"}],"tools":[]}"#,
            r#"{"a":{"b":{"model":"gpt-x"}},"c":[["model","gpt-x"]]}"#,
            r#"{"content":"\"model\":\"gpt-x\""}"#,
            r#"{"content":"{\"model\":\"gpt-x\"}"}"#,
        ] {
            assert_eq!(model(b), None, "{b}");
        }
        // Brackets inside strings inside containers do not end them.
        let b = r#"{"messages":[{"content":"}]} ] {\"x\""}],"model":"real"}"#;
        assert_eq!(model(b).as_deref(), Some("real"));
    }

    #[test]
    fn escapes_are_stepped_over_and_decoded() {
        let b = r#"{"content":"a \"quoted\" \\ text\\","model":"gpt\u002dx"}"#;
        assert_eq!(model(b).as_deref(), Some("gpt-x"));
        let f = scan(b.as_bytes(), None);
        assert!(f.model.unwrap().escaped);
        // An escaped key still names the field.
        assert_eq!(model(r#"{"mod\u0065l":"m"}"#).as_deref(), Some("m"));
        // A string ending in an escaped backslash ends there.
        assert_eq!(model(r#"{"x":"\\","model":"m"}"#).as_deref(), Some("m"));
    }

    #[test]
    fn what_is_not_one_object_has_no_fields() {
        for b in [
            "",
            "   ",
            "not json",
            "[]",
            r#"["model","gpt-x"]"#,
            r#"{"model":"gpt-x""#,
            r#"{"model":"gpt-x"} trailing"#,
            r#"{"model":"gpt-x",}"#,
            r#"{"model" "gpt-x"}"#,
            r#"{"model":"gpt-x","x":[1,2}"#,
            r#"{"model":"gpt-x","x":nope}"#,
            r#"{"model":"unterminated}"#,
            "model=gpt-x&user=u",
        ] {
            assert_eq!(
                scan(b.as_bytes(), Some("user")),
                TopFields::default(),
                "{b}"
            );
        }
    }

    #[test]
    fn non_string_and_duplicate_fields_are_absent() {
        assert_eq!(model(r#"{"model":42}"#), None);
        assert_eq!(model(r#"{"model":null}"#), None);
        assert_eq!(model(r#"{"model":{"name":"gpt-x"}}"#), None);
        assert_eq!(model(r#"{"model":["gpt-x"]}"#), None);
        assert_eq!(model(r#"{"model":"a","model":"b"}"#), None);
        assert_eq!(user(r#"{"user":1,"model":"a"}"#), None);
        assert_eq!(model(r#"{"user":1,"model":"a"}"#).as_deref(), Some("a"));
    }

    #[test]
    fn spans_cover_exactly_the_value() {
        let b = br#"{"model": "gpt-x", "user":"u"}"#;
        let f = scan(b, Some("user"));
        let s = f.model.unwrap();
        assert_eq!(&b[s.start..s.end], b"gpt-x");
        assert_eq!(b[s.start - 1], b'"');
        assert_eq!(b[s.end], b'"');
    }

    #[test]
    fn the_word_search_finds_the_first_quote_or_backslash() {
        for len in 0..150 {
            for at in 0..len {
                for c in [b'"', b'\\'] {
                    let mut b = vec![b'a'; len];
                    b[at] = c;
                    // A second hit later must not hide the first.
                    if at + 1 < len {
                        b[len - 1] = b'"';
                    }
                    for from in 0..=at {
                        assert_eq!(quote_or_backslash(&b, from), Some(at), "{len} {at} {from}");
                    }
                }
            }
            assert_eq!(quote_or_backslash(&vec![b'a'; len], 0), None);
        }
        // Bytes that differ from '"' or '\\' by one bit or a borrow are no hits.
        let near = [
            b'"' - 1,
            b'"' + 1,
            b'\\' - 1,
            b'\\' + 1,
            0x80 | b'"',
            0,
            0xff,
        ];
        let mut b = near.repeat(10);
        b.push(b'"');
        assert_eq!(quote_or_backslash(&b, 0), Some(b.len() - 1));
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(1000), "]".repeat(1000));
        assert_eq!(scan(deep.as_bytes(), None), TopFields::default());
        let ok = format!(
            "{{\"a\":{}{},\"model\":\"m\"}}",
            "[".repeat(100),
            "]".repeat(100)
        );
        assert_eq!(model(&ok).as_deref(), Some("m"));
    }
}
