//! Image checksums: parsing what the user gave (`sha256:HEX`, bare hex, or the URL of a `sha256sum`-style file),
//! finding an image's entry in such a file, and hashing the published bytes.
//!
//! Parsing and matching are pure; only [`resolve`] does I/O (it fetches the checksum file). md5 is accepted only
//! when asked for explicitly, as Metal3/Ironic do.

use crate::error::ImageError;
use crate::protocol::ChecksumType;
use sha2::Digest as _;

/// A digest algorithm kiln can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Sha512,
    Md5,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
            Self::Md5 => "md5",
        }
    }
    fn hex_len(self) -> usize {
        match self {
            Self::Sha256 => 64,
            Self::Sha512 => 128,
            Self::Md5 => 32,
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An expected digest: algorithm plus lower-case hex, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedDigest {
    pub algorithm: Algorithm,
    pub hex: String,
}

impl std::fmt::Display for ExpectedDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex)
    }
}

/// Where the expected digest comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChecksumSource {
    Inline(ExpectedDigest),
    /// A `sha256sum`/`sha512sum`-style file (or BSD `SHA256 (name) = hex`) to fetch.
    Url {
        url: String,
        algorithm: ChecksumType,
    },
}

fn invalid(checksum: &str, reason: impl Into<String>) -> ImageError {
    ImageError::InvalidChecksum {
        checksum: checksum.to_owned(),
        reason: reason.into(),
    }
}

fn algorithm_for(hex: &str, ty: ChecksumType, original: &str) -> Result<Algorithm, ImageError> {
    let algorithm = match ty {
        ChecksumType::Sha256 => Algorithm::Sha256,
        ChecksumType::Sha512 => Algorithm::Sha512,
        ChecksumType::Md5 => Algorithm::Md5,
        ChecksumType::Auto => match hex.len() {
            64 => Algorithm::Sha256,
            128 => Algorithm::Sha512,
            32 => {
                return Err(invalid(
                    original,
                    "md5 digests must be requested explicitly (checksum type md5)",
                ));
            }
            n => return Err(invalid(original, format!("{n} hex digits match no supported digest"))),
        },
    };
    if hex.len() != algorithm.hex_len() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(original, format!("not a {algorithm} hex digest")));
    }
    Ok(algorithm)
}

impl ChecksumSource {
    /// Parses `sha256:HEX`, `sha512:HEX`, `md5:HEX`, bare hex (algorithm from `ty` or the length), or an
    /// `http(s)://`/`file://` URL of a checksum file.
    ///
    /// # Errors
    /// `InvalidChecksum` for anything else, including a bare 32-digit digest without `ty = Md5`.
    pub fn parse(checksum: &str, ty: ChecksumType) -> Result<Self, ImageError> {
        let c = checksum.trim();
        if c.starts_with("http://") || c.starts_with("https://") || c.starts_with("file://") {
            return Ok(Self::Url {
                url: c.to_owned(),
                algorithm: ty,
            });
        }
        let (ty, hex) = match c.split_once(':') {
            Some(("sha256", h)) => (ChecksumType::Sha256, h),
            Some(("sha512", h)) => (ChecksumType::Sha512, h),
            Some(("md5", h)) => (ChecksumType::Md5, h),
            Some((p, _)) => return Err(invalid(checksum, format!("unknown algorithm prefix {p:?}"))),
            None => (ty, c),
        };
        if hex.is_empty() {
            return Err(invalid(checksum, "empty"));
        }
        let hex = hex.to_ascii_lowercase();
        let algorithm = algorithm_for(&hex, ty, checksum)?;
        Ok(Self::Inline(ExpectedDigest { algorithm, hex }))
    }
}

/// Finds the digest for `file_name` in a checksum file: GNU lines `HEX  name` / `HEX *name` (the name may carry a
/// directory, matched by its last component) or BSD lines `SHA256 (name) = HEX`.
pub fn find_in_sums(text: &str, file_name: &str) -> Option<String> {
    let matches = |name: &str| {
        let name = name.trim().trim_start_matches('*');
        name == file_name || name.rsplit('/').next() == Some(file_name)
    };
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if let Some((left, hex)) = line.split_once(") = ")
            && let Some((_, name)) = left.split_once(" (")
        {
            if matches(name) {
                return Some(hex.trim().to_ascii_lowercase());
            }
            continue;
        }
        if let Some((hex, name)) = line.split_once(char::is_whitespace)
            && matches(name)
        {
            return Some(hex.to_ascii_lowercase());
        }
    }
    // A file holding just one digest (no name) applies to whatever image it accompanies.
    let mut words = text.split_whitespace();
    match (words.next(), words.next()) {
        (Some(hex), None) if hex.bytes().all(|b| b.is_ascii_hexdigit()) => Some(hex.to_ascii_lowercase()),
        _ => None,
    }
}

/// Resolves a [`ChecksumSource`] to the digest to expect for the image at `image_url` (whose last path component is
/// the name looked up in a checksum file).
///
/// # Errors
/// `ChecksumFile` if the file cannot be fetched, `ChecksumEntryMissing` if it has no entry for the image.
pub async fn resolve(
    source: &ChecksumSource,
    image_url: &str,
    client: Option<&reqwest::Client>,
) -> Result<ExpectedDigest, ImageError> {
    let (url, ty) = match source {
        ChecksumSource::Inline(d) => return Ok(d.clone()),
        ChecksumSource::Url { url, algorithm } => (url, *algorithm),
    };
    let fetch_err = |e: Box<dyn std::error::Error + Send + Sync>| ImageError::ChecksumFile {
        url: url.clone(),
        source: e,
    };
    let text = if let Some(path) = url.strip_prefix("file://") {
        tokio::fs::read_to_string(path).await.map_err(|e| fetch_err(e.into()))?
    } else {
        let owned;
        let client = match client {
            Some(c) => c,
            None => {
                owned = crate::source::http_client()?;
                &owned
            }
        };
        let resp = client.get(url).send().await.map_err(|e| fetch_err(e.into()))?;
        let resp = resp.error_for_status().map_err(|e| fetch_err(e.into()))?;
        resp.text().await.map_err(|e| fetch_err(e.into()))?
    };
    let file_name = crate::source::file_name(image_url);
    let hex = find_in_sums(&text, &file_name).ok_or_else(|| ImageError::ChecksumEntryMissing {
        url: url.clone(),
        file_name: file_name.clone(),
    })?;
    let algorithm = algorithm_for(&hex, ty, &hex)?;
    Ok(ExpectedDigest { algorithm, hex })
}

/// A running hash over the published bytes.
#[derive(Debug, Clone)]
pub enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
    Md5(md5::Md5),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Self::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Self::Sha512(sha2::Sha512::new()),
            Algorithm::Md5 => Self::Md5(md5::Md5::new()),
        }
    }
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(data),
            Self::Sha512(h) => h.update(data),
            Self::Md5(h) => h.update(data),
        }
    }
    /// Lower-case hex of the digest.
    pub fn finish_hex(self) -> String {
        match self {
            Self::Sha256(h) => hex::encode(h.finalize()),
            Self::Sha512(h) => hex::encode(h.finalize()),
            Self::Md5(h) => hex::encode(h.finalize()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prefixed_bare_and_url_checksums() {
        let h = "AB".repeat(32);
        let parsed = ChecksumSource::parse(&format!("sha256:{h}"), ChecksumType::Auto).unwrap();
        assert_eq!(
            parsed,
            ChecksumSource::Inline(ExpectedDigest {
                algorithm: Algorithm::Sha256,
                hex: "ab".repeat(32)
            })
        );
        let bare = ChecksumSource::parse(&"cd".repeat(64), ChecksumType::Auto).unwrap();
        assert!(matches!(
            bare,
            ChecksumSource::Inline(ExpectedDigest {
                algorithm: Algorithm::Sha512,
                ..
            })
        ));
        assert!(
            ChecksumSource::parse(&"cd".repeat(16), ChecksumType::Auto).is_err(),
            "md5 only when asked"
        );
        assert!(ChecksumSource::parse(&"cd".repeat(16), ChecksumType::Md5).is_ok());
        assert!(ChecksumSource::parse("sha256:xyz", ChecksumType::Auto).is_err());
        assert!(ChecksumSource::parse(&"ab".repeat(32), ChecksumType::Sha512).is_err());
        assert!(matches!(
            ChecksumSource::parse("http://h/SHA256SUMS", ChecksumType::Auto).unwrap(),
            ChecksumSource::Url { .. }
        ));
    }

    #[test]
    fn finds_entries_in_gnu_and_bsd_sum_files() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let gnu = format!("{a}  other.img\n{b} *dir/disk.qcow2\n");
        assert_eq!(find_in_sums(&gnu, "disk.qcow2"), Some(b.clone()));
        assert_eq!(find_in_sums(&gnu, "missing.img"), None);
        let bsd = format!("SHA256 (disk.raw) = {a}\n");
        assert_eq!(find_in_sums(&bsd, "disk.raw"), Some(a.clone()));
        assert_eq!(find_in_sums(&format!("{a}\n"), "anything"), Some(a));
    }
}
