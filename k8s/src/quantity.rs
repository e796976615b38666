//! Kubernetes resource quantities (`500m`, `1.5Gi`, `1e3`) as integers: what the scheduler
//! counts and what the kubelet writes into cgroup limits.

/// Why a string is not a quantity this parser understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// There are no digits before the suffix (`Mi`, ``).
    #[error("no number")]
    NoNumber,
    /// The number is only a sign or a point (`+`, `.`).
    #[error("no digits")]
    NoDigits,
    /// The number has characters other than digits and one point, or more than nine
    /// fractional digits (`1..2`).
    #[error("malformed number")]
    Malformed,
    /// The digits do not fit in 128 bits.
    #[error("number too large")]
    NumberTooLarge,
    /// An `e`/`E` suffix without a decimal exponent after it.
    #[error("bad exponent")]
    BadExponent,
    /// An exponent above 18.
    #[error("exponent too large")]
    ExponentTooLarge,
    /// A suffix that is neither a binary, decimal SI nor exponent suffix (`1X`).
    #[error("unknown suffix")]
    UnknownSuffix,
    /// The scaled value does not fit in a `u64`.
    #[error("too large")]
    TooLarge,
}

/// Parses a quantity into a value scaled by `scale` (1 for bytes, 1000 for millicores),
/// rounding up as the kubelet and the scheduler do.
pub fn parse(q: &str, scale: u128) -> Result<u64, QuantityError> {
    let s = q.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    if number.is_empty() {
        return Err(QuantityError::NoNumber);
    }
    let number = number.strip_prefix('+').unwrap_or(number);
    // value = mantissa / 10^frac_digits * multiplier
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() {
        return Err(QuantityError::NoDigits);
    }
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) || frac.len() > 9 {
        return Err(QuantityError::Malformed);
    }
    let mantissa: u128 = format!("{int}{frac}")
        .parse()
        .map_err(|_| QuantityError::NumberTooLarge)?;
    let mut denominator: u128 = 10u128.pow(frac.len() as u32);
    let (mult, div): (u128, u128) = match suffix {
        "" => (1, 1),
        "n" => (1, 1_000_000_000),
        "u" => (1, 1_000_000),
        "m" => (1, 1000),
        "k" => (1000, 1),
        "M" => (1000u128.pow(2), 1),
        "G" => (1000u128.pow(3), 1),
        "T" => (1000u128.pow(4), 1),
        "P" => (1000u128.pow(5), 1),
        "E" => (1000u128.pow(6), 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        s if s.starts_with(['e', 'E']) => {
            let exp: u32 = s[1..].parse().map_err(|_| QuantityError::BadExponent)?;
            if exp > 18 {
                return Err(QuantityError::ExponentTooLarge);
            }
            (10u128.pow(exp), 1)
        }
        _ => return Err(QuantityError::UnknownSuffix),
    };
    denominator *= div;
    let numerator = mantissa
        .checked_mul(mult)
        .and_then(|v| v.checked_mul(scale))
        .ok_or(QuantityError::TooLarge)?;
    let value = numerator.div_ceil(denominator);
    u64::try_from(value).map_err(|_| QuantityError::TooLarge)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The scheduler's and the runtime's tests of their former copies, together.
    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(parse("100m", 1000), Ok(100));
        assert_eq!(parse("500m", 1000), Ok(500));
        assert_eq!(parse("1", 1000), Ok(1000));
        assert_eq!(parse("0.5", 1000), Ok(500));
        assert_eq!(parse("1.5", 1000), Ok(1500));
        assert_eq!(parse("0.1", 1000), Ok(100));
        assert_eq!(parse("128Mi", 1), Ok(128 << 20));
        assert_eq!(parse("1G", 1), Ok(1_000_000_000));
        assert_eq!(parse("1e3", 1), Ok(1000));
        assert_eq!(parse("1.5Gi", 1), Ok(3 << 29));
        assert_eq!(parse("1500u", 1000), Ok(2));
        assert_eq!(parse("100m", 1), Ok(1), "rounds up");
        for bad in ["", "Mi", "1X", "1..2", "-1", "1e99", "abc"] {
            assert!(parse(bad, 1).is_err(), "{bad:?} accepted");
        }
    }
}
