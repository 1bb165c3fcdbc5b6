//! Secrets at rest and tokens: the data-directory key (AES-256-GCM via ring), random tokens and their SHA-256
//! hashes. This module owns key files and ciphertext formats; it must not log or return plaintext except to callers
//! that send it to its peer.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use kiln_bmc::Secret;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

/// Errors of key handling and decryption.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("cannot read or create key file {path}")]
    KeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path} is malformed (expected 64 hex digits)")]
    BadKey { path: String },
    #[error("stored secret cannot be decrypted with this data directory's key")]
    Decrypt,
    #[error("system random source failed")]
    Random,
}

/// The key that encrypts BMC credentials in the store.
#[derive(Clone)]
pub struct SecretKey {
    key: std::sync::Arc<LessSafeKey>,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(***)")
    }
}

/// Writes `contents` to `path` with mode 0600 unless it exists; returns the file's contents either way. An existing
/// file that its group or others may read is refused (as ssh refuses a readable private key): a secret someone
/// else could have read is not a secret. A new file is made durable with its directory entry.
///
/// # Errors
/// The I/O error of reading or creating the file; `PermissionDenied` for a group- or world-readable file.
pub fn read_or_create_0600(path: &Path, contents: impl FnOnce() -> String) -> std::io::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let mode = std::fs::metadata(path)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "{} is readable by others (mode {:o}): run `chmod 600 {}`, and replace the secret if \
                         someone may have read it",
                        path.display(),
                        mode & 0o777,
                        path.display()
                    ),
                ));
            }
            return Ok(s.trim().to_owned());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let value = contents();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(value.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(value)
}

/// Makes `dir` (created if missing) private to kiln's user: mode 0700, whatever it was.
///
/// # Errors
/// The I/O error of creating or changing it.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode != 0o700 {
        if mode & 0o077 != 0 {
            tracing::warn!(dir = %dir.display(), mode = format!("{mode:o}"), "data directory was open to others; now 0700");
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

impl SecretKey {
    /// Loads `<data_dir>/secret.key`, generating it (0600) on first start.
    ///
    /// # Errors
    /// [`CryptoError::KeyFile`] or [`CryptoError::BadKey`].
    pub fn load_or_create(data_dir: &Path) -> Result<Self, CryptoError> {
        let path = data_dir.join("secret.key");
        let hexkey = read_or_create_0600(&path, || random_hex(32)).map_err(|source| CryptoError::KeyFile {
            path: path.display().to_string(),
            source,
        })?;
        let bytes = hex::decode(&hexkey).map_err(|_| CryptoError::BadKey {
            path: path.display().to_string(),
        })?;
        Self::from_bytes(&bytes).ok_or(CryptoError::BadKey {
            path: path.display().to_string(),
        })
    }

    /// A key from 32 raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).ok()?;
        Some(Self {
            key: std::sync::Arc::new(LessSafeKey::new(unbound)),
        })
    }

    /// Encrypts a secret as `v1:<hex(nonce || ciphertext || tag)>`; `context` (the host name) is bound as AAD so a
    /// ciphertext cannot be moved to another host's row.
    ///
    /// # Errors
    /// [`CryptoError::Random`].
    pub fn seal(&self, secret: &Secret, context: &str) -> Result<String, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| CryptoError::Random)?;
        let mut buf = secret.expose().as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .map_err(|_| CryptoError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!("v1:{}", hex::encode(out)))
    }

    /// Decrypts what [`SecretKey::seal`] produced.
    ///
    /// # Errors
    /// [`CryptoError::Decrypt`] when the text is malformed, the key differs or the context does not match.
    pub fn open(&self, sealed: &str, context: &str) -> Result<Secret, CryptoError> {
        let raw = sealed
            .strip_prefix("v1:")
            .and_then(|h| hex::decode(h).ok())
            .ok_or(CryptoError::Decrypt)?;
        if raw.len() < NONCE_LEN {
            return Err(CryptoError::Decrypt);
        }
        let (n, ct) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(n).map_err(|_| CryptoError::Decrypt)?;
        let mut buf = ct.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            .map_err(|_| CryptoError::Decrypt)?;
        String::from_utf8(plain.to_vec())
            .map(Secret::new)
            .map_err(|_| CryptoError::Decrypt)
    }
}

/// `n` random bytes, hex encoded.
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    SystemRandom::new().fill(&mut b).expect("system random source");
    hex::encode(b)
}

/// SHA-256 of a token, hex encoded: what the store keeps instead of the token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Constant-time comparison of two strings.
pub fn ct_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_is_created_0600_and_round_trips_secrets_bound_to_context() {
        let dir = tempfile::tempdir().unwrap();
        let k = SecretKey::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join("secret.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let sealed = k.seal(&Secret::new("hunter2"), "node-1").unwrap();
        assert!(!sealed.contains("hunter2"));
        assert_eq!(k.open(&sealed, "node-1").unwrap().expose(), "hunter2");
        assert!(k.open(&sealed, "node-2").is_err());
        let again = SecretKey::load_or_create(dir.path()).unwrap();
        assert_eq!(again.open(&sealed, "node-1").unwrap().expose(), "hunter2");
        let other = SecretKey::from_bytes(&[7u8; 32]).unwrap();
        assert!(other.open(&sealed, "node-1").is_err());
        assert_eq!(hash_token("abc").len(), 64);
    }
}
