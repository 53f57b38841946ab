//! The objects of a volume. Both ways of naming them — v0.0.17's `;` lists and the CSI
//! provider's `objects` JSON array — only collect each object's fields as written
//! ([`ObjectFields`]); one builder validates them into an [`ObjectSpec`], so the two syntaxes
//! cannot drift apart. File names come from one place, [`ObjectSpec::file_path`].
//!
//! An `objects` entry may also select objects instead of naming one (`objectNamePattern`,
//! `objectTags`: a [`Selection`], expanded while fetching), or write single fields of a JSON
//! secret (`jsonFields`).

use crate::error::{printable, Error, Result};
use crate::render::fields::{check_pointer, JsonField};
use crate::render::{ObjectKind, RenderOptions, RenderedFile, SPLIT_SUFFIXES};
use serde_json::Value;
use std::collections::BTreeMap;

use super::raw::{json_error_kind, json_type, RawOptions};
use super::select::{check_tags, NamePattern, Selection};
use super::values::{
    parse_bool, parse_encoding, parse_format, parse_kind, parse_mode, validate_file_name,
    validate_object_name, validate_vault_name, validate_version,
};

/// The most objects one volume may name: bounds requests and tmpfs inodes.
pub const MAX_OBJECTS: usize = 1000;
/// The most versions `objectVersionHistory` may ask for.
pub const MAX_VERSION_HISTORY: u32 = 50;
/// The most `jsonFields` one entry may have.
pub const MAX_JSON_FIELDS: usize = 256;
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
    /// `jsonFields`: when given, only these fields of the (JSON) secret are written, each
    /// as its own file.
    pub json_fields: Vec<JsonField>,
    /// The `objects` entry whose selection matched this object (`None`: named by the pod).
    pub selected_by: Option<usize>,
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

    /// The path of one rendered file of version `index`: a `jsonFields` file is named by its
    /// field's alias, any other by [`ObjectSpec::file_path`].
    pub fn path_of(&self, index: usize, file: &RenderedFile) -> String {
        match file.field.and_then(|k| self.json_fields.get(k)) {
            Some(field) => field.file.clone(),
            None => self.file_path(index, file.suffix),
        }
    }

    /// How messages name it: `` `db` ``, or `` `app-db` (matched by objects[2]) ``.
    pub fn who(&self) -> String {
        match self.selected_by {
            Some(entry) => format!("`{}` (matched by objects[{entry}])", self.name),
            None => format!("`{}`", self.name),
        }
    }

    /// Every path this object may write (the most it can produce: a split secret that turns
    /// out not to be certificate-backed writes only the main file).
    pub fn file_paths(&self) -> Vec<String> {
        if !self.json_fields.is_empty() {
            return self.json_fields.iter().map(|f| f.file.clone()).collect();
        }
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
    pattern: Option<String>,
    tags: Option<BTreeMap<String, String>>,
    json_fields: Vec<JsonField>,
}

/// One validated entry: an object named by the pod, or a selection of objects.
pub(super) enum Entry {
    Object(ObjectSpec),
    Select(Selection),
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
    fn build(self, origin: Origin, default_vault: Option<&str>, split: bool) -> Result<Entry> {
        let selecting = self.pattern.is_some() || self.tags.is_some();
        let at = |field: &str| match origin {
            Origin::Array(i) => format!("objects[{i}].{field}"),
            Origin::List => field.to_string(),
        };
        // How messages name the entry: its object, or for a selection its place.
        let name = match (self.name, selecting, origin) {
            (Some(_), true, _) => {
                return Err(Error::options(format!(
                    "{} is given with objectNamePattern/objectTags: an entry either names one object or selects several, not both",
                    at("objectName")
                )))
            }
            (Some(name), false, _) => {
                validate_object_name(&name)?;
                name
            }
            (None, true, Origin::Array(i)) => format!("objects[{i}]"),
            (None, _, Origin::Array(i)) => {
                return Err(Error::options(format!(
                    "objects[{i}].objectName is required (or objectNamePattern/objectTags to select objects)"
                )))
            }
            (None, _, Origin::List) => {
                return Err(Error::options("an item of keyvaultobjectnames is empty"))
            }
        };
        if selecting {
            // One file per match, named by the match: an alias or a pinned version would
            // apply to every match alike.
            for (field, given) in [
                ("objectAlias", self.alias.is_some()),
                ("objectVersion", self.version.is_some()),
                ("jsonFields", !self.json_fields.is_empty()),
            ] {
                if given {
                    return Err(Error::options(format!(
                        "{} cannot be used with objectNamePattern/objectTags: each selected object is written under its own name, latest version; name the object with objectName instead",
                        at(field)
                    )));
                }
            }
        }
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
        let fields = !self.json_fields.is_empty();
        if fields {
            let refuse = |why: String| Err(Error::options(format!("{}: {why}", at("jsonFields"))));
            if kind != ObjectKind::Secret {
                return refuse(
                    "fields are read from a secret's JSON value; objectType must be secret".into(),
                );
            }
            if self.alias.is_some() {
                return refuse("only the fields are written, each named by its own objectAlias: remove the entry's objectAlias (add the secret again as a plain entry to get the whole value)".into());
            }
            if self.format.is_some() || self.split == Some(true) {
                return refuse(
                    "objectFormat and splitCertAndKey do not apply: a JSON secret is a plain value"
                        .into(),
                );
            }
        }
        let file = match selecting {
            // Named by each match ([`Selection::object`]).
            true => String::new(),
            false => {
                let file = self.alias.unwrap_or_else(|| name.clone());
                validate_file_name(&name, &file)?;
                file
            }
        };
        let render = RenderOptions {
            format: parse_format(&name, self.format.as_deref().unwrap_or_default())?,
            encoding: parse_encoding(&name, self.encoding.as_deref().unwrap_or_default())?,
            split_cert_and_key: self.split.unwrap_or(split)
                && kind == ObjectKind::Secret
                && !fields,
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
        if fields && version_history > 1 {
            return Err(Error::options(format!(
                "{}: objectVersionHistory does not apply; the fields are read from the latest (or pinned) version",
                at("jsonFields")
            )));
        }
        let object = ObjectSpec {
            vault,
            name: if selecting { String::new() } else { name },
            kind,
            version,
            file,
            render,
            permission,
            version_history,
            optional: self.optional.unwrap_or(false),
            json_fields: self.json_fields,
            selected_by: None,
        };
        if !selecting {
            return Ok(Entry::Object(object));
        }
        let Origin::Array(entry) = origin else {
            return Err(Error::options("a selection needs the `objects` array"));
        };
        let pattern = self
            .pattern
            .map(|p| NamePattern::new(&at("objectNamePattern"), &p))
            .transpose()?;
        let tags = match self.tags {
            Some(tags) => {
                check_tags(&at("objectTags"), &tags)?;
                tags
            }
            None => BTreeMap::new(),
        };
        Ok(Entry::Select(Selection {
            entry,
            pattern,
            tags,
            template: object,
        }))
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

/// The objects of a volume, from whichever syntax the options use: those named, and the
/// selections (expanded while fetching).
pub(super) fn parse(raw: &RawOptions) -> Result<(Vec<ObjectSpec>, Vec<Selection>)> {
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
    let mut objects = Vec::new();
    let mut selections = Vec::new();
    for (f, origin) in fields.into_iter().zip(origins) {
        match f.build(origin, default_vault, split)? {
            Entry::Object(o) => objects.push(o),
            Entry::Select(s) => selections.push(s),
        }
    }
    check_unique_files(&objects)?;
    check_vault_count(&objects, &selections)?;
    Ok((objects, selections))
}

/// At most [`MAX_VAULTS`] vaults, named or listed by a selection (names compared as Key Vault
/// does, case-insensitively).
fn check_vault_count(objects: &[ObjectSpec], selections: &[Selection]) -> Result<()> {
    let vaults: std::collections::BTreeSet<String> = objects
        .iter()
        .map(|o| &o.vault)
        .chain(selections.iter().map(|s| &s.template.vault))
        .map(|v| v.to_ascii_lowercase())
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
        "objectnamepattern",
        "objecttags",
        "jsonfields",
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
                "{at} has unknown field `{}`; known: objectName, objectNamePattern, objectTags, objectAlias, objectType, objectVersion, objectFormat, objectEncoding, filePermission, objectVersionHistory, keyvaultName, optional, splitCertAndKey, jsonFields",
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
        // Not trimmed: spaces may be part of a pattern.
        pattern: match f.get("objectnamepattern") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(Error::options(format!(
                    "{at}.objectNamePattern must be a string, found {}",
                    json_type(other)
                )))
            }
        },
        tags: f
            .get("objecttags")
            .map(|v| object_tags(&at, v))
            .transpose()?
            .flatten(),
        json_fields: f
            .get("jsonfields")
            .map(|v| json_fields(&at, v))
            .transpose()?
            .unwrap_or_default(),
    })
}

/// `objectTags`: a JSON object of strings.
fn object_tags(at: &str, v: &Value) -> Result<Option<BTreeMap<String, String>>> {
    let members = match v {
        Value::Null => return Ok(None),
        Value::Object(m) => m,
        other => {
            return Err(Error::options(format!(
                "{at}.objectTags must be a JSON object of tag names and values, found {}",
                json_type(other)
            )))
        }
    };
    members
        .iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            other => Err(Error::options(format!(
                "{at}.objectTags \"{}\" must be a string, found {}",
                printable(k),
                json_type(other)
            ))),
        })
        .collect::<Result<_>>()
        .map(Some)
}

/// `jsonFields`: `[{"pointer": "/username", "objectAlias": "db-user"}, …]`.
fn json_fields(at: &str, v: &Value) -> Result<Vec<JsonField>> {
    let items = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) if !items.is_empty() => items,
        other => {
            return Err(Error::options(format!(
                "{at}.jsonFields must be a non-empty JSON array of {{\"pointer\": \"/field\", \"objectAlias\": \"file\"}}, found {}",
                json_type(other)
            )))
        }
    };
    if items.len() > MAX_JSON_FIELDS {
        return Err(Error::options(format!(
            "{at}.jsonFields has {} items; at most {MAX_JSON_FIELDS}",
            items.len()
        )));
    }
    let mut fields: Vec<JsonField> = Vec::with_capacity(items.len());
    for (k, item) in items.iter().enumerate() {
        let here = format!("{at}.jsonFields[{k}]");
        let Value::Object(members) = item else {
            return Err(Error::options(format!(
                "{here} must be a JSON object with `pointer` and `objectAlias`, found {}",
                json_type(item)
            )));
        };
        let (mut pointer, mut alias) = (None, None);
        for (key, value) in members {
            let slot = match key.to_ascii_lowercase().as_str() {
                "pointer" => &mut pointer,
                "objectalias" => &mut alias,
                _ => {
                    return Err(Error::options(format!(
                        "{here} has unknown field `{}`; known: pointer, objectAlias",
                        printable(key)
                    )))
                }
            };
            let Value::String(text) = value else {
                return Err(Error::options(format!(
                    "{here}.{} must be a string, found {}",
                    printable(key),
                    json_type(value)
                )));
            };
            *slot = Some(text.clone());
        }
        let pointer = pointer.ok_or_else(|| {
            Error::options(format!(
                "{here}.pointer is required: a JSON Pointer such as \"/username\""
            ))
        })?;
        check_pointer(&pointer).map_err(|why| {
            Error::options(format!(
                "{here}.pointer \"{}\" is not a JSON Pointer (RFC 6901): it {why}",
                printable(&pointer)
            ))
        })?;
        let file = alias
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .ok_or_else(|| {
                Error::options(format!(
                    "{here}.objectAlias is required: the file the field is written to"
                ))
            })?;
        validate_file_name(&pointer, &file)?;
        if fields.iter().any(|f| f.file == file) {
            return Err(Error::options(format!(
                "{here}.objectAlias \"{}\" is already the file of another field; give each field its own",
                printable(&file)
            )));
        }
        fields.push(JsonField { pointer, file });
    }
    Ok(fields)
}

/// Two objects writing one file would silently lose one; v0.0.17 let the last win. Also run
/// on a volume's objects once its selections are expanded.
pub fn check_unique_files(objects: &[ObjectSpec]) -> Result<()> {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for o in objects {
        // A version history also occupies its directory name.
        let dir = (o.version_history > 1).then(|| o.file.clone());
        for file in o.file_paths().into_iter().chain(dir) {
            if let Some(other) = seen.insert(file.clone(), o.who()) {
                return Err(Error::options(format!(
                    "objects {other} and {} would both write the file \"{}\"; give one an alias, or narrow the selection",
                    o.who(),
                    printable(&file)
                )));
            }
        }
    }
    Ok(())
}
