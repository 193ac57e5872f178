//! Response bodies: buffered JSON and a self-driving SSE token stream.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use tokio::time::Sleep;

/// Body type of every mock response.
pub type MockBody = BoxBody<Bytes, Infallible>;

/// A complete, buffered body.
pub fn full(bytes: impl Into<Bytes>) -> MockBody {
    Full::new(bytes.into()).boxed()
}

/// A JSON body serialized from `value`.
pub fn json(value: &serde_json::Value) -> MockBody {
    full(value.to_string())
}

/// What one streamed completion looks like.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SsePlan {
    /// Content chunks (one token each).
    pub tokens: u32,
    /// Between the role-only chunk and the first content chunk.
    pub first_token: Duration,
    /// Between consecutive content chunks.
    pub delay: Duration,
    /// `finish_reason` of the last content chunk.
    pub finish: &'static str,
    /// End the body after this many content chunks, with no finish reason,
    /// usage or `[DONE]` (a truncated stream).
    pub truncate_after: Option<u32>,
    /// `(prompt, completion)` tokens of the usage chunk sent before `[DONE]`
    /// (the client asked with `stream_options.include_usage`).
    pub usage: Option<(u32, u32)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Next {
    Role,
    Token(u32),
    Usage,
    Done,
    End,
}

/// OpenAI-style `chat.completion.chunk` SSE stream: a role-only chunk at once (as OpenAI and
/// vLLM send it), the first content chunk `first_token` later, then one every `delay`, the
/// last carrying the finish reason; a usage chunk if asked; `data: [DONE]`.
///
/// The body produces each event only when its timer fires (no spawned task, nothing buffered
/// ahead), so hyper writes and flushes events one by one and dropping the body — client gone,
/// server shut down — stops the stream at once.
pub struct SseBody {
    id: String,
    model: String,
    plan: SsePlan,
    next: Next,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl SseBody {
    /// The stream of completion `id` of `model`, shaped by `plan`.
    pub fn new(id: String, model: String, plan: SsePlan) -> Self {
        SseBody {
            id,
            model,
            plan,
            next: Next::Role,
            sleep: None,
        }
    }

    fn chunk(&self, delta: serde_json::Value, finish: Option<&str>) -> Bytes {
        let chunk = serde_json::json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": crate::clock::now_ms() / 1000,
            "model": self.model,
            "choices": [{
                "index": 0,
                "delta": delta,
                "finish_reason": finish,
            }],
        });
        Bytes::from(format!("data: {chunk}\n\n"))
    }

    fn usage(&self, prompt: u32, completion: u32) -> Bytes {
        let chunk = serde_json::json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": crate::clock::now_ms() / 1000,
            "model": self.model,
            "choices": [],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        });
        Bytes::from(format!("data: {chunk}\n\n"))
    }

    fn wait(&mut self, d: Duration) {
        if !d.is_zero() {
            self.sleep = Some(Box::pin(tokio::time::sleep(d)));
        }
    }
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(sleep) = this.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
        }
        let plan = this.plan;
        let frame = match this.next {
            Next::End => return Poll::Ready(None),
            Next::Role => {
                this.next = if plan.tokens > 0 {
                    this.wait(plan.first_token);
                    Next::Token(0)
                } else {
                    Next::Done
                };
                this.chunk(
                    serde_json::json!({"role": "assistant", "content": ""}),
                    None,
                )
            }
            Next::Token(i) if plan.truncate_after == Some(i) => {
                this.next = Next::End;
                return Poll::Ready(None);
            }
            Next::Token(i) => {
                let last = i + 1 == plan.tokens;
                this.next = if last {
                    if plan.usage.is_some() {
                        Next::Usage
                    } else {
                        Next::Done
                    }
                } else {
                    // [DONE] follows the last token immediately; only tokens are spaced.
                    this.wait(plan.delay);
                    Next::Token(i + 1)
                };
                this.chunk(
                    serde_json::json!({"content": format!("tok{i} ")}),
                    last.then_some(plan.finish),
                )
            }
            Next::Usage => {
                this.next = Next::Done;
                let (p, c) = plan.usage.unwrap_or_default();
                this.usage(p, c)
            }
            Next::Done => {
                this.next = Next::End;
                Bytes::from_static(b"data: [DONE]\n\n")
            }
        };
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.next == Next::End
    }
}
