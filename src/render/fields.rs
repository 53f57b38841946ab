//! `jsonFields`: single fields of a JSON secret as files of their own.
//!
//! The secret's value (after `objectEncoding`) is parsed as JSON and each JSON Pointer
//! (RFC 6901) is written as its own file: a string as its characters (no quotes), a number,
//! boolean or null as its JSON text, an object or array as compact JSON. Errors name the
//! object and the pointer, never any part of the value; the parsed copy of the value is wiped
//! once the fields are taken from it.
//!
//! Pointers are checked here ([`check_pointer`], no value needed, so a bad pointer fails
//! before any request) and resolved with `serde_json`'s own RFC 6901 implementation
//! ([`serde_json::Value::pointer`]), which unescapes `~1` and `~0` but silently accepts a
//! malformed escape: the check refuses those first.

use super::{RenderError, RenderedFile};
use serde_json::Value;
use zeroize::{Zeroize, Zeroizing};

/// The longest pointer accepted.
pub const MAX_POINTER_BYTES: usize = 1024;

/// One `jsonFields` item: which field, and the file it becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonField {
    /// The JSON Pointer, as written (checked by [`check_pointer`]).
    pub pointer: String,
    /// The file name in the volume (`objectAlias`).
    pub file: String,
}

/// Why a pointer is not an RFC 6901 JSON Pointer, or `Ok`.
pub fn check_pointer(pointer: &str) -> Result<(), String> {
    if pointer.len() > MAX_POINTER_BYTES {
        return Err(format!("is longer than {MAX_POINTER_BYTES} bytes"));
    }
    if !pointer.starts_with('/') {
        return Err("must start with '/' (e.g. \"/username\")".into());
    }
    if pointer.chars().any(char::is_control) {
        return Err("has control characters".into());
    }
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(
                "has a '~' not followed by 0 or 1 (write ~0 for '~' and ~1 for '/')".into(),
            );
        }
    }
    Ok(())
}

/// The fields of a rendered secret: `files` holds its one main file (a plain secret's value,
/// decoded per `objectEncoding`). Without fields, `files` is returned as it is.
pub fn extract(
    object: &str,
    files: Vec<RenderedFile>,
    fields: &[JsonField],
) -> Result<Vec<RenderedFile>, RenderError> {
    if fields.is_empty() {
        return Ok(files);
    }
    let malformed = |reason: String| RenderError::Malformed {
        object: object.to_string(),
        reason,
    };
    let [main] = files.as_slice() else {
        return Err(malformed(
            "jsonFields needs a plain JSON secret, and this one is certificate-backed".into(),
        ));
    };
    let mut value: Value = serde_json::from_slice(&main.bytes).map_err(|e| {
        // Line and column only: serde_json's own text may quote the input.
        malformed(format!(
            "value is not JSON (invalid JSON at line {} column {}), so jsonFields pointer \"{}\" cannot be read",
            e.line(),
            e.column(),
            super::shown(&fields[0].pointer)
        ))
    })?;
    let out = fields
        .iter()
        .enumerate()
        .map(|(index, f)| {
            let field = value.pointer(&f.pointer).ok_or_else(|| {
                malformed(format!(
                    "value has nothing at jsonFields pointer \"{}\"",
                    super::shown(&f.pointer)
                ))
            })?;
            Ok(RenderedFile {
                suffix: None,
                field: Some(index),
                bytes: field_bytes(field),
            })
        })
        .collect();
    wipe(&mut value);
    out
}

/// A string as its characters; anything else as compact JSON text.
fn field_bytes(v: &Value) -> Zeroizing<Vec<u8>> {
    match v {
        Value::String(s) => Zeroizing::new(s.as_bytes().to_vec()),
        other => Zeroizing::new(serde_json::to_vec(other).unwrap_or_default()),
    }
}

/// Zeroes every string of a parsed value (the secret's copy outside `Zeroizing`).
fn wipe(v: &mut Value) {
    match v {
        Value::String(s) => s.zeroize(),
        Value::Array(items) => items.iter_mut().for_each(wipe),
        Value::Object(members) => members.values_mut().for_each(wipe),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pointers: &[&str]) -> Vec<JsonField> {
        pointers
            .iter()
            .enumerate()
            .map(|(i, p)| JsonField {
                pointer: p.to_string(),
                file: format!("f{i}"),
            })
            .collect()
    }

    fn main(value: &str) -> Vec<RenderedFile> {
        vec![RenderedFile::main(Zeroizing::new(
            value.as_bytes().to_vec(),
        ))]
    }

    fn texts(files: &[RenderedFile]) -> Vec<String> {
        files
            .iter()
            .map(|f| String::from_utf8(f.bytes.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn each_json_type_becomes_its_text() {
        let value = r#"{"username": "app", "password": "p\"w", "port": 5432, "ratio": 0.5,
            "tls": true, "none": null, "hosts": ["a", "b"], "opts": {"x": 1},
            "a/b": "slash", "m~n": "tilde", "": "empty key"}"#;
        let out = extract(
            "db",
            main(value),
            &fields(&[
                "/username",
                "/password",
                "/port",
                "/ratio",
                "/tls",
                "/none",
                "/hosts",
                "/opts",
                "/hosts/1",
                "/a~1b",
                "/m~0n",
                "/",
            ]),
        )
        .unwrap();
        assert_eq!(
            texts(&out),
            [
                "app",
                "p\"w",
                "5432",
                "0.5",
                "true",
                "null",
                r#"["a","b"]"#,
                r#"{"x":1}"#,
                "b",
                "slash",
                "tilde",
                "empty key"
            ]
        );
        assert_eq!(out[3].field, Some(3));
        assert!(out.iter().all(|f| f.suffix.is_none()));
    }

    #[test]
    fn errors_name_the_pointer_and_never_the_value() {
        let e = extract("db", main("hunter2-not-json"), &fields(&["/username"])).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("object `db`") && text.contains("/username"),
            "{text}"
        );
        assert!(text.contains("not JSON"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");

        let e = extract(
            "db",
            main(r#"{"user": "hunter2"}"#),
            &fields(&["/user", "/password"]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("nothing at jsonFields pointer \"/password\""),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");

        // Array indices: no leading zeros, no "-", no index past the end.
        for p in ["/a/01", "/a/-", "/a/2", "/a/x"] {
            assert!(
                extract("db", main(r#"{"a": [1, 2]}"#), &fields(&[p])).is_err(),
                "{p}"
            );
        }
        // A certificate-backed secret renders more than one file, or PEM: never JSON fields.
        let two = vec![
            RenderedFile::main(Zeroizing::new(b"{}".to_vec())),
            RenderedFile::main(Zeroizing::new(b"{}".to_vec())),
        ];
        assert!(extract("db", two, &fields(&["/a"])).is_err());
    }

    #[test]
    fn without_fields_the_files_pass_through() {
        let out = extract("db", main("not json"), &[]).unwrap();
        assert_eq!(texts(&out), ["not json"]);
    }

    #[test]
    fn pointers_follow_rfc_6901() {
        for ok in ["/a", "/a/0", "/~0~1", "/", "//", "/a b", "/é"] {
            assert_eq!(check_pointer(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a", "/~", "/~2", "/a~", "/\n", "#/a"] {
            assert!(check_pointer(bad).is_err(), "{bad:?}");
        }
        assert!(check_pointer(&format!("/{}", "a".repeat(MAX_POINTER_BYTES))).is_err());
    }
}
