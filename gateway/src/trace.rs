//! The root span of a message's trace: the send, over HTTP or the socket.
//! Its context goes into the `MessageCreated` record (`NewMessage::trace`),
//! where every reader of the log picks it up; see `confab-telemetry`.

use axum::http::HeaderMap;
use confab_schemas::api;
use confab_schemas::trace::TraceParent;
use confab_telemetry::{Kind, Span};

use crate::error::ApiError;

/// A send's span, from the handler to its answer.
#[derive(Debug)]
pub(crate) struct SendSpan(Span);

impl SendSpan {
    /// `POST /v1/messages`; a client's sampled `traceparent` header makes
    /// the send part of the client's trace (a malformed one is ignored).
    pub fn http(headers: &HeaderMap, conversation_id: &str) -> SendSpan {
        let remote = headers.get("traceparent").and_then(|value| value.to_str().ok()).and_then(|text| text.parse::<TraceParent>().ok());
        let mut span = Span::root("POST /v1/messages", Kind::Server, remote);
        span.attr("http.request.method", "POST");
        span.attr("http.route", "/v1/messages");
        span.attr_with("confab.conversation_id", || conversation_id.to_string());
        SendSpan(span)
    }

    /// A `message.send` frame on `/v1/ws`.
    pub fn ws(conversation_id: &str) -> SendSpan {
        let mut span = Span::root("ws message.send", Kind::Server, None);
        span.attr("confab.transport", "ws");
        span.attr_with("confab.conversation_id", || conversation_id.to_string());
        SendSpan(span)
    }

    /// What the message's record carries.
    pub fn context(&self) -> Option<TraceParent> {
        self.0.context()
    }

    /// Ends the span with the answer: the message, or the error's code.
    pub fn finish(mut self, outcome: Result<&api::Message, &ApiError>, http_status: Option<u16>) {
        if let Some(status) = http_status {
            self.0.attr("http.response.status_code", status as i64);
        }
        match outcome {
            Ok(message) => {
                self.0.attr_with("confab.message_id", || message.message_id.clone());
                self.0.attr("confab.seq", message.seq as i64);
            }
            Err(error) => {
                self.0.attr("confab.error_code", error.code.as_str());
                self.0.fail(error.message.clone());
            }
        }
    }
}
