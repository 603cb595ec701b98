//! Highlights: where in a found message's body each matched word, prefix
//! or phrase stands, as `[start, end)` offsets in Unicode code points
//! (what JavaScript's `Array.from(body)` and Swift's unicode scalars count;
//! `shared/API.md`). Computed from the body the caller receives with the
//! same tokenizer as the index, so they agree with what matched whichever
//! engine found it.

use crate::query::{Clause, Query};
use crate::text;

/// Whether a term is the last one a clause asks for.
type Matcher<'a> = Box<dyn Fn(&str) -> bool + 'a>;

/// The `[start, end)` code-point ranges of every occurrence, ascending;
/// overlapping ones (CJK bigrams of two matched words) are merged.
pub fn highlights(query: &Query, body: &str) -> Vec<[usize; 2]> {
    let terms = text::terms(body);
    let mut spans: Vec<(usize, usize)> = query.clauses.iter().flat_map(|clause| clause_spans(clause, &terms)).collect();
    spans.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
    for (start, end) in spans {
        match merged.last_mut() {
            Some(previous) if start < previous.1 => previous.1 = previous.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    let points = CodePoints::new(body);
    merged.into_iter().map(|(start, end)| [points.at(start), points.at(end)]).collect()
}

/// Whether the body holds every clause of the query (the check of a
/// found message against its current text, whichever engine found it).
pub fn matches_all(query: &Query, body: &str) -> bool {
    let terms = text::terms(body);
    query.clauses.iter().all(|clause| !clause_spans(clause, &terms).is_empty())
}

/// The byte ranges where one clause occurs among the body's terms.
fn clause_spans(clause: &Clause, terms: &[text::Term]) -> Vec<(usize, usize)> {
    let (leading, last): (&[String], Matcher<'_>) = match clause {
        Clause::Terms(words) => match words.split_last() {
            Some((last, leading)) => (leading, Box::new(move |term: &str| term == last)),
            None => return Vec::new(),
        },
        Clause::Prefix { leading, prefix } => (leading.as_slice(), Box::new(move |term: &str| term.starts_with(prefix.as_str()))),
    };
    let mut spans = Vec::new();
    for window in terms.windows(leading.len() + 1) {
        let (head, tail) = window.split_at(leading.len());
        let consecutive = window.windows(2).all(|pair| pair[1].position == pair[0].position + 1);
        if consecutive && head.iter().zip(leading).all(|(term, word)| &term.text == word) && last(&tail[0].text) {
            spans.push((window[0].start, tail[0].end));
        }
    }
    spans
}

/// Byte offset to code-point offset.
struct CodePoints {
    /// The byte offset of each character, ascending.
    starts: Vec<usize>,
    length: usize,
}

impl CodePoints {
    fn new(text: &str) -> CodePoints {
        CodePoints { starts: text.char_indices().map(|(at, _)| at).collect(), length: text.len() }
    }

    fn at(&self, byte: usize) -> usize {
        if byte >= self.length {
            return self.starts.len();
        }
        self.starts.partition_point(|&start| start < byte)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marked(query: &str, body: &str) -> Vec<String> {
        let query = Query::parse(query).unwrap();
        let characters: Vec<char> = body.chars().collect();
        highlights(&query, body).into_iter().map(|[start, end]| characters[start..end].iter().collect()).collect()
    }

    #[test]
    fn words_prefixes_and_phrases_in_code_points() {
        assert_eq!(marked("resume", "Mon Résumé, ton résumé"), ["Résumé", "résumé"]);
        assert_eq!(marked("plan*", "🎉 Planning the plans, not the airplane"), ["Planning", "plans"]);
        assert_eq!(marked("\"next quarter\"", "next week, then next   quarter; quarter next"), ["next   quarter"]);
        // Emoji are one code point each (two UTF-16 units, four bytes).
        let query = Query::parse("deal").unwrap();
        assert_eq!(highlights(&query, "🤝🤝 deal"), [[3, 7]]);
    }

    #[test]
    fn cjk_words_are_marked_whole() {
        assert_eq!(marked("東京都", "会議は東京都で"), ["東京都"]);
        assert_eq!(marked("東京 京都", "東京都"), ["東京都"]);
        assert_eq!(marked("회의", "내일 회의는"), ["회의"]);
    }

    #[test]
    fn nothing_for_a_filter_only_query() {
        assert!(highlights(&Query::parse("from:alice").unwrap(), "hello").is_empty());
    }
}
