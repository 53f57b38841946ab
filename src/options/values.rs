//! Parsers and validators of single option values. Each error names the option, shows the
//! value safely and says what a valid value looks like.

use crate::error::{printable, Error, Result};
use crate::render::{Encoding, Format, ObjectKind};

/// Go's strconv.ParseBool, which the CSI provider uses, plus the v0.0.17 spellings.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" | "yes" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" | "no" => Some(false),
        _ => None,
    }
}

/// Vault names: 3–24 of letters, digits and hyphens, starting with a letter, ending with a
/// letter or digit, no consecutive hyphens (Azure's naming rules, which v0.0.17's unanchored
/// regex never enforced).
pub fn validate_vault_name(name: &str) -> Result<()> {
    let ok = (3..=24).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && name.as_bytes()[0].is_ascii_alphabetic()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(Error::options(format!(
            "keyvaultname \"{}\" is not a valid vault name: use 3-24 letters, digits and hyphens, starting with a letter, ending with a letter or digit, no \"--\"",
            printable(name)
        )))
    }
}

/// Object names: 1–127 of `[0-9A-Za-z-]`.
pub fn validate_object_name(name: &str) -> Result<()> {
    if (1..=127).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        Ok(())
    } else {
        Err(Error::options(format!(
            "object name \"{}\" is not a valid Key Vault object name: use 1-127 letters, digits and hyphens",
            printable(name)
        )))
    }
}

pub(super) fn validate_version(object: &str, version: &str) -> Result<()> {
    if (1..=64).contains(&version.len()) && version.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(Error::options(format!(
            "version \"{}\" of object `{object}` is not a Key Vault version id (32 hex characters, or empty for the latest)",
            printable(version)
        )))
    }
}

/// A file name in the volume: one path component, nothing that could leave the volume.
pub fn validate_file_name(object: &str, file: &str) -> Result<()> {
    let bad = file.is_empty()
        || file.len() > 200
        || file == "."
        || file.contains("..")
        || file.contains('/')
        || file.contains('\\')
        || file.chars().any(|c| c.is_control());
    if bad {
        Err(Error::options(format!(
            "file name \"{}\" for object `{}` is not a single safe file name: no '/', no '..', no control characters, at most 200 bytes",
            printable(file),
            printable(object)
        )))
    } else {
        Ok(())
    }
}

pub(super) fn parse_kind(object: &str, t: &str) -> Result<ObjectKind> {
    match t.to_ascii_lowercase().as_str() {
        "secret" => Ok(ObjectKind::Secret),
        "key" => Ok(ObjectKind::Key),
        "cert" | "certificate" => Ok(ObjectKind::Cert),
        _ => Err(Error::options(format!(
            "type \"{}\" of object `{}` is not one of secret, key, cert",
            printable(t),
            printable(object)
        ))),
    }
}

pub(super) fn parse_format(object: &str, f: &str) -> Result<Option<Format>> {
    Ok(Some(match f.to_ascii_lowercase().as_str() {
        "" => return Ok(None),
        "pem" => Format::Pem,
        "pfx" => Format::Pfx,
        "der" => Format::Der,
        "jwk" => Format::Jwk,
        _ => {
            return Err(Error::options(format!(
                "format \"{}\" of object `{}` is not one of pem, pfx, der, jwk",
                printable(f),
                printable(object)
            )))
        }
    }))
}

pub(super) fn parse_encoding(object: &str, e: &str) -> Result<Option<Encoding>> {
    Ok(Some(match e.to_ascii_lowercase().as_str() {
        "" => return Ok(None),
        "utf-8" | "utf8" => Encoding::Utf8,
        "base64" => Encoding::Base64,
        "hex" => Encoding::Hex,
        _ => {
            return Err(Error::options(format!(
                "encoding \"{}\" of object `{}` is not one of utf-8, base64, hex",
                printable(e),
                printable(object)
            )))
        }
    }))
}

/// An octal mode such as "0440"; only permission bits (no setuid, sticky).
pub fn parse_mode(what: &str, m: &str) -> Result<u32> {
    let digits = m.trim();
    let ok = (1..=4).contains(&digits.len()) && digits.bytes().all(|b| (b'0'..=b'7').contains(&b));
    let mode = if ok {
        u32::from_str_radix(digits, 8).ok()
    } else {
        None
    };
    match mode {
        Some(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(Error::options(format!(
            "{what} \"{}\" is not an octal file mode such as \"0440\" (permission bits only)",
            printable(m)
        ))),
    }
}

/// A size in bytes, or with a `Ki`, `Mi` or `Gi` suffix.
pub fn parse_size(what: &str, s: &str) -> Result<u64> {
    let s = s.trim();
    let (digits, mult) = if let Some(d) = s.strip_suffix("Ki") {
        (d, 1u64 << 10)
    } else if let Some(d) = s.strip_suffix("Mi") {
        (d, 1 << 20)
    } else if let Some(d) = s.strip_suffix("Gi") {
        (d, 1 << 30)
    } else {
        (s, 1)
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            Error::options(format!(
                "{what} \"{}\" is not a size: give bytes or a number with Ki/Mi/Gi, e.g. \"4Mi\"",
                printable(s)
            ))
        })
}

pub(super) fn validate_k8s_name(key: &str, v: &str) -> Result<()> {
    let ok = v.len() <= 253
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::options(format!(
            "`{key}` \"{}\" is not a Kubernetes name",
            printable(v)
        )))
    }
}

pub(super) fn validate_client_id(what: &str, id: &str) -> Result<()> {
    let ok = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::options(format!(
            "{what} is not a client id (a GUID)"
        )))
    }
}
