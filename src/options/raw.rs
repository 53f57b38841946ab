//! The options JSON as kubelet sends it: an object of strings, keys matched case-insensitively.
//! Duplicate keys (in any case) are an error rather than silently dropped.

use crate::error::{printable, Error, Result};
use crate::secret::Secret;
use base64::Engine;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

use super::values::parse_bool;

/// The options as given: lower-cased key → (key as written, value).
pub(super) struct RawOptions(pub(super) BTreeMap<String, (String, String)>);

impl RawOptions {
    pub(super) fn parse(json: &str) -> Result<Self> {
        let pairs = Pairs::from_json(json)?;
        let mut map: BTreeMap<String, (String, String)> = BTreeMap::new();
        for (key, value) in pairs.0 {
            let value = match value {
                Value::String(s) => s,
                other => {
                    return Err(Error::options(format!(
                        "option `{}` must be a string, found {}",
                        printable(&key),
                        json_type(&other)
                    )))
                }
            };
            let lower = key.to_ascii_lowercase();
            if let Some((first, _)) = map.get(&lower) {
                return Err(Error::options(format!(
                    "option `{}` is given twice (as `{}` and `{}`); keep one",
                    printable(&lower),
                    printable(first),
                    printable(&key)
                )));
            }
            map.insert(lower, (key, value));
        }
        Ok(RawOptions(map))
    }

    /// The value of a key, with surrounding whitespace trimmed; empty counts as absent.
    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    pub(super) fn bool(&self, key: &str) -> Result<bool> {
        match self.get(key) {
            None => Ok(false),
            Some(v) => parse_bool(v).ok_or_else(|| {
                Error::options(format!(
                    "option `{key}` must be \"true\" or \"false\", found \"{}\"",
                    printable(v)
                ))
            }),
        }
    }

    /// A base64 secretRef value from kubelet, decoded, as bytes (a binary PKCS#12 file).
    pub(super) fn secret_ref_bytes(
        &self,
        name: &str,
    ) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>> {
        let key = format!("kubernetes.io/secret/{name}");
        let Some(b64) = self.get(&key) else {
            return Ok(None);
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| {
                Error::options(format!(
                    "secretRef key `{name}` is not valid base64 (kubelet passes Secret data base64-encoded)"
                ))
            })?;
        Ok(Some(zeroize::Zeroizing::new(bytes)))
    }

    /// A secretRef value as text; trailing newlines and spaces (common in
    /// `kubectl create secret --from-file`) are dropped.
    pub(super) fn secret_ref(&self, name: &str) -> Result<Option<Secret>> {
        let Some(bytes) = self.secret_ref_bytes(name)? else {
            return Ok(None);
        };
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            Error::options(format!("secretRef key `{name}` is not valid UTF-8 text"))
        })?;
        let trimmed = text.trim_end_matches(['\n', '\r', ' ', '\t']);
        if trimmed.is_empty() {
            return Ok(None);
        }
        Ok(Some(Secret::new(trimmed.to_string())))
    }
}

/// The JSON object's members in order, duplicates kept (serde_json's map would drop them).
struct Pairs(Vec<(String, Value)>);

impl Pairs {
    fn from_json(json: &str) -> Result<Self> {
        let mut de = serde_json::Deserializer::from_str(json);
        let pairs = de.deserialize_map(PairsVisitor).map_err(|e| {
            Error::options(format!(
                "the options are not a JSON object of strings ({}); kubelet passes flexVolume.options as one",
                json_error_kind(&e)
            ))
        })?;
        de.end().map_err(|_| {
            Error::options("the options JSON has trailing characters after the object")
        })?;
        Ok(pairs)
    }
}

struct PairsVisitor;

impl<'de> Visitor<'de> for PairsVisitor {
    type Value = Pairs;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Pairs, A::Error> {
        let mut pairs = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Value>()? {
            pairs.push((k, v));
        }
        Ok(Pairs(pairs))
    }
}

pub(super) fn json_error_kind(e: &serde_json::Error) -> String {
    // The position is useful; serde_json's message can quote input, which may be a secret.
    format!("invalid JSON at line {} column {}", e.line(), e.column())
}

pub(super) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
