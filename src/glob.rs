//! Star globs: `*` matches any run of characters, everything else is literal. What
//! pack `rooms:` patterns and `--allowed-origins` are written in.
//!
//! Matching ([`Glob`], [`glob_matches`]) runs for deliveries and handshakes; how two
//! patterns relate ([`globs_intersect`], [`glob_covers`]) is for `check`, which tells
//! `rooms:` patterns that no delivery reaches or that an earlier one hides.

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

/// Whether some room name matches both star-globs.
///
/// `reach[i][j]`: some string is matched both by the first `i` characters of `a` and the
/// first `j` of `b`. A literal on each side advances both when they are equal; a star
/// may stop (advance its own side) or swallow the other side's next literal (advance
/// the other side). Two stars facing each other need no rule of their own: whatever
/// both would swallow can be left out of the common string. Check-time only.
pub(crate) fn globs_intersect(a: &str, b: &str) -> bool {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut reach = vec![false; (a.len() + 1) * width];
    reach[0] = true;
    // Every step goes right, down or diagonally, so row-major order sees each cell
    // after every cell that leads to it.
    for i in 0..=a.len() {
        for j in 0..=b.len() {
            if !reach[i * width + j] {
                continue;
            }
            let (ca, cb) = (a.get(i).copied(), b.get(j).copied());
            if ca == Some('*') {
                reach[(i + 1) * width + j] = true;
            }
            if cb == Some('*') {
                reach[i * width + j + 1] = true;
            }
            match (ca, cb) {
                (Some('*'), Some(c)) if c != '*' => reach[i * width + j + 1] = true,
                (Some(c), Some('*')) if c != '*' => reach[(i + 1) * width + j] = true,
                (Some(x), Some(y)) if x == y && x != '*' => reach[(i + 1) * width + j + 1] = true,
                _ => {}
            }
        }
    }
    reach[a.len() * width + b.len()]
}

/// Whether every room `inner` matches is also matched by `outer`. For star-globs this
/// is `outer` matching `inner`'s text with each of its stars taken as a character
/// only a star of `outer` can absorb, which is plain matching, as `outer`'s literal
/// parts contain no `*`. (If `outer` matches every name `inner` does, it matches one
/// where each star of `inner` is a long run of a character `outer` never mentions;
/// such a run can only fall inside a star of `outer`.)
pub(crate) fn glob_covers(outer: &str, inner: &str) -> bool {
    glob_matches(outer, inner)
}

/// Every word over `letters` of at most `max` letters, for the tests below.
#[cfg(test)]
fn words(letters: &[char], max: usize) -> Vec<String> {
    let mut all = vec![String::new()];
    let mut frontier = vec![String::new()];
    for _ in 0..max {
        frontier = frontier
            .iter()
            .flat_map(|w| letters.iter().map(move |c| format!("{w}{c}")))
            .collect();
        all.extend(frontier.iter().cloned());
    }
    all
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

    #[test]
    fn star_matches_any_run_including_none_and_colons() {
        for (pattern, text) in [
            ("*", ""),
            ("*", "a:b:c"),
            ("doc:*", "doc:"),
            ("doc:*", "doc:9:v2"),
            ("*:v*", "doc:9:v2"),
            ("a*b*c", "abc"),
            ("a*b*c", "aXbYbZc"),
            ("a**b", "ab"),
            ("*é*", "café"),
            ("lobby", "lobby"),
        ] {
            assert!(glob_matches(pattern, text), "{pattern} should match {text}");
        }
        for (pattern, text) in [
            ("doc:*", "doc"),
            ("doc:*", "xdoc:1"),
            ("*:v", "doc:v2"),
            ("a*b*c", "acb"),
            ("ab*ba", "aba"),
            ("lobby", "lobby2"),
            ("*x*", ""),
        ] {
            assert!(
                !glob_matches(pattern, text),
                "{pattern} should not match {text}"
            );
        }
    }

    #[test]
    fn intersection_of_globs() {
        for (a, b) in [
            ("*", ""),
            ("*", "lobby"),
            ("doc:*", "*:9"),
            ("doc:*", "d*"),
            ("a*", "*b"),
            ("*x*", "*y*"),
            ("a*c", "abc"),
            ("a*b*c", "*bbb*"),
            ("doc:*", "doc:*"),
            ("*é", "caf*"),
        ] {
            assert!(globs_intersect(a, b), "{a} ∩ {b}");
            assert!(globs_intersect(b, a), "{b} ∩ {a}");
        }
        for (a, b) in [
            ("doc:*", "chat:*"),
            ("a*", "b*"),
            ("*a", "*b"),
            ("lobby", "lobby2"),
            ("a*b", "a"),
            ("ab*", "ba*"),
            ("", "x*"),
            ("x*y", "x"),
        ] {
            assert!(!globs_intersect(a, b), "{a} ∩ {b} should be empty");
            assert!(!globs_intersect(b, a), "{b} ∩ {a} should be empty");
        }
        // Overlapping literals: `aba` starts with `ab` and ends with `ba`.
        assert!(globs_intersect("ab*", "*ba"));
    }

    #[test]
    fn intersection_and_cover_agree_with_brute_force() {
        // Every pattern over {a, b, *} up to 4 characters, against every name over
        // {a, b, c} up to 6. That is enough: a common name never needs more letters
        // than both patterns hold together (at most 6 when either has a star), and a
        // name that `inner` matches but `outer` does not exists among those with a
        // `c` for each star of `inner`. The `c`, a letter no pattern mentions, stands
        // for the rest of the alphabet: over {a, b} alone `*ab*` would cover `a*b`.
        let patterns = words(&['a', 'b', '*'], 4);
        let names = words(&['a', 'b', 'c'], 6);
        let matched: Vec<Vec<bool>> = patterns
            .iter()
            .map(|p| names.iter().map(|n| glob_matches(p, n)).collect())
            .collect();
        for (a, in_a) in patterns.iter().zip(&matched) {
            for (b, in_b) in patterns.iter().zip(&matched) {
                let meet = in_a.iter().zip(in_b).any(|(x, y)| *x && *y);
                assert_eq!(globs_intersect(a, b), meet, "`{a}` ∩ `{b}`");
                let covers = in_a.iter().zip(in_b).all(|(x, y)| *x || !*y);
                assert_eq!(glob_covers(a, b), covers, "`{a}` ⊇ `{b}`");
            }
        }
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

    proptest! {
        #![proptest_config(config(256))]

        /// `globs_intersect` says yes exactly when some name matches both: a shortest
        /// common name is no longer than both patterns' literals together and uses only
        /// their characters (or one neither names), so a bounded search decides it.
        #[test]
        fn intersection_agrees_with_a_search(a in "[ab*]{0,4}", b in "[ab:*]{0,4}") {
            let literals = a.chars().chain(b.chars()).filter(|c| *c != '*').count();
            let witness = words(&['a', 'b', ':'], literals)
                .into_iter()
                .find(|s| glob_matches(&a, s) && glob_matches(&b, s));
            prop_assert_eq!(globs_intersect(&a, &b), witness.is_some(),
                "{:?} and {:?}: witness {:?}", a, b, witness);
        }

        /// `glob_covers(outer, inner)`: when yes, every name `inner` matches (its stars
        /// filled with anything) is matched by `outer`; when no, filling each star of
        /// `inner` with a long run of a character `outer` never names gives a name
        /// `outer` refuses.
        #[test]
        fn cover_agrees_with_examples(outer in "[ab:*]{0,5}", inner in "[ab:*]{0,5}",
                                      fills in prop::collection::vec("[ab:]{0,3}", 5)) {
            let filled = |with: &dyn Fn(usize) -> String| -> String {
                let mut stars = 0;
                inner.chars().map(|c| if c == '*' { stars += 1; with(stars - 1) } else { c.to_string() }).collect()
            };
            if glob_covers(&outer, &inner) {
                let name = filled(&|i| fills[i % fills.len()].clone());
                prop_assert!(glob_matches(&outer, &name), "{:?} covers {:?} but refuses {:?}", outer, inner, name);
            } else {
                let name = filled(&|_| "z".repeat(outer.len() + 1));
                prop_assert!(!glob_matches(&outer, &name), "{:?} does not cover {:?} yet matches {:?}", outer, inner, name);
            }
        }
    }
}
