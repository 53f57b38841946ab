//! A test OIDC issuer shaped like a Kubernetes service-account token issuer: an RSA signing
//! key, its JWKS (for a scenario's `issuers`), and RS256 JWTs with the claims a projected
//! service-account token carries — or any claims a negative test wants (wrong audience,
//! another namespace's subject, expired).
//!
//! ```no_run
//! use kv_emulator::issuer::{ServiceAccountToken, TestIssuer};
//! let iss = TestIssuer::load_or_generate("https://oidc.kv-emulator.test/cluster", "/tmp/issuer.pem".as_ref())?;
//! let scenario_entry = iss.trusted_issuer();          // {"issuer": …, "jwks": {"keys": […]}}
//! let jwt = iss.mint(&ServiceAccountToken::new("demo", "workload").pod("demo-pod", "uid-1"));
//! # Ok::<(), String>(())
//! ```

use crate::util::{b64url, b64url_decode, now, random_guid};
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::path::Path;

/// The audience the workload-identity webhook projects tokens for (AAD's default FIC audience).
pub const AZURE_AUDIENCE: &str = crate::scenario::DEFAULT_FEDERATED_AUDIENCE;

/// `kid` of a key the way the Kubernetes API server derives it: base64url (no padding) of
/// the SHA-256 of the DER SubjectPublicKeyInfo.
pub fn kid_of(key: &RsaPublicKey) -> String {
    match key.to_public_key_der() {
        Ok(der) => b64url(&Sha256::digest(der.as_bytes())),
        Err(_) => String::new(),
    }
}

/// Public JWK (RS256, `use: sig`).
pub fn jwk_of(key: &RsaPublicKey, kid: &str) -> Value {
    json!({
        "kty": "RSA",
        "use": "sig",
        "alg": "RS256",
        "kid": kid,
        "n": b64url(&key.n().to_bytes_be()),
        "e": b64url(&key.e().to_bytes_be()),
    })
}

/// RSA keys of a JWKS document (`{"keys": [...]}`), with their `kid`s. Non-RSA keys are skipped.
pub fn keys_from_jwks(jwks: &Value) -> Result<Vec<(Option<String>, RsaPublicKey)>, String> {
    let keys = jwks["keys"]
        .as_array()
        .ok_or("JWKS has no \"keys\" array")?;
    let mut out = Vec::new();
    for k in keys {
        if k["kty"].as_str() != Some("RSA") {
            continue;
        }
        let part = |name: &str| {
            k[name]
                .as_str()
                .and_then(b64url_decode)
                .ok_or_else(|| format!("JWK {name} missing or not base64url"))
        };
        let key = RsaPublicKey::new(
            BigUint::from_bytes_be(&part("n")?),
            BigUint::from_bytes_be(&part("e")?),
        )
        .map_err(|e| format!("JWK: {e}"))?;
        out.push((k["kid"].as_str().map(str::to_string), key));
    }
    Ok(out)
}

/// RSA public keys in PEM text: `PUBLIC KEY`, `RSA PUBLIC KEY`, `CERTIFICATE`, `PRIVATE KEY`
/// or `RSA PRIVATE KEY` blocks, each with its Kubernetes-style `kid`.
pub fn keys_from_pem(text: &str) -> Result<Vec<(Option<String>, RsaPublicKey)>, String> {
    let mut out = Vec::new();
    for (label, der) in crate::util::pem_blocks(text) {
        let key = match label.as_str() {
            "PUBLIC KEY" => RsaPublicKey::from_public_key_der(&der).map_err(|e| e.to_string())?,
            "RSA PUBLIC KEY" => RsaPublicKey::from_pkcs1_der(&der).map_err(|e| e.to_string())?,
            "PRIVATE KEY" => RsaPrivateKey::from_pkcs8_der(&der)
                .map_err(|e| e.to_string())?
                .to_public_key(),
            "RSA PRIVATE KEY" => RsaPrivateKey::from_pkcs1_der(&der)
                .map_err(|e| e.to_string())?
                .to_public_key(),
            "CERTIFICATE" => {
                let (_, cert) =
                    x509_parser::parse_x509_certificate(&der).map_err(|e| e.to_string())?;
                RsaPublicKey::from_public_key_der(cert.tbs_certificate.subject_pki.raw)
                    .map_err(|e| format!("certificate key is not RSA: {e}"))?
            }
            _ => continue,
        };
        out.push((Some(kid_of(&key)), key));
    }
    if out.is_empty() {
        return Err("no RSA key in PEM".into());
    }
    Ok(out)
}

/// An issuer with an RSA signing key.
pub struct TestIssuer {
    pub issuer: String,
    pub kid: String,
    key: RsaPrivateKey,
}

impl TestIssuer {
    /// From a PKCS#8 or PKCS#1 PEM private key.
    pub fn from_pem(issuer: &str, pem: &str) -> Result<TestIssuer, String> {
        let key = RsaPrivateKey::from_pkcs8_pem(pem)
            .or_else(|_| RsaPrivateKey::from_pkcs1_pem(pem))
            .map_err(|e| format!("issuer key PEM: {e}"))?;
        Ok(Self::from_key(issuer, key))
    }

    /// A fresh 2048-bit key (slow in debug builds: prefer `load_or_generate`).
    pub fn generate(issuer: &str) -> Result<TestIssuer, String> {
        let key = RsaPrivateKey::new(&mut rand::thread_rng(), 2048)
            .map_err(|e| format!("RSA generation: {e}"))?;
        Ok(Self::from_key(issuer, key))
    }

    /// The key in `path` (PEM), generated and written (atomically, then mode 0600) if missing.
    pub fn load_or_generate(issuer: &str, path: &Path) -> Result<TestIssuer, String> {
        if let Ok(pem) = std::fs::read_to_string(path) {
            return Self::from_pem(issuer, &pem);
        }
        let me = Self::generate(issuer)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        crate::write_atomic(path, me.private_pem().as_bytes())
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            })
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        Ok(me)
    }

    fn from_key(issuer: &str, key: RsaPrivateKey) -> TestIssuer {
        TestIssuer {
            issuer: issuer.to_string(),
            kid: kid_of(&key.to_public_key()),
            key,
        }
    }

    pub fn private_pem(&self) -> String {
        self.key
            .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
            .map(|p| p.to_string())
            .unwrap_or_default()
    }

    pub fn public_pem(&self) -> String {
        self.key
            .to_public_key()
            .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap_or_default()
    }

    /// `{"keys": [jwk]}`, as the issuer's `jwks_uri` serves it.
    pub fn jwks(&self) -> Value {
        json!({"keys": [jwk_of(&self.key.to_public_key(), &self.kid)]})
    }

    /// The scenario `issuers` entry that trusts this issuer.
    pub fn trusted_issuer(&self) -> Value {
        json!({"issuer": self.issuer, "jwks": self.jwks()})
    }

    /// Sign `claims` (RS256, header `{"alg":"RS256","kid":…}` like the Kubernetes API server).
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_kid(claims, Some(&self.kid))
    }

    /// Sign with another (or no) `kid` in the header, for negative tests.
    pub fn sign_with_kid(&self, claims: &Value, kid: Option<&str>) -> String {
        let mut header = json!({"alg": "RS256"});
        if let Some(k) = kid {
            header["kid"] = json!(k);
        }
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let digest = Sha256::digest(input.as_bytes());
        let sig = self
            .key
            .sign(Pkcs1v15Sign::new::<Sha256>(), &digest)
            .unwrap_or_default();
        format!("{input}.{}", b64url(&sig))
    }

    /// A service-account token (see [`ServiceAccountToken`]).
    pub fn mint(&self, t: &ServiceAccountToken) -> String {
        self.sign(&t.claims(&self.issuer))
    }
}

/// Claims of a projected Kubernetes service-account token. Defaults: audience
/// `api://AzureADTokenExchange`, valid from now for one hour.
#[derive(Debug, Clone)]
pub struct ServiceAccountToken {
    pub namespace: String,
    pub service_account: String,
    pub audiences: Vec<String>,
    /// `iat` / `nbf` = now + this (negative: issued in the past).
    pub issued_offset_secs: i64,
    /// `exp` = `iat` + this.
    pub ttl_secs: i64,
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
    /// Replaces `sub` (default `system:serviceaccount:<namespace>:<service account>`).
    pub subject: Option<String>,
    /// Replaces `iss` (default: the issuer's).
    pub issuer: Option<String>,
    /// Merged last: add, replace, or (with `null`) remove claims.
    pub extra: Map<String, Value>,
}

impl ServiceAccountToken {
    pub fn new(namespace: &str, service_account: &str) -> ServiceAccountToken {
        ServiceAccountToken {
            namespace: namespace.into(),
            service_account: service_account.into(),
            audiences: vec![AZURE_AUDIENCE.into()],
            issued_offset_secs: 0,
            ttl_secs: 3600,
            pod_name: None,
            pod_uid: None,
            subject: None,
            issuer: None,
            extra: Map::new(),
        }
    }
    pub fn audiences(mut self, aud: &[&str]) -> Self {
        self.audiences = aud.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn pod(mut self, name: &str, uid: &str) -> Self {
        self.pod_name = Some(name.into());
        self.pod_uid = Some(uid.into());
        self
    }
    pub fn ttl(mut self, secs: i64) -> Self {
        self.ttl_secs = secs;
        self
    }
    pub fn issued_offset(mut self, secs: i64) -> Self {
        self.issued_offset_secs = secs;
        self
    }
    pub fn subject(mut self, sub: &str) -> Self {
        self.subject = Some(sub.into());
        self
    }
    pub fn issuer(mut self, iss: &str) -> Self {
        self.issuer = Some(iss.into());
        self
    }
    pub fn claim(mut self, name: &str, value: Value) -> Self {
        self.extra.insert(name.into(), value);
        self
    }

    /// The claims, for an issuer whose URL is `issuer`.
    pub fn claims(&self, issuer: &str) -> Value {
        let iat = now() + self.issued_offset_secs;
        let mut k8s = json!({
            "namespace": self.namespace,
            "serviceaccount": {"name": self.service_account, "uid": crate::util::random_guid()},
        });
        if let (Some(n), Some(u)) = (&self.pod_name, &self.pod_uid) {
            k8s["pod"] = json!({"name": n, "uid": u});
        }
        let mut c = json!({
            "aud": self.audiences,
            "exp": iat + self.ttl_secs,
            "iat": iat,
            "nbf": iat,
            "iss": self.issuer.as_deref().unwrap_or(issuer),
            "jti": random_guid(),
            "kubernetes.io": k8s,
            "sub": self.subject.clone().unwrap_or_else(|| format!(
                "system:serviceaccount:{}:{}",
                self.namespace, self.service_account
            )),
        });
        if let Some(obj) = c.as_object_mut() {
            for (k, v) in &self.extra {
                if v.is_null() {
                    obj.remove(k);
                } else {
                    obj.insert(k.clone(), v.clone());
                }
            }
        }
        c
    }
}

/// Write `files` (name, bytes) into a projected volume directory the way kubelet's
/// AtomicWriter does: a new `..YYYY_MM_DD_HH_MM_SS.<digits>` directory holding the files
/// (mode `mode`), the `..data` symlink switched to it atomically (via `..data_tmp` and a
/// rename), one `<name> -> ..data/<name>` symlink per file, the previous timestamped
/// directory removed. Calling it again rotates the contents (a refreshed token). Returns the
/// new timestamped directory.
pub fn write_projected_volume(
    volume_dir: &Path,
    files: &[(&str, &[u8])],
    mode: u32,
) -> std::io::Result<std::path::PathBuf> {
    use std::os::unix::fs::{symlink, PermissionsExt};
    std::fs::create_dir_all(volume_dir)?;
    let data = volume_dir.join("..data");
    let old = std::fs::read_link(&data).ok();
    let name = format!(
        "..{}.{}",
        crate::util::utc(crate::util::now_millis() as i128, "{Y}_{M}_{D}_{h}_{m}_{s}"),
        rand::Rng::gen_range(&mut rand::thread_rng(), 100_000_000u32..1_000_000_000)
    );
    let ts_dir = volume_dir.join(&name);
    std::fs::create_dir(&ts_dir)?;
    std::fs::set_permissions(&ts_dir, std::fs::Permissions::from_mode(0o755))?;
    for (file, bytes) in files {
        let p = ts_dir.join(file);
        std::fs::write(&p, bytes)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
    }
    let tmp = volume_dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&name, &tmp)?;
    std::fs::rename(&tmp, &data)?;
    for (file, _) in files {
        let visible = volume_dir.join(file);
        if std::fs::symlink_metadata(&visible).is_err() {
            symlink(Path::new("..data").join(file), &visible)?;
        }
    }
    if let Some(o) = old.filter(|o| o.as_os_str() != name.as_str()) {
        let _ = std::fs::remove_dir_all(volume_dir.join(o));
    }
    Ok(ts_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_and_read_back() {
        let pem = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/material/issuer-key.pem"),
        )
        .expect("issuer key");
        let iss = TestIssuer::from_pem("https://issuer.test", &pem).expect("key");
        let jwt = iss.mint(&ServiceAccountToken::new("ns", "sa").pod("p", "u").ttl(60));
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let c: Value =
            serde_json::from_slice(&b64url_decode(parts[1]).expect("b64")).expect("json");
        assert_eq!(c["sub"], "system:serviceaccount:ns:sa");
        assert_eq!(c["aud"], json!([AZURE_AUDIENCE]));
        assert_eq!(c["kubernetes.io"]["pod"]["name"], "p");
        assert_eq!(
            c["exp"].as_i64().unwrap_or(0) - c["iat"].as_i64().unwrap_or(0),
            60
        );
        let keys = keys_from_jwks(&iss.jwks()).expect("jwks");
        assert_eq!(keys[0].0.as_deref(), Some(iss.kid.as_str()));
        let from_pem = keys_from_pem(&iss.public_pem()).expect("pem");
        assert_eq!(from_pem[0].0.as_deref(), Some(iss.kid.as_str()));
        assert_eq!(from_pem[0].1, keys[0].1);
    }

    #[test]
    fn projected_volume_like_kubelet() {
        let dir =
            std::env::temp_dir().join(format!("kv-emulator-projected-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = write_projected_volume(&dir, &[("token", b"one")], 0o600).expect("write");
        let link = dir.join("token");
        assert_eq!(
            std::fs::read_link(&link).expect("link"),
            Path::new("..data/token")
        );
        assert_eq!(std::fs::read(&link).expect("read"), b"one");
        let second = write_projected_volume(&dir, &[("token", b"two")], 0o600).expect("rotate");
        assert_eq!(std::fs::read(&link).expect("read"), b"two");
        assert!(!first.exists() && second.exists());
        let target = std::fs::read_link(dir.join("..data")).expect("..data");
        assert!(target.to_string_lossy().starts_with(".."), "{target:?}");
        assert!(!dir.join("..data_tmp").exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(second.join("token"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
