//! Limits on what a session may ask for, shared by every side that checks a session
//! start: the host's ingresses (SSH, web terminal) refuse early with their protocol's
//! words, and the agent checks again, since it trusts only itself.

/// Most environment variables one session may ask for.
pub const MAX_ENV: usize = 64;
/// Longest environment variable value.
pub const MAX_ENV_VALUE: usize = 4096;
/// Longest `exec` command line.
pub const MAX_COMMAND: usize = 16 * 1024;
/// Largest terminal dimension accepted (columns or rows).
pub const MAX_DIMENSION: u32 = 10_000;
/// Longest terminal type (`TERM`).
pub const MAX_TERM: usize = 64;

/// Whether `term` may be a terminal type: it becomes `TERM` in the program's
/// environment, so only the characters real terminal names use.
pub fn valid_term(term: &str) -> bool {
    !term.is_empty()
        && term.len() <= MAX_TERM
        && term.chars().all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c))
}

/// Whether a terminal of `cols` x `rows` may be asked for.
pub fn valid_size(cols: u32, rows: u32) -> bool {
    cols <= MAX_DIMENSION && rows <= MAX_DIMENSION
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_types_and_sizes() {
        assert!(valid_term("xterm-256color"));
        assert!(valid_term("screen.xterm+x"));
        assert!(!valid_term(""));
        assert!(!valid_term("xterm; rm -rf /"));
        assert!(!valid_term(&"x".repeat(MAX_TERM + 1)));
        assert!(valid_size(MAX_DIMENSION, 1));
        assert!(!valid_size(MAX_DIMENSION + 1, 24));
    }
}
