//! PKCS#12 (PFX) decoding: certificate-backed secrets (the empty password Key Vault uses)
//! and service principals' client certificates (a password the operator gives).
//!
//! Supported: PKCS#12 PBE with SHA-1 and 3-key/2-key 3DES (what Key Vault writes) or
//! RC2 (what older Windows exports and so imported PFX may hold), PBES2 with PBKDF2 and
//! AES (OpenSSL 3's default); MAC with HMAC-SHA-1/256/384/512. Written on the RustCrypto
//! ASN.1 types rather than a keystore crate because we need the bags in their original
//! order and a hard cap on key-derivation work: a hostile PFX can ask for billions of
//! iterations.

use cbc::cipher::{block_padding::Pkcs7, BlockDecryptMut, InnerIvInit, KeyIvInit};
use der::asn1::{ObjectIdentifier, OctetString};
use der::{Any, Decode, Encode};
use hmac::{Hmac, Mac};
use pkcs12::kdf::{derive_key, Pkcs12KeyType};
use pkcs12::pbe_params::{EncryptedPrivateKeyInfo, Pkcs12PbeParams};
use pkcs12::pfx::{Pfx, Version};
use pkcs12::safe_bag::SafeContents;
use zeroize::Zeroizing;

use super::{malformed, unsupported, Fault};

/// Most iterations accepted for one key derivation. Key Vault uses 2000, OpenSSL 2048,
/// Java 10000; 1M still decodes in well under a second.
const MAX_ITERATIONS: u32 = 1_000_000;
/// Most iterations accepted across the whole file (MAC, every bag's key and IV).
const MAX_TOTAL_ITERATIONS: u64 = 4_000_000;

const OID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
const OID_ENCRYPTED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.6");
const OID_PBES2: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.5.13");
const OID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const OID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const OID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const OID_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");

/// The private keys (PKCS#8 DER) and certificates (DER) of a PFX, in bag order.
#[derive(Default)]
pub(crate) struct Contents {
    pub keys: Vec<Zeroizing<Vec<u8>>>,
    pub certs: Vec<Vec<u8>>,
}

/// The two spellings of "no password": the empty string (BMP "" + terminator, what
/// OpenSSL `-passout pass:` and Key Vault use) and a null password (no bytes at all,
/// what some Windows exports use). OpenSSL tries both; so do we.
const EMPTY_PASSWORDS: [&[u8]; 2] = [&[0, 0], &[]];

/// Decodes a PFX protected by the empty password (what Key Vault writes).
pub(crate) fn decode(der: &[u8]) -> Result<Contents, Fault> {
    decode_with(der, None)
}

/// Decodes a PFX protected by `password` (`None`: the empty password, either spelling).
pub(crate) fn decode_with(der: &[u8], given_password: Option<&str>) -> Result<Contents, Fault> {
    let not_pfx = || malformed("value is not a PKCS#12 (PFX) file");
    let pfx = Pfx::from_der(der).map_err(|_| not_pfx())?;
    if pfx.version != Version::V3 {
        return Err(not_pfx());
    }
    if pfx.auth_safe.content_type != OID_DATA {
        return Err(unsupported(
            "PKCS#12 with public-key integrity mode is not supported",
        ));
    }
    let auth_safe = octets(&pfx.auth_safe.content).ok_or_else(not_pfx)?;
    let mut budget = Budget(0);

    // PKCS#12 passwords are BMPString (UTF-16BE) with a two-byte terminator.
    let given: Option<Zeroizing<Vec<u8>>> = given_password.map(|p| {
        let mut bmp = Zeroizing::new(Vec::with_capacity(p.len() * 2 + 2));
        for unit in p.encode_utf16() {
            bmp.extend_from_slice(&unit.to_be_bytes());
        }
        bmp.extend_from_slice(&[0, 0]);
        bmp
    });
    let candidates: Vec<&[u8]> = match &given {
        Some(bmp) => vec![bmp.as_slice()],
        None => EMPTY_PASSWORDS.to_vec(),
    };
    let password: &[u8] = match &pfx.mac_data {
        Some(mac) => {
            let mut found = None;
            for candidate in candidates.iter().copied() {
                if verify_mac(mac, candidate, &auth_safe, &mut budget)? {
                    found = Some(candidate);
                    break;
                }
            }
            found.ok_or_else(|| {
                malformed(if given.is_some() {
                    "PKCS#12 integrity check failed: the password does not open the PFX"
                } else {
                    "PKCS#12 integrity check failed: the PFX is not protected by the empty password"
                })
            })?
        }
        None => candidates[0],
    };
    // PBES2 (RFC 8018) keys derive from the password's UTF-8 octets, PKCS#12 PBE from BMP.
    let secret = Password {
        bmp: password,
        utf8: given_password.unwrap_or_default().as_bytes(),
    };

    let safes: Vec<cms::content_info::ContentInfo> =
        Vec::from_der(&auth_safe).map_err(|_| not_pfx())?;
    let mut contents = Contents::default();
    for safe in safes {
        let plain = if safe.content_type == OID_DATA {
            Zeroizing::new(octets(&safe.content).ok_or_else(not_pfx)?)
        } else if safe.content_type == OID_ENCRYPTED_DATA {
            let encrypted = safe
                .content
                .decode_as::<cms::encrypted_data::EncryptedData>()
                .map_err(|_| not_pfx())?;
            let info = encrypted.enc_content_info;
            match info.encrypted_content {
                Some(data) => decrypt(
                    &info.content_enc_alg.oid,
                    info.content_enc_alg.parameters.as_ref(),
                    data.as_bytes(),
                    secret,
                    &mut budget,
                )?,
                None => continue,
            }
        } else {
            return Err(unsupported(
                "PKCS#12 with public-key encrypted contents is not supported",
            ));
        };
        read_bags(&plain, secret, &mut budget, &mut contents)?;
    }
    Ok(contents)
}

/// The password in both encodings PKCS#12 files use.
#[derive(Clone, Copy)]
struct Password<'a> {
    /// BMPString with terminator (PKCS#12 PBE and MAC).
    bmp: &'a [u8],
    /// UTF-8 octets (PBES2).
    utf8: &'a [u8],
}

fn read_bags(
    plain: &[u8],
    password: Password<'_>,
    budget: &mut Budget,
    contents: &mut Contents,
) -> Result<(), Fault> {
    let bags =
        SafeContents::from_der(plain).map_err(|_| malformed("PKCS#12 bags are not valid DER"))?;
    for bag in bags {
        // `bag_value` is the whole `[0] EXPLICIT` element; its content is the bag.
        let inner =
            Any::from_der(&bag.bag_value).map_err(|_| malformed("PKCS#12 bag is not valid DER"))?;
        let inner = inner.value();
        if bag.bag_id == pkcs12::PKCS_12_CERT_BAG_OID {
            let cert = pkcs12::cert_type::CertBag::from_der(inner)
                .map_err(|_| malformed("PKCS#12 certificate bag is not valid DER"))?;
            if cert.cert_id == pkcs12::PKCS_12_X509_CERT_OID {
                contents.certs.push(cert.cert_value.as_bytes().to_vec());
            }
        } else if bag.bag_id == pkcs12::PKCS_12_PKCS8_KEY_BAG_OID {
            let key = EncryptedPrivateKeyInfo::from_der(inner)
                .map_err(|_| malformed("PKCS#12 key bag is not valid DER"))?;
            let alg = &key.encryption_algorithm;
            let plain = decrypt(
                &alg.oid,
                alg.parameters.as_ref(),
                key.encrypted_data.as_bytes(),
                password,
                budget,
            )?;
            contents.keys.push(plain);
        } else if bag.bag_id == pkcs12::PKCS_12_KEY_BAG_OID {
            contents.keys.push(Zeroizing::new(inner.to_vec()));
        } else if bag.bag_id == pkcs12::PKCS_12_SAFE_CONTENTS_BAG_OID {
            return Err(unsupported(
                "nested PKCS#12 safe contents are not supported",
            ));
        }
        // CRL and secret bags carry nothing we write.
    }
    Ok(())
}

/// The bytes of an OCTET STRING held in an `Any`.
fn octets(any: &Any) -> Option<Vec<u8>> {
    any.decode_as::<OctetString>()
        .ok()
        .map(OctetString::into_bytes)
}

/// Key-derivation work done so far, refused past `MAX_TOTAL_ITERATIONS`.
struct Budget(u64);

impl Budget {
    fn spend(&mut self, iterations: i64) -> Result<i32, Fault> {
        let too_many = || {
            Fault::TooLarge(format!(
                "PKCS#12 asks for more than {MAX_ITERATIONS} key-derivation iterations"
            ))
        };
        if iterations < 1 {
            return Err(malformed("PKCS#12 iteration count is not positive"));
        }
        let n = u32::try_from(iterations).map_err(|_| too_many())?;
        if n > MAX_ITERATIONS {
            return Err(too_many());
        }
        self.0 = self.0.saturating_add(u64::from(n));
        if self.0 > MAX_TOTAL_ITERATIONS {
            return Err(too_many());
        }
        i32::try_from(n).map_err(|_| too_many())
    }
}

fn verify_mac(
    mac: &pkcs12::mac_data::MacData,
    password: &[u8],
    data: &[u8],
    budget: &mut Budget,
) -> Result<bool, Fault> {
    let rounds = budget.spend(i64::from(mac.iterations))?;
    let salt = mac.mac_salt.as_bytes();
    let digest = mac.mac.digest.as_bytes();
    let oid = mac.mac.algorithm.oid;
    macro_rules! check {
        ($hash:ty) => {{
            let len = <$hash as sha2::digest::OutputSizeUser>::output_size();
            let key = Zeroizing::new(derive_key::<$hash>(
                password,
                salt,
                Pkcs12KeyType::Mac,
                rounds,
                len,
            ));
            let mut hmac = <Hmac<$hash>>::new_from_slice(&key)
                .map_err(|_| malformed("PKCS#12 MAC key is invalid"))?;
            hmac.update(data);
            Ok(hmac.verify_slice(digest).is_ok())
        }};
    }
    if oid == OID_SHA1 {
        check!(sha1::Sha1)
    } else if oid == OID_SHA256 {
        check!(sha2::Sha256)
    } else if oid == OID_SHA384 {
        check!(sha2::Sha384)
    } else if oid == OID_SHA512 {
        check!(sha2::Sha512)
    } else {
        Err(unsupported(format!(
            "PKCS#12 MAC algorithm {oid} is not supported"
        )))
    }
}

/// Which PKCS#12 PBE cipher an OID names (RFC 7292 appendix C).
enum Pbe {
    TripleDes3,
    TripleDes2,
    Rc2 { key_len: usize },
}

fn pkcs12_pbe(oid: &ObjectIdentifier) -> Option<Pbe> {
    if *oid == pkcs12::PKCS_12_PBE_WITH_SHAAND3_KEY_TRIPLE_DES_CBC {
        Some(Pbe::TripleDes3)
    } else if *oid == pkcs12::PKCS_12_PBE_WITH_SHAAND2_KEY_TRIPLE_DES_CBC {
        Some(Pbe::TripleDes2)
    } else if *oid == pkcs12::PKCS_12_PBE_WITH_SHAAND128_BIT_RC2_CBC {
        Some(Pbe::Rc2 { key_len: 16 })
    } else if *oid == pkcs12::PKCS_12_PBEWITH_SHAAND40_BIT_RC2_CBC {
        Some(Pbe::Rc2 { key_len: 5 })
    } else {
        None
    }
}

fn decrypt(
    oid: &ObjectIdentifier,
    params: Option<&Any>,
    data: &[u8],
    password: Password<'_>,
    budget: &mut Budget,
) -> Result<Zeroizing<Vec<u8>>, Fault> {
    let bad_params = || malformed("PKCS#12 encryption parameters are not valid DER");
    let params = params.ok_or_else(bad_params)?;
    let wrong = || malformed("PKCS#12 decryption failed (wrong password, or corrupt)");
    if *oid == OID_PBES2 {
        return pbes2(params, data, password.utf8, budget);
    }
    let pbe = pkcs12_pbe(oid).ok_or_else(|| {
        unsupported(format!(
            "PKCS#12 encryption algorithm {oid} is not supported"
        ))
    })?;
    let params: Pkcs12PbeParams = params.decode_as().map_err(|_| bad_params())?;
    let salt = params.salt.as_bytes();
    if salt.is_empty() {
        return Err(bad_params());
    }
    let rounds = budget.spend(i64::from(params.iterations))?;
    // Key and IV are two derivations of the same cost.
    budget.spend(i64::from(params.iterations))?;
    let key_len = match pbe {
        Pbe::TripleDes3 => 24,
        Pbe::TripleDes2 => 16,
        Pbe::Rc2 { key_len } => key_len,
    };
    let key = Zeroizing::new(derive_key::<sha1::Sha1>(
        password.bmp,
        salt,
        Pkcs12KeyType::EncryptionKey,
        rounds,
        key_len,
    ));
    let iv = derive_key::<sha1::Sha1>(password.bmp, salt, Pkcs12KeyType::Iv, rounds, 8);
    let plain = match pbe {
        Pbe::TripleDes3 => cbc::Decryptor::<des::TdesEde3>::new_from_slices(&key, &iv)
            .map_err(|_| wrong())?
            .decrypt_padded_vec_mut::<Pkcs7>(data),
        Pbe::TripleDes2 => cbc::Decryptor::<des::TdesEde2>::new_from_slices(&key, &iv)
            .map_err(|_| wrong())?
            .decrypt_padded_vec_mut::<Pkcs7>(data),
        Pbe::Rc2 { key_len } => {
            let cipher = rc2::Rc2::new_with_eff_key_len(&key, key_len * 8);
            cbc::Decryptor::<rc2::Rc2>::inner_iv_slice_init(cipher, &iv)
                .map_err(|_| wrong())?
                .decrypt_padded_vec_mut::<Pkcs7>(data)
        }
    };
    plain.map(Zeroizing::new).map_err(|_| wrong())
}

/// PBES2 (RFC 8018) with PBKDF2 only: scrypt would let the file pick our memory use.
fn pbes2(
    params: &Any,
    data: &[u8],
    password: &[u8],
    budget: &mut Budget,
) -> Result<Zeroizing<Vec<u8>>, Fault> {
    let der = params
        .to_der()
        .map_err(|_| malformed("PKCS#12 PBES2 parameters are not valid DER"))?;
    let params = pkcs5::pbes2::Parameters::from_der(&der)
        .map_err(|_| unsupported("PKCS#12 PBES2 parameters are not supported"))?;
    match &params.kdf {
        pkcs5::pbes2::Kdf::Pbkdf2(kdf) => {
            budget.spend(i64::from(kdf.iteration_count))?;
        }
        _ => {
            return Err(unsupported(
                "PKCS#12 PBES2 key derivation other than PBKDF2 is not supported",
            ))
        }
    }
    // RFC 8018 passwords are octet strings: the empty password is no bytes at all.
    params
        .decrypt(password, data)
        .map(Zeroizing::new)
        .map_err(|_| malformed("PKCS#12 decryption failed (wrong password, or corrupt)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: Password<'static> = Password {
        bmp: &[0, 0],
        utf8: b"",
    };
    const NONE: Password<'static> = Password {
        bmp: &[],
        utf8: b"",
    };

    fn pbe_params(iterations: i32, salt: &[u8]) -> Any {
        let params = Pkcs12PbeParams {
            salt: OctetString::new(salt).unwrap(),
            iterations,
        };
        Any::from_der(&params.to_der().unwrap()).unwrap()
    }

    #[test]
    fn decrypt_rejects_bad_lengths_counts_and_algorithms_without_panicking() {
        let oids = [
            pkcs12::PKCS_12_PBE_WITH_SHAAND3_KEY_TRIPLE_DES_CBC,
            pkcs12::PKCS_12_PBE_WITH_SHAAND2_KEY_TRIPLE_DES_CBC,
            pkcs12::PKCS_12_PBE_WITH_SHAAND128_BIT_RC2_CBC,
            pkcs12::PKCS_12_PBEWITH_SHAAND40_BIT_RC2_CBC,
        ];
        for oid in oids {
            for data in [&[][..], &[1u8; 7][..], &[2u8; 13][..], &[3u8; 16][..]] {
                let params = pbe_params(10, &[9; 8]);
                let result = decrypt(&oid, Some(&params), data, EMPTY, &mut Budget(0));
                assert!(result.is_err(), "{oid} {}", data.len());
            }
            let cases = [
                (pbe_params(0, &[1; 8]), "not positive"),
                (pbe_params(-5, &[1; 8]), "not positive"),
                (pbe_params(i32::MAX, &[1; 8]), "more than"),
                (pbe_params(10, &[]), "not valid DER"),
            ];
            for (params, want) in cases {
                let err = decrypt(&oid, Some(&params), &[0; 8], EMPTY, &mut Budget(0)).unwrap_err();
                assert!(format!("{err:?}").contains(want), "{err:?}");
            }
            assert!(decrypt(&oid, None, &[0; 8], NONE, &mut Budget(0)).is_err());
        }
        let unknown = ObjectIdentifier::new_unwrap("1.2.840.113549.1.12.1.1");
        let err = decrypt(
            &unknown,
            Some(&pbe_params(1, &[1])),
            &[0; 8],
            NONE,
            &mut Budget(0),
        )
        .unwrap_err();
        assert!(format!("{err:?}").contains("Unsupported"), "{err:?}");
    }

    #[test]
    fn budget_caps_total_work() {
        let mut budget = Budget(0);
        for _ in 0..4 {
            budget.spend(i64::from(MAX_ITERATIONS)).unwrap();
        }
        assert!(matches!(budget.spend(1), Err(Fault::TooLarge(_))));
    }
}
