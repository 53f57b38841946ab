//! `jsonFields`: any pointer text through the RFC 6901 check, then any secret value through the
//! field extraction. Never a panic; an error names the object and pointer, never the value.
#![no_main]
use arbitrary::Arbitrary;
use keyvault_flexvolume::render::fields::{check_pointer, extract, JsonField};
use keyvault_flexvolume::render::{render_secret, RenderOptions};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    pointers: Vec<String>,
    value: String,
}

/// A marker that no pointer contains: if the value carries it, an error must not.
const MARKER: &str = "\u{1F511}MARKER";

fuzz_target!(|i: Input| {
    let fields: Vec<JsonField> = i
        .pointers
        .iter()
        .filter(|p| check_pointer(p).is_ok() && !p.contains(MARKER))
        .take(64)
        .enumerate()
        .map(|(k, p)| JsonField {
            pointer: p.clone(),
            file: format!("f{k}"),
        })
        .collect();
    for p in &i.pointers {
        if check_pointer(p).is_ok() {
            assert!(p.starts_with('/') && !p.chars().any(char::is_control));
        }
    }
    let Ok(files) = render_secret("obj", &i.value, None, false, &RenderOptions::default()) else {
        return;
    };
    match extract("obj", files, &fields) {
        Ok(out) if fields.is_empty() => assert_eq!(out.len(), 1),
        Ok(out) => {
            assert_eq!(out.len(), fields.len());
            for (k, f) in out.iter().enumerate() {
                assert_eq!(f.field, Some(k));
            }
        }
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains("object `obj`"));
            assert!(!text.contains(MARKER), "an error quoted the value");
        }
    }
});
