//! NATS header values that are safe to send.

/// A header value with CR/LF replaced, since async-nats panics on them.
pub fn header_value(text: &str) -> async_nats::HeaderValue {
    let clean: String =
        text.chars().map(|c| if c == '\r' || c == '\n' { ' ' } else { c }).take(1024).collect();
    async_nats::HeaderValue::from(clean.as_str())
}
