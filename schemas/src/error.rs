//! Why a document could not be decoded. Each error has a stable machine-readable
//! [`DecodeError::reason`] (what the hub puts in `x-exhub-reason`) and a human message.

/// A document that could not be decoded into the model.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Larger than [`crate::Limits::max_bytes`].
    #[error("document is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// Size of the input.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Nested deeper than [`crate::Limits::max_depth`].
    #[error("document nests deeper than the limit of {limit} levels")]
    TooDeep {
        /// The configured limit.
        limit: usize,
    },
    /// Neither JSON nor XML, or not UTF-8.
    #[error("{0}")]
    Encoding(String),
    /// Malformed JSON.
    #[error("malformed JSON at line {line}, column {column}: {message}")]
    Json {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser said.
        message: String,
    },
    /// Malformed or refused XML.
    #[error("malformed XML at byte {position}: {message}")]
    Xml {
        /// Byte offset of the problem.
        position: u64,
        /// What is wrong.
        message: String,
    },
    /// Well-formed, but not a valid document: a header field, a name, a character, a value that
    /// contradicts its type annotation.
    #[error("{pointer}: {message}")]
    Invalid {
        /// JSON Pointer to the offending place, e.g. `/header/created_at`.
        pointer: String,
        /// What is wrong.
        message: String,
    },
    /// No schema is registered for this doc type and version.
    #[error("unknown doc type {doc_type:?} version {version} (known: {known})")]
    UnknownDocType {
        /// The doc type named in the header.
        doc_type: String,
        /// The version named in the header.
        version: u32,
        /// The registered `type vN` pairs, comma separated.
        known: String,
    },
}

impl DecodeError {
    /// A short stable code for dead-letter headers and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::TooDeep { .. } => "too_deep",
            DecodeError::Encoding(_) | DecodeError::Json { .. } | DecodeError::Xml { .. } => "malformed",
            DecodeError::Invalid { .. } => "invalid",
            DecodeError::UnknownDocType { .. } => "unknown_doc_type",
        }
    }
}

/// `text` cut to at most `max` bytes at a character boundary, ending in `…` when cut: how a
/// value from input is echoed in an error, so that no message grows with the input.
pub fn excerpt(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end]).into()
}

#[cfg(test)]
mod excerpt_tests {
    #[test]
    fn excerpts_cut_at_a_character_boundary() {
        assert_eq!(super::excerpt("short", 64), "short");
        let long = "税".repeat(100);
        let cut = super::excerpt(&long, 64);
        assert!(cut.len() <= 64 && cut.ends_with('…'), "{cut}");
        assert_eq!(super::excerpt("abcdef", 4), "a…");
    }
}
