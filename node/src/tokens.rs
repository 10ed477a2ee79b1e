//! The node's secret tokens (the operator token, the admission token): how
//! strong an operator token must be, making one, and reading one from a file so
//! that it stays out of `/proc/*/cmdline`.

use std::path::{Path, PathBuf};

/// Why a token file gave no token (the operator's file, so the operator's to fix).
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read {}: {source}", path.display())]
    /// The file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    #[error("{} must hold the token alone, on one line", .0.display())]
    /// The file is empty or holds more than one line.
    NotOneLine(PathBuf),
}

/// The least strength an operator token must carry, in bits (estimated from
/// its length and the kinds of character it uses: see [`token_strength_bits`]).
pub const MIN_OPERATOR_TOKEN_BITS: u32 = 128;

/// An upper estimate of the bits a token carries if its characters were drawn
/// at random from the classes it uses (lower case, upper case, digits, other
/// printable): its length times log2 of their combined size, no more than 8
/// bits per distinct character (so `aaaa…` stays weak). A floor, not a
/// measurement: it refuses what is surely too weak (`hunter2`, a 16-character
/// word) and lets generated tokens (`server --generate-operator-token`) pass.
pub fn token_strength_bits(token: &str) -> u32 {
    let has = |f: fn(&char) -> bool| token.chars().any(|c| f(&c));
    let alphabet = [
        (has(|c| c.is_ascii_lowercase()), 26.0),
        (has(|c| c.is_ascii_uppercase()), 26.0),
        (has(|c| c.is_ascii_digit()), 10.0),
        (has(|c| !c.is_ascii_alphanumeric()), 33.0),
    ]
    .iter()
    .filter(|(present, _)| *present)
    .map(|(_, n)| n)
    .sum::<f64>();
    if alphabet == 0.0 {
        return 0;
    }
    let distinct = token
        .chars()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let per_char = alphabet.log2();
    let bits = (token.chars().count() as f64 * per_char).min(distinct as f64 * 8.0 * per_char);
    bits as u32
}

/// A fresh operator token: 256 random bits, hex (64 characters).
pub fn generate_operator_token() -> String {
    hex::encode(quicnprotochat_crypto::token::generate_token())
}

/// Reads a token from a file (what `--operator-token-file` and
/// `--auth-token-file` name), so it stays out of `/proc/*/cmdline`; one
/// trailing newline is dropped.
pub fn read_token_file(path: &Path) -> Result<String, TokenFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let token = text.strip_suffix('\n').unwrap_or(&text);
    let token = token.strip_suffix('\r').unwrap_or(token);
    if token.is_empty() || token.contains('\n') {
        return Err(TokenFileError::NotOneLine(path.to_owned()));
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_operator_tokens_are_strong_enough_and_words_are_not() {
        assert!(token_strength_bits(&generate_operator_token()) >= MIN_OPERATOR_TOKEN_BITS);
        for weak in [
            "hunter2",
            "0123456789abcdef",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert!(
                token_strength_bits(weak) < MIN_OPERATOR_TOKEN_BITS,
                "{weak}"
            );
        }
    }

    #[test]
    fn a_token_file_holds_one_line_and_its_newline_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "s3cret-token\n").unwrap();
        assert_eq!(read_token_file(&f).unwrap(), "s3cret-token");
        std::fs::write(&f, "one\ntwo\n").unwrap();
        assert!(read_token_file(&f).is_err());
        std::fs::write(&f, "\n").unwrap();
        assert!(read_token_file(&f).is_err());
        let e = read_token_file(&dir.path().join("missing")).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
    }
}
