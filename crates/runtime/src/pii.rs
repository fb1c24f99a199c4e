//! Keeps personal data out of what the process writes about itself.
//!
//! Every log line passes through [`Redacting`], which replaces email addresses with a
//! short digest (the same address gives the same digest, so lines about one person can
//! still be followed). Client IP addresses are never put in log fields or spans in the
//! first place; traces carry only span fields (protocol, method, path), not log events.

use std::borrow::Cow;
use std::io::{self, Write};

use sha2::{Digest as _, Sha256};
use tracing_subscriber::fmt::MakeWriter;

/// `text` with every email address replaced by `email#<digest>`.
pub fn redact_emails(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    if !bytes.contains(&b'@') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut at = 0;
    while let Some(offset) = bytes[at..].iter().position(|&byte| byte == b'@') {
        let sign = at + offset;
        let start = (copied..sign)
            .rev()
            .take_while(|&index| is_local_part(bytes[index]))
            .last()
            .unwrap_or(sign);
        let mut end = (sign + 1..bytes.len())
            .take_while(|&index| is_domain(bytes[index]))
            .last()
            .map_or(sign + 1, |last| last + 1);
        while end > sign + 1 && bytes[end - 1] == b'.' {
            end -= 1;
        }
        let domain = &text[sign + 1..end];
        if start < sign && domain.contains('.') && !domain.starts_with('.') {
            out.push_str(&text[copied..start]);
            out.push_str(&email_digest(&text[start..end]));
            copied = end;
            at = end;
        } else {
            at = sign + 1;
        }
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// `email#` and the first 12 hex digits of the lower-cased address's SHA-256.
pub fn email_digest(email: &str) -> String {
    let digest = Sha256::digest(email.to_ascii_lowercase().as_bytes());
    let hex: String = digest[..6]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("email#{hex}")
}

fn is_local_part(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn is_domain(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-')
}

/// A writer that redacts each write before passing it on. The log formatter writes one
/// whole line per call, so an address is never split across two writes.
#[derive(Debug)]
pub struct Redacting<W>(pub W);

impl<W: Write> Write for Redacting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0.write_all(redact_emails(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Standard error, redacted: the writer of the process's logs.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedactedStderr;

impl<'a> MakeWriter<'a> for RedactedStderr {
    type Writer = Redacting<io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        Redacting(io::stderr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_digests_and_the_rest_stays() {
        let line = "550 5.1.1 <Tom.Smith+news@mail.example.com>: rejected; also ann@example.org.";
        let redacted = redact_emails(line);
        assert!(!redacted.contains("Tom.Smith"), "{redacted}");
        assert!(!redacted.contains("ann@"), "{redacted}");
        assert!(redacted.starts_with("550 5.1.1 <email#"), "{redacted}");
        assert!(redacted.contains(": rejected; also email#"), "{redacted}");
        assert!(
            redacted.ends_with('.'),
            "the sentence's full stop stays: {redacted}"
        );
        // The same address, whatever its case, gives the same digest.
        assert_eq!(
            email_digest("Ann@Example.org"),
            email_digest("ann@example.org")
        );
        assert_eq!(email_digest("ann@example.org").len(), "email#".len() + 12);
    }

    #[test]
    fn what_is_not_an_address_is_left_alone() {
        for text in [
            "no at sign here",
            "user@localhost has no dot",
            "@example.com has no local part",
            "a@ b",
            "nats://user@",
            "ends with @",
            "é@é.é and 名前@例え.jp",
        ] {
            assert_eq!(redact_emails(text), text);
        }
    }

    #[test]
    fn the_writer_redacts_what_passes_through() {
        let mut out = Redacting(Vec::new());
        out.write_all(b"{\"to\":\"sue@example.com\",\"n\":1}\n")
            .unwrap();
        let written = String::from_utf8(out.0).unwrap();
        assert!(written.starts_with("{\"to\":\"email#"), "{written}");
        assert!(written.ends_with("\",\"n\":1}\n"), "{written}");
    }
}
