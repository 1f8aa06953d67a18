//! What every API error that reaches a user must be: one line, no Debug residue of the
//! client's error types, and no clause twice (a chained source repeating the server's
//! message or the sentence). Shared by the test binaries that meet API errors.

/// Assert `text` (an error as `{:#}` or the CLI prints it) reads as one API sentence.
pub fn assert_one_api_sentence(text: &str) {
    assert_eq!(text.trim_end().lines().count(), 1, "{text}");
    for residue in ["Status {", "ErrorResponse {", "Some(", "ApiError"] {
        assert!(!text.contains(residue), "Debug residue {residue:?}: {text}");
    }
    let clauses = text.replace("; ", ": ");
    for part in clauses.split(": ").map(|p| p.trim_matches([' ', '(', ')'])) {
        if part.len() > 12 {
            assert_eq!(text.matches(part).count(), 1, "{part:?} twice: {text}");
        }
    }
}
