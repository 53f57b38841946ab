//! A Key Vault JSON Web Key's public members → PEM / DER / JWK.
#![no_main]
use arbitrary::Arbitrary;
use keyvault_flexvolume::render::{render_key, Format, KeyMaterial, RenderOptions};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    kty: u8,
    crv: u8,
    format: u8,
    n: Option<Vec<u8>>,
    e: Option<Vec<u8>>,
    x: Option<Vec<u8>>,
    y: Option<Vec<u8>>,
    kid: Option<String>,
}

fuzz_target!(|i: Input| {
    let kty = ["RSA", "RSA-HSM", "EC", "EC-HSM", "oct", "oct-HSM", "", "rsa"][i.kty as usize % 8];
    let crv = [None, Some("P-256"), Some("P-384"), Some("P-521"), Some("P-256K"), Some("")][i.crv as usize % 6];
    let format = [None, Some(Format::Pem), Some(Format::Der), Some(Format::Jwk)][i.format as usize % 4];
    let jwk = KeyMaterial {
        kty: kty.into(),
        crv: crv.map(str::to_string),
        n: i.n,
        e: i.e,
        x: i.x,
        y: i.y,
        kid: i.kid,
    };
    let _ = render_key("obj", &jwk, &RenderOptions { format, ..Default::default() });
});
