//! The objects of a volume. Both ways of naming them — v0.0.17's `;` lists and the CSI
//! provider's `objects` JSON array — only collect each object's fields as written
//! ([`ObjectFields`]); one builder validates them into an [`ObjectSpec`], so the two syntaxes
//! cannot drift apart. File names come from one place, [`ObjectSpec::file_path`].

use crate::error::{printable, Error, Result};
use crate::render::{ObjectKind, RenderOptions, SPLIT_SUFFIXES};
use serde_json::Value;
use std::collections::BTreeMap;

use super::raw::{json_error_kind, json_type, RawOptions};
use super::values::{
    parse_bool, parse_encoding, parse_format, parse_kind, parse_mode, validate_file_name,
    validate_object_name, validate_vault_name, validate_version,
};

/// The most objects one volume may name: bounds requests and tmpfs inodes.
pub const MAX_OBJECTS: usize = 1000;
/// The most versions `objectVersionHistory` may ask for.
pub const MAX_VERSION_HISTORY: u32 = 50;
/// The most distinct vaults one volume may name: each is a connection, a TLS handshake and a
/// turn at the node's request slots, and a pod must not make kv reach hundreds of hosts.
pub const MAX_VAULTS: usize = 16;

/// One Key Vault object to fetch and the file(s) it becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectSpec {
    /// Vault name (not URL).
    pub vault: String,
    /// Object name in the vault.
    pub name: String,
    /// secret, key or cert.
    pub kind: ObjectKind,
    /// `None` = latest.
    pub version: Option<String>,
    /// File name in the volume (alias, or the object name).
    pub file: String,
    /// Output format and encoding.
    pub render: RenderOptions,
    /// Explicit file mode, if any.
    pub permission: Option<u32>,
    /// How many versions to write (`<file>/0` newest ...); 1 = a single file.
    pub version_history: u32,
    /// A missing object (404) is skipped instead of failing the mount.
    pub optional: bool,
}

impl ObjectSpec {
    /// The volume-relative path of one rendered file: version `index` (0 = newest) of this
    /// object, with the renderer's `suffix` (`.crt`, `.key`) if any. With a version history
    /// the versions are `<file>/0`, `<file>/1`, …, and a split version is `<file>/0.crt`.
    pub fn file_path(&self, index: usize, suffix: Option<&str>) -> String {
        let base = if self.version_history > 1 {
            format!("{}/{index}", self.file)
        } else {
            self.file.clone()
        };
        format!("{base}{}", suffix.unwrap_or(""))
    }

    /// Every path this object may write (the most it can produce: a split secret that turns
    /// out not to be certificate-backed writes only the main file).
    pub fn file_paths(&self) -> Vec<String> {
        let suffixes: &[Option<&str>] = if self.render.split_cert_and_key {
            &[None, Some(SPLIT_SUFFIXES[0]), Some(SPLIT_SUFFIXES[1])]
        } else {
            &[None]
        };
        (0..self.version_history as usize)
            .flat_map(|i| suffixes.iter().map(move |s| self.file_path(i, *s)))
            .collect()
    }
}

/// Where an object was described, for messages: `keyvaultobjectnames` item or `objects[i]`.
#[derive(Clone, Copy)]
enum Origin {
    List,
    Array(usize),
}

/// One object's fields as the pod author wrote them, before any validation.
#[derive(Default)]
struct ObjectFields {
    name: Option<String>,
    vault: Option<String>,
    kind: Option<String>,
    version: Option<String>,
    alias: Option<String>,
    format: Option<String>,
    encoding: Option<String>,
    permission: Option<String>,
    version_history: Option<Value>,
    optional: Option<bool>,
    split: Option<bool>,
}

impl Origin {
    /// How a field is named in a message: `objects[2].objectType`, or for the `;` lists the
    /// option key and the object.
    fn field(self, array_name: &str, list_key: &str, object: &str) -> String {
        match self {
            Origin::Array(i) => format!("objects[{i}].{array_name}"),
            Origin::List => format!("{list_key} item of object `{}`", printable(object)),
        }
    }
}

impl ObjectFields {
    /// The one validation path: every field checked, defaults applied.
    fn build(self, origin: Origin, default_vault: Option<&str>, split: bool) -> Result<ObjectSpec> {
        let name = self.name.ok_or_else(|| match origin {
            Origin::Array(i) => Error::options(format!("objects[{i}].objectName is required")),
            Origin::List => Error::options("an item of keyvaultobjectnames is empty"),
        })?;
        validate_object_name(&name)?;
        let vault = match self.vault {
            Some(v) => {
                validate_vault_name(&v)?;
                v
            }
            None => default_vault
                .ok_or_else(|| {
                    Error::options(match origin {
                        Origin::Array(i) => format!("objects[{i}] names no vault: set `keyvaultName` on the object or the `keyvaultname` option"),
                        Origin::List => "option `keyvaultname` is required: the name of the Key Vault (not its URL)".into(),
                    })
                })?
                .to_string(),
        };
        let kind = parse_kind(
            &name,
            &self.kind.ok_or_else(|| {
                Error::options(format!(
                    "{} is required: secret, key or cert",
                    origin.field("objectType", "keyvaultobjecttypes", &name)
                ))
            })?,
        )?;
        let version = self.version.filter(|v| v != "latest");
        if let Some(v) = &version {
            validate_version(&name, v)?;
        }
        let file = self.alias.unwrap_or_else(|| name.clone());
        validate_file_name(&name, &file)?;
        let render = RenderOptions {
            format: parse_format(&name, self.format.as_deref().unwrap_or_default())?,
            encoding: parse_encoding(&name, self.encoding.as_deref().unwrap_or_default())?,
            split_cert_and_key: self.split.unwrap_or(split) && kind == ObjectKind::Secret,
        };
        crate::render::validate_options(kind, &render)
            .map_err(|e| Error::options(format!("object `{name}`: {e}")))?;
        let permission = self
            .permission
            .map(|m| {
                parse_mode(
                    &origin.field("filePermission", "keyvaultobjectpermissions", &name),
                    &m,
                )
            })
            .transpose()?;
        let version_history = match self.version_history {
            None | Some(Value::Null) => 1,
            Some(v) => {
                let n = match &v {
                    Value::Number(n) => n.as_u64(),
                    Value::String(s) => s.trim().parse::<u64>().ok(),
                    _ => None,
                };
                match n {
                    Some(0) => 1,
                    Some(n) if n <= u64::from(MAX_VERSION_HISTORY) => n as u32,
                    _ => {
                        return Err(Error::options(format!(
                            "{} must be a number from 1 to {MAX_VERSION_HISTORY}",
                            origin.field("objectVersionHistory", "objectVersionHistory", &name)
                        )))
                    }
                }
            }
        };
        Ok(ObjectSpec {
            vault,
            name,
            kind,
            version,
            file,
            render,
            permission,
            version_history,
            optional: self.optional.unwrap_or(false),
        })
    }
}

/// The per-object `;` list keys; with `objects` none of them may be given.
pub(super) const LIST_KEYS: &[&str] = &[
    "keyvaultobjectnames",
    "keyvaultobjectname",
    "keyvaultobjecttypes",
    "keyvaultobjecttype",
    "keyvaultobjectversions",
    "keyvaultobjectversion",
    "keyvaultobjectaliases",
    "keyvaultobjectformats",
    "keyvaultobjectencodings",
    "keyvaultobjectpermissions",
];

/// The objects of a volume, from whichever syntax the options use.
pub(super) fn parse(raw: &RawOptions) -> Result<Vec<ObjectSpec>> {
    let split = raw.bool("keyvaultsplitcertfiles")?;
    let default_vault = raw.get("keyvaultname");
    let (origins, fields): (Vec<Origin>, Vec<ObjectFields>) = match raw.get("objects") {
        Some(array) => {
            if let Some(key) = LIST_KEYS.iter().find(|k| raw.get(k).is_some()) {
                return Err(Error::options(format!(
                    "options `objects` and `{key}` are both given: describe the objects either as the `objects` JSON array or as `;` lists, not both"
                )));
            }
            if let Some(v) = default_vault {
                validate_vault_name(v)?;
            }
            let fields = from_array(array)?;
            ((0..fields.len()).map(Origin::Array).collect(), fields)
        }
        None => {
            let vault = default_vault.ok_or_else(|| {
                Error::options(
                    "option `keyvaultname` is required: the name of the Key Vault (not its URL)",
                )
            })?;
            validate_vault_name(vault)?;
            let fields = from_lists(raw)?;
            (vec![Origin::List; fields.len()], fields)
        }
    };
    let objects = fields
        .into_iter()
        .zip(origins)
        .map(|(f, origin)| f.build(origin, default_vault, split))
        .collect::<Result<Vec<_>>>()?;
    check_unique_files(&objects)?;
    check_vault_count(&objects)?;
    Ok(objects)
}

/// At most [`MAX_VAULTS`] vaults (names compared as Key Vault does, case-insensitively).
fn check_vault_count(objects: &[ObjectSpec]) -> Result<()> {
    let vaults: std::collections::BTreeSet<String> = objects
        .iter()
        .map(|o| o.vault.to_ascii_lowercase())
        .collect();
    if vaults.len() > MAX_VAULTS {
        return Err(Error::options(format!(
            "the objects name {} vaults; one volume may name at most {MAX_VAULTS}: spread the objects over more volumes",
            vaults.len()
        )));
    }
    Ok(())
}

fn too_many(count: usize) -> Result<()> {
    if count > MAX_OBJECTS {
        return Err(Error::options(format!(
            "{count} objects named; one volume takes at most {MAX_OBJECTS}"
        )));
    }
    Ok(())
}

/// Splits a `;` list, trimming each item (v0.0.17 users wrote `a; b`).
fn split_list(v: &str) -> Vec<&str> {
    v.split(';').map(str::trim).collect()
}

/// Reads a list option that has a legacy singular spelling; both at once is ambiguous.
fn plural_or_legacy<'a>(
    raw: &'a RawOptions,
    plural: &str,
    singular: &str,
) -> Result<Option<&'a str>> {
    match (raw.get(plural), raw.get(singular)) {
        (Some(_), Some(_)) => Err(Error::options(format!(
            "options `{plural}` and legacy `{singular}` are both given; keep `{plural}`"
        ))),
        (p, s) => Ok(p.or(s)),
    }
}

/// v0.0.17's syntax: one `;`-separated item per object in each `keyvaultobject*` option.
fn from_lists(raw: &RawOptions) -> Result<Vec<ObjectFields>> {
    let names = plural_or_legacy(raw, "keyvaultobjectnames", "keyvaultobjectname")?
        .ok_or_else(|| {
            Error::options(
                "option `keyvaultobjectnames` is required: `;`-separated object names, e.g. \"db-password;tls-cert\"",
            )
        })?;
    let names = split_list(names);
    too_many(names.len())?;
    let n = names.len();
    // An optional per-object list: absent, or exactly one item per object (v0.0.17 silently
    // ignored a mismatch and mounted the wrong versions or aliases).
    let list = |key: &str, value: Option<&'_ str>| -> Result<Vec<Option<String>>> {
        let Some(v) = value else {
            return Ok(vec![None; n]);
        };
        let items = split_list(v);
        if items.len() != n {
            return Err(Error::options(format!(
                "option `{key}` has {} item(s) but keyvaultobjectnames has {n}: give one `;`-separated item per object (an empty item means the default)",
                items.len()
            )));
        }
        Ok(items
            .into_iter()
            .map(|s| Some(s.to_string()).filter(|s| !s.is_empty()))
            .collect())
    };
    let types = plural_or_legacy(raw, "keyvaultobjecttypes", "keyvaultobjecttype")?
        .ok_or_else(|| {
            Error::options(
                "option `keyvaultobjecttypes` is required: one of secret, key, cert per object, `;`-separated",
            )
        })?;
    let mut types = list("keyvaultobjecttypes", Some(types))?.into_iter();
    let mut versions = list(
        "keyvaultobjectversions",
        plural_or_legacy(raw, "keyvaultobjectversions", "keyvaultobjectversion")?,
    )?
    .into_iter();
    let mut aliases = list("keyvaultobjectaliases", raw.get("keyvaultobjectaliases"))?.into_iter();
    let mut formats = list("keyvaultobjectformats", raw.get("keyvaultobjectformats"))?.into_iter();
    let mut encodings = list(
        "keyvaultobjectencodings",
        raw.get("keyvaultobjectencodings"),
    )?
    .into_iter();
    let mut permissions = list(
        "keyvaultobjectpermissions",
        raw.get("keyvaultobjectpermissions"),
    )?
    .into_iter();
    Ok(names
        .into_iter()
        .map(|name| ObjectFields {
            name: Some(name.to_string()).filter(|s| !s.is_empty()),
            kind: types.next().flatten(),
            version: versions.next().flatten(),
            alias: aliases.next().flatten(),
            format: formats.next().flatten(),
            encoding: encodings.next().flatten(),
            permission: permissions.next().flatten(),
            ..ObjectFields::default()
        })
        .collect())
}

/// The CSI SecretProviderClass object fields, so a ported `objects` array works as is.
fn from_array(json: &str) -> Result<Vec<ObjectFields>> {
    let value: Value = serde_json::from_str(json).map_err(|e| {
        Error::options(format!(
            "option `objects` is not a JSON array of objects ({})",
            json_error_kind(&e)
        ))
    })?;
    let Value::Array(items) = value else {
        return Err(Error::options(format!(
            "option `objects` must be a JSON array of objects, found {}",
            json_type(&value)
        )));
    };
    if items.is_empty() {
        return Err(Error::options(
            "option `objects` is an empty array: name at least one object",
        ));
    }
    too_many(items.len())?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| array_item(i, item))
        .collect()
}

/// The fields of `objects[i]`, by case-insensitive name; an unknown field is an error (a typo
/// would otherwise silently fall back to a default).
fn array_item(i: usize, item: Value) -> Result<ObjectFields> {
    const FIELDS: &[&str] = &[
        "objectname",
        "objectalias",
        "objecttype",
        "objectversion",
        "objectformat",
        "objectencoding",
        "filepermission",
        "objectversionhistory",
        "keyvaultname",
        "optional",
        "splitcertandkey",
    ];
    let at = format!("objects[{i}]");
    let Value::Object(members) = item else {
        return Err(Error::options(format!(
            "{at} must be a JSON object, found {}",
            json_type(&item)
        )));
    };
    let mut f: BTreeMap<String, Value> = BTreeMap::new();
    for (k, v) in members {
        let lower = k.to_ascii_lowercase();
        if !FIELDS.contains(&lower.as_str()) {
            return Err(Error::options(format!(
                "{at} has unknown field `{}`; known: objectName, objectAlias, objectType, objectVersion, objectFormat, objectEncoding, filePermission, objectVersionHistory, keyvaultName, optional, splitCertAndKey",
                printable(&k)
            )));
        }
        f.insert(lower, v);
    }
    let text = |key: &str, label: &str| -> Result<Option<String>> {
        match f.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty())),
            Some(other) => Err(Error::options(format!(
                "{at}.{label} must be a string, found {}",
                json_type(other)
            ))),
        }
    };
    let flag = |key: &str, label: &str| -> Result<Option<bool>> {
        match f.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) => parse_bool(s.trim())
                .map(Some)
                .ok_or_else(|| Error::options(format!("{at}.{label} must be true or false"))),
            Some(other) => Err(Error::options(format!(
                "{at}.{label} must be true or false, found {}",
                json_type(other)
            ))),
        }
    };
    Ok(ObjectFields {
        name: text("objectname", "objectName")?,
        vault: text("keyvaultname", "keyvaultName")?,
        kind: text("objecttype", "objectType")?,
        version: text("objectversion", "objectVersion")?,
        alias: text("objectalias", "objectAlias")?,
        format: text("objectformat", "objectFormat")?,
        encoding: text("objectencoding", "objectEncoding")?,
        permission: text("filepermission", "filePermission")?,
        version_history: f.get("objectversionhistory").cloned(),
        optional: flag("optional", "optional")?,
        split: flag("splitcertandkey", "splitCertAndKey")?,
    })
}

/// Two objects writing one file would silently lose one; v0.0.17 let the last win.
fn check_unique_files(objects: &[ObjectSpec]) -> Result<()> {
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for o in objects {
        // A version history also occupies its directory name.
        let dir = (o.version_history > 1).then(|| o.file.clone());
        for file in o.file_paths().into_iter().chain(dir) {
            if let Some(other) = seen.insert(file.clone(), &o.name) {
                return Err(Error::options(format!(
                    "objects `{other}` and `{}` would both write the file \"{}\"; give one an alias",
                    o.name,
                    printable(&file)
                )));
            }
        }
    }
    Ok(())
}
