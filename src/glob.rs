//! Star globs: `*` matches any run of characters, everything else is literal. What
//! pack `rooms:` patterns and `--allowed-origins` are written in.

/// A pattern with at least one `*`, split at its stars: `doc:*:v*` is `["doc:", ":v",
/// ""]`. The first part must start the name, the last must end it, and the ones between
/// must appear in order; taking each at its leftmost place is always right when `*` is
/// the only wildcard, so matching is a few substring searches and never backtracks.
#[derive(Debug, Clone)]
pub struct Glob {
    /// At least two parts (one more than there are stars).
    parts: Vec<String>,
}

impl Glob {
    pub fn new(pattern: &str) -> Self {
        Self {
            parts: pattern.split('*').map(str::to_string).collect(),
        }
    }

    pub fn matches(&self, text: &str) -> bool {
        let Some((first, rest)) = self.parts.split_first() else {
            return text.is_empty();
        };
        let Some((last, middle)) = rest.split_last() else {
            return text == first;
        };
        if text.len() < first.len() + last.len()
            || !text.starts_with(first.as_str())
            || !text.ends_with(last.as_str())
        {
            return false;
        }
        // Both bounds are char boundaries: they end `first` and start `last`.
        let Some(mut rest) = text.get(first.len()..text.len() - last.len()) else {
            return false;
        };
        for part in middle {
            match rest.find(part.as_str()) {
                Some(at) => match rest.get(at + part.len()..) {
                    Some(after) => rest = after,
                    None => return false,
                },
                None => return false,
            }
        }
        true
    }
}

/// Whether `pattern` (`*` a wildcard, all else literal) matches `text`.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    if pattern.contains('*') {
        Glob::new(pattern).matches(text)
    } else {
        pattern == text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stars_match_any_run_and_the_rest_is_literal() {
        assert!(glob_matches("doc:*", "doc:1"));
        assert!(glob_matches(
            "https://*.example.com",
            "https://a.b.example.com"
        ));
        assert!(!glob_matches(
            "https://*.example.com",
            "https://example.com"
        ));
        assert!(glob_matches("*", ""));
        assert!(!glob_matches("a*b*c", "acb"));
        assert!(glob_matches("lobby", "lobby") && !glob_matches("lobby", "lobby2"));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::proptest_support::config;
    use proptest::prelude::*;

    /// The reference: textbook dynamic programming over characters, `*` any run.
    fn model(pattern: &str, text: &str) -> bool {
        let p: Vec<char> = pattern.chars().collect();
        let t: Vec<char> = text.chars().collect();
        // m[i][j]: the first i pattern characters match the first j text characters.
        let mut m = vec![vec![false; t.len() + 1]; p.len() + 1];
        m[0][0] = true;
        for i in 1..=p.len() {
            for j in 0..=t.len() {
                m[i][j] = if p[i - 1] == '*' {
                    m[i - 1][j] || (j > 0 && m[i][j - 1])
                } else {
                    j > 0 && m[i - 1][j - 1] && p[i - 1] == t[j - 1]
                };
            }
        }
        m[p.len()][t.len()]
    }

    proptest! {
        #![proptest_config(config(512))]

        /// `glob_matches` (and `Glob`, which it uses for patterns with a star) agrees
        /// with the reference on small alphabets, where near-misses are common.
        #[test]
        fn glob_agrees_with_the_reference(pattern in "[ab:*é]{0,8}", text in "[ab:é]{0,10}") {
            prop_assert_eq!(glob_matches(&pattern, &text), model(&pattern, &text));
        }

        /// A pattern matches the text it was made from with each star filled in.
        #[test]
        fn a_filled_in_pattern_matches(parts in prop::collection::vec("[ab:é]{0,3}", 1..5),
                                       fills in prop::collection::vec("[ab:*é]{0,3}", 4)) {
            let pattern = parts.join("*");
            let text: String = parts
                .iter()
                .enumerate()
                .flat_map(|(i, p)| [p.as_str(), if i + 1 < parts.len() { fills[i].as_str() } else { "" }])
                .collect();
            prop_assert!(glob_matches(&pattern, &text), "{} should match {}", pattern, text);
        }
    }
}
