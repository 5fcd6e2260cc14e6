//! Removing terminal escape sequences from a CLI's output.
//!
//! Handles CSI (`ESC [ ... final`), OSC (`ESC ] ... BEL` or `ESC ] ... ESC \`,
//! which includes OSC 8 hyperlinks), other two-byte escapes and stray control
//! characters except newline and tab. Carriage returns become newlines so a
//! redrawn line does not glue onto the previous one.

/// Returns `text` without escape sequences. OSC 8 hyperlink targets are kept
/// (followed by a space) because a CLI may show only a short label and put
/// the full authorization URL in the link.
pub fn strip(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.next() {
                Some('[') => {
                    // Parameters and intermediates, then one final byte @..~.
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                Some(']') => {
                    let mut body = String::new();
                    while let Some(c) = chars.next() {
                        if c == '\x07' {
                            break;
                        }
                        if c == '\x1b' {
                            if chars.peek() == Some(&'\\') {
                                chars.next();
                            }
                            break;
                        }
                        body.push(c);
                    }
                    // OSC 8 ; params ; URI
                    if let Some(rest) = body.strip_prefix("8;") {
                        if let Some((_, uri)) = rest.split_once(';') {
                            if !uri.is_empty() {
                                out.push_str(uri);
                                out.push(' ');
                            }
                        }
                    }
                }
                Some('(') | Some(')') | Some('*') | Some('+') => {
                    chars.next();
                }
                _ => {}
            },
            '\r' => out.push('\n'),
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::strip;

    #[test]
    fn strips_csi_osc_and_controls() {
        let s = "\x1b[1;32mhello\x1b[0m \x1b]0;title\x07world\x1b(B\x08!";
        assert_eq!(strip(s), "hello world!");
    }

    #[test]
    fn keeps_osc8_targets_and_turns_cr_into_newline() {
        let s = "\x1b]8;;https://x.test/a?b=c\x1b\\click\x1b]8;;\x1b\\\r\nnext";
        assert_eq!(strip(s), "https://x.test/a?b=c click\n\nnext");
    }
}
