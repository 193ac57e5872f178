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

/// OpenAI-style `chat.completion.chunk` SSE stream: `chunks` events, the first immediately and
/// then one every `delay`, followed by `data: [DONE]`.
///
/// The body produces each event only when its timer fires (no spawned task, nothing buffered
/// ahead), so hyper writes and flushes events one by one and dropping the body — client gone,
/// server shut down — stops the stream at once.
pub struct SseBody {
    id: String,
    model: String,
    next: u32,
    chunks: u32,
    delay: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl SseBody {
    /// A stream of `chunks` token events `delay` apart for completion `id` of `model`.
    pub fn new(id: String, model: String, chunks: u32, delay: Duration) -> Self {
        SseBody {
            id,
            model,
            next: 0,
            chunks,
            delay,
            sleep: None,
        }
    }

    fn event(&self, i: u32) -> Bytes {
        let last = i + 1 == self.chunks;
        let delta = if i == 0 {
            serde_json::json!({"role": "assistant", "content": format!("tok{i} ")})
        } else {
            serde_json::json!({"content": format!("tok{i} ")})
        };
        let chunk = serde_json::json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": crate::clock::now_ms() / 1000,
            "model": self.model,
            "choices": [{
                "index": 0,
                "delta": delta,
                "finish_reason": if last { serde_json::json!("stop") } else { serde_json::Value::Null },
            }],
        });
        Bytes::from(format!("data: {chunk}\n\n"))
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
        if this.next > this.chunks {
            return Poll::Ready(None);
        }
        if let Some(sleep) = this.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
        }
        let i = this.next;
        this.next += 1;
        if i == this.chunks {
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                b"data: [DONE]\n\n",
            )))));
        }
        // [DONE] follows the last token immediately; only tokens are spaced by `delay`.
        if i + 1 < this.chunks && !this.delay.is_zero() {
            this.sleep = Some(Box::pin(tokio::time::sleep(this.delay)));
        }
        Poll::Ready(Some(Ok(Frame::data(this.event(i)))))
    }

    fn is_end_stream(&self) -> bool {
        self.next > self.chunks
    }
}
