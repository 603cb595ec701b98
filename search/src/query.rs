//! The query language of `GET /v1/search` (`shared/API.md`): words (all
//! must match, any order), `"a phrase"` (in order), `word*` (a prefix), and
//! the modifiers `from:<username>`, `before:<YYYY-MM-DD>`,
//! `after:<YYYY-MM-DD>` and `has:attachment`.
//!
//! Words go through the index's tokenizer ([`crate::text`]): a word that
//! cuts into several terms (`e-mail`, `example.com`, `東京都`) is the
//! phrase of those terms. A word with no terms at all (an emoji, `!!`)
//! asks for nothing and is dropped. `name:value` is a modifier when `name`
//! is letters only and the value does not start with `//` (so a pasted
//! `https://…` is words); an unknown one is refused, as is a query with
//! nothing to search for.

use crate::text;

/// What a query asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Query {
    pub clauses: Vec<Clause>,
    /// `from:` as written (without a leading `@`).
    pub from: Option<String>,
    /// Messages sent before this time (ms): the start of the `before:` day.
    pub before_ms: Option<i64>,
    /// Messages sent at or after this time (ms): the end of the `after:` day.
    pub after_ms: Option<i64>,
    pub has_attachment: bool,
}

/// One thing every found message must contain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Clause {
    /// These terms, consecutive (one term: a word).
    Terms(Vec<String>),
    /// `leading` consecutive, then a term starting with `prefix`.
    Prefix { leading: Vec<String>, prefix: String },
}

/// Why a query was refused (a 400 in the API).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QueryError(pub String);

const MODIFIERS: &str = "from:<username>, before:<YYYY-MM-DD>, after:<YYYY-MM-DD> and has:attachment";

/// Longest query accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 1_000;
/// Most clauses in one query.
pub const MAX_CLAUSES: usize = 16;

impl Query {
    pub fn parse(text: &str) -> Result<Query, QueryError> {
        if text.trim().is_empty() {
            return Err(QueryError("the query `q` is empty: give a word, a \"phrase\", a prefix* or a modifier".into()));
        }
        if text.len() > MAX_QUERY_BYTES {
            return Err(QueryError(format!("the query is {} bytes long; at most {MAX_QUERY_BYTES} are allowed", text.len())));
        }
        let mut query = Query::default();
        let mut rest = text;
        loop {
            rest = rest.trim_start();
            if rest.is_empty() {
                break;
            }
            if let Some(after_quote) = rest.strip_prefix('"') {
                let (phrase, next) = match after_quote.find('"') {
                    Some(end) => (&after_quote[..end], &after_quote[end + 1..]),
                    None => (after_quote, ""),
                };
                query.push_terms(text::term_texts(phrase));
                rest = next;
                continue;
            }
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            let (word, next) = rest.split_at(end);
            rest = next;
            if let Some((name, value)) = modifier(word) {
                query.apply_modifier(name, value)?;
                continue;
            }
            match word.strip_suffix('*') {
                Some(stem) => {
                    let mut terms = text::term_texts(stem);
                    if let Some(prefix) = terms.pop() {
                        query.clauses.push(Clause::Prefix { leading: terms, prefix });
                    }
                }
                None => query.push_terms(text::term_texts(word)),
            }
        }
        if query.clauses.len() > MAX_CLAUSES {
            return Err(QueryError(format!("the query has {} words and phrases; at most {MAX_CLAUSES} are allowed", query.clauses.len())));
        }
        if query.clauses.is_empty() && query.from.is_none() && query.before_ms.is_none() && query.after_ms.is_none() && !query.has_attachment {
            return Err(QueryError("the query has nothing to search for (no letters or digits): give a word, a \"phrase\", a prefix* or a modifier".into()));
        }
        Ok(query)
    }

    fn push_terms(&mut self, terms: Vec<String>) {
        if !terms.is_empty() && !self.clauses.contains(&Clause::Terms(terms.clone())) {
            self.clauses.push(Clause::Terms(terms));
        }
    }

    fn apply_modifier(&mut self, name: &str, value: &str) -> Result<(), QueryError> {
        match name.to_ascii_lowercase().as_str() {
            "from" => {
                let username = value.strip_prefix('@').unwrap_or(value);
                if username.is_empty() {
                    return Err(QueryError("`from:` needs a username, as in from:alice".into()));
                }
                self.from = Some(username.to_string());
            }
            "before" => self.before_ms = Some(day_start_ms(value, "before")?),
            "after" => self.after_ms = Some(day_start_ms(value, "after")? + DAY_MS),
            "has" => {
                if !value.eq_ignore_ascii_case("attachment") {
                    return Err(QueryError(format!("`has:{value}` is not known: the only one is has:attachment")));
                }
                self.has_attachment = true;
            }
            other => return Err(QueryError(format!("`{other}:` is not a modifier; the modifiers are {MODIFIERS}"))),
        }
        Ok(())
    }

    /// Whether a message sent at `ts` passes the time modifiers.
    pub fn in_time(&self, ts: i64) -> bool {
        self.before_ms.is_none_or(|before| ts < before) && self.after_ms.is_none_or(|after| ts >= after)
    }
}

/// `name:value` with `name` letters only and a value that is not a URL's `//…`.
fn modifier(word: &str) -> Option<(&str, &str)> {
    let (name, value) = word.split_once(':')?;
    if name.is_empty() || !name.bytes().all(|byte| byte.is_ascii_alphabetic()) || value.starts_with("//") {
        return None;
    }
    Some((name, value))
}

const DAY_MS: i64 = 86_400_000;

/// The UTC start of a `YYYY-MM-DD` day, in ms.
fn day_start_ms(value: &str, name: &str) -> Result<i64, QueryError> {
    let invalid = || QueryError(format!("`{name}:{value}` is not a date: write {name}:YYYY-MM-DD, as in {name}:2026-03-01"));
    let mut parts = value.splitn(3, '-');
    let (Some(year), Some(month), Some(day)) = (parts.next(), parts.next(), parts.next()) else { return Err(invalid()) };
    if year.len() != 4 || month.len() != 2 || day.len() != 2 {
        return Err(invalid());
    }
    let (Ok(year), Ok(month), Ok(day)) = (year.parse::<i64>(), month.parse::<u32>(), day.parse::<u32>()) else { return Err(invalid()) };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(invalid()),
    };
    if day == 0 || day > days_in_month {
        return Err(invalid());
    }
    Ok(days_from_civil(year, month, day) * DAY_MS)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(words: &[&str]) -> Clause {
        Clause::Terms(words.iter().map(|word| word.to_string()).collect())
    }

    #[test]
    fn words_phrases_and_prefixes() {
        let query = Query::parse(r#"Budget "next Quarter" plan* e-mail 🎉"#).unwrap();
        assert_eq!(
            query.clauses,
            [terms(&["budget"]), terms(&["next", "quarter"]), Clause::Prefix { leading: vec![], prefix: "plan".into() }, terms(&["e", "mail"])]
        );
        assert_eq!(Query::parse("東京都").unwrap().clauses, [terms(&["東京", "京都"])]);
        assert_eq!(Query::parse("\"unclosed phrase").unwrap().clauses, [terms(&["unclosed", "phrase"])]);
        // A URL is words, not a modifier.
        assert_eq!(Query::parse("https://example.com").unwrap().clauses, [terms(&["https", "example", "com"])]);
    }

    #[test]
    fn modifiers() {
        let query = Query::parse("from:@alice before:2026-03-02 after:2026-02-27 has:attachment report").unwrap();
        assert_eq!(query.from.as_deref(), Some("alice"));
        assert_eq!(query.before_ms, Some(days_from_civil(2026, 3, 2) * DAY_MS));
        assert_eq!(query.after_ms, Some(days_from_civil(2026, 2, 28) * DAY_MS));
        assert!(query.has_attachment);
        // The days named are excluded: 2026-02-27 and 2026-03-02 are out, the 28th and the 1st in.
        assert!(!query.in_time(days_from_civil(2026, 2, 27) * DAY_MS + 1));
        assert!(query.in_time(days_from_civil(2026, 2, 28) * DAY_MS));
        assert!(query.in_time(days_from_civil(2026, 3, 2) * DAY_MS - 1));
        assert!(!query.in_time(days_from_civil(2026, 3, 2) * DAY_MS));
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        // Modifiers alone are a query.
        assert!(Query::parse("from:bob").is_ok());
    }

    #[test]
    fn refusals() {
        for bad in ["", "   ", "!!! 🎉", "color:red", "has:link", "before:2026-02-30", "after:yesterday", "from:", "from:@"] {
            assert!(Query::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let error = Query::parse("in:general hello").unwrap_err();
        assert!(error.0.contains("`in:` is not a modifier"), "{error}");
        assert!(Query::parse(&"a ".repeat(600)).is_err());
    }
}
