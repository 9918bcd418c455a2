//! Work on the SQL text itself, below the parser: respelling valid PostgreSQL the parser does
//! not know, reading strings it cannot parse, and finding where a `RETURNING` can go.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Location, Span, Token, TokenWithSpan, Tokenizer};

/// Respells valid PostgreSQL that the parser does not know as what it means: blanks the words
/// that make `FOR NO KEY UPDATE` and `FOR KEY SHARE` (keeping every byte offset), so they
/// parse as the `FOR UPDATE` / `FOR SHARE` they lock like, and writes a leading `TABLE t` as
/// `SELECT * FROM t`. `None` when there is nothing to respell.
pub(super) fn respell_locks(sql: &str) -> Option<String> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize_with_location().ok()?;
    let words: Vec<(usize, &TokenWithSpan)> =
        tokens.iter().filter(|t| !matches!(t.token, Token::Whitespace(_))).enumerate().collect();
    let is = |i: usize, word: &str| {
        words.get(i).is_some_and(|(_, t)| matches!(&t.token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word)))
    };
    let mut blank = Vec::new();
    for i in 0..words.len() {
        if !is(i, "for") {
            continue;
        }
        if is(i + 1, "no") && is(i + 2, "key") && is(i + 3, "update") {
            blank.extend([i + 1, i + 2]);
        } else if is(i + 1, "key") && is(i + 2, "share") {
            blank.push(i + 1);
        }
    }
    let table_statement = is(0, "table");
    if blank.is_empty() && !table_statement {
        return None;
    }
    let mut out = sql.to_owned();
    for i in blank {
        let (_, token) = words[i];
        let range = byte_range(sql, token.span)?;
        out.replace_range(range.clone(), &" ".repeat(range.len()));
    }
    if table_statement {
        // `TABLE t` is `SELECT * FROM t`. Offsets after it move, which only matters to writes.
        let range = byte_range(sql, words[0].1.span)?;
        out.replace_range(range, "SELECT * FROM");
    }
    Some(out)
}

/// Whether a string that does not parse has a statement starting with `ALTER ROLE`, `ALTER
/// USER`, `ALTER DATABASE` or `ALTER SYSTEM`, which may change the settings of the sessions
/// opened from now on. (Text the tokenizer cannot read counts as one: PostgreSQL's lexer may
/// read it.)
pub(super) fn reaches_new_sessions_by_words(sql: &str) -> bool {
    let Some(starts) = statement_starts(sql) else { return true };
    starts.iter().any(|words| {
        matches!(words.as_slice(), [first, second, ..]
            if first == "alter" && matches!(second.as_str(), "role" | "user" | "database" | "system"))
    })
}

/// The first two words of each statement of a string (lower case; a quoted word or a symbol is
/// an empty word); `None` when the string does not tokenize.
fn statement_starts(sql: &str) -> Option<Vec<Vec<String>>> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()?;
    let mut starts = vec![Vec::new()];
    for token in tokens {
        match token {
            Token::SemiColon => starts.push(Vec::new()),
            Token::Whitespace(_) => {}
            Token::Word(w) => {
                let statement = starts.last_mut().expect("never empty");
                if statement.len() < 2 {
                    statement.push(if w.quote_style.is_none() { w.value.to_lowercase() } else { String::new() });
                }
            }
            _ => {
                let statement = starts.last_mut().expect("never empty");
                if statement.len() < 2 {
                    statement.push(String::new());
                }
            }
        }
    }
    Some(starts)
}

/// The byte range of a token's span (lines and columns count characters from 1).
pub(super) fn byte_range(sql: &str, span: Span) -> Option<std::ops::Range<usize>> {
    Some(offset_of(sql, span.start)?..offset_of(sql, span.end)?)
}

/// The byte offset of a tokenizer location (lines and columns count characters from 1); the
/// end of the text for a column past the end of its line.
fn offset_of(sql: &str, loc: Location) -> Option<usize> {
    let line_start = if loc.line <= 1 {
        0
    } else {
        sql.match_indices('\n').nth(usize::try_from(loc.line).ok()? - 2).map(|(i, _)| i + 1)?
    };
    let column = usize::try_from(loc.column).ok()?.checked_sub(1)?;
    Some(sql[line_start..].char_indices().nth(column).map(|(i, _)| line_start + i).unwrap_or(sql.len()))
}

/// The byte offset just after the last token of a single statement (before any trailing `;`,
/// comment or white space), where a `RETURNING` clause can be appended.
pub(super) fn append_offset(sql: &str) -> Option<usize> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize_with_location().ok()?;
    let last =
        tokens.iter().rev().find(|t| !matches!(t.token, Token::Whitespace(_) | Token::SemiColon | Token::EOF))?;
    let offset = offset_of(sql, last.span.end)?;
    // A semicolon between the statement and the offset would mean the span is not what we think.
    if !sql.is_char_boundary(offset) || sql[..offset].trim_end().ends_with(';') {
        return None;
    }
    Some(offset)
}

/// The text of a query that PostgreSQL can analyze without its arguments: each placeholder
/// `$n` replaced by a null of its type (`types[n - 1]`, as `format_type` spells it), and the
/// statement wrapped so that a view can be made of it whatever its column names. `None` when
/// the text does not tokenize, or names a placeholder without a type.
pub(super) fn probe_text(sql: &str, types: &[String]) -> Option<String> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize_with_location().ok()?;
    let end = append_offset(sql)?;
    let mut out = String::with_capacity(sql.len() + 64);
    out.push_str("SELECT 1 FROM (\n");
    let mut at = 0;
    for token in &tokens {
        let Token::Placeholder(name) = &token.token else { continue };
        let range = byte_range(sql, token.span)?;
        if range.start >= end {
            break;
        }
        let n: usize = name.strip_prefix('$')?.parse().ok()?;
        let ty = types.get(n.checked_sub(1)?)?;
        out.push_str(&sql[at..range.start]);
        out.push_str(&format!("(NULL::{ty})"));
        at = range.end;
    }
    out.push_str(&sql[at..end]);
    // On a line of its own: the statement may end in a comment.
    out.push_str("\n) AS sqlacache_probe_rows");
    Some(out)
}
