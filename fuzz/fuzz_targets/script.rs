//! A `quintet run` script, as the client reads it: UTF-8 text, one command
//! a line, each line tokenized and parsed by the parser the shell uses.
//! Must never panic; a refused line is one line of message; the words of a
//! line, quoted again, tokenize back to the same words and parse to the
//! same command.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quintet_client::script::{parse, tokenize};

/// Quotes `word` so that the tokenizer gives it back unchanged.
fn quote(word: &str) -> String {
    let mut out = String::from("\"");
    for c in word.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fuzz_target!(|data: &[u8]| {
    // `run` refuses a script that is not UTF-8 before parsing anything.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for line in text.lines() {
        if let Ok(words) = tokenize(line) {
            let quoted: Vec<String> = words.iter().map(|w| quote(w)).collect();
            let requoted = quoted.join(" ");
            let back = tokenize(&requoted).expect("quoted words tokenize");
            assert_eq!(back, words);
            // The parser sees only the words, so the line quoted again
            // means the same.
            assert_eq!(
                format!("{:?}", parse(line)),
                format!("{:?}", parse(&requoted)),
                "{line:?} and {requoted:?}"
            );
        }
        if let Err(message) = parse(line) {
            assert!(!message.contains('\n'), "one line: {message:?}");
        }
    }
});
