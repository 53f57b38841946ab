//! Selection entries (`objectNamePattern`, `objectTags`) through the options parser, then the
//! compiled pattern against names: a hostile pattern must fail fast with a one-line
//! KV_OPTIONS error (the regex size limit), a valid one must match in bounded time.
#![no_main]
use arbitrary::Arbitrary;
use keyvault_flexvolume::options::VolumeSpec;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

#[derive(Arbitrary, Debug)]
struct Input {
    pattern: Option<String>,
    tags: BTreeMap<String, String>,
    object_type: u8,
    names: Vec<String>,
}

fuzz_target!(|i: Input| {
    let object_type = ["secret", "key", "cert", "certificate", "x"][usize::from(i.object_type) % 5];
    let mut entry = serde_json::json!({ "objectType": object_type });
    if let Some(p) = &i.pattern {
        entry["objectNamePattern"] = serde_json::json!(p);
    }
    if !i.tags.is_empty() || i.pattern.is_none() {
        entry["objectTags"] = serde_json::json!(i.tags);
    }
    let options = serde_json::json!({
        "keyvaultname": "kvdemo",
        "usepodidentity": "true",
        "objects": serde_json::json!([entry]).to_string(),
    });
    match VolumeSpec::parse(&options.to_string()) {
        Ok(spec) => {
            assert_eq!(spec.selections.len(), 1);
            let s = &spec.selections[0];
            assert!(spec.vaults().contains(&"kvdemo"));
            for name in i.names.iter().take(16) {
                let selected = s.selects(name, |k| i.tags.get(k).map(String::as_str));
                // Tags given are the object's own here, so only the pattern decides.
                let by_pattern = s.pattern.as_ref().is_none_or(|p| p.matches(name));
                assert_eq!(selected, by_pattern);
                let o = s.object(name);
                assert_eq!((o.name.as_str(), o.file.as_str()), (name.as_str(), name.as_str()));
            }
        }
        Err(e) => {
            assert!(!e.message().contains('\n'));
            assert!(e.to_string().starts_with("KV_OPTIONS"));
        }
    }
});
