//! Sanitising and redaction of everything that leaves the cluster for a model.
//!
//! Logs, event messages and command lines are untrusted: [`sanitize`] strips terminal escapes, bidi
//! controls and other control characters and caps line length; [`Redactor::redact`] removes secrets by
//! pattern (private keys, URL credentials, JWTs such as service-account tokens, bearer/basic auth,
//! `key=value` pairs whose key looks secret, well-known token formats) and by entropy (long random-looking
//! tokens). Environment variable values are never collected at all, only their names.

use std::sync::LazyLock;

use regex::Regex;

/// Longest line kept; longer lines are cut (a log line can be megabytes of JSON).
pub const MAX_LINE_CHARS: usize = 2_000;
/// Tokens at least this long are candidates for entropy redaction.
const ENTROPY_MIN_LEN: usize = 24;
/// Shannon entropy (bits per character) above which a mixed token counts as a secret.
const ENTROPY_THRESHOLD: f64 = 4.0;

/// Removes ANSI escape sequences, bidi and other control characters (keeping newlines and tabs), and
/// cuts overlong lines. Binary garbage has already become U+FFFD when the bytes were decoded.
pub fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(1 << 20));
    let mut chars = text.chars().peekable();
    let mut line_len = 0usize;
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI (ESC [ ... final byte) and OSC (ESC ] ... BEL or ESC \) sequences.
                match chars.peek() {
                    Some('[') => {
                        chars.next();
                        while let Some(&n) = chars.peek() {
                            chars.next();
                            if ('@'..='~').contains(&n) {
                                break;
                            }
                        }
                    }
                    Some(']') => {
                        chars.next();
                        while let Some(n) = chars.next() {
                            if n == '\u{7}' || (n == '\u{1b}' && chars.peek() == Some(&'\\')) {
                                if n == '\u{1b}' {
                                    chars.next();
                                }
                                break;
                            }
                        }
                    }
                    _ => {}
                }
            }
            '\n' => {
                out.push('\n');
                line_len = 0;
            }
            '\t' => {
                out.push(' ');
                line_len += 1;
            }
            '\r' => {}
            // Bidi embeddings, overrides and isolates (Trojan Source), zero-width and BOM.
            '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200B}'..='\u{200F}' | '\u{FEFF}' => {}
            c if c.is_control() => {}
            c => {
                if line_len < MAX_LINE_CHARS {
                    out.push(c);
                } else if line_len == MAX_LINE_CHARS {
                    out.push('…');
                }
                line_len += 1;
            }
        }
    }
    out
}

fn shannon_entropy(token: &str) -> f64 {
    let mut counts = [0usize; 256];
    let mut total = 0usize;
    for b in token.bytes() {
        counts[b as usize] += 1;
        total += 1;
    }
    if total == 0 {
        return 0.0;
    }
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|&c| {
            let p = c as f64 / total as f64;
            -p * p.log2()
        })
        .sum()
}

struct Rule {
    pattern: Regex,
    replacement: &'static str,
}

fn rule(pattern: &str, replacement: &'static str) -> Rule {
    // NB: the patterns are constants of this file; a typo is a programming error caught by the tests.
    Rule {
        pattern: Regex::new(pattern).unwrap_or_else(|e| panic!("invalid redaction pattern {pattern}: {e}")),
        replacement,
    }
}

static RULES: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    vec![
        rule(
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
            "[REDACTED:private-key]",
        ),
        rule(r"([A-Za-z][A-Za-z0-9+.\-]*://)[^\s/:@]+:[^\s/@]+@", "${1}[REDACTED]@"),
        rule(r"eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{5,}", "[REDACTED:jwt]"),
        rule(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=\-]{8,}", "${1} [REDACTED]"),
        rule(
            r#"(?i)([A-Za-z0-9_.\-]*(?:password|passwd|pwd|secret|token|api[_\-]?key|access[_\-]?key|private[_\-]?key|credential|session[_\-]?id)[A-Za-z0-9_.\-]*["']?\s*(?::|=|:=|=>)\s*["']?)[^\s"',;&}]+"#,
            "${1}[REDACTED]",
        ),
        rule(r"\bAKIA[0-9A-Z]{16}\b", "[REDACTED:aws-key]"),
        rule(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b|\bgithub_pat_[A-Za-z0-9_]{22,}\b", "[REDACTED:github-token]"),
        rule(r"\bxox[abprs]-[A-Za-z0-9\-]{10,}\b", "[REDACTED:slack-token]"),
        rule(r"\bAIza[0-9A-Za-z_\-]{35}\b", "[REDACTED:google-api-key]"),
        rule(r"\b(?:sk|pk|rk)[_-](?:live|test)?[_-]?[A-Za-z0-9]{20,}\b", "[REDACTED:api-key]"),
        rule(r"\bglpat-[A-Za-z0-9_\-]{20,}\b", "[REDACTED:gitlab-token]"),
    ]
});

static TOKEN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[A-Za-z0-9+/=_\-]{24,}").unwrap_or_else(|e| panic!("invalid token pattern: {e}"))
});

/// Redacts secrets from text.
#[derive(Debug, Default, Clone, Copy)]
pub struct Redactor;

impl Redactor {
    /// `text` with every secret-looking part replaced by `[REDACTED…]`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for rule in RULES.iter() {
            if rule.pattern.is_match(&out) {
                out = rule.pattern.replace_all(&out, rule.replacement).into_owned();
            }
        }
        TOKEN
            .replace_all(&out, |caps: &regex::Captures<'_>| {
                let token = &caps[0];
                let has_letter = token.bytes().any(|b| b.is_ascii_alphabetic());
                let has_digit = token.bytes().any(|b| b.is_ascii_digit());
                let looks_random = token.len() >= ENTROPY_MIN_LEN
                    && has_letter
                    && has_digit
                    && shannon_entropy(token) >= ENTROPY_THRESHOLD;
                if looks_random { "[REDACTED:entropy]".to_owned() } else { token.to_owned() }
            })
            .into_owned()
    }

    /// [`sanitize`] then [`Redactor::redact`]: what every untrusted text goes through.
    pub fn clean(&self, text: &str) -> String {
        self.redact(&sanitize(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_logs_are_redacted_by_pattern() {
        let r = Redactor;
        let cases = [
            ("connecting to postgres://app:hunter2@db:5432/shop", "hunter2"),
            ("password=s3cr3t-value and more", "s3cr3t-value"),
            (r#"{"api_key": "abc123def456"}"#, "abc123def456"),
            ("Authorization: Bearer abcdefghijklmnopqrstuvwxyz0123", "abcdefghijklmnopqrstuvwxyz0123"),
            (
                "token eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2lnbmF0dXJlc2lnbmF0dXJl",
                "eyJzdWIi",
            ),
            ("aws AKIAIOSFODNN7EXAMPLE used", "AKIAIOSFODNN7EXAMPLE"),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
                "MIIEpAIBAAKCAQEA",
            ),
        ];
        for (text, secret) in cases {
            let redacted = r.redact(text);
            assert!(!redacted.contains(secret), "{secret} survived in {redacted:?}");
            assert!(redacted.contains("REDACTED"), "{redacted:?}");
        }
    }

    #[test]
    fn random_looking_tokens_are_redacted_by_entropy_but_ordinary_text_is_kept() {
        let r = Redactor;
        let token = "Zx8Qp2Lm9Rt4Vn7Kc1Wb6Yd3Hs5Gj0Fa";
        assert!(!r.redact(&format!("session {token} opened")).contains(token));
        let ordinary = "java.lang.OutOfMemoryError: Java heap space at com.shop.cache.LoadingCache.get(LoadingCache.java:42)";
        assert_eq!(r.redact(ordinary), ordinary);
        let image = "registry.local/shop/web:1.4.2";
        assert_eq!(r.redact(image), image);
    }

    #[test]
    fn escapes_bidi_and_control_characters_are_stripped_and_long_lines_cut() {
        let text = "\u{1b}[31mred\u{1b}[0m \u{202E}evil\u{202C} ok\u{7}\r\n\u{1b}]0;title\u{7}next";
        assert_eq!(sanitize(text), "red evil ok\nnext");
        let long = "x".repeat(MAX_LINE_CHARS * 2);
        assert_eq!(sanitize(&long).chars().count(), MAX_LINE_CHARS + 1);
    }
}
