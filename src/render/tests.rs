//! Render tests: golden outputs from the recorded Key Vault bodies, chain ordering on
//! generated chains, PKCS#12 variants, and hostile inputs that must fail cleanly.

use base64::Engine as _;
use der::Tagged as _;
use serde_json::Value;

use super::asn1::{self, PublicKey};
use super::chain::CertInfo;
use super::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keyvault/");

fn fixture(name: &str) -> Value {
    let path = format!("{FIXTURES}{name}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn b64url(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn key_material(body: &Value) -> KeyMaterial {
    let k = &body["key"];
    let bytes = |name: &str| k[name].as_str().map(b64url);
    KeyMaterial {
        kty: k["kty"].as_str().unwrap().to_owned(),
        crv: k["crv"].as_str().map(str::to_owned),
        n: bytes("n"),
        e: bytes("e"),
        x: bytes("x"),
        y: bytes("y"),
        kid: k["kid"].as_str().map(str::to_owned),
    }
}

fn opts(format: Option<Format>, encoding: Option<Encoding>, split: bool) -> RenderOptions {
    RenderOptions {
        format,
        encoding,
        split_cert_and_key: split,
    }
}

fn only(files: Vec<RenderedFile>) -> Vec<u8> {
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].suffix, None);
    files[0].bytes.to_vec()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// (label, DER) of every PEM block.
fn blocks(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    pem::decode_all(&text(bytes))
        .unwrap()
        .into_iter()
        .map(|b| (b.label, b.der.to_vec()))
        .collect()
}

fn pem_of(label: &str, der: &[u8]) -> String {
    text(&pem::encode(label, der))
}

fn cert_public(der: &[u8]) -> PublicKey {
    CertInfo::parse(der).unwrap().public_key.unwrap()
}

fn key_public(pkcs8: &[u8]) -> PublicKey {
    asn1::pkcs8_normalise(pkcs8).unwrap().1.unwrap()
}

// ---------------------------------------------------------------- options

#[test]
fn validate_options_table() {
    use Encoding::*;
    use Format::*;
    use ObjectKind::*;
    let cases: &[(ObjectKind, Option<Format>, Option<Encoding>, bool)] = &[
        (Secret, None, None, true),
        (Secret, Some(Pem), Some(Base64), true),
        (Secret, Some(Pfx), Some(Base64), true),
        (Secret, Some(Der), None, false),
        (Secret, Some(Jwk), None, false),
        (Key, None, None, true),
        (Key, Some(Pem), None, true),
        (Key, Some(Der), None, true),
        (Key, Some(Jwk), None, true),
        (Key, Some(Pfx), None, false),
        (Key, None, Some(Utf8), false),
        (Cert, None, None, true),
        (Cert, Some(Der), None, true),
        (Cert, Some(Pfx), None, false),
        (Cert, Some(Jwk), None, false),
        (Cert, None, Some(Hex), false),
    ];
    for &(kind, format, encoding, ok) in cases {
        let result = validate_options(kind, &opts(format, encoding, false));
        assert_eq!(
            result.is_ok(),
            ok,
            "{kind:?} {format:?} {encoding:?}: {result:?}"
        );
    }
    let err = validate_options(Cert, &opts(Some(Pfx), None, false)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "objectFormat `pfx` does not apply to objectType cert; use one of pem, der"
    );
}

// ---------------------------------------------------------------- plain secrets

#[test]
fn plain_secret_encodings() {
    let cases: &[(&str, Option<Encoding>, &[u8])] = &[
        ("SECRET_VALUE", None, b"SECRET_VALUE"),
        ("  spaced\n", Some(Encoding::Utf8), b"  spaced\n"),
        ("aGVsbG8=", Some(Encoding::Base64), b"hello"),
        ("\n  aGVs\nbG8=  \n", Some(Encoding::Base64), b"hello"),
        ("aGVsbG8", Some(Encoding::Base64), b"hello"),
        ("68656c6c6f", Some(Encoding::Hex), b"hello"),
        (" 68656C6C6F\n", Some(Encoding::Hex), b"hello"),
        ("", Some(Encoding::Hex), b""),
    ];
    for &(value, encoding, want) in cases {
        for format in [None, Some(Format::Pem), Some(Format::Pfx)] {
            let files = render_secret(
                "s",
                value,
                Some("text/plain"),
                false,
                &opts(format, encoding, true),
            )
            .unwrap();
            assert_eq!(only(files), want, "{value:?} {encoding:?}");
        }
    }
}

#[test]
fn plain_secret_decode_errors_name_object_and_encoding_not_value() {
    let cases = [
        (
            "sekrit!!value",
            Encoding::Base64,
            "object `db-pass`: value is not valid base64 (objectEncoding base64)",
        ),
        (
            "sekrit",
            Encoding::Hex,
            "object `db-pass`: value is not valid hex (objectEncoding hex)",
        ),
        (
            "abc",
            Encoding::Hex,
            "object `db-pass`: value is not valid hex (objectEncoding hex)",
        ),
    ];
    for (value, encoding, want) in cases {
        let err = render_secret(
            "db-pass",
            value,
            None,
            false,
            &opts(None, Some(encoding), false),
        )
        .unwrap_err();
        assert!(matches!(err, RenderError::Malformed { .. }), "{err:?}");
        assert_eq!(err.to_string(), want);
        assert!(!format!("{err:?}").contains("sekrit"));
    }
}

#[test]
fn oversized_inputs_are_refused() {
    let big = "a".repeat(MAX_INPUT_BYTES + 1);
    let err = render_secret("big", &big, None, false, &RenderOptions::default()).unwrap_err();
    assert!(matches!(err, RenderError::TooLarge { .. }), "{err:?}");
    let err = render_cert("big", big.as_bytes(), &RenderOptions::default()).unwrap_err();
    assert!(matches!(err, RenderError::TooLarge { .. }), "{err:?}");
}

// ---------------------------------------------------------------- keys

const RSA_GOLDEN: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAnEEuKNT9K4eD1h4BCJSR
00M/5R5tk9C9uokrRhkTvXIQiFXclWsDEU0ZkVPcFzO7beiCT+lGrbxMMew/UfY4
Y62gCLmlP57uLdHppsjwmpLJ6xk7nio/I1PqoVEwPBWRaHw+uzK2MTeFRBN8K5Lq
+RW+OIo86pjx7BAP8EZH3oZsT3pQsyKCHiW/Gl8veLEyIdu6gw+2L7pJAiper9pI
5BRyELnSFumbEgLS97QrNMYt/K+ecKkLBoKx09Vih80jmiuRvM2QUT4tA92YdJR3
pIlDL/g/U78Tr0d7wxJT8lwwXrWbKKtIQP4P35FdCHdUWELspXi93y8Hy6u26X3A
vQIDAQAB
-----END PUBLIC KEY-----
";

const EC_GOLDEN: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEUdKTnsmM8okN/nNgV9ik94CXvScz
EXIjoHc83SChYu4470lx0kNCd46I8vxn1vsho/kQQZcdeoZGeprNJVDUnA==
-----END PUBLIC KEY-----
";

#[test]
fn recorded_keys_render_the_golden_public_key_pem() {
    for (name, golden) in [
        ("GetKey-RSA-200-js-recording.json", RSA_GOLDEN),
        ("GetKey-EC-P256-200-js-recording.json", EC_GOLDEN),
    ] {
        let jwk = key_material(&fixture(name));
        let pem = only(render_key("k", &jwk, &RenderOptions::default()).unwrap());
        assert_eq!(text(&pem), golden, "{name}");
        let explicit = only(render_key("k", &jwk, &opts(Some(Format::Pem), None, false)).unwrap());
        assert_eq!(explicit, pem);
        // DER is the PEM's body; HSM variants render the same public key.
        let der = only(render_key("k", &jwk, &opts(Some(Format::Der), None, false)).unwrap());
        assert_eq!(blocks(&pem), vec![("PUBLIC KEY".to_owned(), der)]);
        let hsm = KeyMaterial {
            kty: format!("{}-HSM", jwk.kty),
            ..jwk.clone()
        };
        assert_eq!(
            only(render_key("k", &hsm, &RenderOptions::default()).unwrap()),
            pem
        );
    }
}

#[test]
fn recorded_keys_render_a_public_jwk() {
    let body = fixture("GetKey-EC-P256-200-js-recording.json");
    let jwk = key_material(&body);
    let out = only(render_key("k", &jwk, &opts(Some(Format::Jwk), None, false)).unwrap());
    assert!(out.ends_with(b"}\n"));
    let json: Value = serde_json::from_slice(&out).unwrap();
    let k = &body["key"];
    assert_eq!(json["kty"], "EC");
    assert_eq!(json["crv"], "P-256");
    assert_eq!(json["x"], k["x"]);
    assert_eq!(json["y"], k["y"]);
    assert_eq!(json["kid"], k["kid"]);
    assert!(json.get("n").is_none() && json.get("d").is_none());

    let body = fixture("GetKey-RSA-200-js-recording.json");
    let mut jwk = key_material(&body);
    jwk.kty = "RSA-HSM".into();
    jwk.kid = None;
    let out = only(render_key("k", &jwk, &opts(Some(Format::Jwk), None, false)).unwrap());
    let json: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(json["kty"], "RSA");
    assert_eq!(json["n"], body["key"]["n"]);
    assert_eq!(json["e"], "AQAB");
    assert!(json.get("kid").is_none());
}

fn ec_key(crv: &str, x: Vec<u8>, y: Vec<u8>) -> KeyMaterial {
    KeyMaterial {
        kty: "EC".into(),
        crv: Some(crv.into()),
        x: Some(x),
        y: Some(y),
        ..KeyMaterial::default()
    }
}

#[test]
fn ec_curves_and_coordinate_lengths() {
    let cases: &[(&str, &[u8], usize)] = &[
        ("P-256", asn1::OID_P256, 32),
        ("P-384", asn1::OID_P384, 48),
        ("P-521", asn1::OID_P521, 66),
    ];
    for &(crv, oid, len) in cases {
        let x = vec![0x11; len];
        let y = vec![0x22; len];
        let der = only(
            render_key(
                "k",
                &ec_key(crv, x.clone(), y.clone()),
                &opts(Some(Format::Der), None, false),
            )
            .unwrap(),
        );
        let mut point = vec![0x04];
        point.extend_from_slice(&x);
        point.extend_from_slice(&y);
        assert_eq!(der, asn1::ec_spki(oid, &point).to_vec(), "{crv}");
        // The SPKI parses as a public key of the right size.
        let (_, spki) = <x509_parser::x509::SubjectPublicKeyInfo as x509_parser::prelude::FromDer<_>>::from_der(&der).unwrap();
        assert_eq!(spki.subject_public_key.data.len(), 1 + 2 * len, "{crv}");

        // A coordinate missing its leading zero is padded back; a longer one is refused.
        let mut short_x = vec![0x11; len - 1];
        short_x.insert(0, 0);
        let padded = only(
            render_key(
                "k",
                &ec_key(crv, vec![0x11; len - 1], y.clone()),
                &opts(Some(Format::Der), None, false),
            )
            .unwrap(),
        );
        let mut point = vec![0x04];
        point.extend_from_slice(&short_x);
        point.extend_from_slice(&y);
        assert_eq!(padded, asn1::ec_spki(oid, &point).to_vec(), "{crv}");
        let err = render_key(
            "k",
            &ec_key(crv, vec![0x11; len + 1], y),
            &RenderOptions::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains(&format!("{crv} expects {len}")),
            "{err}"
        );
    }
}

#[test]
fn key_errors() {
    let rsa = |n: Option<Vec<u8>>, e: Option<Vec<u8>>| KeyMaterial {
        kty: "RSA".into(),
        n,
        e,
        ..KeyMaterial::default()
    };
    let cases: Vec<(KeyMaterial, &str)> = vec![
        (
            ec_key("P-256K", vec![1; 32], vec![2; 32]),
            "object `k`: curve P-256K is not supported",
        ),
        (
            ec_key("SECP256K1", vec![1; 32], vec![2; 32]),
            "object `k`: curve P-256K is not supported",
        ),
        (
            ec_key("P-999", vec![1; 32], vec![2; 32]),
            "object `k`: curve `P-999` is not supported",
        ),
        (
            KeyMaterial {
                kty: "EC".into(),
                ..KeyMaterial::default()
            },
            "object `k`: EC key has no curve (`crv`)",
        ),
        (
            KeyMaterial {
                kty: "EC".into(),
                crv: Some("P-256".into()),
                y: Some(vec![1; 32]),
                ..KeyMaterial::default()
            },
            "object `k`: EC key has no `x` member",
        ),
        (
            KeyMaterial {
                kty: "EC-HSM".into(),
                crv: Some("P-256".into()),
                x: Some(vec![1; 32]),
                ..KeyMaterial::default()
            },
            "object `k`: EC key has no `y` member",
        ),
        (
            KeyMaterial {
                kty: "oct".into(),
                ..KeyMaterial::default()
            },
            "object `k`: key type `oct` is a symmetric key, which Key Vault never exports",
        ),
        (
            KeyMaterial {
                kty: "oct-HSM".into(),
                ..KeyMaterial::default()
            },
            "object `k`: key type `oct-HSM` is a symmetric key, which Key Vault never exports",
        ),
        (
            KeyMaterial {
                kty: "OKP".into(),
                ..KeyMaterial::default()
            },
            "object `k`: key type `OKP` is not supported",
        ),
        (
            rsa(None, Some(vec![1, 0, 1])),
            "object `k`: RSA key has no `n` member",
        ),
        (
            rsa(Some(vec![0xC1; 256]), None),
            "object `k`: RSA key has no `e` member",
        ),
        (
            rsa(Some(vec![0; 256]), Some(vec![1, 0, 1])),
            "object `k`: RSA key has an invalid modulus or exponent",
        ),
        (
            rsa(Some(vec![0xFF; 100_000 / 8]), Some(vec![1, 0, 1])),
            "object `k`: RSA modulus of about 100000 bits is over the 16384-bit limit",
        ),
    ];
    for (jwk, want) in cases {
        for format in [None, Some(Format::Jwk), Some(Format::Der)] {
            let err = render_key("k", &jwk, &opts(format, None, false)).unwrap_err();
            assert_eq!(err.to_string(), want, "{jwk:?}");
        }
    }
    // The largest allowed modulus still renders.
    let max = rsa(Some(vec![0xC1; MAX_RSA_BITS / 8]), Some(vec![1, 0, 1]));
    assert!(render_key("k", &max, &RenderOptions::default()).is_ok());
}

// ---------------------------------------------------------------- certs

#[test]
fn cert_renders_pem_and_der_round_trip() {
    let body = fixture("GetCertificate-200-js-recording.json");
    let der = b64(body["cer"].as_str().unwrap());
    let pem = only(render_cert("c", &der, &RenderOptions::default()).unwrap());
    assert_eq!(blocks(&pem), vec![("CERTIFICATE".to_owned(), der.clone())]);
    assert!(text(&pem).lines().all(|l| l.len() <= 64));
    let raw = only(render_cert("c", &der, &opts(Some(Format::Der), None, false)).unwrap());
    assert_eq!(raw, der);
}

#[test]
fn cert_rejects_garbage() {
    let body = fixture("GetCertificate-200-js-recording.json");
    let der = b64(body["cer"].as_str().unwrap());
    let mut trailing = der.clone();
    trailing.push(0);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"not a certificate".to_vec(),
            "object `c`: content is not a valid X.509 certificate",
        ),
        (
            der[..der.len() / 2].to_vec(),
            "object `c`: content is not a valid X.509 certificate",
        ),
        (
            Vec::new(),
            "object `c`: content is not a valid X.509 certificate",
        ),
        (trailing, "object `c`: certificate DER has trailing bytes"),
    ];
    for (input, want) in cases {
        let err = render_cert("c", &input, &RenderOptions::default()).unwrap_err();
        assert_eq!(err.to_string(), want);
    }
}

// ---------------------------------------------------------------- certificate-backed secrets: fixtures

fn pkcs12_fixture() -> (String, String) {
    let body = fixture("GetSecret-certbacked-pkcs12-200-js-recording.json");
    (
        body["value"].as_str().unwrap().to_owned(),
        body["contentType"].as_str().unwrap().to_owned(),
    )
}

fn pem_fixture() -> (String, String) {
    let body = fixture("GetSecret-certbacked-pem-200-js-recording.json");
    (
        body["value"].as_str().unwrap().to_owned(),
        body["contentType"].as_str().unwrap().to_owned(),
    )
}

/// Key first, then certificates; the key's public half is the first certificate's.
fn assert_key_then_matching_cert(out: &[u8]) -> Vec<(String, Vec<u8>)> {
    let blocks = blocks(out);
    assert!(blocks.len() >= 2, "{blocks:?}");
    assert_eq!(blocks[0].0, "PRIVATE KEY");
    assert!(blocks[1..].iter().all(|(label, _)| label == "CERTIFICATE"));
    assert_eq!(key_public(&blocks[0].1), cert_public(&blocks[1].1));
    assert!(text(out).ends_with("-----\n"));
    assert!(text(out).lines().all(|l| l.len() <= 64));
    blocks
}

#[test]
fn pkcs12_fixture_decodes_to_a_matching_pkcs8_key_and_cert() {
    let (value, ct) = pkcs12_fixture();
    let out =
        only(render_secret("web", &value, Some(&ct), true, &RenderOptions::default()).unwrap());
    let blocks = assert_key_then_matching_cert(&out);
    assert_eq!(blocks.len(), 2);
    // The key is re-written as a plain PKCS#8 v1 (the CNG key-usage attribute dropped).
    let items = asn1::sequence(&blocks[0].1).unwrap();
    assert_eq!(items.len(), 3);
}

#[test]
fn pkcs12_fixture_pfx_format_and_split() {
    let (value, ct) = pkcs12_fixture();
    let as_text = only(
        render_secret(
            "web",
            &value,
            Some(&ct),
            true,
            &opts(Some(Format::Pfx), None, false),
        )
        .unwrap(),
    );
    assert_eq!(as_text, value.as_bytes());
    let binary = only(
        render_secret(
            "web",
            &value,
            Some(&ct),
            true,
            &opts(Some(Format::Pfx), Some(Encoding::Base64), false),
        )
        .unwrap(),
    );
    assert_eq!(binary, b64(&value));

    let pem_main =
        only(render_secret("web", &value, Some(&ct), true, &RenderOptions::default()).unwrap());
    for format in [None, Some(Format::Pfx)] {
        let files =
            render_secret("web", &value, Some(&ct), true, &opts(format, None, true)).unwrap();
        let suffixes: Vec<_> = files.iter().map(|f| f.suffix).collect();
        assert_eq!(suffixes, vec![None, Some(".crt"), Some(".key")]);
        let crt = blocks(&files[1].bytes);
        let key = blocks(&files[2].bytes);
        assert_eq!(crt.len(), 1);
        assert_eq!(crt[0].0, "CERTIFICATE");
        assert_eq!(key.len(), 1);
        assert_eq!(key[0].0, "PRIVATE KEY");
        let mut joined = files[2].bytes.to_vec();
        joined.extend_from_slice(&files[1].bytes);
        assert_eq!(joined, pem_main);
    }
}

#[test]
fn pem_fixture_normalises_to_key_first_with_matching_cert() {
    let (value, ct) = pem_fixture();
    let out =
        only(render_secret("web", &value, Some(&ct), true, &RenderOptions::default()).unwrap());
    let blocks = assert_key_then_matching_cert(&out);
    // Key Vault's own PEM is already normalised: byte-identical output.
    assert_eq!(text(&out), value);
    // Its certificate is the GetCertificate `cer` of the same recording.
    let cer = b64(fixture("GetCertificate-200-js-recording.json")["cer"]
        .as_str()
        .unwrap());
    assert_eq!(blocks[1].1, cer);

    // Certificate first, CRLF, surrounding text: still key first, same bytes out.
    let parsed = super::pem::decode_all(&value).unwrap();
    let shuffled = format!(
        "leading text\r\n{}{}",
        pem_of("CERTIFICATE", &parsed[1].der).replace('\n', "\r\n"),
        pem_of("PRIVATE KEY", &parsed[0].der)
    );
    let again =
        only(render_secret("web", &shuffled, Some(&ct), true, &RenderOptions::default()).unwrap());
    assert_eq!(again, out);
}

#[test]
fn pem_fixture_legacy_rsa_key_becomes_pkcs8() {
    let (value, ct) = pem_fixture();
    let parsed = super::pem::decode_all(&value).unwrap();
    // The PKCS#1 key inside the PKCS#8 (its OCTET STRING content).
    let items = asn1::sequence(&parsed[0].der).unwrap();
    let pkcs1 = items[2].value().to_vec();
    let legacy = format!(
        "{}{}",
        pem_of("RSA PRIVATE KEY", &pkcs1),
        pem_of("CERTIFICATE", &parsed[1].der)
    );
    let out =
        only(render_secret("web", &legacy, Some(&ct), true, &RenderOptions::default()).unwrap());
    assert_eq!(text(&out), value);
}

#[test]
fn pem_certificate_secret_cannot_become_pfx() {
    let (value, ct) = pem_fixture();
    let err = render_secret(
        "web",
        &value,
        Some(&ct),
        true,
        &opts(Some(Format::Pfx), None, false),
    )
    .unwrap_err();
    assert!(matches!(err, RenderError::Unsupported { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("object `web`: objectFormat pfx needs a certificate stored as PKCS#12"),
        "{msg}"
    );
    assert!(msg.contains("application/x-pem-file"), "{msg}");
}

#[test]
fn certificate_secret_option_and_content_type_errors() {
    let (p12, p12_ct) = pkcs12_fixture();
    let (pem, pem_ct) = pem_fixture();
    let cases: Vec<(&str, Option<&str>, RenderOptions, &str)> = vec![
        (&p12, None, RenderOptions::default(), "has no content type"),
        (
            &p12,
            Some("application/octet-stream"),
            RenderOptions::default(),
            "unknown content type `application/octet-stream`",
        ),
        (
            &p12,
            Some(&p12_ct),
            opts(None, Some(Encoding::Base64), false),
            "objectEncoding base64 with objectFormat pem",
        ),
        (
            &p12,
            Some(&p12_ct),
            opts(Some(Format::Pfx), Some(Encoding::Hex), false),
            "objectEncoding hex with objectFormat pfx",
        ),
        (
            &pem,
            Some(&pem_ct),
            opts(None, Some(Encoding::Hex), false),
            "objectEncoding hex",
        ),
        (
            &pem,
            Some(&p12_ct),
            RenderOptions::default(),
            "PKCS#12 secret value is not valid base64",
        ),
        (
            &p12,
            Some(&pem_ct),
            RenderOptions::default(),
            "PEM secret holds no private key or certificate",
        ),
    ];
    for (value, ct, o, want) in cases {
        let err = render_secret("web", value, ct, true, &o)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("object `web`: ") && err.contains(want),
            "{ct:?} {o:?}: {err}"
        );
    }
    // Content types compare case-insensitively and ignore parameters.
    let out = render_secret(
        "web",
        &pem,
        Some(" Application/X-PEM-File; charset=utf-8"),
        true,
        &RenderOptions::default(),
    );
    assert!(out.is_ok(), "{out:?}");
}

// ---------------------------------------------------------------- hostile inputs

#[test]
fn garbage_pfx_and_pem_fail_cleanly() {
    let p12 = "application/x-pkcs12";
    let pem = "application/x-pem-file";
    let random: Vec<u8> = (0u32..3000)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let random_b64 = base64::engine::general_purpose::STANDARD.encode(&random);
    let cases: Vec<(String, &str, &str)> = vec![
        ("%%%".into(), p12, "not valid base64"),
        (random_b64, p12, "not a PKCS#12 (PFX) file"),
        ("MAA=".into(), p12, "not a PKCS#12 (PFX) file"),
        ("".into(), p12, "not a PKCS#12 (PFX) file"),
        (
            "just text".into(),
            pem,
            "holds no private key or certificate",
        ),
        (
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
            pem,
            "certificate 1 of the secret is not valid X.509",
        ),
        (
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
            pem,
            "private key is not valid PKCS#8",
        ),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nMAA=\n-----END RSA PRIVATE KEY-----\n".into(),
            pem,
            "RSA PRIVATE KEY is not valid DER",
        ),
        (
            "-----BEGIN EC PRIVATE KEY-----\nMAA=\n-----END EC PRIVATE KEY-----\n".into(),
            pem,
            "EC PRIVATE KEY does not name its curve",
        ),
        (
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMAA=\n-----END ENCRYPTED PRIVATE KEY-----\n"
                .into(),
            pem,
            "encrypted PEM private keys are not supported",
        ),
        (
            "-----BEGIN X509 CRL-----\nMAA=\n-----END X509 CRL-----\n".into(),
            pem,
            "unexpected PEM block `X509 CRL`",
        ),
        (
            "-----BEGIN CERTIFICATE-----\nAAAA\n".into(),
            pem,
            "has no END line",
        ),
    ];
    for (value, ct, want) in cases {
        let err = render_secret("x", &value, Some(ct), true, &RenderOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{value:?}: {err}");
    }
}

#[test]
fn truncated_and_corrupted_pfx_never_panic() {
    let (value, ct) = pkcs12_fixture();
    let der = b64(&value);
    let engine = base64::engine::general_purpose::STANDARD;
    for cut in (0..der.len()).step_by(37) {
        let v = engine.encode(&der[..cut]);
        assert!(render_secret("x", &v, Some(&ct), true, &RenderOptions::default()).is_err());
    }
    for at in (0..der.len()).step_by(53) {
        let mut bad = der.clone();
        bad[at] ^= 0x5A;
        let _ = render_secret(
            "x",
            &engine.encode(&bad),
            Some(&ct),
            true,
            &RenderOptions::default(),
        );
    }
}

// ---------------------------------------------------------------- chain ordering (generated chains)

struct TestChain {
    root: Vec<u8>,
    inter: Vec<u8>,
    leaf: Vec<u8>,
    leaf_key: Vec<u8>,
}

fn test_chain(name: &str) -> TestChain {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let params = |cn: String, ca: Option<IsCa>| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        if let Some(ca) = ca {
            p.is_ca = ca;
        }
        p.use_authority_key_identifier_extension = true;
        p
    };
    let root = CertifiedIssuer::self_signed(
        params(
            format!("{name} root"),
            Some(IsCa::Ca(BasicConstraints::Unconstrained)),
        ),
        KeyPair::generate().unwrap(),
    )
    .unwrap();
    let inter = CertifiedIssuer::signed_by(
        params(
            format!("{name} intermediate"),
            Some(IsCa::Ca(BasicConstraints::Constrained(0))),
        ),
        KeyPair::generate().unwrap(),
        &root,
    )
    .unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = params(format!("{name} leaf"), None)
        .signed_by(&leaf_key, &inter)
        .unwrap();
    TestChain {
        root: root.der().to_vec(),
        inter: inter.der().to_vec(),
        leaf: leaf.der().to_vec(),
        leaf_key: leaf_key.serialize_der(),
    }
}

fn permutations(items: &[Vec<u8>]) -> Vec<Vec<Vec<u8>>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let first = rest.remove(i);
        for mut tail in permutations(&rest) {
            tail.insert(0, first.clone());
            out.push(tail);
        }
    }
    out
}

fn render_pem_secret(
    key: Option<&[u8]>,
    key_last: bool,
    certs: &[Vec<u8>],
) -> Vec<(String, Vec<u8>)> {
    let mut value = String::new();
    let key_pem = key.map(|k| pem_of("PRIVATE KEY", k)).unwrap_or_default();
    if !key_last {
        value.push_str(&key_pem);
    }
    for cert in certs {
        value.push_str(&pem_of("CERTIFICATE", cert));
    }
    if key_last {
        value.push_str(&key_pem);
    }
    let out = render_secret(
        "chain",
        &value,
        Some("application/x-pem-file"),
        true,
        &RenderOptions::default(),
    )
    .unwrap();
    blocks(&only(out))
}

fn cert_ders(blocks: &[(String, Vec<u8>)]) -> Vec<Vec<u8>> {
    blocks
        .iter()
        .filter(|(l, _)| l == "CERTIFICATE")
        .map(|(_, d)| d.clone())
        .collect()
}

#[test]
fn shuffled_chains_come_out_leaf_intermediate_root() {
    let c = test_chain("ordered");
    let want = vec![c.leaf.clone(), c.inter.clone(), c.root.clone()];
    for order in permutations(&want) {
        for key_last in [false, true] {
            let out = render_pem_secret(Some(&c.leaf_key), key_last, &order);
            assert_eq!(out[0].0, "PRIVATE KEY");
            assert_eq!(cert_ders(&out), want, "key_last={key_last}");
        }
        // Without a key the leaf is the certificate that issued no other.
        assert_eq!(cert_ders(&render_pem_secret(None, false, &order)), want);
    }
    // Duplicates collapse instead of defeating the ordering.
    let dup = vec![
        c.root.clone(),
        c.leaf.clone(),
        c.root.clone(),
        c.inter.clone(),
    ];
    assert_eq!(
        cert_ders(&render_pem_secret(Some(&c.leaf_key), false, &dup)),
        want
    );
}

#[test]
fn unorderable_chains_keep_the_original_order() {
    let c = test_chain("broken");
    let other = test_chain("other");
    let cases = vec![
        // Missing intermediate.
        vec![c.root.clone(), c.leaf.clone()],
        vec![c.leaf.clone(), c.root.clone()],
        // A certificate from an unrelated chain.
        vec![c.inter.clone(), other.root.clone(), c.leaf.clone()],
    ];
    for certs in cases {
        assert_eq!(
            cert_ders(&render_pem_secret(Some(&c.leaf_key), false, &certs)),
            certs
        );
        assert_eq!(cert_ders(&render_pem_secret(None, false, &certs)), certs);
    }
    // Two leaves and no key: ambiguous.
    let two = vec![
        c.root.clone(),
        other.leaf.clone(),
        c.inter.clone(),
        c.leaf.clone(),
    ];
    assert_eq!(cert_ders(&render_pem_secret(None, false, &two)), two);
}

#[test]
fn sec1_ec_key_becomes_pkcs8() {
    let c = test_chain("sec1");
    // ring's PKCS#8 holds an ECPrivateKey without curve parameters; SEC1 files written by
    // OpenSSL carry them, so build that form: version, key, [0] curve, [1] public key.
    let outer = asn1::sequence(&c.leaf_key).unwrap();
    let inner = asn1::sequence(outer[2].value()).unwrap();
    let mut fields = Vec::new();
    fields.extend_from_slice(&asn1::tlv(0x02, inner[0].value()));
    fields.extend_from_slice(&asn1::tlv(0x04, inner[1].value()));
    fields.extend_from_slice(&asn1::tlv(0xA0, &asn1::tlv(0x06, asn1::OID_P256)));
    let public = inner
        .iter()
        .find(|a| {
            a.tag()
                == der::Tag::ContextSpecific {
                    constructed: true,
                    number: der::TagNumber::N1,
                }
        })
        .unwrap();
    fields.extend_from_slice(&asn1::tlv(0xA1, public.value()));
    let sec1 = asn1::tlv(0x30, &fields);
    let value = format!(
        "{}{}{}",
        pem_of("EC PARAMETERS", &asn1::tlv(0x06, asn1::OID_P256)),
        pem_of("EC PRIVATE KEY", &sec1),
        pem_of("CERTIFICATE", &c.leaf)
    );
    let out = only(
        render_secret(
            "ec",
            &value,
            Some("application/x-pem-file"),
            true,
            &RenderOptions::default(),
        )
        .unwrap(),
    );
    let blocks = assert_key_then_matching_cert(&out);
    let items = asn1::sequence(&blocks[0].1).unwrap();
    let alg_der = asn1::tlv(0x30, items[1].value());
    let alg = asn1::sequence(&alg_der).unwrap();
    assert_eq!(alg[1].value(), asn1::OID_P256);
}

// ---------------------------------------------------------------- PKCS#12 variants (generated)

fn pfx(
    c: &TestChain,
    order: &[&Vec<u8>],
    enc: p12_keystore::EncryptionAlgorithm,
    mac: p12_keystore::MacAlgorithm,
    mac_iterations: u64,
) -> String {
    use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKeyChain};
    let certs = order.iter().map(|d| Certificate::from_der(d).unwrap());
    let chain = PrivateKeyChain::new(&c.leaf_key, [1u8, 0, 0, 0], certs);
    let mut ks = KeyStore::new();
    ks.add_entry("entry", KeyStoreEntry::PrivateKeyChain(chain));
    let der = ks
        .writer("")
        .encryption_algorithm(enc)
        .encryption_iterations(2000)
        .mac_algorithm(mac)
        .mac_iterations(mac_iterations)
        .write()
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(der)
}

#[test]
fn pkcs12_variants_decode_and_order_the_chain() {
    use p12_keystore::{EncryptionAlgorithm as E, MacAlgorithm as M};
    let c = test_chain("pfx");
    let want = vec![c.leaf.clone(), c.inter.clone(), c.root.clone()];
    let cases = [
        (E::PbeWithShaAnd3KeyTripleDesCbc, M::HmacSha1),
        (E::PbeWithHmacSha256AndAes256, M::HmacSha256),
        // p12-keystore's "Rc4" variant writes pbeWithSHAAnd40BitRC2-CBC (old Windows).
        (E::PbeWithShaAnd40BitRc4Cbc, M::HmacSha1),
    ];
    for (enc, mac) in cases {
        let value = pfx(&c, &[&c.root, &c.leaf, &c.inter], enc, mac, 2000);
        let out = render_secret(
            "p",
            &value,
            Some("application/x-pkcs12"),
            true,
            &RenderOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{enc:?}: {e}"));
        let blocks = assert_key_then_matching_cert(&only(out));
        assert_eq!(cert_ders(&blocks), want, "{enc:?}");
        assert_eq!(key_public(&blocks[0].1), key_public(&c.leaf_key));
    }
    // Missing intermediate: bag order kept.
    let value = pfx(
        &c,
        &[&c.root, &c.leaf],
        E::PbeWithShaAnd3KeyTripleDesCbc,
        M::HmacSha1,
        2000,
    );
    let out = render_secret(
        "p",
        &value,
        Some("application/x-pkcs12"),
        true,
        &RenderOptions::default(),
    )
    .unwrap();
    assert_eq!(
        cert_ders(&blocks(&only(out))),
        vec![c.root.clone(), c.leaf.clone()]
    );
}

#[test]
fn pkcs12_work_and_password_limits() {
    use p12_keystore::{EncryptionAlgorithm as E, KeyStore, MacAlgorithm as M};
    let c = test_chain("limits");
    let value = pfx(
        &c,
        &[&c.leaf],
        E::PbeWithShaAnd3KeyTripleDesCbc,
        M::HmacSha1,
        1_000_001,
    );
    let err = render_secret(
        "p",
        &value,
        Some("application/x-pkcs12"),
        true,
        &RenderOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, RenderError::TooLarge { .. }), "{err:?}");

    let mut ks = KeyStore::new();
    ks.add_entry(
        "c",
        p12_keystore::KeyStoreEntry::Certificate(
            p12_keystore::Certificate::from_der(&c.leaf).unwrap(),
        ),
    );
    let der = ks
        .writer("not-empty")
        .mac_iterations(10)
        .encryption_iterations(10)
        .write()
        .unwrap();
    let value = base64::engine::general_purpose::STANDARD.encode(der);
    let err = render_secret(
        "p",
        &value,
        Some("application/x-pkcs12"),
        true,
        &RenderOptions::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("not protected by the empty password"),
        "{err}"
    );
}
