//! Text that comes from peers (names, messages, file names, reasons) is shown to people:
//! nothing in it may drive a terminal or make it read as something else.

use std::borrow::Cow;

/// Characters that reorder how text is shown (the Unicode bidi controls): with one, a name
/// can display as another (`invoice\u{202E}fdp.exe` shows as `invoiceexe.pdf`).
pub fn is_bidi_control(ch: char) -> bool {
    matches!(
        ch,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// Characters that show as nothing (zero-width spaces and joiners, the word joiner, the
/// byte-order mark): `bob\u{200B}` looks exactly like `bob`.
pub fn is_invisible(ch: char) -> bool {
    matches!(
        ch,
        '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}' | '\u{00AD}'
    )
}

/// What a name looks like, for comparing names by eye: invisible and bidi-control characters
/// removed, lower case, then the confusable skeleton of Unicode TR39 (a Cyrillic `о` and a
/// Latin `o`, `rn` and `m`, `l` and `1` come out the same).
pub fn look(name: &str) -> String {
    let visible: String = name
        .trim()
        .chars()
        .filter(|c| !is_invisible(*c) && !is_bidi_control(*c))
        .flat_map(char::to_lowercase)
        .collect();
    unicode_security::confusable_detection::skeleton(&visible).collect()
}

/// Whether two names look the same to a person ([`look`]).
pub fn looks_alike(a: &str, b: &str) -> bool {
    look(a) == look(b)
}

fn unsafe_for_terminal(ch: char) -> bool {
    (ch.is_control() && ch != '\t') || is_bidi_control(ch)
}

/// `s` as it may reach a terminal: control characters (escape sequences, carriage returns,
/// line breaks that would forge a line) and bidi controls written as `\uXXXX`. In a line of
/// JSON that is the escape JSON reads back as the same character, so scripts lose nothing.
pub fn terminal_safe(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unsafe_for_terminal) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for ch in s.chars() {
        if unsafe_for_terminal(ch) {
            out.push_str(&format!("\\u{:04x}", u32::from(ch)));
        } else {
            out.push(ch);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn escapes_and_reordering_are_shown_not_obeyed() {
        assert_eq!(
            terminal_safe("plain, tabs\tand ünïcode 日本"),
            "plain, tabs\tand ünïcode 日本"
        );
        assert_eq!(
            terminal_safe("\u{1b}[2J\u{1b}]0;pwned\u{7}"),
            "\\u001b[2J\\u001b]0;pwned\\u0007"
        );
        assert_eq!(
            terminal_safe("ok\r\nfrom bank: pay"),
            "ok\\u000d\\u000afrom bank: pay"
        );
        assert_eq!(
            terminal_safe("invoice\u{202E}fdp.exe"),
            "invoice\\u202efdp.exe"
        );
        assert_eq!(terminal_safe("\u{9b}31m"), "\\u009b31m");
        // Inside a JSON string the escapes read back as the characters.
        let line = format!("\"{}\"", terminal_safe("a\u{202E}b"));
        assert_eq!(serde_json_like_unescape(&line), "a\u{202E}b");
    }

    /// Reads `\uXXXX` escapes the way a JSON parser does (enough for the test).
    fn serde_json_like_unescape(quoted: &str) -> String {
        let inner = &quoted[1..quoted.len() - 1];
        let mut out = String::new();
        let mut rest = inner;
        while let Some(i) = rest.find("\\u") {
            out.push_str(&rest[..i]);
            let code = u32::from_str_radix(&rest[i + 2..i + 6], 16).unwrap();
            out.push(char::from_u32(code).unwrap());
            rest = &rest[i + 6..];
        }
        out.push_str(rest);
        out
    }

    #[test]
    fn names_that_look_the_same_are_found_out() {
        for lookalike in [
            "bob\u{200B}",
            "b\u{043E}b", // Cyrillic o
            "Bob",
            " bob ",
            "b\u{202E}ob\u{202C}",
            "\u{FEFF}bob",
        ] {
            assert!(looks_alike("bob", lookalike), "{lookalike:?}");
        }
        assert!(looks_alike("paypal", "paypa1"), "l and 1");
        assert!(looks_alike("modern", "rnodern"), "m and rn");
        for other in ["rob", "bobby", "b o b", "боб"] {
            assert!(!looks_alike("bob", other), "{other:?}");
        }
    }

    proptest! {
        #[test]
        fn nothing_unsafe_survives(s in "\\PC*|[\\x00-\\x1f\\x7f-\\u{9f}\\u{202a}-\\u{202e}a ]{0,20}") {
            let safe = terminal_safe(&s);
            prop_assert!(!safe.chars().any(unsafe_for_terminal), "{:?}", safe);
        }
    }
}
