//! Builds the in-memory state from a scenario: key material, certificate chains, PFX/PEM
//! secrets, JWKs. RSA generation is slow, so generated RSA keys can be cached on disk.

use crate::scenario::{self, Cloud, IdentityKind, KeySpec, ObjectVersion, Scenario};
use crate::util::{b64, b64url, version_id};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair as _};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Map, Value};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const BASE_CREATED: i64 = 1_735_689_600; // 2025-01-01T00:00:00Z

pub struct Store {
    pub vaults: BTreeMap<String, VaultState>,
    pub identities: Vec<IdentityState>,
    /// Trusted external issuers and their signing keys (workload identity federation).
    pub issuers: Vec<IssuerKeys>,
    pub root_ca_pem: String,
    pub intermediate_ca_pem: String,
}

pub struct IssuerKeys {
    pub issuer: String,
    /// (`kid`, key); a JWKS key without `kid` matches any token `kid`.
    pub keys: Vec<(Option<String>, rsa::RsaPublicKey)>,
}

/// Generated private keys (PKCS#8 DER) by label, kept across scenario reloads so a reloaded
/// scenario serves the same key material.
pub type KeyMemo = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<u8>>>>;

pub struct IdentityState {
    pub spec: scenario::Identity,
    pub object_id: String,
    /// DER of the registered certificate, and its public key.
    pub cert_der: Option<Vec<u8>>,
    pub cert_key: Option<rsa::RsaPublicKey>,
}

impl IdentityState {
    pub fn kind(&self) -> &IdentityKind {
        &self.spec.kind
    }
}

pub struct VaultState {
    pub name: String,
    pub cloud: Cloud,
    pub tenant: String,
    pub location: String,
    pub secrets: BTreeMap<String, Vec<SecretVer>>,
    pub keys: BTreeMap<String, Vec<KeyVer>>,
    pub certs: BTreeMap<String, Vec<CertVer>>,
}

#[derive(Clone)]
pub struct Attrs {
    pub enabled: bool,
    pub created: i64,
    pub updated: i64,
    pub nbf: Option<i64>,
    pub exp: Option<i64>,
}

impl Attrs {
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("enabled".into(), json!(self.enabled));
        if let Some(n) = self.nbf {
            m.insert("nbf".into(), json!(n));
        }
        if let Some(e) = self.exp {
            m.insert("exp".into(), json!(e));
        }
        m.insert("created".into(), json!(self.created));
        m.insert("updated".into(), json!(self.updated));
        m.insert("recoveryLevel".into(), json!("Recoverable+Purgeable"));
        m.insert("recoverableDays".into(), json!(90));
        Value::Object(m)
    }
}

#[derive(Clone)]
pub struct SecretVer {
    pub name: String,
    pub version: String,
    pub value: String,
    pub content_type: Option<String>,
    pub attrs: Attrs,
    pub tags: Option<BTreeMap<String, String>>,
    /// Set for a certificate-backed secret.
    pub kid: Option<String>,
    /// PEM form of a PFX-backed certificate secret (for outContentType).
    pub pem_form: Option<String>,
}

#[derive(Clone)]
pub struct KeyVer {
    pub name: String,
    pub version: String,
    /// JWK members other than kid/key_ops (kty, n, e / crv, x, y).
    pub jwk: Map<String, Value>,
    pub key_ops: Vec<String>,
    pub attrs: Attrs,
    pub tags: Option<BTreeMap<String, String>>,
    pub managed: bool,
}

#[derive(Clone)]
pub struct CertVer {
    pub name: String,
    pub version: String,
    pub cer: Vec<u8>,
    pub attrs: Attrs,
    pub tags: Option<BTreeMap<String, String>>,
    pub content_type: String,
    pub subject: String,
    pub dns_names: Vec<String>,
    pub kty: String,
    pub key_size: Option<usize>,
    pub crv: Option<String>,
    pub self_signed: bool,
    pub validity_months: i64,
}

/// Parsed private key material.
enum Material {
    Rsa(Box<rsa::RsaPrivateKey>),
    Ec {
        crv: String,
        pkcs8: Option<Vec<u8>>,
        x: Vec<u8>,
        y: Vec<u8>,
    },
    Oct,
}

impl Material {
    fn jwk(&self) -> Map<String, Value> {
        let mut m = Map::new();
        match self {
            Material::Rsa(k) => {
                m.insert("kty".into(), json!("RSA"));
                m.insert("n".into(), json!(b64url(&k.n().to_bytes_be())));
                m.insert("e".into(), json!(b64url(&k.e().to_bytes_be())));
            }
            Material::Ec { crv, x, y, .. } => {
                m.insert("kty".into(), json!("EC"));
                m.insert("crv".into(), json!(crv));
                m.insert("x".into(), json!(b64url(x)));
                m.insert("y".into(), json!(b64url(y)));
            }
            Material::Oct => {
                m.insert("kty".into(), json!("oct"));
            }
        }
        m
    }

    fn pkcs8(&self) -> Result<Vec<u8>, String> {
        match self {
            Material::Rsa(k) => k
                .to_pkcs8_der()
                .map(|d| d.as_bytes().to_vec())
                .map_err(|e| format!("encoding RSA key: {e}")),
            Material::Ec { pkcs8: Some(p), .. } => Ok(p.clone()),
            _ => Err("this key type cannot back a certificate".into()),
        }
    }
}

pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b = b64(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for chunk in b.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

/// Minimal DER reader: (tag, content, rest).
fn der_next(buf: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *buf.first()?;
    let l0 = *buf.get(1)? as usize;
    let (len, hdr) = if l0 < 0x80 {
        (l0, 2)
    } else {
        let n = l0 & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *buf.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let content = buf.get(hdr..hdr + len)?;
    Some((tag, content, &buf[hdr + len..]))
}

/// Extract the public point of an EC PKCS#8 key (ECPrivateKey [1] publicKey).
fn ec_point_from_pkcs8(der: &[u8]) -> Option<Vec<u8>> {
    let (_, pki, _) = der_next(der)?; // PrivateKeyInfo SEQUENCE
    let (_, _version, rest) = der_next(pki)?;
    let (_, _alg, rest) = der_next(rest)?;
    let (tag, octets, _) = der_next(rest)?;
    if tag != 0x04 {
        return None;
    }
    let (_, ecpk, _) = der_next(octets)?; // ECPrivateKey SEQUENCE
    let mut cur = ecpk;
    while let Some((tag, content, rest)) = der_next(cur) {
        if tag == 0xa1 {
            let (t, bits, _) = der_next(content)?;
            if t == 0x03 && bits.len() > 1 {
                return Some(bits[1..].to_vec());
            }
        }
        cur = rest;
    }
    None
}

fn coord_len(crv: &str) -> usize {
    match crv {
        "P-384" => 48,
        "P-521" => 66,
        _ => 32,
    }
}

pub struct Builder<'a> {
    scenario: &'a Scenario,
    cache_dir: Option<PathBuf>,
    rng: SystemRandom,
    memo: KeyMemo,
}

impl<'a> Builder<'a> {
    pub fn new(scenario: &'a Scenario, cache_dir: Option<&Path>) -> Self {
        Builder {
            scenario,
            cache_dir: cache_dir.map(Path::to_path_buf),
            rng: SystemRandom::new(),
            memo: KeyMemo::default(),
        }
    }

    /// Reuse (and add to) the keys generated by an earlier build.
    pub fn with_memo(mut self, memo: KeyMemo) -> Self {
        self.memo = memo;
        self
    }

    /// The PKCS#8 DER remembered under `label`, or `generate`d and remembered.
    fn remembered(
        &self,
        label: &str,
        generate: impl FnOnce() -> Result<Vec<u8>, String>,
    ) -> Result<Vec<u8>, String> {
        if let Some(d) = self
            .memo
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(label)
        {
            return Ok(d.clone());
        }
        let d = generate()?;
        self.memo
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(label.to_string(), d.clone());
        Ok(d)
    }

    fn ca_key(&self, label: &str) -> Result<rcgen::KeyPair, String> {
        let der = self.remembered(label, || {
            rcgen::KeyPair::generate()
                .map(|k| k.serialize_der())
                .map_err(|e| e.to_string())
        })?;
        rcgen::KeyPair::try_from(der.as_slice()).map_err(|e| e.to_string())
    }

    fn read_pem(
        &self,
        pem: Option<&str>,
        pem_file: Option<&str>,
    ) -> Result<Option<String>, String> {
        if let Some(p) = pem {
            return Ok(Some(p.to_string()));
        }
        if let Some(f) = pem_file {
            let path = self.scenario.resolve_path(f);
            return std::fs::read_to_string(&path)
                .map(Some)
                .map_err(|e| format!("reading {}: {e}", path.display()));
        }
        Ok(None)
    }

    fn material(
        &self,
        spec: &KeySpec,
        ov: Option<&ObjectVersion>,
        label: &str,
    ) -> Result<Material, String> {
        let kty = spec.kty.clone().unwrap_or_else(|| "RSA".into());
        let kty_base = kty.trim_end_matches("-HSM").to_string();
        let pem = match ov {
            Some(v) if v.pem.is_some() || v.pem_file.is_some() => {
                self.read_pem(v.pem.as_deref(), v.pem_file.as_deref())?
            }
            _ => self.read_pem(spec.pem.as_deref(), spec.pem_file.as_deref())?,
        };
        match kty_base.as_str() {
            "RSA" => {
                if let Some(p) = pem {
                    let k = rsa::RsaPrivateKey::from_pkcs8_pem(&p)
                        .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(&p))
                        .map_err(|e| format!("{label}: RSA key PEM: {e}"))?;
                    return Ok(Material::Rsa(Box::new(k)));
                }
                let bits = spec.key_size.unwrap_or(2048);
                Ok(Material::Rsa(Box::new(self.rsa_generate(bits, label)?)))
            }
            "EC" => {
                let crv = spec.crv.clone().unwrap_or_else(|| "P-256".into());
                let n = coord_len(&crv);
                if let Some(p) = pem {
                    let der = crate::util::pem_blocks(&p)
                        .into_iter()
                        .find(|(l, _)| l == "PRIVATE KEY")
                        .map(|(_, d)| d)
                        .ok_or_else(|| format!("{label}: no PRIVATE KEY block"))?;
                    let point = ec_point_from_pkcs8(&der)
                        .ok_or_else(|| format!("{label}: cannot read EC public point"))?;
                    if point.len() != 1 + 2 * n || point[0] != 4 {
                        return Err(format!("{label}: EC point does not match curve {crv}"));
                    }
                    let usable = matches!(crv.as_str(), "P-256" | "P-384");
                    return Ok(Material::Ec {
                        crv,
                        pkcs8: usable.then_some(der.clone()),
                        x: point[1..1 + n].to_vec(),
                        y: point[1 + n..].to_vec(),
                    });
                }
                let alg = match crv.as_str() {
                    "P-256" => &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                    "P-384" => &ring::signature::ECDSA_P384_SHA384_ASN1_SIGNING,
                    _ => {
                        // Not a usable key; random coordinates (for negative tests of clients).
                        let mut x = vec![0u8; n];
                        let mut y = vec![0u8; n];
                        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut x);
                        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut y);
                        return Ok(Material::Ec {
                            crv,
                            pkcs8: None,
                            x,
                            y,
                        });
                    }
                };
                let doc = self.remembered(&format!("ec/{crv}/{label}"), || {
                    EcdsaKeyPair::generate_pkcs8(alg, &self.rng)
                        .map(|d| d.as_ref().to_vec())
                        .map_err(|_| format!("{label}: EC generation failed"))
                })?;
                let kp = EcdsaKeyPair::from_pkcs8(alg, &doc, &self.rng)
                    .map_err(|_| format!("{label}: EC parse failed"))?;
                let point = kp.public_key().as_ref().to_vec();
                Ok(Material::Ec {
                    crv,
                    pkcs8: Some(doc.clone()),
                    x: point[1..1 + n].to_vec(),
                    y: point[1 + n..].to_vec(),
                })
            }
            "oct" => Ok(Material::Oct),
            other => Err(format!("{label}: unsupported kty {other}")),
        }
    }

    fn rsa_generate(&self, bits: usize, label: &str) -> Result<rsa::RsaPrivateKey, String> {
        let der = self.remembered(&format!("rsa/{bits}/{label}"), || {
            self.rsa_generate_cached(bits, label)?
                .to_pkcs8_der()
                .map(|d| d.as_bytes().to_vec())
                .map_err(|e| format!("{label}: {e}"))
        })?;
        rsa::RsaPrivateKey::from_pkcs8_der(&der).map_err(|e| format!("{label}: {e}"))
    }

    fn rsa_generate_cached(&self, bits: usize, label: &str) -> Result<rsa::RsaPrivateKey, String> {
        let cache_file = self.cache_dir.as_ref().map(|d| {
            let h = crate::util::hex(&Sha256::digest(format!("{label}/{bits}").as_bytes())[..12]);
            d.join(format!("rsa-{bits}-{h}.pem"))
        });
        if let Some(f) = &cache_file {
            if let Ok(p) = std::fs::read_to_string(f) {
                if let Ok(k) = rsa::RsaPrivateKey::from_pkcs8_pem(&p) {
                    return Ok(k);
                }
            }
        }
        let k = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), bits)
            .map_err(|e| format!("{label}: RSA generation: {e}"))?;
        if let Some(f) = &cache_file {
            if let Ok(pem) = k.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF) {
                let _ = std::fs::create_dir_all(f.parent().unwrap_or(Path::new(".")));
                let tmp = f.with_extension("tmp");
                if std::fs::write(&tmp, pem.as_bytes()).is_ok() {
                    let _ = std::fs::rename(&tmp, f);
                }
            }
        }
        Ok(k)
    }

    pub fn build(&self) -> Result<Store, String> {
        let sc = self.scenario;
        // Scenario CA chain: root → intermediate (EC P-256: cheap).
        let root_key = self.ca_key("ca/root")?;
        let mut root_params =
            rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        root_params.distinguished_name = dn("CN=kv-emulator Vault Root CA, O=kv-emulator");
        root_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        root_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        set_validity(&mut root_params, 3650);
        let root = rcgen::CertifiedIssuer::self_signed(root_params, root_key)
            .map_err(|e| e.to_string())?;
        let int_key = self.ca_key("ca/intermediate")?;
        let mut int_params =
            rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        int_params.distinguished_name = dn("CN=kv-emulator Vault Intermediate CA, O=kv-emulator");
        int_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        int_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        int_params.use_authority_key_identifier_extension = true;
        set_validity(&mut int_params, 3650);
        let inter = rcgen::CertifiedIssuer::signed_by(int_params, int_key, &root)
            .map_err(|e| e.to_string())?;
        let chain_ders = vec![inter.der().to_vec(), root.der().to_vec()];

        let mut vaults = BTreeMap::new();
        for v in &sc.vaults {
            let cloud = scenario::cloud_by_name(v.cloud.as_deref())
                .ok_or_else(|| format!("unknown cloud for {}", v.name))?;
            let mut vs = VaultState {
                name: v.name.clone(),
                cloud,
                tenant: v.tenant.clone(),
                location: v.location.clone().unwrap_or_else(|| "eastus".into()),
                secrets: BTreeMap::new(),
                keys: BTreeMap::new(),
                certs: BTreeMap::new(),
            };
            for s in &v.secrets {
                let mut vers = Vec::new();
                if s.versions.is_empty() {
                    let value = value_of(s.value.as_deref(), s.generate.as_ref());
                    vers.push(scenario::SecretVersion {
                        value: Some(value),
                        generate: None,
                        version: None,
                        content_type: s.content_type.clone(),
                        enabled: s.enabled,
                        created: s.created,
                        nbf: None,
                        exp: None,
                        tags: s.tags.clone(),
                    });
                } else {
                    vers = s.versions.clone();
                }
                let mut out = Vec::new();
                for (i, sv) in vers.iter().enumerate() {
                    let created = sv.created.unwrap_or(BASE_CREATED + i as i64 * 3600);
                    out.push(SecretVer {
                        name: s.name.clone(),
                        version: sv.version.clone().unwrap_or_else(|| {
                            version_id(&format!("{}/secrets/{}/{i}", v.name, s.name))
                        }),
                        value: value_of(sv.value.as_deref(), sv.generate.as_ref()),
                        content_type: sv.content_type.clone().or_else(|| s.content_type.clone()),
                        attrs: Attrs {
                            enabled: sv.enabled.unwrap_or(true),
                            created,
                            updated: created,
                            nbf: sv.nbf,
                            exp: sv.exp,
                        },
                        tags: sv.tags.clone().or_else(|| s.tags.clone()),
                        kid: None,
                        pem_form: None,
                    });
                }
                vs.secrets.insert(s.name.to_ascii_lowercase(), out);
            }
            for k in &v.keys {
                let vers = if k.versions.is_empty() {
                    vec![ObjectVersion {
                        enabled: k.enabled,
                        created: k.created,
                        ..Default::default()
                    }]
                } else {
                    k.versions.clone()
                };
                let mut out = Vec::new();
                for (i, ov) in vers.iter().enumerate() {
                    let label = format!("{}/keys/{}/{i}", v.name, k.name);
                    let m = self.material(&k.spec, Some(ov), &label)?;
                    let mut jwk = m.jwk();
                    if let Some(kty) = &k.spec.kty {
                        jwk.insert("kty".into(), json!(kty));
                    }
                    let default_ops: &[&str] = match jwk.get("kty").and_then(Value::as_str) {
                        Some("EC") | Some("EC-HSM") => &["sign", "verify"],
                        Some("oct") | Some("oct-HSM") => {
                            &["encrypt", "decrypt", "wrapKey", "unwrapKey"]
                        }
                        _ => &[
                            "encrypt",
                            "decrypt",
                            "sign",
                            "verify",
                            "wrapKey",
                            "unwrapKey",
                        ],
                    };
                    let created = ov.created.unwrap_or(BASE_CREATED + i as i64 * 3600);
                    out.push(KeyVer {
                        name: k.name.clone(),
                        version: ov.version.clone().unwrap_or_else(|| version_id(&label)),
                        jwk,
                        key_ops: k
                            .key_ops
                            .clone()
                            .unwrap_or_else(|| default_ops.iter().map(|s| s.to_string()).collect()),
                        attrs: Attrs {
                            enabled: ov.enabled.unwrap_or(true),
                            created,
                            updated: created,
                            nbf: None,
                            exp: None,
                        },
                        tags: k.tags.clone(),
                        managed: false,
                    });
                }
                vs.keys.insert(k.name.to_ascii_lowercase(), out);
            }
            for c in &v.certificates {
                let vers = if c.versions.is_empty() {
                    vec![ObjectVersion {
                        enabled: c.enabled,
                        created: c.created,
                        ..Default::default()
                    }]
                } else {
                    c.versions.clone()
                };
                let content_type = c
                    .content_type
                    .clone()
                    .unwrap_or_else(|| "application/x-pkcs12".into());
                let subject = c
                    .subject
                    .clone()
                    .unwrap_or_else(|| format!("CN={}", c.name));
                let self_signed = c.issuer.as_deref() == Some("self");
                let days = c.validity_days.unwrap_or(365);
                let mut certs = Vec::new();
                let mut keys = Vec::new();
                let mut secrets = Vec::new();
                for (i, ov) in vers.iter().enumerate() {
                    let label = format!("{}/certificates/{}/{i}", v.name, c.name);
                    let version = ov.version.clone().unwrap_or_else(|| version_id(&label));
                    let m = self.material(&c.key, Some(ov), &label)?;
                    let pkcs8 = m.pkcs8().map_err(|e| format!("{label}: {e}"))?;
                    let kp = rcgen::KeyPair::try_from(pkcs8.as_slice())
                        .map_err(|e| format!("{label}: key not usable for a certificate: {e}"))?;
                    let mut params = rcgen::CertificateParams::new(c.dns_names.clone())
                        .map_err(|e| e.to_string())?;
                    params.distinguished_name = dn(&subject);
                    params.key_usages = vec![
                        rcgen::KeyUsagePurpose::DigitalSignature,
                        rcgen::KeyUsagePurpose::KeyEncipherment,
                    ];
                    params.extended_key_usages = vec![
                        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
                    ];
                    params.use_authority_key_identifier_extension = !self_signed;
                    params.serial_number = Some(rcgen::SerialNumber::from_slice(&random_serial()));
                    let (nbf, exp) = set_validity(&mut params, days);
                    let (leaf_der, chain): (Vec<u8>, Vec<Vec<u8>>) = if self_signed {
                        let cert = params
                            .self_signed(&kp)
                            .map_err(|e| format!("{label}: {e}"))?;
                        (cert.der().to_vec(), vec![])
                    } else {
                        let cert = params
                            .signed_by(&kp, &inter)
                            .map_err(|e| format!("{label}: {e}"))?;
                        (cert.der().to_vec(), chain_ders.clone())
                    };
                    let mut all = vec![leaf_der.clone()];
                    all.extend(chain.iter().cloned());
                    match c.chain_order.as_deref() {
                        None | Some("leaf-first") => {}
                        Some("root-first") => all.reverse(),
                        Some("mixed") if all.len() == 3 => {
                            all = vec![all[2].clone(), all[0].clone(), all[1].clone()]
                        }
                        Some("mixed") => all.reverse(),
                        Some(other) => {
                            return Err(format!(
                            "{label}: chain_order {other:?}: use leaf-first, root-first or mixed"
                        ))
                        }
                    }
                    let pem_text = {
                        let mut s = pem_encode("PRIVATE KEY", &pkcs8);
                        for d in &all {
                            s.push_str(&pem_encode("CERTIFICATE", d));
                        }
                        s
                    };
                    let pfx = make_pfx(&pkcs8, &all, &c.name)?;
                    let created = ov.created.unwrap_or(BASE_CREATED + i as i64 * 3600);
                    let attrs = Attrs {
                        enabled: ov.enabled.unwrap_or(true),
                        created,
                        updated: created,
                        nbf: Some(nbf),
                        exp: Some(exp),
                    };
                    let base = format!("https://{}.{}", v.name, cloud.vault_suffix);
                    let is_pem = content_type == "application/x-pem-file";
                    secrets.push(SecretVer {
                        name: c.name.clone(),
                        version: version.clone(),
                        value: if is_pem { pem_text.clone() } else { b64(&pfx) },
                        content_type: Some(content_type.clone()),
                        attrs: attrs.clone(),
                        tags: c.tags.clone(),
                        kid: Some(format!("{base}/keys/{}/{version}", c.name)),
                        pem_form: Some(pem_text),
                    });
                    let mut jwk = m.jwk();
                    let ops: Vec<String> = if jwk.get("kty").and_then(Value::as_str) == Some("EC") {
                        vec!["sign".into(), "verify".into()]
                    } else {
                        [
                            "sign",
                            "verify",
                            "wrapKey",
                            "unwrapKey",
                            "encrypt",
                            "decrypt",
                        ]
                        .iter()
                        .map(|s| s.to_string())
                        .collect()
                    };
                    if let Some(kty) = &c.key.kty {
                        if kty.ends_with("-HSM") {
                            jwk.insert("kty".into(), json!(kty));
                        }
                    }
                    let (kty, key_size, crv) = match &m {
                        Material::Rsa(k) => ("RSA".to_string(), Some(k.size() * 8), None),
                        Material::Ec { crv, .. } => ("EC".to_string(), None, Some(crv.clone())),
                        Material::Oct => ("oct".to_string(), None, None),
                    };
                    keys.push(KeyVer {
                        name: c.name.clone(),
                        version: version.clone(),
                        jwk,
                        key_ops: ops,
                        attrs: attrs.clone(),
                        tags: c.tags.clone(),
                        managed: true,
                    });
                    certs.push(CertVer {
                        name: c.name.clone(),
                        version,
                        cer: leaf_der,
                        attrs,
                        tags: c.tags.clone(),
                        content_type: content_type.clone(),
                        subject: subject.clone(),
                        dns_names: c.dns_names.clone(),
                        kty,
                        key_size,
                        crv,
                        self_signed,
                        validity_months: (days / 30).max(1),
                    });
                }
                let lname = c.name.to_ascii_lowercase();
                if vs.secrets.contains_key(&lname) || vs.keys.contains_key(&lname) {
                    return Err(format!(
                        "vault {}: certificate {} collides with a secret or key of the same name",
                        v.name, c.name
                    ));
                }
                vs.certs.insert(lname.clone(), certs);
                vs.keys.insert(lname.clone(), keys);
                vs.secrets.insert(lname, secrets);
            }
            vaults.insert(v.name.to_ascii_lowercase(), vs);
        }

        let mut identities = Vec::new();
        for id in &sc.identities {
            let pem = self.read_pem(
                id.certificate_pem.as_deref(),
                id.certificate_file.as_deref(),
            )?;
            let (cert_der, cert_key) = match pem {
                Some(p) => {
                    let der = crate::util::pem_blocks(&p)
                        .into_iter()
                        .find(|(l, _)| l == "CERTIFICATE")
                        .map(|(_, d)| d)
                        .ok_or_else(|| {
                            format!("identity {}: no CERTIFICATE in PEM", id.client_id)
                        })?;
                    let (_, cert) = x509_parser::parse_x509_certificate(&der)
                        .map_err(|e| format!("identity {}: bad certificate: {e}", id.client_id))?;
                    let key = rsa::RsaPublicKey::from_public_key_der(
                        cert.tbs_certificate.subject_pki.raw,
                    )
                    .map_err(|e| {
                        format!(
                            "identity {}: certificate key must be RSA: {e}",
                            id.client_id
                        )
                    })?;
                    (Some(der), Some(key))
                }
                None => (None, None),
            };
            let object_id = id
                .object_id
                .clone()
                .unwrap_or_else(|| guid_from(&format!("oid/{}", id.client_id)));
            identities.push(IdentityState {
                spec: id.clone(),
                object_id,
                cert_der,
                cert_key,
            });
        }
        let mut issuers = Vec::new();
        for i in &sc.issuers {
            let what = |e: String| format!("issuer {}: {e}", i.issuer);
            let mut keys = Vec::new();
            if let Some(j) = &i.jwks {
                keys.extend(crate::issuer::keys_from_jwks(j).map_err(what)?);
            }
            if let Some(f) = &i.jwks_file {
                let path = sc.resolve_path(f);
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| what(format!("reading {}: {e}", path.display())))?;
                let v: Value = serde_json::from_str(&text)
                    .map_err(|e| what(format!("{}: {e}", path.display())))?;
                keys.extend(crate::issuer::keys_from_jwks(&v).map_err(what)?);
            }
            for f in &i.pem_files {
                let path = sc.resolve_path(f);
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| what(format!("reading {}: {e}", path.display())))?;
                keys.extend(
                    crate::issuer::keys_from_pem(&text)
                        .map_err(|e| what(format!("{}: {e}", path.display())))?,
                );
            }
            if keys.is_empty() {
                return Err(what("no RSA signing key".into()));
            }
            issuers.push(IssuerKeys {
                issuer: i.issuer.clone(),
                keys,
            });
        }
        Ok(Store {
            vaults,
            identities,
            issuers,
            root_ca_pem: root.pem(),
            intermediate_ca_pem: inter.pem(),
        })
    }
}

fn value_of(value: Option<&str>, generate: Option<&scenario::Generate>) -> String {
    if let Some(g) = generate {
        let mut s = String::with_capacity(g.bytes);
        if g.repeat.is_empty() {
            return s;
        }
        while s.len() < g.bytes {
            s.push_str(&g.repeat);
        }
        let mut cut = g.bytes.min(s.len());
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        return s;
    }
    value.unwrap_or_default().to_string()
}

fn guid_from(label: &str) -> String {
    let h = version_id(label);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn random_serial() -> [u8; 16] {
    let mut s = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut s);
    s[0] &= 0x7f;
    s[0] |= 0x01;
    s
}

/// Set not_before = now − 1 day, not_after = now + days. Returns (nbf, exp) Unix seconds.
pub fn set_validity(p: &mut rcgen::CertificateParams, days: i64) -> (i64, i64) {
    let now = time::OffsetDateTime::now_utc();
    let nb = now - time::Duration::days(1);
    let na = now + time::Duration::days(days);
    p.not_before = nb;
    p.not_after = na;
    (nb.unix_timestamp(), na.unix_timestamp())
}

/// `CN=a, O=b` → DistinguishedName.
pub fn dn(s: &str) -> rcgen::DistinguishedName {
    let mut d = rcgen::DistinguishedName::new();
    for part in s.split(',') {
        if let Some((k, v)) = part.split_once('=') {
            let ty = match k.trim().to_ascii_uppercase().as_str() {
                "CN" => rcgen::DnType::CommonName,
                "O" => rcgen::DnType::OrganizationName,
                "OU" => rcgen::DnType::OrganizationalUnitName,
                "C" => rcgen::DnType::CountryName,
                "L" => rcgen::DnType::LocalityName,
                "ST" => rcgen::DnType::StateOrProvinceName,
                _ => continue,
            };
            d.push(ty, v.trim());
        }
    }
    d
}

/// PFX with an empty password, SHA1/3DES PBE (what Key Vault uses), SHA-1 MAC.
pub fn make_pfx(pkcs8: &[u8], chain: &[Vec<u8>], alias: &str) -> Result<Vec<u8>, String> {
    let certs = chain
        .iter()
        .map(|d| p12_keystore::Certificate::from_der(d).map_err(|e| format!("pfx cert: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let local_key_id = Sha1::digest(chain.first().map(Vec::as_slice).unwrap_or_default()).to_vec();
    let mut ks = p12_keystore::KeyStore::new();
    ks.add_entry(
        alias,
        p12_keystore::KeyStoreEntry::PrivateKeyChain(p12_keystore::PrivateKeyChain::new(
            pkcs8,
            local_key_id,
            certs,
        )),
    );
    ks.writer("")
        .encryption_algorithm(p12_keystore::EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc)
        .encryption_iterations(2000)
        .mac_algorithm(p12_keystore::MacAlgorithm::HmacSha1)
        .mac_iterations(2000)
        .write()
        .map_err(|e| format!("writing PFX: {e}"))
}

pub fn x5t(der: &[u8]) -> String {
    b64url(&Sha1::digest(der))
}
