//! RMCP+ cryptography (IPMI v2.0 sections 13.28-13.32): RAKP key-exchange codes, the session integrity key and
//! K1/K2, integrity AuthCodes and AES-CBC-128 confidentiality, for cipher suites 3 and 17. Pure functions only.

use aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use hmac::{Hmac, Mac};

/// The cipher suites kiln speaks (IPMI v2.0 table 22-20).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CipherSuite {
    /// RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128.
    Suite3,
    /// RAKP-HMAC-SHA256, HMAC-SHA256-128, AES-CBC-128.
    Suite17,
}

/// Authentication algorithm numbers (IPMI v2.0 table 13-17).
pub const AUTH_RAKP_HMAC_SHA1: u8 = 0x01;
pub const AUTH_RAKP_HMAC_SHA256: u8 = 0x03;
/// Integrity algorithm numbers (table 13-18).
pub const INTEGRITY_HMAC_SHA1_96: u8 = 0x01;
pub const INTEGRITY_HMAC_SHA256_128: u8 = 0x04;
/// Confidentiality algorithm numbers (table 13-19).
pub const CONFIDENTIALITY_AES_CBC_128: u8 = 0x01;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha1,
    Sha256,
}

impl CipherSuite {
    /// In order of preference.
    pub const ALL: [CipherSuite; 2] = [CipherSuite::Suite17, CipherSuite::Suite3];

    pub fn id(self) -> u8 {
        match self {
            CipherSuite::Suite3 => 3,
            CipherSuite::Suite17 => 17,
        }
    }

    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            3 => Some(CipherSuite::Suite3),
            17 => Some(CipherSuite::Suite17),
            _ => None,
        }
    }

    pub fn auth_algorithm(self) -> u8 {
        match self {
            CipherSuite::Suite3 => AUTH_RAKP_HMAC_SHA1,
            CipherSuite::Suite17 => AUTH_RAKP_HMAC_SHA256,
        }
    }

    pub fn integrity_algorithm(self) -> u8 {
        match self {
            CipherSuite::Suite3 => INTEGRITY_HMAC_SHA1_96,
            CipherSuite::Suite17 => INTEGRITY_HMAC_SHA256_128,
        }
    }

    pub fn confidentiality_algorithm(self) -> u8 {
        CONFIDENTIALITY_AES_CBC_128
    }

    fn hash(self) -> Hash {
        match self {
            CipherSuite::Suite3 => Hash::Sha1,
            CipherSuite::Suite17 => Hash::Sha256,
        }
    }

    /// Length of the RAKP 2/3 key exchange authentication codes: the full HMAC (20 or 32 bytes).
    pub fn rakp_code_len(self) -> usize {
        match self.hash() {
            Hash::Sha1 => 20,
            Hash::Sha256 => 32,
        }
    }

    /// Length of the RAKP 4 integrity check value and of packet AuthCodes: HMAC truncated to 96 or 128 bits.
    pub fn integrity_len(self) -> usize {
        match self.hash() {
            Hash::Sha1 => 12,
            Hash::Sha256 => 16,
        }
    }
}

fn hmac(hash: Hash, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    match hash {
        Hash::Sha1 => {
            let mut mac = <Hmac<sha1::Sha1>>::new_from_slice(key).expect("HMAC takes any key length");
            for p in parts {
                mac.update(p);
            }
            mac.finalize().into_bytes().to_vec()
        }
        Hash::Sha256 => {
            let mut mac = <Hmac<sha2::Sha256>>::new_from_slice(key).expect("HMAC takes any key length");
            for p in parts {
                mac.update(p);
            }
            mac.finalize().into_bytes().to_vec()
        }
    }
}

/// Compares in time independent of where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What both ends of a RAKP exchange know (IPMI v2.0 section 13.31). Session IDs as they travel: little-endian.
#[derive(Debug, Clone)]
pub struct RakpContext<'a> {
    /// SIDm: the remote console's (our) session ID.
    pub console_session_id: u32,
    /// SIDc: the managed system's (BMC's) session ID.
    pub bmc_session_id: u32,
    /// Rm.
    pub console_random: [u8; 16],
    /// Rc.
    pub bmc_random: [u8; 16],
    /// GUIDc.
    pub bmc_guid: [u8; 16],
    /// ROLEm: the requested privilege level with the name-only lookup bit, exactly as sent in RAKP 1.
    pub role: u8,
    pub username: &'a [u8],
}

impl RakpContext<'_> {
    fn ulen(&self) -> [u8; 1] {
        [self.username.len() as u8]
    }
}

/// RAKP 2 key exchange authentication code: HMAC_Kuid(SIDm, SIDc, Rm, Rc, GUIDc, ROLEm, ULENGTHm, UNAMEm).
pub fn rakp2_code(suite: CipherSuite, kuid: &[u8], c: &RakpContext<'_>) -> Vec<u8> {
    hmac(
        suite.hash(),
        kuid,
        &[
            &c.console_session_id.to_le_bytes(),
            &c.bmc_session_id.to_le_bytes(),
            &c.console_random,
            &c.bmc_random,
            &c.bmc_guid,
            &[c.role],
            &c.ulen(),
            c.username,
        ],
    )
}

/// RAKP 3 key exchange authentication code: HMAC_Kuid(Rc, SIDm, ROLEm, ULENGTHm, UNAMEm).
pub fn rakp3_code(suite: CipherSuite, kuid: &[u8], c: &RakpContext<'_>) -> Vec<u8> {
    hmac(
        suite.hash(),
        kuid,
        &[
            &c.bmc_random,
            &c.console_session_id.to_le_bytes(),
            &[c.role],
            &c.ulen(),
            c.username,
        ],
    )
}

/// Session Integrity Key (section 13.31): HMAC_Kg(Rm, Rc, ROLEm, ULENGTHm, UNAMEm); Kg is Kuid when the BMC
/// has no BMC key.
pub fn session_integrity_key(suite: CipherSuite, kg: &[u8], c: &RakpContext<'_>) -> Vec<u8> {
    hmac(
        suite.hash(),
        kg,
        &[&c.console_random, &c.bmc_random, &[c.role], &c.ulen(), c.username],
    )
}

/// RAKP 4 integrity check value: HMAC_SIK(Rm, SIDc, GUIDc), truncated to the suite's integrity length.
pub fn rakp4_icv(suite: CipherSuite, sik: &[u8], c: &RakpContext<'_>) -> Vec<u8> {
    let mut v = hmac(
        suite.hash(),
        sik,
        &[&c.console_random, &c.bmc_session_id.to_le_bytes(), &c.bmc_guid],
    );
    v.truncate(suite.integrity_len());
    v
}

/// The keys of an active session (section 13.32): K1 = HMAC_SIK(20 x 0x01) keys integrity, K2 = HMAC_SIK(20 x
/// 0x02) whose first 16 bytes key AES-CBC-128. The constants are 20 bytes for SHA-256 too, as in ipmitool.
#[derive(Clone)]
pub struct SessionKeys {
    pub suite: CipherSuite,
    pub k1: Vec<u8>,
    pub k2: Vec<u8>,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeys")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl SessionKeys {
    pub fn derive(suite: CipherSuite, sik: &[u8]) -> Self {
        Self {
            suite,
            k1: hmac(suite.hash(), sik, &[&[0x01; 20]]),
            k2: hmac(suite.hash(), sik, &[&[0x02; 20]]),
        }
    }

    /// The AuthCode of a packet (section 13.28.4): HMAC_K1 over the session header through Next Header,
    /// truncated to 96 (suite 3) or 128 (suite 17) bits.
    pub fn integrity_code(&self, data: &[u8]) -> Vec<u8> {
        let mut v = hmac(self.suite.hash(), &self.k1, &[data]);
        v.truncate(self.suite.integrity_len());
        v
    }

    fn aes(&self) -> aes::Aes128 {
        aes::Aes128::new_from_slice(&self.k2[..16]).expect("K2 is at least 16 bytes")
    }

    /// AES-CBC-128 payload (section 13.29): IV, then the encrypted payload + pad bytes 1, 2, ... + pad length.
    pub fn encrypt(&self, iv: [u8; 16], plaintext: &[u8]) -> Vec<u8> {
        let pad = (16 - (plaintext.len() + 1) % 16) % 16;
        let mut data = plaintext.to_vec();
        data.extend((1..=pad as u8).chain([pad as u8]));
        let cipher = self.aes();
        let mut prev = iv;
        for chunk in data.chunks_mut(16) {
            let mut block = aes::Block::default();
            for (i, b) in block.iter_mut().enumerate() {
                *b = chunk[i] ^ prev[i];
            }
            cipher.encrypt_block(&mut block);
            chunk.copy_from_slice(&block);
            prev.copy_from_slice(&block);
        }
        let mut out = iv.to_vec();
        out.extend(data);
        out
    }

    /// Reverses [`Self::encrypt`]: takes IV + ciphertext, checks and strips the padding.
    pub fn decrypt(&self, payload: &[u8]) -> Result<Vec<u8>, &'static str> {
        if payload.len() < 32 || !payload.len().is_multiple_of(16) {
            return Err("encrypted payload is not an IV plus whole AES blocks");
        }
        let cipher = self.aes();
        let mut prev: [u8; 16] = payload[..16].try_into().expect("16 bytes");
        let mut out = Vec::with_capacity(payload.len() - 16);
        for chunk in payload[16..].chunks(16) {
            let mut block = aes::Block::default();
            block.copy_from_slice(chunk);
            cipher.decrypt_block(&mut block);
            for (i, b) in block.iter().enumerate() {
                out.push(b ^ prev[i]);
            }
            prev.copy_from_slice(chunk);
        }
        let pad = *out.last().expect("at least one block") as usize;
        if pad >= 16 || pad + 1 > out.len() {
            return Err("confidentiality pad length out of range");
        }
        let body_len = out.len() - pad - 1;
        if out[body_len..body_len + pad]
            .iter()
            .enumerate()
            .any(|(i, &b)| b != i as u8 + 1)
        {
            return Err("confidentiality pad bytes are wrong");
        }
        out.truncate(body_len);
        Ok(out)
    }
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

    fn context() -> RakpContext<'static> {
        RakpContext {
            console_session_id: 0x1122_3344,
            bmc_session_id: 0xA1B2_C3D4,
            console_random: std::array::from_fn(|i| i as u8),
            bmc_random: std::array::from_fn(|i| 0x10 + i as u8),
            bmc_guid: std::array::from_fn(|i| 0x20 + i as u8),
            role: 0x14,
            username: b"admin",
        }
    }

    // Vectors computed independently with Python's hmac/hashlib and the `cryptography` package:
    //
    // import hmac, hashlib, struct
    // from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    // sid_m = struct.pack('<I', 0x11223344); sid_c = struct.pack('<I', 0xA1B2C3D4)
    // rm = bytes(range(0x00, 0x10)); rc = bytes(range(0x10, 0x20)); guid = bytes(range(0x20, 0x30))
    // role = bytes([0x14]); user = b'admin'; ulen = bytes([len(user)]); kuid = b'password'
    // for name, h, trunc in (('sha1', hashlib.sha1, 12), ('sha256', hashlib.sha256, 16)):
    //     H = lambda k, m: hmac.new(k, m, h).digest()
    //     rakp2 = H(kuid, sid_m + sid_c + rm + rc + guid + role + ulen + user)
    //     rakp3 = H(kuid, rc + sid_m + role + ulen + user)
    //     sik = H(kuid, rm + rc + role + ulen + user)
    //     k1 = H(sik, b'\x01' * 20); k2 = H(sik, b'\x02' * 20)
    //     rakp4 = H(sik, rm + sid_c + guid)[:trunc]
    //     icv = H(k1, bytes(range(0x40, 0x40 + 28)))[:trunc]
    //     pt = bytes([0x20, 0x18, 0xc8, 0x81, 0x04, 0x01])
    //     padlen = (16 - (len(pt) + 1) % 16) % 16
    //     padded = pt + bytes(range(1, padlen + 1)) + bytes([padlen])
    //     iv = bytes(range(0xA0, 0xB0))
    //     enc = Cipher(algorithms.AES(k2[:16]), modes.CBC(iv)).encryptor()
    //     ct = enc.update(padded) + enc.finalize()
    struct Vectors {
        suite: CipherSuite,
        rakp2: &'static str,
        rakp3: &'static str,
        sik: &'static str,
        k1: &'static str,
        k2: &'static str,
        rakp4: &'static str,
        icv: &'static str,
        ct: &'static str,
    }

    const SUITE_3: Vectors = Vectors {
        suite: CipherSuite::Suite3,
        rakp2: "12cdcc14792ab581add850f89287deede5f3c248",
        rakp3: "4402012e214da511895a399bd77d5396e7998a4d",
        sik: "122c77c4b11ccd93251cbae6c34a9cb6310da154",
        k1: "e4472be78f9a81fa68297aab696a7be8c97fc9f8",
        k2: "2b6552012a2517cb3b5713901d757a6efc7d8301",
        rakp4: "041029bb0bb4e33506109951",
        icv: "0629294485647c1dc0a30856",
        ct: "0c9c80cb9a03e1b861cafd01767abe2b",
    };

    const SUITE_17: Vectors = Vectors {
        suite: CipherSuite::Suite17,
        rakp2: "80e04f0a712638b0d32e47c9729aa96d20f826814c5141e5157aa190db4c1ac1",
        rakp3: "e6f17841e92f8c11cbc4fd1cafcc9c21e3d814e713e13e9ee640103b50c0ef15",
        sik: "e5935f7199865ad961063477b0662684e2ce9b1da8f2b8d41c5ce127d37e9bcf",
        k1: "dc4fe73d075306f6897115dd63257385e845c10404fa1d73991790c6a101bec2",
        k2: "2a4f969ea6dfa83066f36674fdc2fea289fa1a21da90303e9b5269b54ec5adb5",
        rakp4: "a17131352982074b03cf821812d7f689",
        icv: "ebd14da005c480332544db3648d46801",
        ct: "ca11fb63e25d2882db014e274d827a1c",
    };

    fn check(v: &Vectors) {
        let c = context();
        let kuid = b"password";
        assert_eq!(rakp2_code(v.suite, kuid, &c), hex(v.rakp2), "rakp2");
        assert_eq!(rakp3_code(v.suite, kuid, &c), hex(v.rakp3), "rakp3");
        let sik = session_integrity_key(v.suite, kuid, &c);
        assert_eq!(sik, hex(v.sik), "sik");
        assert_eq!(rakp4_icv(v.suite, &sik, &c), hex(v.rakp4), "rakp4");
        let keys = SessionKeys::derive(v.suite, &sik);
        assert_eq!(keys.k1, hex(v.k1), "k1");
        assert_eq!(keys.k2, hex(v.k2), "k2");
        let data: Vec<u8> = (0x40..0x40 + 28).collect();
        assert_eq!(keys.integrity_code(&data), hex(v.icv), "icv");
        let iv: [u8; 16] = std::array::from_fn(|i| 0xA0 + i as u8);
        let pt = [0x20, 0x18, 0xc8, 0x81, 0x04, 0x01];
        let enc = keys.encrypt(iv, &pt);
        assert_eq!(&enc[..16], &iv);
        assert_eq!(&enc[16..], hex(v.ct).as_slice(), "aes-cbc");
        assert_eq!(keys.decrypt(&enc).unwrap(), pt);
    }

    #[test]
    fn suite_17_known_answers() {
        check(&SUITE_17);
    }

    #[test]
    fn suite_3_known_answers() {
        check(&SUITE_3);
    }

    #[test]
    fn zero_padded_kuid_is_the_same_key() {
        // ipmitool keys HMAC with the password zero-padded to 20 bytes; HMAC pads keys with zeros anyway.
        let mut padded = b"password".to_vec();
        padded.resize(20, 0);
        for suite in CipherSuite::ALL {
            assert_eq!(
                rakp2_code(suite, &padded, &context()),
                rakp2_code(suite, b"password", &context())
            );
        }
    }

    #[test]
    fn decrypt_rejects_garbage() {
        let keys = SessionKeys::derive(CipherSuite::Suite17, &[7; 32]);
        assert!(keys.decrypt(&[0; 16]).is_err());
        assert!(keys.decrypt(&[0; 33]).is_err());
        // Random blocks almost never carry valid padding; at least it must not panic.
        for n in 0..64u8 {
            let _ = keys.decrypt(&[n; 48]);
        }
    }

    proptest::proptest! {
        #[test]
        fn encrypt_decrypt_round_trip(data in proptest::collection::vec(proptest::num::u8::ANY, 0..100),
                                      iv in proptest::array::uniform16(proptest::num::u8::ANY)) {
            for suite in CipherSuite::ALL {
                let keys = SessionKeys::derive(suite, b"sik");
                let enc = keys.encrypt(iv, &data);
                proptest::prop_assert_eq!(enc.len() % 16, 0);
                proptest::prop_assert_eq!(keys.decrypt(&enc).unwrap(), data.clone());
            }
        }
    }
}
