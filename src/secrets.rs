//! Encryption of lambda credentials at rest (ChaCha20-Poly1305). The key comes from
//! the config or is generated once into `<data_dir>/secret.key` (mode 0600).
//! Depends on `model` only.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

use crate::model::Credentials;

const KEY_FILE: &str = "secret.key";
const NONCE_LEN: usize = 12;

/// Key handling or decryption failed.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The configured or stored key is malformed.
    #[error("the key must be base64 of 32 bytes")]
    BadKey,
    /// The key file could not be read or written.
    #[error("key file '{path}': {source}")]
    KeyFile {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Ciphertext does not decrypt with this key (wrong key or tampering).
    #[error("credentials do not decrypt with the configured key")]
    Decrypt,
    /// Encryption failed (should not happen).
    #[error("credentials could not be encrypted")]
    Encrypt,
}

/// Parses a base64 key.
pub fn parse_key(text: &str) -> Result<[u8; 32], SecretsError> {
    let bytes = BASE64
        .decode(text.trim())
        .map_err(|_| SecretsError::BadKey)?;
    bytes.try_into().map_err(|_| SecretsError::BadKey)
}

/// Seals and opens credentials.
pub struct Sealer {
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(********)")
    }
}

impl Sealer {
    /// Uses the configured key, else the data dir's key file, else generates that file.
    pub fn open(configured: &str, data_dir: &Path) -> Result<Self, SecretsError> {
        let key = if configured.is_empty() {
            load_or_generate(&data_dir.join(KEY_FILE))?
        } else {
            parse_key(configured)?
        };
        Ok(Self {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
        })
    }

    /// The key a data directory generated for itself, if it has one (what a service
    /// on it with no configured key used).
    pub fn open_generated(data_dir: &Path) -> Result<Option<Self>, SecretsError> {
        if !data_dir.join(KEY_FILE).exists() {
            return Ok(None);
        }
        Self::open("", data_dir).map(Some)
    }

    /// Encrypts: nonce || ciphertext.
    pub fn seal(&self, credentials: &Credentials) -> Result<Vec<u8>, SecretsError> {
        let plain = serde_json::to_vec(credentials).map_err(|_| SecretsError::Encrypt)?;
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let mut out = nonce.to_vec();
        out.extend(
            self.cipher
                .encrypt(&nonce, plain.as_slice())
                .map_err(|_| SecretsError::Encrypt)?,
        );
        Ok(out)
    }

    /// Decrypts what [`Sealer::seal`] produced.
    pub fn unseal(&self, sealed: &[u8]) -> Result<Credentials, SecretsError> {
        if sealed.len() < NONCE_LEN {
            return Err(SecretsError::Decrypt);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), body)
            .map_err(|_| SecretsError::Decrypt)?;
        serde_json::from_slice(&plain).map_err(|_| SecretsError::Decrypt)
    }
}

fn load_or_generate(path: &Path) -> Result<[u8; 32], SecretsError> {
    let io_err = |source| SecretsError::KeyFile {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => parse_key(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = ChaCha20Poly1305::generate_key(&mut OsRng);
            let tmp = path.with_extension("tmp");
            write_private(&tmp, BASE64.encode(key).as_bytes()).map_err(io_err)?;
            std::fs::rename(&tmp, path).map_err(io_err)?;
            let mut out = [0u8; 32];
            out.copy_from_slice(&key);
            Ok(out)
        }
        Err(e) => Err(io_err(e)),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TokenCredentials;

    #[test]
    fn round_trip_and_key_persistence() {
        let dir = tempfile::tempdir().unwrap();
        let creds = Credentials::Token(TokenCredentials {
            token: "hunter2".into(),
        });
        let sealed = Sealer::open("", dir.path()).unwrap().seal(&creds).unwrap();
        assert!(!String::from_utf8_lossy(&sealed).contains("hunter2"));
        // A second open reads the same generated key.
        let again = Sealer::open("", dir.path()).unwrap();
        assert!(again.unseal(&sealed).unwrap() == creds);
        let other = Sealer::open(&BASE64.encode([7u8; 32]), dir.path()).unwrap();
        assert!(other.unseal(&sealed).is_err());
        assert!(parse_key("c2hvcnQ=").is_err());
    }
}
