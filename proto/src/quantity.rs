//! Kubernetes memory quantities (`128Mi`, `1G`, `512000000`) as a typed byte count.

use std::{fmt, str::FromStr};

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A memory amount in bytes, written on the wire in Kubernetes quantity notation.
///
/// Parsing accepts every form the apiserver accepts for memory (binary suffixes `Ki`…`Ei`, decimal
/// suffixes `k`…`E`, plain and exponent notation, milli-units rounded up to a whole byte). Formatting
/// picks the largest binary suffix that divides the value exactly, so `268435456` prints as `256Mi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemoryQuantity(u64);

/// Why a string is not a memory quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The text does not follow Kubernetes quantity syntax.
    #[error("{0:?} is not a Kubernetes quantity")]
    Syntax(String),
    /// The value is negative.
    #[error("memory quantity {0:?} is negative")]
    Negative(String),
    /// The value does not fit into 64 bits of bytes.
    #[error("memory quantity {0:?} is too large")]
    Overflow(String),
}

const BINARY_SUFFIXES: [(&str, u32); 6] = [("Ki", 1), ("Mi", 2), ("Gi", 3), ("Ti", 4), ("Pi", 5), ("Ei", 6)];
const DECIMAL_SUFFIXES: [(&str, i32); 9] =
    [("n", -9), ("u", -6), ("m", -3), ("k", 3), ("M", 6), ("G", 9), ("T", 12), ("P", 15), ("E", 18)];
/// Longest quantity text we accept; the apiserver's own limit is far below this.
const MAX_QUANTITY_LEN: usize = 64;

impl MemoryQuantity {
    /// One mebibyte.
    pub const MIB: u64 = 1 << 20;

    /// A quantity of exactly `bytes` bytes.
    pub const fn from_bytes(bytes: u64) -> Self {
        Self(bytes)
    }

    /// A quantity of `mib` mebibytes (saturating).
    pub const fn from_mib(mib: u64) -> Self {
        Self(mib.saturating_mul(Self::MIB))
    }

    /// The number of bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// Parses Kubernetes quantity notation.
    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        let syntax = || QuantityError::Syntax(text.to_owned());
        let trimmed = text.trim();
        if trimmed.is_empty() || trimmed.len() > MAX_QUANTITY_LEN {
            return Err(syntax());
        }
        let (negative, unsigned) = match trimmed.as_bytes()[0] {
            b'-' => (true, &trimmed[1..]),
            b'+' => (false, &trimmed[1..]),
            _ => (false, trimmed),
        };
        let number_end = unsigned.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(unsigned.len());
        let (number, suffix) = unsigned.split_at(number_end);
        let (int_part, frac_part) = match number.split_once('.') {
            Some((i, f)) => (i, f),
            None => (number, ""),
        };
        if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
            return Err(syntax());
        }
        // The value is digits * 2^bin_exp * 10^dec_exp, with digits = int_part ++ frac_part.
        let (bin_exp, mut dec_exp): (u32, i32) = if suffix.is_empty() {
            (0, 0)
        } else if let Some((_, power)) = BINARY_SUFFIXES.iter().find(|(s, _)| *s == suffix) {
            (power * 10, 0)
        } else if let Some((_, power)) = DECIMAL_SUFFIXES.iter().find(|(s, _)| *s == suffix) {
            (0, *power)
        } else if let Some(exp) = suffix.strip_prefix(['e', 'E']) {
            (0, exp.parse::<i32>().map_err(|_| syntax())?)
        } else {
            return Err(syntax());
        };
        if !(-30..=30).contains(&dec_exp) {
            return Err(QuantityError::Overflow(text.to_owned()));
        }
        let digits = format!("{int_part}{frac_part}");
        let digits = digits.trim_start_matches('0');
        dec_exp -= i32::try_from(frac_part.len()).map_err(|_| syntax())?;
        if digits.is_empty() {
            return Ok(Self(0));
        }
        if negative {
            return Err(QuantityError::Negative(text.to_owned()));
        }
        if digits.len() > 38 {
            return Err(QuantityError::Overflow(text.to_owned()));
        }
        let overflow = || QuantityError::Overflow(text.to_owned());
        let mut value: u128 = digits.parse().map_err(|_| syntax())?;
        value = value.checked_shl(bin_exp).filter(|v| v >> bin_exp == value).ok_or_else(overflow)?;
        if dec_exp >= 0 {
            let scale = 10u128.checked_pow(dec_exp.unsigned_abs()).ok_or_else(overflow)?;
            value = value.checked_mul(scale).ok_or_else(overflow)?;
        } else {
            let scale = 10u128.checked_pow(dec_exp.unsigned_abs()).ok_or_else(overflow)?;
            // Fractional bytes round up, as the apiserver does when it canonicalises memory.
            value = value.div_ceil(scale);
        }
        u64::try_from(value).map(Self).map_err(|_| overflow())
    }

    /// Multiplies by `factor`, rounding up to a whole mebibyte and saturating at `u64::MAX`.
    pub fn scaled_to_mib(self, factor: f64) -> Self {
        if !factor.is_finite() || factor <= 0.0 {
            return self;
        }
        let mib = (self.0 as f64 * factor / Self::MIB as f64).ceil();
        if mib >= (u64::MAX / Self::MIB) as f64 { Self(u64::MAX) } else { Self::from_mib(mib as u64) }
    }
}

impl fmt::Display for MemoryQuantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0");
        }
        for (suffix, power) in BINARY_SUFFIXES.iter().rev() {
            let unit = 1u64 << (power * 10);
            if self.0.is_multiple_of(unit) {
                return write!(f, "{}{suffix}", self.0 / unit);
            }
        }
        for (suffix, power) in DECIMAL_SUFFIXES.iter().rev().filter(|(_, p)| *p > 0) {
            let unit = 10u64.pow(power.unsigned_abs());
            if self.0.is_multiple_of(unit) {
                return write!(f, "{}{suffix}", self.0 / unit);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl FromStr for MemoryQuantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for MemoryQuantity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MemoryQuantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for MemoryQuantity {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MemoryQuantity".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A memory amount in Kubernetes quantity notation, e.g. 256Mi.",
            "pattern": "^[+]?([0-9]+(\\.[0-9]*)?|\\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn binary_and_decimal_suffixes_parse_to_bytes() {
        let cases = [
            ("128Mi", 128 << 20),
            ("1Gi", 1 << 30),
            ("1.5Gi", 3 << 29),
            ("1G", 1_000_000_000),
            ("500M", 500_000_000),
            ("1e3", 1000),
            ("12E2", 1200),
            ("1500m", 2),
            ("0.5Ki", 512),
            ("268435456", 268_435_456),
            ("+64Ki", 65536),
            ("0", 0),
        ];
        for (text, bytes) in cases {
            assert_eq!(MemoryQuantity::parse(text).map(MemoryQuantity::bytes), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn nonsense_negative_and_huge_quantities_are_rejected() {
        for text in ["", "Mi", "12Qi", "1.2.3", "--1", "1 Mi", "abc", "1e999"] {
            assert!(MemoryQuantity::parse(text).is_err(), "{text} should not parse");
        }
        assert!(matches!(MemoryQuantity::parse("-1Mi"), Err(QuantityError::Negative(_))));
        assert!(matches!(MemoryQuantity::parse("99999999Ei"), Err(QuantityError::Overflow(_))));
    }

    #[test]
    fn display_uses_the_largest_exact_binary_then_decimal_suffix() {
        assert_eq!(MemoryQuantity::from_bytes(256 << 20).to_string(), "256Mi");
        assert_eq!(MemoryQuantity::from_bytes(2 << 30).to_string(), "2Gi");
        assert_eq!(MemoryQuantity::from_bytes(1000).to_string(), "1k");
        assert_eq!(MemoryQuantity::from_bytes(300_000_000).to_string(), "300M");
        assert_eq!(MemoryQuantity::from_bytes(1001).to_string(), "1001");
        assert_eq!(MemoryQuantity::from_bytes(0).to_string(), "0");
    }

    #[test]
    fn scaling_rounds_up_to_whole_mebibytes() {
        let q = MemoryQuantity::parse("100M").expect("valid");
        assert_eq!(q.scaled_to_mib(2.0).to_string(), "191Mi");
        assert_eq!(MemoryQuantity::from_mib(128).scaled_to_mib(2.0), MemoryQuantity::from_mib(256));
    }

    proptest! {
        #[test]
        fn any_string_parses_or_errors_without_panicking(text in ".{0,80}") {
            let _ = MemoryQuantity::parse(&text);
        }

        #[test]
        fn display_round_trips(bytes in any::<u64>()) {
            let q = MemoryQuantity::from_bytes(bytes);
            prop_assert_eq!(MemoryQuantity::parse(&q.to_string()), Ok(q));
        }
    }
}
