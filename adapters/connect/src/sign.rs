//! Signatures on the wire: who vouches for a message's documents. A signature covers a
//! **manifest** — the SHA-256 of each document's bytes as sent, in order — so one signing
//! operation covers a whole batch message, and each document keeps a proof of its own (the
//! signature plus the manifest, which the hub archives beside the bytes it hashes).
//!
//! ```text
//! manifest  = "exhub-manifest-v1\n" ( "sha256:" hex(SHA-256(document bytes)) "\n" )*
//! header    x-exhub-signature: "<alg> <key_id> <base64(signature over manifest)>"
//! ```
//!
//! Algorithms, chosen per organisation: **Ed25519** (RFC 8032, through aws-lc-rs, already in
//! the build for TLS) and **SM2 with SM3** (GB/T 32918 / GM/T 0003, China's national algorithm,
//! RustCrypto `sm2`; the signer's distinguishing ID is the standard's default
//! `1234567812345678`). Keys are text lines, so that a public key can stand in routes.toml:
//! `"<alg> <key_id> <base64>"` — the raw 32-byte Ed25519 public key or seed, the SEC1
//! uncompressed SM2 point or 32-byte scalar. Key ids are `org#name`, e.g. `nanhai.tax#2026`.

use std::collections::HashMap;
use std::path::Path;

use aws_lc_rs::signature::{self as ed, KeyPair as _};
use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use sm2::dsa::signature::{Signer as _, Verifier as _};

/// The header carrying a message's signature.
pub const HEADER: &str = "x-exhub-signature";

/// SM2's default distinguishing ID (GM/T 0009), used by every exhub SM2 key.
pub const SM2_DIST_ID: &str = "1234567812345678";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// Ed25519 (RFC 8032).
    Ed25519,
    /// SM2 digital signature with SM3 (GB/T 32918.2).
    Sm2,
}

impl Alg {
    /// Its name in key lines and headers.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Ed25519 => "ed25519",
            Alg::Sm2 => "sm2",
        }
    }

    /// Parses `ed25519` or `sm2`.
    pub fn parse(name: &str) -> Option<Alg> {
        match name {
            "ed25519" => Some(Alg::Ed25519),
            "sm2" => Some(Alg::Sm2),
            _ => None,
        }
    }
}

/// A key or signature that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// Not `<alg> <key_id> <base64>`.
    #[error("a key is \"<ed25519|sm2> <org#name> <base64>\": {0}")]
    Form(String),
    /// The bytes are not a key of that algorithm.
    #[error("not a valid {alg} key: {detail}")]
    Invalid {
        /// The algorithm.
        alg: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A private key file others may read.
    #[error("signing key file {0} may be read by others: chmod 600 it")]
    Mode(String),
    /// A file that cannot be read.
    #[error("cannot read signing key file {path}: {detail}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        detail: String,
    },
    /// No randomness for a new key.
    #[error("no randomness for a new key: {0}")]
    Random(String),
}

/// Splits `<alg> <key_id> <base64>` into its parts.
fn parts(line: &str) -> Result<(Alg, String, Vec<u8>), KeyError> {
    let mut it = line.split_whitespace();
    let (Some(alg), Some(key_id), Some(b64), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(KeyError::Form("three words expected".into()));
    };
    let alg = Alg::parse(alg)
        .ok_or_else(|| KeyError::Form(format!("unknown algorithm {:?}", crate::wire::excerpt(alg, 32))))?;
    if !key_id.contains('#') {
        return Err(KeyError::Form(format!(
            "key id {:?} is not org#name",
            crate::wire::excerpt(key_id, 64)
        )));
    }
    let bytes = B64.decode(b64).map_err(|e| KeyError::Form(format!("base64: {e}")))?;
    Ok((alg, key_id.to_owned(), bytes))
}

fn invalid(alg: Alg, detail: impl ToString) -> KeyError {
    KeyError::Invalid {
        alg: alg.name(),
        detail: detail.to_string(),
    }
}

/// A private signing key. Its `Debug` shows the key id only.
pub struct SigningKey {
    key_id: String,
    inner: Signer,
}

enum Signer {
    Ed25519(ed::Ed25519KeyPair, [u8; 32]),
    Sm2(Box<sm2::dsa::SigningKey>),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({} {})", self.alg().name(), self.key_id)
    }
}

impl SigningKey {
    /// A new random key of `alg` named `key_id` (`org#name`).
    pub fn generate(alg: Alg, key_id: &str) -> Result<SigningKey, KeyError> {
        loop {
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret).map_err(|e| KeyError::Random(e.to_string()))?;
            // An SM2 scalar must be below the group order: try again in the rare case it is not.
            if let Ok(key) = SigningKey::from_secret(alg, key_id, &secret) {
                return Ok(key);
            }
        }
    }

    fn from_secret(alg: Alg, key_id: &str, secret: &[u8]) -> Result<SigningKey, KeyError> {
        let inner = match alg {
            Alg::Ed25519 => {
                let seed: [u8; 32] = secret.try_into().map_err(|_| invalid(alg, "a seed is 32 bytes"))?;
                let pair = ed::Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|e| invalid(alg, e))?;
                Signer::Ed25519(pair, seed)
            }
            Alg::Sm2 => {
                let secret = sm2::SecretKey::from_slice(secret).map_err(|e| invalid(alg, e))?;
                let key = sm2::dsa::SigningKey::new(SM2_DIST_ID, &secret).map_err(|e| invalid(alg, e))?;
                Signer::Sm2(Box::new(key))
            }
        };
        Ok(SigningKey {
            key_id: key_id.to_owned(),
            inner,
        })
    }

    /// Reads a private key line `<alg> <key_id> <base64 secret>`.
    pub fn from_line(line: &str) -> Result<SigningKey, KeyError> {
        let (alg, key_id, secret) = parts(line)?;
        SigningKey::from_secret(alg, &key_id, &secret)
    }

    /// Reads a private key file (first line; mode 0600 or stricter).
    pub fn read_file(path: &Path) -> Result<SigningKey, KeyError> {
        let read = |detail: String| KeyError::Read {
            path: path.display().to_string(),
            detail,
        };
        let meta = std::fs::metadata(path).map_err(|e| read(e.to_string()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(KeyError::Mode(path.display().to_string()));
            }
        }
        #[cfg(not(unix))]
        let _ = meta;
        let text = std::fs::read_to_string(path).map_err(|e| read(e.to_string()))?;
        SigningKey::from_line(text.lines().next().unwrap_or(""))
    }

    /// The private key line (for the key file only: it is the secret).
    pub fn secret_line(&self) -> String {
        let secret = match &self.inner {
            Signer::Ed25519(_, seed) => seed.to_vec(),
            Signer::Sm2(k) => k.as_nonzero_scalar().to_bytes().to_vec(),
        };
        format!("{} {} {}", self.alg().name(), self.key_id, B64.encode(secret))
    }

    /// The public key line, for routes.toml.
    pub fn public_line(&self) -> String {
        let public = match &self.inner {
            Signer::Ed25519(pair, _) => pair.public_key().as_ref().to_vec(),
            Signer::Sm2(k) => k.verifying_key().to_sec1_bytes().to_vec(),
        };
        format!("{} {} {}", self.alg().name(), self.key_id, B64.encode(public))
    }

    /// The algorithm.
    pub fn alg(&self) -> Alg {
        match self.inner {
            Signer::Ed25519(..) => Alg::Ed25519,
            Signer::Sm2(_) => Alg::Sm2,
        }
    }

    /// The key id (`org#name`).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        match &self.inner {
            Signer::Ed25519(pair, _) => pair.sign(message).as_ref().to_vec(),
            Signer::Sm2(k) => {
                let sig: sm2::dsa::Signature = k.sign(message);
                sig.to_bytes().to_vec()
            }
        }
    }

    /// The `x-exhub-signature` value for a message holding `documents`.
    pub fn sign_documents<D: AsRef<[u8]>>(&self, documents: &[D]) -> String {
        let signature = self.sign(&manifest(documents));
        format!("{} {} {}", self.alg().name(), self.key_id, B64.encode(signature))
    }
}

/// A public key that verifies signatures.
#[derive(Debug, Clone)]
pub struct VerifyingKey {
    key_id: String,
    inner: Verifier,
}

#[derive(Debug, Clone)]
enum Verifier {
    Ed25519(Vec<u8>),
    Sm2(Box<sm2::dsa::VerifyingKey>),
}

impl VerifyingKey {
    /// Reads a public key line `<alg> <key_id> <base64 public key>`.
    pub fn from_line(line: &str) -> Result<VerifyingKey, KeyError> {
        let (alg, key_id, public) = parts(line)?;
        let inner = match alg {
            Alg::Ed25519 if public.len() == 32 => Verifier::Ed25519(public),
            Alg::Ed25519 => return Err(invalid(alg, "a public key is 32 bytes")),
            Alg::Sm2 => Verifier::Sm2(Box::new(
                sm2::dsa::VerifyingKey::from_sec1_bytes(SM2_DIST_ID, &public).map_err(|e| invalid(alg, e))?,
            )),
        };
        Ok(VerifyingKey { key_id, inner })
    }

    /// The key id (`org#name`).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The organisation the key id names (before `#`).
    pub fn org(&self) -> &str {
        self.key_id.split('#').next().unwrap_or("")
    }

    /// Whether `signature` is this key's signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.inner {
            Verifier::Ed25519(public) => ed::UnparsedPublicKey::new(&ed::ED25519, public)
                .verify(message, signature)
                .is_ok(),
            Verifier::Sm2(k) => sm2::dsa::Signature::try_from(signature).is_ok_and(|s| k.verify(message, &s).is_ok()),
        }
    }
}

/// Why a message's signature does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The header is not `<alg> <key_id> <base64>`.
    #[error("x-exhub-signature is malformed: {0}")]
    Malformed(String),
    /// No key of that id is known for the signer.
    #[error("key {0:?} is not one of the signer's keys")]
    UnknownKey(String),
    /// The key is known, the signature does not verify.
    #[error("the signature by key {0:?} does not match the documents")]
    Mismatch(String),
}

/// The public keys of one signer (an org, or the hub), by key id.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    keys: HashMap<String, VerifyingKey>,
}

impl Keyring {
    /// A keyring of public key lines.
    pub fn from_lines<S: AsRef<str>>(lines: &[S]) -> Result<Keyring, KeyError> {
        let mut keys = HashMap::new();
        for line in lines {
            let key = VerifyingKey::from_line(line.as_ref())?;
            keys.insert(key.key_id.clone(), key);
        }
        Ok(Keyring { keys })
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks an `x-exhub-signature` value against `documents` (the message's documents as
    /// sent); returns the key id that signed.
    pub fn verify<D: AsRef<[u8]>>(&self, header: &str, documents: &[D]) -> Result<String, SignatureError> {
        self.verify_manifest(header, &manifest(documents))
    }

    /// Checks an `x-exhub-signature` value against a manifest (as archived); returns the key
    /// id that signed.
    pub fn verify_manifest(&self, header: &str, manifest: &[u8]) -> Result<String, SignatureError> {
        let mut it = header.split_whitespace();
        let (Some(alg), Some(key_id), Some(b64), None) = (it.next(), it.next(), it.next(), it.next()) else {
            return Err(SignatureError::Malformed("three words expected".into()));
        };
        let shown = crate::wire::excerpt(key_id, 64).into_owned();
        let key = self
            .keys
            .get(key_id)
            .ok_or_else(|| SignatureError::UnknownKey(shown.clone()))?;
        let alg_ok = Alg::parse(alg).is_some_and(|a| match key.inner {
            Verifier::Ed25519(_) => a == Alg::Ed25519,
            Verifier::Sm2(_) => a == Alg::Sm2,
        });
        let signature = B64
            .decode(b64)
            .map_err(|e| SignatureError::Malformed(format!("base64: {e}")))?;
        if alg_ok && key.verify(manifest, &signature) {
            Ok(key_id.to_owned())
        } else {
            Err(SignatureError::Mismatch(shown))
        }
    }
}

/// The manifest a signature covers: a version line, then the SHA-256 of each document's bytes.
pub fn manifest<D: AsRef<[u8]>>(documents: &[D]) -> Vec<u8> {
    let mut out = Vec::with_capacity(18 + documents.len() * 72);
    out.extend_from_slice(b"exhub-manifest-v1\n");
    for d in documents {
        out.extend_from_slice(digest(d.as_ref()).as_bytes());
        out.push(b'\n');
    }
    out
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut out = String::with_capacity(71);
    out.push_str("sha256:");
    for b in hash {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 8032 §7.1, TEST 1 and TEST 2.
    #[test]
    fn ed25519_matches_rfc_8032() {
        for (seed, public, message, signature) in [
            (
                "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
                "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
                "",
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
            ),
            (
                "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
                "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
                "72",
                "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
            ),
        ] {
            let line = format!("ed25519 t#1 {}", B64.encode(hex(seed)));
            let key = SigningKey::from_line(&line).unwrap();
            assert_eq!(key.public_line(), format!("ed25519 t#1 {}", B64.encode(hex(public))));
            assert_eq!(key.sign(&hex(message)), hex(signature));
            let public = VerifyingKey::from_line(&key.public_line()).unwrap();
            assert!(public.verify(&hex(message), &hex(signature)));
            assert!(!public.verify(b"other", &hex(signature)));
        }
    }

    /// SM3 of "abc" (GB/T 32905, example 1).
    #[test]
    fn sm3_matches_gb_t_32905() {
        use sm3::Digest as _;
        let h = sm3::Sm3::digest(b"abc");
        assert_eq!(
            h.as_slice(),
            hex("66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0")
        );
    }

    /// An SM2 signature made by OpenSSL (`pkeyutl -sign -digest sm3 -pkeyopt distid:…`), as
    /// published with RustCrypto's sm2 tests; our verifier must accept it and refuse a change.
    #[test]
    fn sm2_verifies_a_published_openssl_signature() {
        let public = hex(
            "0408D77AE04C01CC4C1104360DD8AF6B6F7DF334283D7C1A6AFD5652407B87BEE5014E2A57C36C150D16324DC664E31E6432359609C4E79847A5B161C8C7364C8A",
        );
        let signature = hex(concat!(
            "d1dcccedd9fb785e0f67c16b7c52901625c0b69de9bca2144acc7be713cad2fc",
            "f7d1eae6e3a157b36c65f672f738ca8b46298bf149a6510072c431b49cd88b1c"
        ));
        let key = sm2::dsa::VerifyingKey::from_sec1_bytes("example@rustcrypto.org", &public).unwrap();
        let sig = sm2::dsa::Signature::try_from(signature.as_slice()).unwrap();
        assert!(key.verify(b"testing", &sig).is_ok());
        assert!(key.verify(b"testing!", &sig).is_err());
    }

    #[test]
    fn signed_documents_verify_and_tampering_does_not() {
        for alg in [Alg::Ed25519, Alg::Sm2] {
            let key = SigningKey::generate(alg, "nanhai.tax#2026").unwrap();
            let again = SigningKey::from_line(&key.secret_line()).unwrap();
            assert_eq!(again.public_line(), key.public_line());
            let ring = Keyring::from_lines(&[key.public_line()]).unwrap();
            let docs = [b"{\"a\":1}".as_slice(), b"<document/>".as_slice()];
            let header = key.sign_documents(&docs);
            assert_eq!(ring.verify(&header, &docs), Ok("nanhai.tax#2026".to_owned()));
            let tampered = [b"{\"a\":2}".as_slice(), b"<document/>".as_slice()];
            assert!(matches!(
                ring.verify(&header, &tampered),
                Err(SignatureError::Mismatch(_))
            ));
            assert!(matches!(
                ring.verify(&header, &docs[..1]),
                Err(SignatureError::Mismatch(_))
            ));
            let stranger = SigningKey::generate(alg, "nanhai.other#1").unwrap();
            assert!(matches!(
                ring.verify(&stranger.sign_documents(&docs), &docs),
                Err(SignatureError::UnknownKey(_))
            ));
            // Same key id, another key: the signature does not verify.
            let impostor = SigningKey::generate(alg, "nanhai.tax#2026").unwrap();
            assert!(matches!(
                ring.verify(&impostor.sign_documents(&docs), &docs),
                Err(SignatureError::Mismatch(_))
            ));
            assert!(matches!(ring.verify("junk", &docs), Err(SignatureError::Malformed(_))));
        }
    }

    #[test]
    fn manifests_hash_each_document() {
        let m = manifest(&[b"abc".as_slice()]);
        assert_eq!(
            String::from_utf8(m).unwrap(),
            "exhub-manifest-v1\nsha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n"
        );
    }
}
