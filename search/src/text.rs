//! The one tokenizer: the index, the ClickHouse postings, the query parser
//! and the highlights all cut text into the same terms, so what a query
//! asks for is exactly what was indexed.
//!
//! - Letters and digits (any script) make words; everything else (spaces,
//!   punctuation, emoji, the `://` and `.` of URLs) separates them, so a
//!   URL is found by its parts and an emoji never glues two words.
//! - Case is folded (Unicode lowercase) and accents are folded: combining
//!   marks are dropped and precomposed Latin letters map to ASCII
//!   (`É` → `e`, `ß` → `ss`), so `resume` finds `Résumé`.
//! - Chinese, Japanese and Korean have no spaces between words: a run of
//!   their characters is cut into overlapping bigrams (`東京都` → `東京`,
//!   `京都`), and a single character stands alone. A query word in those
//!   scripts becomes the phrase of its bigrams, so it matches wherever
//!   those characters stand in that order.
//! - Words longer than [`MAX_TERM_BYTES`] are skipped (base64 blobs and
//!   the like would only bloat the term dictionary).

use tantivy::tokenizer::{AsciiFoldingFilter, LowerCaser, TextAnalyzer, Token, TokenStream, Tokenizer};

/// The name the embedded index registers the analyzer under.
/// The first byte string after every string starting with `prefix` (none
/// if it is all 0xFF bytes): the end of a prefix's range of terms.
pub fn prefix_end(prefix: &str) -> Option<Vec<u8>> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

pub const TOKENIZER_NAME: &str = "confab";

/// Longer words are not indexed.
pub const MAX_TERM_BYTES: usize = 120;

/// One term of a text, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub text: String,
    /// Byte offsets into the text.
    pub start: usize,
    pub end: usize,
    /// Consecutive per term.
    pub position: usize,
}

/// The analyzer: the splitter below, then case and accent folding.
pub fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(Splitter).filter(LowerCaser).filter(AsciiFoldingFilter).build()
}

/// The terms of `text`, in order.
pub fn terms(text: &str) -> Vec<Term> {
    let mut analyzer = analyzer();
    let mut stream = analyzer.token_stream(text);
    let mut terms = Vec::new();
    while stream.advance() {
        let token = stream.token();
        terms.push(Term { text: token.text.clone(), start: token.offset_from, end: token.offset_to, position: token.position });
    }
    terms
}

/// Just the terms' texts.
pub fn term_texts(text: &str) -> Vec<String> {
    terms(text).into_iter().map(|term| term.text).collect()
}

/// Scripts written without spaces between words.
pub fn is_cjk(character: char) -> bool {
    matches!(character as u32,
        0x1100..=0x11FF      // Hangul Jamo
        | 0x2E80..=0x2FDF    // CJK radicals
        | 0x3040..=0x30FF    // Hiragana, Katakana
        | 0x3100..=0x31FF    // Bopomofo, Hangul compatibility, Katakana extensions
        | 0x3400..=0x4DBF    // CJK extension A
        | 0x4E00..=0x9FFF    // CJK unified ideographs
        | 0xA960..=0xA97F    // Hangul Jamo extended A
        | 0xAC00..=0xD7FF    // Hangul syllables and Jamo extended B
        | 0xF900..=0xFAFF    // CJK compatibility ideographs
        | 0xFF66..=0xFF9F    // half-width Katakana
        | 0x20000..=0x3134F  // CJK extensions B to G
    )
}

/// Combining marks: part of the letter before them, dropped when folding.
fn is_mark(character: char) -> bool {
    matches!(character as u32, 0x0300..=0x036F | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF | 0x20D0..=0x20FF | 0xFE20..=0xFE2F)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Word,
    Cjk,
    Mark,
    Other,
}

fn class(character: char) -> Class {
    if is_cjk(character) {
        Class::Cjk
    } else if character.is_alphanumeric() {
        Class::Word
    } else if is_mark(character) {
        Class::Mark
    } else {
        Class::Other
    }
}

/// Cuts text into words and CJK bigrams (before folding).
#[derive(Debug, Clone, Copy)]
pub struct Splitter;

impl Tokenizer for Splitter {
    type TokenStream<'a> = SplitStream;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> SplitStream {
        SplitStream { tokens: split(text).into_iter(), current: Token::default() }
    }
}

pub struct SplitStream {
    tokens: std::vec::IntoIter<Token>,
    current: Token,
}

impl TokenStream for SplitStream {
    fn advance(&mut self) -> bool {
        match self.tokens.next() {
            Some(token) => {
                self.current = token;
                true
            }
            None => false,
        }
    }

    fn token(&self) -> &Token {
        &self.current
    }

    fn token_mut(&mut self) -> &mut Token {
        &mut self.current
    }
}

fn split(text: &str) -> Vec<Token> {
    let mut tokens: Vec<Token> = Vec::new();
    let mut push = |text: String, from: usize, to: usize| {
        if !text.is_empty() && text.len() <= MAX_TERM_BYTES {
            let position = tokens.len();
            tokens.push(Token { offset_from: from, offset_to: to, position, text, position_length: 1 });
        }
    };
    let mut characters = text.char_indices().peekable();
    while let Some((start, character)) = characters.next() {
        match class(character) {
            Class::Other | Class::Mark => {}
            Class::Word => {
                let mut word = String::new();
                word.push(character);
                let mut end = start + character.len_utf8();
                while let Some(&(at, next)) = characters.peek() {
                    match class(next) {
                        Class::Word => word.push(next),
                        Class::Mark => {}
                        Class::Cjk | Class::Other => break,
                    }
                    end = at + next.len_utf8();
                    characters.next();
                }
                push(word, start, end);
            }
            Class::Cjk => {
                let mut run = vec![(start, character)];
                let mut end = start + character.len_utf8();
                while let Some(&(at, next)) = characters.peek() {
                    match class(next) {
                        Class::Cjk => run.push((at, next)),
                        Class::Mark => {}
                        Class::Word | Class::Other => break,
                    }
                    end = at + next.len_utf8();
                    characters.next();
                }
                if run.len() == 1 {
                    push(character.to_string(), start, end);
                } else {
                    for pair in run.windows(2) {
                        let (from, first) = pair[0];
                        let (at, second) = pair[1];
                        push(format!("{first}{second}"), from, at + second.len_utf8());
                    }
                }
            }
        }
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_folded_for_case_and_accents() {
        assert_eq!(term_texts("Résumé ÉCOLE straße Ørsted naïve"), ["resume", "ecole", "strasse", "orsted", "naive"]);
        // A decomposed accent (e + U+0301) folds like the precomposed one.
        assert_eq!(term_texts("Re\u{301}sume\u{301}"), ["resume"]);
        assert_eq!(term_texts("ΑΘΗΝΑ Москва"), ["αθηνα", "москва"]);
    }

    #[test]
    fn punctuation_emoji_and_urls_separate_words() {
        assert_eq!(term_texts("ship it🚀now, ok?"), ["ship", "it", "now", "ok"]);
        assert_eq!(term_texts("see https://example.com/a-b?x=1"), ["see", "https", "example", "com", "a", "b", "x", "1"]);
        assert_eq!(term_texts("👍👍 🎉"), Vec::<String>::new());
    }

    #[test]
    fn cjk_runs_become_bigrams_with_their_offsets() {
        let terms = terms("会議は東京都で");
        let texts: Vec<&str> = terms.iter().map(|term| term.text.as_str()).collect();
        assert_eq!(texts, ["会議", "議は", "は東", "東京", "京都", "都で"]);
        assert_eq!((terms[3].start, terms[3].end), ("会議は".len(), "会議は東京".len()));
        assert_eq!(term_texts("中"), ["中"]);
        assert_eq!(term_texts("한국어 회의"), ["한국", "국어", "회의"]);
        // Mixed scripts: the run ends where the Latin word starts.
        assert_eq!(term_texts("東京2024年"), ["東京", "2024", "年"]);
    }

    #[test]
    fn positions_are_consecutive_and_long_words_skipped() {
        let long = "x".repeat(MAX_TERM_BYTES + 1);
        let terms = terms(&format!("a {long} b"));
        assert_eq!(terms.iter().map(|term| (term.text.as_str(), term.position)).collect::<Vec<_>>(), [("a", 0), ("b", 1)]);
    }
}
