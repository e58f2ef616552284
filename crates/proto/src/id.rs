//! Identities: peers ([`PeerId`]), and the random ids of calls, messages and transfers.
//!
//! A peer *is* its Ed25519 public key. Names are display hints only. Humans see a
//! [`Fingerprint`] (80 bits of a domain-separated BLAKE3 hash, `xxxx-xxxx-xxxx-xxxx-xxxx`) and can
//! compare a [`SafetyNumber`] derived from both keys of a conversation, the same on both sides.

use std::fmt;
use std::str::FromStr;

/// Context string for fingerprints (BLAKE3 key derivation mode: domain separation).
const FINGERPRINT_CONTEXT: &str = "p2pcall 2026-11 peer fingerprint v1";
/// Context string for safety numbers.
const SAFETY_CONTEXT: &str = "p2pcall 2026-11 safety number v1";
/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (33 bytes, 0 unused bits) }. The 32 key bytes follow.
pub const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// A peer's identity: its Ed25519 public key (32 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId([u8; 32]);

impl PeerId {
    /// Wraps raw public key bytes.
    pub const fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    /// The raw public key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Extracts the key from an Ed25519 SubjectPublicKeyInfo (the RFC 7250 raw public key that
    /// TLS presents). Returns `None` for any other key type or malformed input.
    pub fn from_spki(spki: &[u8]) -> Option<Self> {
        let key = spki.strip_prefix(&ED25519_SPKI_PREFIX[..])?;
        Some(Self(key.try_into().ok()?))
    }

    /// The Ed25519 SubjectPublicKeyInfo DER for this key.
    pub fn to_spki(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(44);
        v.extend_from_slice(&ED25519_SPKI_PREFIX);
        v.extend_from_slice(&self.0);
        v
    }

    /// The short, human-comparable fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut h = blake3::Hasher::new_derive_key(FINGERPRINT_CONTEXT);
        h.update(&self.0);
        let mut out = [0u8; 10];
        h.finalize_xof().fill(&mut out);
        Fingerprint(out)
    }

    /// Full lowercase hex (64 characters).
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// True if `query` names this peer: a fingerprint or a prefix of one (at least 4 hex
    /// digits; dashes optional), or the full hex key or a prefix of it (at least 8 digits:
    /// `p2pcall id` shows both, and either may be what the user copied).
    pub fn matches(&self, query: &str) -> bool {
        let q: String = query
            .chars()
            .filter(|c| *c != '-')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if q.len() >= 8 && self.to_hex().starts_with(&q) {
            return true;
        }
        q.len() >= 4 && q.len() <= 20 && hex(&self.fingerprint().0).starts_with(&q)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.fingerprint())
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Error parsing a [`PeerId`] from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a peer id is 64 hex digits (got {0:?})")]
pub struct ParsePeerIdError(pub String);

impl FromStr for PeerId {
    type Err = ParsePeerIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = || ParsePeerIdError(s.to_owned());
        if s.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
                .map_err(|_| bad())?;
        }
        Ok(Self(out))
    }
}

/// 80-bit display fingerprint of a key, shown as five groups of four hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 10]);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = hex(&self.0);
        for (i, chunk) in h.as_bytes().chunks(4).enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            f.write_str(std::str::from_utf8(chunk).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A 60-digit number derived from two keys, identical for both peers regardless of order.
/// Two users read it to each other (or compare it in person) to rule out a man in the middle.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct SafetyNumber(pub [u32; 12]);

impl SafetyNumber {
    /// Derives the safety number of the pair `(a, b)`; symmetric in its arguments.
    pub fn new(a: &PeerId, b: &PeerId) -> Self {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let mut h = blake3::Hasher::new_derive_key(SAFETY_CONTEXT);
        h.update(&lo.0);
        h.update(&hi.0);
        let mut raw = [0u8; 60];
        h.finalize_xof().fill(&mut raw);
        let mut groups = [0u32; 12];
        for (g, chunk) in groups.iter_mut().zip(raw.chunks_exact(5)) {
            let mut v = 0u64;
            for b in chunk {
                v = (v << 8) | u64::from(*b);
            }
            // 5 bytes = 40 bits; reduce to five decimal digits.
            *g = (v % 100_000) as u32;
        }
        Self(groups)
    }
}

impl fmt::Display for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, g) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(if i % 4 == 0 { "  " } else { " " })?;
            }
            write!(f, "{g:05}")?;
        }
        Ok(())
    }
}

/// Lowercase hex of `b`: the one encoder of every id's text form.
pub fn hex(b: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// Exactly `N` bytes from `2 * N` hex digits (either case), or `None`.
pub fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Error parsing a [`CallId`], [`MessageId`] or [`TransferId`] from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {what} id is 32 hex digits (got {text:?})")]
pub struct ParseIdError {
    /// Which kind of id.
    pub what: &'static str,
    /// What was given.
    pub text: String,
}

/// A random 128-bit id chosen by whoever starts the thing it names. Its text form is 32
/// lowercase hex digits ([`hex`]); `Debug` shows the same.
macro_rules! random_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name([u8; 16]);

        impl $name {
            /// Wraps raw bytes (from the wire, the database, or a random source).
            pub const fn from_bytes(b: [u8; 16]) -> Self {
                Self(b)
            }

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex(&self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_hex(s.trim()).map(Self).ok_or_else(|| ParseIdError {
                    what: $what,
                    text: s.to_string(),
                })
            }
        }
    };
}

random_id!(
    /// A call, chosen by the caller.
    CallId,
    "call"
);
random_id!(
    /// A chat message, chosen by its sender (a retried message keeps it, so the receiver
    /// stores it once).
    MessageId,
    "message"
);
random_id!(
    /// A file transfer, chosen by the sender (a resumed transfer keeps it).
    TransferId,
    "transfer"
);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn safety_number_is_symmetric_and_distinct() {
        let a = PeerId::from_bytes([1; 32]);
        let b = PeerId::from_bytes([2; 32]);
        let c = PeerId::from_bytes([3; 32]);
        assert_eq!(SafetyNumber::new(&a, &b), SafetyNumber::new(&b, &a));
        assert_ne!(SafetyNumber::new(&a, &b), SafetyNumber::new(&a, &c));
        let text = SafetyNumber::new(&a, &b).to_string();
        assert_eq!(text.chars().filter(char::is_ascii_digit).count(), 60);
    }

    #[test]
    fn fingerprint_format_and_matching() {
        let a = PeerId::from_bytes([7; 32]);
        let fp = a.fingerprint().to_string();
        assert_eq!(fp.len(), 24);
        assert_eq!(fp.matches('-').count(), 4);
        assert!(a.matches(&fp));
        assert!(a.matches(&fp[..4]));
        assert!(a.matches(&a.to_hex()));
        assert!(!a.matches(&fp[..3]), "too short a prefix is ambiguous");
        // A prefix of the full id works too, from 8 digits on (`p2pcall id` prints both).
        assert!(a.matches(&a.to_hex()[..8]));
        assert!(a.matches(&a.to_hex().to_uppercase()[..12]));
        assert!(!a.matches(&a.to_hex()[..7]));
        assert!(!PeerId::from_bytes([8; 32]).matches(&fp));
    }

    #[test]
    fn spki_rejects_other_key_types() {
        let a = PeerId::from_bytes([9; 32]);
        assert_eq!(PeerId::from_spki(&a.to_spki()), Some(a));
        let mut wrong_oid = a.to_spki();
        wrong_oid[8] = 0x71; // Ed448
        assert_eq!(PeerId::from_spki(&wrong_oid), None);
        assert_eq!(PeerId::from_spki(&a.to_spki()[..40]), None);
    }

    #[test]
    fn random_ids_refuse_anything_but_32_hex_digits() {
        for bad in [
            "",
            "00",
            &"0".repeat(31),
            &"0".repeat(33),
            &"g".repeat(32),
            "é0000000000000000000000000000000",
        ] {
            let e = bad.parse::<MessageId>().unwrap_err();
            assert_eq!(e.what, "message");
        }
        let id: CallId = " 000102030405060708090a0b0c0d0e0f ".parse().unwrap();
        assert_eq!(id.as_bytes()[15], 15);
        assert_eq!(
            format!("{id:?}"),
            "CallId(000102030405060708090a0b0c0d0e0f)"
        );
    }

    proptest! {
        #[test]
        fn random_ids_round_trip_through_text(bytes in any::<[u8; 16]>()) {
            let id = TransferId::from_bytes(bytes);
            prop_assert_eq!(id.to_string().len(), 32);
            prop_assert_eq!(id.to_string().parse::<TransferId>().unwrap(), id);
            prop_assert_eq!(id.to_string().to_uppercase().parse::<TransferId>().unwrap(), id);
            let c = CallId::from_bytes(bytes);
            prop_assert_eq!(c.to_string().parse::<CallId>().unwrap(), c);
        }

        #[test]
        fn hex_round_trip(bytes in any::<[u8; 32]>()) {
            let id = PeerId::from_bytes(bytes);
            prop_assert_eq!(id.to_hex().parse::<PeerId>().unwrap(), id);
        }

        #[test]
        fn parse_never_panics(s in ".{0,80}") {
            let _ = s.parse::<PeerId>();
        }
    }
}
