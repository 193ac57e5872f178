//! An incremental JSON scanner that reads only the handful of paths inference
//! responses report on (`usage.*_tokens`, `choices[].finish_reason`,
//! `choices[].delta.content`, the Responses API's `type` and `delta`, ...).
//!
//! Owns: tokenizing one JSON value fed in pieces of any size, split anywhere
//! (inside a key, a number, an escape), and folding the values found at those
//! paths into [`Fields`].
//! Never: allocates or keeps the bytes it has seen. Its state is a fixed-size
//! stack of container contexts, a short capture buffer for the few strings
//! whose value matters (`"stop"`, `"response.completed"`) and the fields
//! found so far; everything else is skipped, long strings with `memchr`.
//!
//! It validates structure (brackets, commas, colons, literals) but not UTF-8 or
//! the finer points of number syntax, and inside containers where nothing is
//! read (a `message`, `logprobs`, `*_details`, a Responses API `output`) only
//! that brackets match: it has to tell a JSON document from something else and
//! find a few values, not to reproduce it, and most of a completion's bytes sit
//! in those containers.

/// Containers deeper than this make the value [`Outcome::Invalid`]: no
/// inference response nests anywhere near it, and the stack stays a fixed size.
pub const MAX_DEPTH: usize = 64;

/// Longest key or captured string value compared, in bytes. Longer ones are
/// never one of the names looked for (the longest,
/// `response.function_call_arguments.delta`, has 38 bytes).
const CAPTURE: usize = 48;

/// Why a response stopped generating, from `finish_reason` or the Responses API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// `stop`, or the Responses API's `completed`.
    Stop,
    /// Cut by the token limit: `length`, or `incomplete` for `max_output_tokens`.
    Length,
    /// `tool_calls` or the legacy `function_call`.
    ToolCalls,
    /// `content_filter`.
    ContentFilter,
    /// The Responses API's `response.failed`.
    Failed,
    /// Any other non-null reason.
    Other,
}

impl Finish {
    fn of(name: &[u8]) -> Finish {
        match name {
            b"stop" | b"completed" => Finish::Stop,
            b"length" | b"max_output_tokens" | b"max_tokens" => Finish::Length,
            b"tool_calls" | b"function_call" => Finish::ToolCalls,
            b"content_filter" => Finish::ContentFilter,
            b"failed" => Finish::Failed,
            _ => Finish::Other,
        }
    }

    /// With `n > 1` choices finish separately; a response counts as cut by the
    /// token limit when any of its choices was.
    pub fn merge(a: Option<Finish>, b: Finish) -> Finish {
        match a {
            Some(Finish::Length) => Finish::Length,
            _ => b,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::ToolCalls => "tool_calls",
            Finish::ContentFilter => "content_filter",
            Finish::Failed => "failed",
            Finish::Other => "other",
        }
    }
}

/// A Responses API object's `status`, as a finish: `incomplete` stands for
/// the token limit until `incomplete_details.reason` says otherwise.
fn status_of(name: &[u8]) -> Option<Finish> {
    match name {
        b"completed" => Some(Finish::Stop),
        b"incomplete" => Some(Finish::Length),
        b"failed" => Some(Finish::Failed),
        _ => None,
    }
}

/// The Responses API event type (the top-level `type` of a streamed event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EventType {
    /// No `type`, or one that says nothing about generation.
    #[default]
    None,
    /// `response.output_text.delta`, `response.refusal.delta` or
    /// `response.function_call_arguments.delta`: generated content.
    ContentDelta,
    /// `response.completed`.
    Completed,
    /// `response.incomplete`: ended early, by default for the token budget.
    Incomplete,
    /// `response.failed`.
    Failed,
    /// Another `response.*` event (created, in_progress, ...).
    Lifecycle,
}

impl EventType {
    fn of(name: &[u8]) -> EventType {
        match name {
            b"response.output_text.delta"
            | b"response.refusal.delta"
            | b"response.function_call_arguments.delta" => EventType::ContentDelta,
            b"response.completed" => EventType::Completed,
            b"response.incomplete" => EventType::Incomplete,
            b"response.failed" => EventType::Failed,
            n if n.starts_with(b"response.") => EventType::Lifecycle,
            _ => EventType::None,
        }
    }
}

/// What one JSON value said, as far as inference outcomes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fields {
    /// `usage.prompt_tokens` or `usage.input_tokens` (also under `response`).
    pub prompt_tokens: Option<u64>,
    /// `usage.completion_tokens` or `usage.output_tokens` (also under `response`).
    pub completion_tokens: Option<u64>,
    /// A choice carried generated content: a non-empty `delta.content`,
    /// `delta.refusal` or `text`, or a non-empty `delta.tool_calls`.
    pub content: bool,
    /// A non-empty top-level `delta` string (the Responses API's text deltas).
    pub top_delta: bool,
    /// A non-null `choices[].finish_reason`, merged over choices.
    pub finish: Option<Finish>,
    /// The top-level `type`.
    pub event: EventType,
    /// The top-level `status` of a (non-streamed) Responses API object.
    pub status: Option<Finish>,
    /// `incomplete_details.reason` (top level or under `response`).
    pub incomplete_reason: Option<Finish>,
    /// Something only inference responses carry was seen (`choices`, `usage`,
    /// a `response.*` type, an inference `object`): the body is one of ours.
    pub recognized: bool,
}

/// How a scanned value ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing but whitespace was fed.
    Empty,
    /// One whole JSON value.
    Complete(Fields),
    /// Not JSON, cut short, or nested deeper than [`MAX_DEPTH`].
    Invalid,
}

/// What a container or value is, by where it sits. Computed once when its key
/// (or its array) is known, so matching a path never looks back up the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Ctx {
    Root,
    Usage,
    Response,
    Details,
    Choices,
    Choice,
    Delta,
    ToolCalls,
    Other,
}

/// The role of the value about to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Other,
    /// A container whose context is given.
    Open(Ctx),
    PromptTokens,
    CompletionTokens,
    FinishReason,
    /// A string that is generated content when non-empty.
    Content,
    /// An element of `delta.tool_calls`: generated content.
    ToolCall,
    Type,
    TopDelta,
    Status,
    Reason,
    Object,
}

impl Slot {
    /// Whether a string in this slot is compared against names.
    fn captures(self) -> bool {
        matches!(
            self,
            Slot::FinishReason | Slot::Type | Slot::Status | Slot::Reason | Slot::Object
        )
    }
}

/// The slot of the value under `key` in an object of context `ctx`. Matched
/// on the context first: most keys of a response sit where nothing is read.
fn slot_of(ctx: Ctx, key: &[u8]) -> Slot {
    match ctx {
        Ctx::Root => match key {
            b"usage" => Slot::Open(Ctx::Usage),
            b"response" => Slot::Open(Ctx::Response),
            b"incomplete_details" => Slot::Open(Ctx::Details),
            b"choices" => Slot::Open(Ctx::Choices),
            b"type" => Slot::Type,
            b"delta" => Slot::TopDelta,
            b"status" => Slot::Status,
            b"object" => Slot::Object,
            _ => Slot::Other,
        },
        Ctx::Response => match key {
            b"usage" => Slot::Open(Ctx::Usage),
            b"incomplete_details" => Slot::Open(Ctx::Details),
            _ => Slot::Other,
        },
        Ctx::Usage => match key {
            b"prompt_tokens" | b"input_tokens" => Slot::PromptTokens,
            b"completion_tokens" | b"output_tokens" => Slot::CompletionTokens,
            _ => Slot::Other,
        },
        Ctx::Choice => match key {
            b"finish_reason" => Slot::FinishReason,
            b"delta" => Slot::Open(Ctx::Delta),
            b"text" => Slot::Content,
            _ => Slot::Other,
        },
        Ctx::Delta => match key {
            b"content" | b"refusal" => Slot::Content,
            b"tool_calls" => Slot::Open(Ctx::ToolCalls),
            _ => Slot::Other,
        },
        Ctx::Details => match key {
            b"reason" => Slot::Reason,
            _ => Slot::Other,
        },
        Ctx::Choices | Ctx::ToolCalls | Ctx::Other => Slot::Other,
    }
}

/// The slot of an element of an array of context `ctx`.
fn element_of(ctx: Ctx) -> Slot {
    match ctx {
        Ctx::Choices => Slot::Open(Ctx::Choice),
        Ctx::ToolCalls => Slot::ToolCall,
        _ => Slot::Other,
    }
}

/// The context a container opened in `slot` gets.
fn ctx_of(slot: Slot, root: bool) -> Ctx {
    match slot {
        _ if root => Ctx::Root,
        Slot::Open(c) => c,
        _ => Ctx::Other,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// Before the top-level value.
    Start,
    /// A value is expected (after `:` or `,` in an array).
    Value,
    /// After `[`: a value or `]`.
    ValueOrEnd,
    /// After `{`: a key or `}`.
    KeyOrEnd,
    /// After `,` in an object: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// After a value: `,` or the container's end.
    AfterValue,
    /// Inside a string (a key when `key` is set).
    Str,
    /// After a backslash inside a string.
    Escape,
    /// Inside `\uXXXX`: this many hex digits left.
    Unicode(u8),
    Number,
    /// Inside `true`, `false` or `null`: the literal and how much is matched.
    Literal(Lit, u8),
    /// Inside a container of no interest (skipped to its end).
    Skip,
    /// Inside a string there.
    SkipStr,
    /// After a backslash there.
    SkipEscape,
    /// The top-level value is complete: only whitespace may follow.
    Done,
    Invalid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lit {
    True,
    False,
    Null,
}

impl Lit {
    fn text(self) -> &'static [u8] {
        match self {
            Lit::True => b"true",
            Lit::False => b"false",
            Lit::Null => b"null",
        }
    }
}

/// The scanner. Feed it with [`JsonScanner::feed`], ask with
/// [`JsonScanner::finish`], reuse it after [`JsonScanner::reset`].
#[derive(Clone)]
pub struct JsonScanner {
    st: St,
    /// Per open container: its [`Ctx`] in the low bits, bit 7 set for arrays.
    stack: [u8; MAX_DEPTH],
    depth: usize,
    /// While skipping: the depth of the skipped container.
    skip_base: usize,
    /// The role of the value being read (or about to be).
    slot: Slot,
    /// The string being read is a key.
    key: bool,
    /// The string being read is kept for comparison ([`JsonScanner::capturing`]).
    capture: bool,
    /// The string being read has at least one character.
    nonempty: bool,
    /// The captured string was longer than [`CAPTURE`] or had an escape: it
    /// matches no name.
    spoiled: bool,
    cap: [u8; CAPTURE],
    cap_len: usize,
    /// Number being read: its integer part, and whether it is one we can use
    /// (no sign, no fraction digits other than zeros, no exponent, no overflow).
    num: u64,
    num_ok: bool,
    num_frac: bool,
    fields: Fields,
}

impl Default for JsonScanner {
    fn default() -> Self {
        JsonScanner {
            st: St::Start,
            stack: [0; MAX_DEPTH],
            depth: 0,
            skip_base: 0,
            slot: Slot::Other,
            key: false,
            capture: false,
            nonempty: false,
            spoiled: false,
            cap: [0; CAPTURE],
            cap_len: 0,
            num: 0,
            num_ok: true,
            num_frac: false,
            fields: Fields::default(),
        }
    }
}

const ARRAY: u8 = 0x80;

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl JsonScanner {
    pub fn new() -> Self {
        JsonScanner::default()
    }

    /// Forgets everything, ready for the next value.
    pub fn reset(&mut self) {
        // Only the fields read before being written need resetting; the stack
        // and capture buffer are overwritten before they are read.
        self.st = St::Start;
        self.depth = 0;
        self.slot = Slot::Other;
        self.fields = Fields::default();
    }

    /// Whether inference fields were seen so far (even in a value that then
    /// turned out malformed).
    pub fn recognized(&self) -> bool {
        self.fields.recognized
    }

    /// Whether the scanner has given up on this value.
    pub fn is_invalid(&self) -> bool {
        self.st == St::Invalid
    }

    fn top(&self) -> (Ctx, bool) {
        let v = self.stack[self.depth - 1];
        let ctx = match v & !ARRAY {
            0 => Ctx::Root,
            1 => Ctx::Usage,
            2 => Ctx::Response,
            3 => Ctx::Details,
            4 => Ctx::Choices,
            5 => Ctx::Choice,
            6 => Ctx::Delta,
            7 => Ctx::ToolCalls,
            _ => Ctx::Other,
        };
        (ctx, v & ARRAY != 0)
    }

    fn push(&mut self, array: bool) -> bool {
        if self.depth == MAX_DEPTH {
            self.st = St::Invalid;
            return false;
        }
        let ctx = ctx_of(self.slot, self.depth == 0);
        if self.slot == Slot::ToolCall {
            self.fields.content = true;
        }
        match ctx {
            Ctx::Usage | Ctx::Choices | Ctx::Response => self.fields.recognized = true,
            _ => {}
        }
        self.stack[self.depth] = ctx as u8 | if array { ARRAY } else { 0 };
        self.depth += 1;
        if ctx == Ctx::Other {
            // Nothing inside is read: only its end is looked for.
            self.skip_base = self.depth;
            self.st = St::Skip;
        } else if array {
            self.slot = element_of(ctx);
            self.st = St::ValueOrEnd;
        } else {
            self.st = St::KeyOrEnd;
        }
        true
    }

    /// After a value ends: what may come next.
    fn value_done(&mut self) {
        if self.depth == 0 {
            self.st = St::Done;
        } else {
            self.st = St::AfterValue;
        }
    }

    fn pop(&mut self, array: bool) {
        match self.depth {
            0 => self.st = St::Invalid,
            _ if self.top().1 != array => self.st = St::Invalid,
            _ => {
                self.depth -= 1;
                self.value_done();
            }
        }
    }

    fn string_done(&mut self) {
        let name = &self.cap[..self.cap_len];
        if self.key {
            let ctx = self.top().0;
            self.slot = if self.spoiled {
                Slot::Other
            } else {
                slot_of(ctx, name)
            };
            self.st = St::Colon;
            return;
        }
        let named = (!self.spoiled).then_some(name);
        let f = &mut self.fields;
        match self.slot {
            Slot::Content if self.nonempty => f.content = true,
            Slot::TopDelta if self.nonempty => f.top_delta = true,
            Slot::ToolCall => f.content = true,
            Slot::FinishReason => {
                f.finish = Some(Finish::merge(
                    f.finish,
                    named.map_or(Finish::Other, Finish::of),
                ))
            }
            Slot::Type => {
                f.event = named.map_or(EventType::None, EventType::of);
                f.recognized |= f.event != EventType::None;
            }
            Slot::Status => f.status = named.and_then(status_of),
            Slot::Reason => f.incomplete_reason = Some(named.map_or(Finish::Other, Finish::of)),
            Slot::Object => {
                f.recognized |= named.is_some_and(|n| {
                    n.starts_with(b"chat.completion") || n == b"text_completion" || n == b"response"
                })
            }
            _ => {}
        }
        self.value_done();
    }

    fn number_done(&mut self) {
        if self.num_ok {
            match self.slot {
                Slot::PromptTokens => self.fields.prompt_tokens = Some(self.num),
                Slot::CompletionTokens => self.fields.completion_tokens = Some(self.num),
                _ => {}
            }
        }
        if self.slot == Slot::ToolCall {
            self.fields.content = true;
        }
        self.value_done();
    }

    /// Starts the value whose first byte is `b`; false when `b` cannot start one.
    fn begin_value(&mut self, b: u8) -> bool {
        match b {
            b'{' => {
                self.push(false);
            }
            b'[' => {
                self.push(true);
            }
            b'"' => {
                self.key = false;
                self.begin_string();
            }
            b'-' | b'0'..=b'9' => {
                self.st = St::Number;
                self.num = 0;
                self.num_frac = false;
                self.num_ok = b != b'-';
                if b != b'-' {
                    self.num = u64::from(b - b'0');
                }
            }
            b't' => self.st = St::Literal(Lit::True, 1),
            b'f' => self.st = St::Literal(Lit::False, 1),
            b'n' => self.st = St::Literal(Lit::Null, 1),
            _ => return false,
        }
        true
    }

    fn begin_string(&mut self) {
        self.st = St::Str;
        self.nonempty = false;
        self.spoiled = false;
        self.cap_len = 0;
        self.capture = self.capturing();
    }

    /// Whether the string being read is kept for comparison (keys only where
    /// some key matters: not inside objects nothing is read from).
    fn capturing(&self) -> bool {
        if self.key {
            self.depth > 0 && self.top().0 != Ctx::Other
        } else {
            self.slot.captures()
        }
    }

    /// Scans `bytes`, the next piece of the value.
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut i = 0;
        let n = bytes.len();
        while i < n {
            match self.st {
                St::Invalid => return,
                St::Str => {
                    // Jump to the next quote or backslash: most bytes of a
                    // response are inside strings nobody compares.
                    loop {
                        let rest = &bytes[i..];
                        let Some(j) = memchr::memchr2(b'"', b'\\', rest) else {
                            self.string_bytes(rest);
                            return;
                        };
                        self.string_bytes(&rest[..j]);
                        i += j;
                        if bytes[i] == b'"' {
                            self.string_done();
                            i += 1;
                            break;
                        }
                        self.nonempty = true;
                        self.spoiled = true;
                        // `\n`, `\"`...: step over both bytes here; `\u` and an
                        // escape split across pieces go through the states.
                        match bytes.get(i + 1) {
                            Some(&e) if e != b'u' => i += 2,
                            _ => {
                                self.st = St::Escape;
                                i += 1;
                                break;
                            }
                        }
                    }
                    continue;
                }
                St::Skip => {
                    // Inside a container nothing is read from: brackets are
                    // matched (by kind, on the same stack), strings skipped,
                    // everything else passed over.
                    while i < n {
                        let b = bytes[i];
                        i += 1;
                        match b {
                            b'"' => {
                                self.st = St::SkipStr;
                                break;
                            }
                            b'{' | b'[' => {
                                if self.depth == MAX_DEPTH {
                                    self.st = St::Invalid;
                                    return;
                                }
                                self.stack[self.depth] =
                                    Ctx::Other as u8 | if b == b'[' { ARRAY } else { 0 };
                                self.depth += 1;
                            }
                            b'}' | b']' => {
                                let array = b == b']';
                                if (self.stack[self.depth - 1] & ARRAY != 0) != array {
                                    self.st = St::Invalid;
                                    return;
                                }
                                self.depth -= 1;
                                if self.depth < self.skip_base {
                                    self.value_done();
                                    break;
                                }
                            }
                            _ => {}
                        }
                    }
                    continue;
                }
                St::SkipStr => {
                    loop {
                        let Some(j) = memchr::memchr2(b'"', b'\\', &bytes[i..]) else {
                            return;
                        };
                        i += j;
                        if bytes[i] == b'"' {
                            self.st = St::Skip;
                            i += 1;
                            break;
                        }
                        if i + 1 < n {
                            i += 2;
                        } else {
                            self.st = St::SkipEscape;
                            i += 1;
                            break;
                        }
                    }
                    continue;
                }
                St::SkipEscape => {
                    self.st = St::SkipStr;
                    i += 1;
                    continue;
                }
                St::Escape => {
                    self.st = if bytes[i] == b'u' {
                        St::Unicode(4)
                    } else {
                        St::Str
                    };
                    i += 1;
                    continue;
                }
                St::Unicode(left) => {
                    if !bytes[i].is_ascii_hexdigit() {
                        self.st = St::Invalid;
                        return;
                    }
                    self.st = if left == 1 {
                        St::Str
                    } else {
                        St::Unicode(left - 1)
                    };
                    i += 1;
                    continue;
                }
                St::Number => {
                    let b = bytes[i];
                    match b {
                        b'0'..=b'9' => {
                            // All the digits in this piece at once.
                            while i < n && bytes[i].is_ascii_digit() {
                                let d = u64::from(bytes[i] - b'0');
                                if self.num_frac {
                                    // 12.0 is 12; 12.5 tokens is not a count.
                                    self.num_ok &= d == 0;
                                } else {
                                    match self.num.checked_mul(10).and_then(|v| v.checked_add(d)) {
                                        Some(v) => self.num = v,
                                        None => self.num_ok = false,
                                    }
                                }
                                i += 1;
                            }
                        }
                        b'.' => {
                            self.num_frac = true;
                            i += 1;
                        }
                        b'e' | b'E' | b'+' | b'-' => {
                            self.num_ok = false;
                            i += 1;
                        }
                        // The byte after a number belongs to what follows it.
                        _ => self.number_done(),
                    }
                    continue;
                }
                St::Literal(lit, at) => {
                    let text = lit.text();
                    if bytes[i] != text[at as usize] {
                        self.st = St::Invalid;
                        return;
                    }
                    i += 1;
                    if at as usize + 1 == text.len() {
                        if self.slot == Slot::ToolCall {
                            self.fields.content = lit != Lit::Null || self.fields.content;
                        }
                        self.value_done();
                    } else {
                        self.st = St::Literal(lit, at + 1);
                    }
                    continue;
                }
                _ => {}
            }
            let b = bytes[i];
            i += 1;
            if is_ws(b) {
                continue;
            }
            match self.st {
                St::Start | St::Value => {
                    if !self.begin_value(b) {
                        self.st = St::Invalid;
                        return;
                    }
                }
                St::ValueOrEnd => {
                    if b == b']' {
                        self.pop(true);
                    } else if !self.begin_value(b) {
                        self.st = St::Invalid;
                        return;
                    }
                }
                St::KeyOrEnd | St::Key => {
                    if b == b'"' {
                        self.key = true;
                        self.begin_string();
                    } else if b == b'}' && self.st == St::KeyOrEnd {
                        self.pop(false);
                    } else {
                        self.st = St::Invalid;
                        return;
                    }
                }
                St::Colon => {
                    if b != b':' {
                        self.st = St::Invalid;
                        return;
                    }
                    self.st = St::Value;
                }
                St::AfterValue => {
                    let (ctx, array) = self.top();
                    match (b, array) {
                        (b',', true) => {
                            self.slot = element_of(ctx);
                            self.st = St::Value;
                        }
                        (b',', false) => self.st = St::Key,
                        (b']', true) => self.pop(true),
                        (b'}', false) => self.pop(false),
                        _ => {
                            self.st = St::Invalid;
                            return;
                        }
                    }
                }
                St::Done => {
                    self.st = St::Invalid;
                    return;
                }
                St::Str
                | St::Escape
                | St::Unicode(_)
                | St::Number
                | St::Literal(..)
                | St::Skip
                | St::SkipStr
                | St::SkipEscape
                | St::Invalid => unreachable!("handled above"),
            }
        }
    }

    fn string_bytes(&mut self, s: &[u8]) {
        if s.is_empty() {
            return;
        }
        self.nonempty = true;
        if self.capture && !self.spoiled {
            let end = self.cap_len + s.len();
            if end > CAPTURE {
                self.spoiled = true;
            } else {
                self.cap[self.cap_len..end].copy_from_slice(s);
                self.cap_len = end;
            }
        }
    }

    /// How the value ended, given that no more bytes follow.
    pub fn finish(&mut self) -> Outcome {
        if self.st == St::Number && self.depth == 0 {
            self.number_done();
        }
        match self.st {
            St::Start => Outcome::Empty,
            St::Done => Outcome::Complete(self.fields),
            _ => Outcome::Invalid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(text: &str) -> Outcome {
        let mut s = JsonScanner::new();
        s.feed(text.as_bytes());
        s.finish()
    }

    fn fields(text: &str) -> Fields {
        match scan(text) {
            Outcome::Complete(f) => f,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn reads_usage_and_finish_of_a_chat_completion() {
        let f = fields(
            r#"{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi \"there\""},"finish_reason":"length"}],
               "usage":{"prompt_tokens":12,"completion_tokens":40,"total_tokens":52,"prompt_tokens_details":{"cached_tokens":3}}}"#,
        );
        assert_eq!(f.prompt_tokens, Some(12));
        assert_eq!(f.completion_tokens, Some(40));
        assert_eq!(f.finish, Some(Finish::Length));
        assert!(f.recognized);
        // A non-streamed message is not a content *event*.
        assert!(!f.content);
    }

    #[test]
    fn tells_content_deltas_from_role_only_and_empty_ones() {
        let role = fields(
            r#"{"choices":[{"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
        );
        assert!(!role.content);
        assert_eq!(role.finish, None);
        let tok = fields(
            r#"{"choices":[{"delta":{"content":"Hel"},"finish_reason":null}],"usage":null}"#,
        );
        assert!(tok.content);
        assert_eq!(tok.prompt_tokens, None);
        let tools = fields(
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{"}}]}}]}"#,
        );
        assert!(tools.content);
        let no_tools = fields(r#"{"choices":[{"delta":{"tool_calls":[]}}]}"#);
        assert!(!no_tools.content);
        let text = fields(r#"{"object":"text_completion","choices":[{"text":" a","index":0}]}"#);
        assert!(text.content && text.recognized);
        // `content` elsewhere (a message, a nested object) is not a delta.
        let nested = fields(r#"{"x":{"choices":[{"delta":{"content":"no"}}]}}"#);
        assert!(!nested.content && !nested.recognized);
    }

    #[test]
    fn reads_responses_api_events() {
        let d = fields(r#"{"type":"response.output_text.delta","sequence_number":4,"delta":"Hi"}"#);
        assert_eq!(d.event, EventType::ContentDelta);
        assert!(d.top_delta && d.recognized);
        let done = fields(
            r#"{"type":"response.completed","response":{"id":"r","status":"completed","usage":{"input_tokens":7,"output_tokens":9,"total_tokens":16}}}"#,
        );
        assert_eq!(done.event, EventType::Completed);
        assert_eq!(
            (done.prompt_tokens, done.completion_tokens),
            (Some(7), Some(9))
        );
        let cut = fields(
            r#"{"type":"response.incomplete","response":{"incomplete_details":{"reason":"max_output_tokens"}}}"#,
        );
        assert_eq!(cut.event, EventType::Incomplete);
        assert_eq!(cut.incomplete_reason, Some(Finish::Length));
    }

    #[test]
    fn numbers_that_are_not_counts_are_ignored() {
        for (text, want) in [
            (r#"{"usage":{"prompt_tokens":12.0}}"#, Some(12)),
            (r#"{"usage":{"prompt_tokens":12.5}}"#, None),
            (r#"{"usage":{"prompt_tokens":-1}}"#, None),
            (r#"{"usage":{"prompt_tokens":1e3}}"#, None),
            (
                r#"{"usage":{"prompt_tokens":99999999999999999999999}}"#,
                None,
            ),
            (r#"{"usage":{"prompt_tokens":null}}"#, None),
        ] {
            assert_eq!(fields(text).prompt_tokens, want, "{text}");
        }
    }

    #[test]
    fn refuses_what_is_not_one_json_value() {
        for text in [
            "<html>",
            "{",
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            "[1,2",
            "[1 2]",
            r#"{"a":tru}"#,
            r#"{"a":"\uZZZZ"}"#,
            "{} {}",
            "}",
            r#"{"a":[}"#,
        ] {
            assert_eq!(scan(text), Outcome::Invalid, "{text}");
        }
        assert_eq!(scan("  \n"), Outcome::Empty);
        assert!(matches!(scan("42"), Outcome::Complete(_)));
        let deep = "[".repeat(MAX_DEPTH + 1);
        assert_eq!(scan(&deep), Outcome::Invalid);
        let ok_deep = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(matches!(scan(&ok_deep), Outcome::Complete(_)));
    }

    #[test]
    fn any_split_gives_the_same_answer() {
        let text = r#"{"choices":[{"index":0,"delta":{"content":"a\"b\\c\u00e9"},"finish_reason":"stop"}],"usage":{"prompt_tokens":123,"completion_tokens":4567},"type":"x","ok":true,"n":null,"f":false}"#;
        let whole = scan(text);
        assert!(matches!(whole, Outcome::Complete(_)));
        let b = text.as_bytes();
        for i in 0..=b.len() {
            for j in i..=b.len() {
                let mut s = JsonScanner::new();
                s.feed(&b[..i]);
                s.feed(&b[i..j]);
                s.feed(&b[j..]);
                assert_eq!(s.finish(), whole, "split at {i},{j}");
            }
        }
    }
}
