//! Selection entries of the `objects` array: instead of `objectName`, an `objectNamePattern`
//! (a regular expression that must match the whole object name) and/or `objectTags` (tags that
//! must all be present with exactly these values). Validated here without any request; the
//! listing itself is done while fetching (`crate::keyvault`), so every refresh lists again.
//!
//! A pattern is the pod's: it is compiled by the `regex` crate (linear-time matching) with a
//! bounded source, compiled size and nesting, so a hostile pattern fails at once with a clear
//! message instead of costing kv time or memory.

use crate::error::{printable, Error, Result};
use std::collections::BTreeMap;

use super::objects::ObjectSpec;

/// The longest `objectNamePattern` accepted (object names are at most 127 characters).
pub const MAX_PATTERN_BYTES: usize = 1024;
/// The most memory one compiled pattern may take (the `regex` crate's `size_limit`).
pub const PATTERN_SIZE_LIMIT: usize = 1 << 20;
/// The most lazy-DFA cache one pattern may use while matching.
const PATTERN_DFA_LIMIT: usize = 1 << 20;
/// The deepest nesting of groups and repetitions.
const PATTERN_NEST_LIMIT: u32 = 32;
/// The most tags one selection may require (Key Vault allows 15 per object).
pub const MAX_TAGS: usize = 32;
/// The longest tag name or value (Key Vault: 512 and 256 characters).
const MAX_TAG_BYTES: usize = 512;

/// A compiled `objectNamePattern`, anchored so it must match the whole name.
#[derive(Debug, Clone)]
pub struct NamePattern {
    /// The pattern as written.
    source: String,
    regex: regex::Regex,
}

impl PartialEq for NamePattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for NamePattern {}

impl NamePattern {
    /// Compiles `source`; `at` names the field in messages (`objects[2].objectNamePattern`).
    pub fn new(at: &str, source: &str) -> Result<NamePattern> {
        if source.is_empty() {
            return Err(Error::options(format!(
                "{at} is empty: give a regular expression that matches whole object names, e.g. \"app-.*\""
            )));
        }
        if source.len() > MAX_PATTERN_BYTES {
            return Err(Error::options(format!(
                "{at} is {} bytes long; at most {MAX_PATTERN_BYTES}",
                source.len()
            )));
        }
        let build = |pattern: &str| {
            regex::RegexBuilder::new(pattern)
                .size_limit(PATTERN_SIZE_LIMIT)
                .dfa_size_limit(PATTERN_DFA_LIMIT)
                .nest_limit(PATTERN_NEST_LIMIT)
                .build()
        };
        // The pattern alone first: only a pattern that compiles by itself (balanced groups, no
        // dangling escape) is wrapped, so the wrapper cannot change what it means.
        build(source).map_err(|e| bad_pattern(at, source, &e))?;
        // Whole-name matching: `\A(?:…)\z`. Flags set inside the pattern end with its group.
        // A verbose-mode (`(?x)`) comment on the last line would swallow the closing `)`; the
        // newline ends the comment, and in verbose mode whitespace means nothing.
        let regex = build(&format!(r"\A(?:{source})\z"))
            .or_else(|_| build(&format!("\\A(?:{source}\n)\\z")))
            .map_err(|e| bad_pattern(at, source, &e))?;
        Ok(NamePattern {
            source: source.to_string(),
            regex,
        })
    }

    /// Whether the whole of `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        self.regex.is_match(name)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

fn bad_pattern(at: &str, source: &str, e: &regex::Error) -> Error {
    let why = match e {
        regex::Error::CompiledTooBig(limit) => format!(
            "it compiles to more than {limit} bytes; use a simpler pattern (fewer or smaller repetitions)"
        ),
        // The syntax error's text shows the pattern and a caret; only its last line says what.
        other => other
            .to_string()
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.trim().trim_start_matches("error:").trim().to_string())
            .unwrap_or_default(),
    };
    Error::options(format!(
        "{at} \"{}\" is not a valid regular expression: {}",
        printable(source),
        printable(&why)
    ))
}

/// Validates `objectTags`: names and values as Key Vault allows them.
pub fn check_tags(at: &str, tags: &BTreeMap<String, String>) -> Result<()> {
    if tags.is_empty() {
        return Err(Error::options(format!(
            "{at} is empty: list at least one tag, or leave it out (objectNamePattern \".*\" selects every object)"
        )));
    }
    if tags.len() > MAX_TAGS {
        return Err(Error::options(format!(
            "{at} lists {} tags; at most {MAX_TAGS}",
            tags.len()
        )));
    }
    for (k, v) in tags {
        let bad = |s: &str| s.len() > MAX_TAG_BYTES || s.chars().any(char::is_control);
        if k.is_empty() || bad(k) || bad(v) {
            return Err(Error::options(format!(
                "{at} tag \"{}\" is not a Key Vault tag: a non-empty name and a value of at most {MAX_TAG_BYTES} bytes, no control characters",
                printable(k)
            )));
        }
    }
    Ok(())
}

/// One selection entry: which objects of one vault and type it takes, and how each is
/// written (the same fields as an entry by name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Its place in the `objects` array.
    pub entry: usize,
    /// `objectNamePattern`, if given.
    pub pattern: Option<NamePattern>,
    /// `objectTags`: every one must be present with exactly this value.
    pub tags: BTreeMap<String, String>,
    /// Vault, type, rendering, mode, history and `optional` for every match; its `name` and
    /// `file` are empty until [`Selection::object`] fills them.
    pub template: ObjectSpec,
}

impl Selection {
    /// Whether an object of the listing is selected: its whole name matches the pattern and
    /// `tag(name)` gives every required tag's value.
    pub fn selects<'a>(&self, name: &str, tag: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.pattern.as_ref().is_none_or(|p| p.matches(name))
            && self.tags.iter().all(|(k, v)| tag(k) == Some(v.as_str()))
    }

    /// The object a match becomes: exactly an entry by name, its file named by the object.
    pub fn object(&self, name: &str) -> ObjectSpec {
        ObjectSpec {
            name: name.to_string(),
            file: name.to_string(),
            selected_by: Some(self.entry),
            ..self.template.clone()
        }
    }

    /// How messages name it: `objects[2] (objectNamePattern "app-.*", objectTags {"team":"a"})`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = &self.pattern {
            parts.push(format!("objectNamePattern \"{}\"", printable(p.as_str())));
        }
        if !self.tags.is_empty() {
            let tags: Vec<String> = self
                .tags
                .iter()
                .map(|(k, v)| format!("\"{}\": \"{}\"", printable(k), printable(v)))
                .collect();
            parts.push(format!("objectTags {{{}}}", tags.join(", ")));
        }
        format!("objects[{}] ({})", self.entry, parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(p: &str) -> Result<NamePattern> {
        NamePattern::new("objects[0].objectNamePattern", p)
    }

    #[test]
    fn a_pattern_matches_whole_names_only() {
        let p = pattern("app-.*").unwrap();
        assert!(p.matches("app-db"));
        assert!(!p.matches("myapp-db"), "anchored at the start");
        let p = pattern("app|app-db").unwrap();
        assert!(
            p.matches("app-db"),
            "an alternative that matches the whole name wins"
        );
        assert!(!p.matches("app-d"));
        let p = pattern("(?i)APP-[0-9]+").unwrap();
        assert!(p.matches("app-12"));
        assert!(!p.matches("app-12x"), "anchored at the end");
    }

    #[test]
    fn the_wrapper_cannot_be_escaped() {
        // Unbalanced on its own: would mean `\A(?:a)|(b)\z` if wrapped blindly.
        let e = pattern("a)|(b").unwrap_err();
        assert!(
            e.message().contains("not a valid regular expression"),
            "{e}"
        );
        // Verbose flags and a trailing comment stay inside the group.
        let p = pattern("(?x) app - \\d+  # the app's secrets").unwrap();
        assert!(p.matches("app-12"));
        assert!(!p.matches("app-12 "));
        let p = pattern("(?m)a$").unwrap();
        assert!(!p.matches("a\nb"), "multi-line flags end with the pattern");
    }

    #[test]
    fn hostile_patterns_fail_fast_and_clearly() {
        let started = std::time::Instant::now();
        let e = pattern(r"\w{1000}{1000}").unwrap_err();
        assert!(e.message().contains("compiles to more than"), "{e}");
        let e = pattern(&"(".repeat(100)).unwrap_err();
        assert!(
            e.message().contains("not a valid regular expression"),
            "{e}"
        );
        let nested = format!("{}a{}", "(?:".repeat(40), ")".repeat(40));
        assert!(pattern(&nested).is_err(), "nesting is bounded");
        let e = pattern(&"a".repeat(MAX_PATTERN_BYTES + 1)).unwrap_err();
        assert!(e.message().contains("at most 1024"), "{e}");
        assert!(pattern("").is_err());
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "refusing took {:?}",
            started.elapsed()
        );
        // The message is one line and shows the pattern safely.
        let e = pattern("a[\u{7}").unwrap_err();
        assert!(
            !e.message().contains('\n') && !e.message().contains('\u{7}'),
            "{e}"
        );
    }

    #[test]
    fn tags_are_bounded() {
        let mut t = BTreeMap::new();
        t.insert("team".to_string(), "a".to_string());
        check_tags("objects[0].objectTags", &t).unwrap();
        assert!(check_tags("objects[0].objectTags", &BTreeMap::new()).is_err());
        t.insert(String::new(), "x".to_string());
        assert!(check_tags("objects[0].objectTags", &t).is_err());
        let many: BTreeMap<String, String> = (0..=MAX_TAGS)
            .map(|i| (format!("t{i}"), String::new()))
            .collect();
        assert!(check_tags("objects[0].objectTags", &many).is_err());
    }
}
