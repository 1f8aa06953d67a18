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

/// Assert `err` is the refusal of listing NetworkPolicies cluster-wide, as one sentence
/// with no source chained: the 403 both plan's inventory and a check round meet.
pub fn assert_networkpolicies_list_forbidden<E>(err: E)
where
    E: std::error::Error + Send + Sync + 'static,
{
    assert!(std::error::Error::source(&err).is_none(), "{err}");
    let text = format!("{:#}", anyhow::Error::new(err));
    assert!(
        text.starts_with(
            "listing NetworkPolicies (networking.k8s.io/v1) in all namespaces: the API server \
             answered 403 Forbidden ("
        ),
        "{text}"
    );
    assert!(
        text.ends_with(
            "; grant list on networkpolicies.networking.k8s.io in all namespaces to the \
             identity the kubeconfig names (`kubectl auth can-i list \
             networkpolicies.networking.k8s.io --all-namespaces` checks it), then run the \
             command again"
        ),
        "{text}"
    );
    assert_one_api_sentence(&text);
}
