//! PEM (RFC 7468) text: writing blocks the way OpenSSL and Go do, and reading the blocks
//! of a certificate's PEM secret.

use base64::Engine as _;
use zeroize::Zeroizing;

use super::{malformed, unsupported, Fault};

pub(crate) const CERTIFICATE: &str = "CERTIFICATE";
pub(crate) const PRIVATE_KEY: &str = "PRIVATE KEY";
pub(crate) const PUBLIC_KEY: &str = "PUBLIC KEY";

/// One block: its label and decoded DER (zeroed on drop: it may be a private key).
pub(crate) struct Block {
    pub label: String,
    pub der: Zeroizing<Vec<u8>>,
}

/// `-----BEGIN <label>-----`, base64 in 64-column lines, `\n` line ends, trailing newline.
pub(crate) fn encode(label: &str, der: &[u8]) -> Zeroizing<Vec<u8>> {
    let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(der));
    let mut out = Zeroizing::new(Vec::with_capacity(b64.len() + b64.len() / 64 + 64));
    out.extend_from_slice(b"-----BEGIN ");
    out.extend_from_slice(label.as_bytes());
    out.extend_from_slice(b"-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.extend_from_slice(b"-----END ");
    out.extend_from_slice(label.as_bytes());
    out.extend_from_slice(b"-----\n");
    out
}

/// Every block in `text`, in order. Text outside blocks is ignored (RFC 7468 allows
/// explanatory text); CRLF line ends and indentation are tolerated. Encrypted legacy PEM
/// (`Proc-Type` headers) is refused.
pub(crate) fn decode_all(text: &str) -> Result<Vec<Block>, Fault> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, Zeroizing<String>)> = None;
    for line in text.lines() {
        let line = line.trim();
        match current.as_mut() {
            None => {
                if let Some(label) = line
                    .strip_prefix("-----BEGIN ")
                    .and_then(|rest| rest.strip_suffix("-----"))
                {
                    current = Some((label_checked(label)?, Zeroizing::new(String::new())));
                }
            }
            Some((label, body)) => {
                if let Some(end) = line.strip_prefix("-----END ") {
                    if end.strip_suffix("-----") != Some(label.as_str()) {
                        return Err(malformed(format!(
                            "PEM block `{label}` is not closed by its END line"
                        )));
                    }
                    let der = super::base64_lenient(body).ok_or_else(|| {
                        malformed(format!("PEM block `{label}` is not valid base64"))
                    })?;
                    blocks.push(Block {
                        label: std::mem::take(label),
                        der,
                    });
                    current = None;
                } else if line.contains(':') {
                    return Err(if label.ends_with("PRIVATE KEY") {
                        unsupported("encrypted PEM private keys are not supported")
                    } else {
                        malformed(format!("PEM block `{label}` has headers"))
                    });
                } else {
                    body.push_str(line);
                }
            }
        }
    }
    if let Some((label, _)) = current {
        return Err(malformed(format!("PEM block `{label}` has no END line")));
    }
    Ok(blocks)
}

/// Labels are printed in errors: keep them to the RFC 7468 character set and short.
fn label_checked(label: &str) -> Result<String, Fault> {
    let ok = label.len() <= 64 && label.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if ok {
        Ok(label.to_owned())
    } else {
        Err(malformed("a PEM BEGIN line has an invalid label"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_wraps_at_64_columns_with_trailing_newline() {
        let der = vec![0xABu8; 100];
        let text = String::from_utf8(encode("X", &der).to_vec()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "-----BEGIN X-----");
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines.last().copied(), Some("-----END X-----"));
        assert!(text.ends_with("-----\n") && !text.contains('\r'));
    }

    #[test]
    fn decode_round_trips_and_tolerates_crlf_and_text() {
        let mut text = String::from("explanatory text\r\n");
        text.push_str(std::str::from_utf8(&encode("A", b"hello")).unwrap());
        text.push_str(std::str::from_utf8(&encode("B C", &[0u8; 70])).unwrap());
        let text = text.replace('\n', "\r\n");
        let blocks = decode_all(&text).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].label, "A");
        assert_eq!(&blocks[0].der[..], b"hello");
        assert_eq!(blocks[1].label, "B C");
        assert_eq!(blocks[1].der.len(), 70);
    }

    #[test]
    fn decode_errors() {
        let cases = [
            ("-----BEGIN A-----\nAAAA\n", "no END line"),
            ("-----BEGIN A-----\nAAAA\n-----END B-----\n", "not closed"),
            ("-----BEGIN A-----\n!!!!\n-----END A-----\n", "not valid base64"),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nAAAA\n-----END RSA PRIVATE KEY-----\n",
                "encrypted",
            ),
            ("-----BEGIN \u{1}-----\n", "invalid label"),
        ];
        for (text, want) in cases {
            let err = decode_all(text).err().expect(text);
            let msg = format!("{err:?}");
            assert!(msg.contains(want), "{text:?}: {msg}");
        }
    }
}
