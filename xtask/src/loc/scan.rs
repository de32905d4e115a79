//! Reading one Rust file for `loc`: what each line holds, which lines are
//! test code, and the text with comments and literals blanked out (what the
//! import graph reads).
//!
//! A small lexer, not a parser: it knows line and block comments (nested),
//! string, byte and raw string literals and char literals (told apart from
//! lifetimes by the closing quote), so a `{` or `//` inside a literal is not
//! taken for code. Test code is an item under `#[cfg(test)]` (or
//! `#[cfg(all(test, ...))]`): from the attribute to the end of the item (its
//! `;`, or the `}` closing its body, found by counting brackets), and the
//! whole file under `#![cfg(test)]`. Approximations: a char literal is
//! recognised up to a 10-character escape, and `any(test, ..)` is not test
//! code (it is built without `test` too).

/// What a line holds, outside test code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Blank,
    /// Only comments (doc comments included).
    Comment,
    /// Anything else: a line with code and a trailing comment is code.
    Code,
}

/// One file, read.
#[derive(Debug)]
pub(super) struct Scanned {
    /// The source with comments and the contents of literals replaced by
    /// spaces, and test code too; newlines kept, so lines still match.
    pub(super) clean: String,
    /// What each line holds.
    pub(super) kinds: Vec<Kind>,
    /// Whether each line is test code.
    pub(super) test: Vec<bool>,
    /// Modules declared `#[cfg(test)] mod name;`: their files are test code.
    pub(super) test_mods: Vec<String>,
}

impl Scanned {
    /// Reads `text`.
    pub(super) fn new(text: &str) -> Scanned {
        let (clean, kinds) = lex(text);
        let mut test = vec![false; kinds.len()];
        let mut test_mods = Vec::new();
        let chars: Vec<char> = clean.chars().collect();
        let mut blank = vec![false; chars.len()];
        if let Some(whole) = test_regions(&chars, &mut test_mods) {
            for (start, end) in whole {
                let first = line_of(&chars, start);
                let last = line_of(&chars, end);
                for t in test.iter_mut().take(last + 1).skip(first) {
                    *t = true;
                }
                for b in blank.iter_mut().take(end + 1).skip(start) {
                    *b = true;
                }
            }
        } else {
            test.iter_mut().for_each(|t| *t = true);
            blank.iter_mut().for_each(|b| *b = true);
        }
        let clean = chars
            .iter()
            .zip(&blank)
            .map(|(&c, &b)| if b && c != '\n' { ' ' } else { c })
            .collect();
        Scanned {
            clean,
            kinds,
            test,
            test_mods,
        }
    }
}

fn line_of(chars: &[char], at: usize) -> usize {
    chars[..at.min(chars.len())]
        .iter()
        .filter(|&&c| c == '\n')
        .count()
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Blanks comments and literal contents; classifies each line.
fn lex(text: &str) -> (String, Vec<Kind>) {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut kinds = Vec::new();
    let (mut code, mut comment) = (false, false);
    let mut i = 0;
    // Ends a line: records what it held.
    macro_rules! newline {
        () => {{
            kinds.push(line_kind(code, comment));
            code = false;
            comment = false;
            out.push('\n');
        }};
    }
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        let prev_ident = i > 0 && is_ident(c[i - 1]);
        if ch == '\n' {
            newline!();
            i += 1;
        } else if ch == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                comment |= !c[i].is_whitespace();
                out.push(' ');
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                    comment = true;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else if c[i] == '\n' {
                    newline!();
                    i += 1;
                } else {
                    comment |= !c[i].is_whitespace();
                    out.push(' ');
                    i += 1;
                }
            }
        } else if let Some(hashes) = raw_string_start(&c, i) {
            // r"..", r#".."#, br"..": the opening up to the quote is code.
            code = true;
            while c[i] != '"' {
                out.push(c[i]);
                i += 1;
            }
            out.push('"');
            i += 1;
            while i < c.len() {
                if c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
                    out.push('"');
                    out.extend(std::iter::repeat_n('#', hashes));
                    i += 1 + hashes;
                    break;
                }
                if c[i] == '\n' {
                    newline!();
                } else {
                    code |= !c[i].is_whitespace();
                    out.push(' ');
                }
                i += 1;
            }
        } else if ch == '"' {
            code = true;
            out.push('"');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' && c.get(i + 1).is_some_and(|&e| e != '\n') {
                    out.push_str("  ");
                    i += 2;
                    continue;
                }
                if c[i] == '\n' {
                    newline!();
                } else {
                    code |= !c[i].is_whitespace();
                    out.push(' ');
                }
                i += 1;
            }
            if i < c.len() {
                out.push('"');
                i += 1;
            }
        } else if ch == '\'' && !quote_continues_ident(&c, i, prev_ident) {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            let end = if next == Some('\\') {
                (i + 3..c.len().min(i + 12)).find(|&k| c[k] == '\'')
            } else if c.get(i + 2) == Some(&'\'') && next != Some('\n') {
                Some(i + 2)
            } else {
                None
            };
            code = true;
            out.push('\'');
            i += 1;
            if let Some(end) = end {
                while i < end {
                    out.push(' ');
                    i += 1;
                }
                out.push('\'');
                i += 1;
            }
        } else {
            code |= !ch.is_whitespace();
            out.push(ch);
            i += 1;
        }
    }
    if !text.is_empty() && !text.ends_with('\n') {
        kinds.push(line_kind(code, comment));
    }
    (out, kinds)
}

fn line_kind(code: bool, comment: bool) -> Kind {
    if code {
        Kind::Code
    } else if comment {
        Kind::Comment
    } else {
        Kind::Blank
    }
}

/// Whether a `'` right after an identifier character is no literal's start:
/// only a lone `b` prefix (`b'x'`, a byte) makes one.
fn quote_continues_ident(c: &[char], i: usize, prev_ident: bool) -> bool {
    prev_ident && !(c[i - 1] == 'b' && (i < 2 || !is_ident(c[i - 2])))
}

/// At a raw string's `r` (or `br`): the number of `#`s.
fn raw_string_start(c: &[char], i: usize) -> Option<usize> {
    let mut k = i;
    if c[k] == 'b' || c[k] == 'c' {
        k += 1;
    }
    if c.get(k) != Some(&'r') || (i > 0 && is_ident(c[i - 1])) {
        return None;
    }
    k += 1;
    let mut hashes = 0;
    while c.get(k) == Some(&'#') {
        hashes += 1;
        k += 1;
    }
    (c.get(k) == Some(&'"')).then_some(hashes)
}

/// The (start, end) character ranges of the test items in cleaned text, and
/// the names of test modules in other files; None when the whole file is.
fn test_regions(c: &[char], test_mods: &mut Vec<String>) -> Option<Vec<(usize, usize)>> {
    let mut regions = Vec::new();
    let mut i = 0;
    while i < c.len() {
        if c[i] != '#' {
            i += 1;
            continue;
        }
        let inner = c.get(i + 1) == Some(&'!');
        let open = if inner { i + 2 } else { i + 1 };
        if c.get(open) != Some(&'[') {
            i += 1;
            continue;
        }
        let Some(close) = matching(c, open) else {
            break;
        };
        let attr: String = c[open + 1..close]
            .iter()
            .filter(|c| !c.is_whitespace())
            .collect();
        if !is_test_cfg(&attr) {
            i = close + 1;
            continue;
        }
        if inner {
            return None;
        }
        // Further attributes, then the item up to its `;` or closing `}`.
        let mut k = close + 1;
        loop {
            while k < c.len() && c[k].is_whitespace() {
                k += 1;
            }
            if c.get(k) == Some(&'#') && c.get(k + 1) == Some(&'[') {
                match matching(c, k + 1) {
                    Some(e) => k = e + 1,
                    None => break,
                }
            } else {
                break;
            }
        }
        let item_start = k;
        let mut end = c.len().saturating_sub(1);
        while k < c.len() {
            match c[k] {
                ';' => {
                    end = k;
                    break;
                }
                '{' | '(' | '[' => {
                    let Some(e) = matching(c, k) else { break };
                    if c[k] == '{' {
                        end = e;
                        break;
                    }
                    k = e + 1;
                }
                _ => k += 1,
            }
        }
        let item: String = c[item_start..=end.min(c.len() - 1)].iter().collect();
        if let Some(name) = declared_mod(&item) {
            test_mods.push(name);
        }
        regions.push((i, end));
        i = end + 1;
    }
    Some(regions)
}

/// `cfg(test)` or `cfg(all(test, ...))`, whitespace removed; `not(test)` and
/// `any(test, ...)` are not test-only.
fn is_test_cfg(attr: &str) -> bool {
    if attr == "cfg(test)" {
        return true;
    }
    let Some(list) = attr.strip_prefix("cfg(all(") else {
        return false;
    };
    !list.contains("not(") && list.split([',', ')']).any(|w| w == "test")
}

/// `mod name;` (any visibility): the name.
fn declared_mod(item: &str) -> Option<String> {
    let item = item.trim();
    let rest = item.strip_suffix(';')?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "mod")?;
    let name = words.get(at + 1)?;
    (at + 2 == words.len()).then(|| name.to_string())
}

/// The index of the bracket closing the one at `open`.
fn matching(c: &[char], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (k, &ch) in c.iter().enumerate().skip(open) {
        match ch {
            '{' | '(' | '[' => depth += 1,
            '}' | ')' | ']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(k);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r##"//! A crate.

/// Doc.
pub fn f() -> &'static str {
    let brace = '{'; // a char
    let s = "}{ // not a comment";
    let r = r#"a "quoted" } brace"#;
    /* block
       comment */
    s
}

#[cfg(test)]
mod helpers;

#[cfg(test)]
#[allow(dead_code)]
mod tests {
    use super::*;

    #[test]
    fn t() {
        let _ = "{";
    }
}

fn after<'a>(x: &'a str) -> &'a str {
    x
}
"##;

    #[test]
    fn lines_are_classified() {
        let s = Scanned::new(SAMPLE);
        let kinds = &s.kinds;
        assert_eq!(kinds.len(), SAMPLE.lines().count());
        let count = |k: Kind| {
            kinds
                .iter()
                .zip(&s.test)
                .filter(|(x, t)| **x == k && !**t)
                .count()
        };
        // Code: fn f, brace, s, r, `s`, `}`, fn after, x, `}`.
        assert_eq!(count(Kind::Code), 9);
        // Doc and comments: `//!`, `///`, the two block comment lines.
        assert_eq!(count(Kind::Comment), 4);
        // From `#[cfg(test)] mod helpers;` to the end of `mod tests`.
        assert_eq!(s.test.iter().filter(|t| **t).count(), 12);
        assert_eq!(s.test_mods, vec!["helpers".to_string()]);
        assert!(s.test[12] && s.test[24] && !s.test[11] && !s.test[25]);
        assert!(!s.clean.contains("not a comment"));
        assert!(!s.clean.contains("use super"));
        assert_eq!(s.clean.lines().count(), SAMPLE.lines().count());
    }

    #[test]
    fn whole_file_and_cfg_forms() {
        let s = Scanned::new("#![cfg(test)]\nfn a() {}\n");
        assert!(s.test.iter().all(|t| *t));
        assert!(is_test_cfg("cfg(all(test,feature=\"x\"))"));
        let escaped = Scanned::new("let q = '\\''; let b = b'{';\nfn g() {}\n");
        assert_eq!(escaped.kinds, vec![Kind::Code, Kind::Code]);
        assert_eq!(escaped.clean.matches('{').count(), 1);
        assert!(!is_test_cfg("cfg(not(test))"));
        assert!(!is_test_cfg("cfg(any(test,feature=\"x\"))"));
        assert!(!is_test_cfg("cfg(feature=\"test\")"));
        assert_eq!(declared_mod("pub(crate) mod x;"), Some("x".into()));
        assert_eq!(declared_mod("mod x { }"), None);
    }
}
