//! `Token`: the private-app token the simulator accepts. `Debug` shows `[redacted]`, so no log
//! line or panic message carries it; the value itself is only reachable through `expose`.

use std::fmt;

/// A bearer token that formats as `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Token {
        Token(value.into())
    }

    /// The value itself, to compare a request's `Authorization` header with.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl From<&str> for Token {
    fn from(value: &str) -> Token {
        Token::new(value)
    }
}

impl From<String> for Token {
    fn from(value: String) -> Token {
        Token(value)
    }
}

#[cfg(test)]
mod tests {
    use super::Token;

    #[test]
    fn a_token_never_formats_its_value() {
        let token = Token::new("pat-na1-SENTINEL-TOKEN-7f3a");
        assert_eq!(format!("{token:?}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&token)), "Some([redacted])");
        assert_eq!(token.expose(), "pat-na1-SENTINEL-TOKEN-7f3a");
    }
}
