//! LAN presence: what an endpoint in LAN-only mode announces by mDNS / DNS-SD (RFC 6762,
//! RFC 6763) instead of registering with a relay.
//!
//! The service type is [`SERVICE_TYPE`]; the SRV record carries the peer socket's UDP port,
//! the address records its interface addresses, and the TXT record the strings
//! `v=1`, `id=<64 hex digits>` and `name=<display name>`. Nothing here is authenticated (mDNS
//! cannot be): the id only says which key to expect, and the QUIC handshake then proves it,
//! exactly as with the relay's presence. Decoding treats the properties as hostile.

use crate::codec::truncate_utf8;
use crate::relay::MAX_NAME;
use crate::{DecodeError, PeerId};

/// DNS-SD service type of p2pcall endpoints.
pub const SERVICE_TYPE: &str = "_p2pcall._udp.local.";
/// Value of the `v` property this build writes and reads.
pub const LAN_VERSION: &str = "1";

/// One endpoint's LAN announcement (the TXT record's content).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanRecord {
    /// The key the endpoint will prove in the QUIC handshake.
    pub id: PeerId,
    /// Self-chosen display name (a hint, not an identity), at most
    /// [`MAX_NAME`] bytes.
    pub name: String,
}

impl LanRecord {
    /// The TXT properties, in order: `v`, `id`, `name` (the name cut to [`MAX_NAME`] bytes
    /// at a character boundary).
    pub fn to_txt(&self) -> [(&'static str, String); 3] {
        [
            ("v", LAN_VERSION.to_string()),
            ("id", self.id.to_hex()),
            ("name", truncate_utf8(&self.name, MAX_NAME).to_string()),
        ]
    }

    /// Reads the TXT properties (key, value). Unknown keys are ignored (later versions may
    /// add some); of a repeated key only the first counts (RFC 6763 §6.4). Keys compare
    /// case-insensitively, as DNS-SD requires.
    pub fn from_txt<'a>(
        props: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    ) -> Result<Self, DecodeError> {
        let (mut v, mut id, mut name) = (None, None, None);
        for (key, val) in props {
            let slot = if key.eq_ignore_ascii_case("v") {
                &mut v
            } else if key.eq_ignore_ascii_case("id") {
                &mut id
            } else if key.eq_ignore_ascii_case("name") {
                &mut name
            } else {
                continue;
            };
            if slot.is_none() {
                *slot = Some(val.unwrap_or_default());
            }
        }
        let v = v.ok_or(DecodeError::Truncated { field: "lan v" })?;
        if v != LAN_VERSION.as_bytes() {
            let first = v.first().copied().unwrap_or(0);
            return Err(DecodeError::UnsupportedVersion(first.wrapping_sub(b'0')));
        }
        let id = id.ok_or(DecodeError::Truncated { field: "lan id" })?;
        let id = std::str::from_utf8(id)
            .ok()
            .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|s| s.parse::<PeerId>().ok())
            .ok_or(DecodeError::InvalidValue {
                field: "lan id",
                value: id.len() as u64,
            })?;
        let name = name.unwrap_or_default();
        if name.len() > MAX_NAME {
            return Err(DecodeError::TooLong {
                field: "lan name",
                len: name.len(),
                max: MAX_NAME,
            });
        }
        let name = std::str::from_utf8(name)
            .map_err(|_| DecodeError::InvalidUtf8 { field: "lan name" })?
            .to_string();
        Ok(Self { id, name })
    }

    /// Splits DNS TXT rdata (length-prefixed strings) into (key, value) properties, as an
    /// mDNS stack does: a string without `=` is a key with no value; empty strings and
    /// strings with an empty key are skipped; a length running past the end ends the list.
    pub fn split_rdata(rdata: &[u8]) -> Vec<(&str, Option<&[u8]>)> {
        let mut out = Vec::new();
        let mut rest = rdata;
        while let Some((&len, tail)) = rest.split_first() {
            let Some((s, next)) = tail.split_at_checked(usize::from(len)) else {
                break;
            };
            rest = next;
            let (k, v) = match s.iter().position(|&b| b == b'=') {
                Some(i) => (&s[..i], Some(&s[i + 1..])),
                None => (s, None),
            };
            if let Ok(k) = std::str::from_utf8(k)
                && !k.is_empty()
            {
                out.push((k, v));
            }
        }
        out
    }

    /// The TXT rdata of [`Self::to_txt`] (for tests and fuzzing against [`Self::split_rdata`]).
    pub fn to_rdata(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in self.to_txt() {
            let s = format!("{k}={v}");
            // Every string fits: keys are short, the name is capped at MAX_NAME bytes.
            out.push(u8::try_from(s.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(&s.as_bytes()[..s.len().min(255)]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(b: [u8; 32]) -> PeerId {
        PeerId::from_bytes(b)
    }

    proptest! {
        #[test]
        fn records_round_trip(key in any::<[u8; 32]>(), name in "\\PC{0,80}") {
            let r = LanRecord { id: id(key), name };
            let txt = r.to_txt();
            let back = LanRecord::from_txt(txt.iter().map(|(k, v)| (*k, Some(v.as_bytes())))).unwrap();
            prop_assert_eq!(&back.id, &r.id);
            prop_assert_eq!(back.name.as_str(), truncate_utf8(&r.name, MAX_NAME));
            let rdata = r.to_rdata();
            let again = LanRecord::from_txt(LanRecord::split_rdata(&rdata)).unwrap();
            prop_assert_eq!(again, back);
        }

        #[test]
        fn hostile_rdata_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = LanRecord::from_txt(LanRecord::split_rdata(&data));
        }
    }

    #[test]
    fn each_defect_has_its_own_error() {
        let hex = id([7; 32]).to_hex();
        let ok = |extra: &[(&'static str, &'static [u8])]| {
            let mut v: Vec<(&str, Option<&[u8]>)> =
                vec![("v", Some(b"1")), ("id", Some(hex.as_bytes()))];
            v.extend(extra.iter().map(|(k, x)| (*k, Some(*x))));
            v
        };
        assert_eq!(
            LanRecord::from_txt(ok(&[("name", b"alice")])).unwrap().name,
            "alice"
        );
        // A repeated key: the first counts; unknown keys are ignored; keys are case-blind.
        let r = LanRecord::from_txt(ok(&[("NAME", b"first"), ("name", b"second"), ("x", b"y")]))
            .unwrap();
        assert_eq!(r.name, "first");
        assert_eq!(
            LanRecord::from_txt([("id", Some(hex.as_bytes()))]),
            Err(DecodeError::Truncated { field: "lan v" })
        );
        assert_eq!(
            LanRecord::from_txt([("v", Some(&b"2"[..])), ("id", Some(hex.as_bytes()))]),
            Err(DecodeError::UnsupportedVersion(2))
        );
        assert_eq!(
            LanRecord::from_txt([("v", Some(&b"1"[..]))]),
            Err(DecodeError::Truncated { field: "lan id" })
        );
        assert!(matches!(
            LanRecord::from_txt([("v", Some(&b"1"[..])), ("id", Some(&b"abcd"[..]))]),
            Err(DecodeError::InvalidValue {
                field: "lan id",
                ..
            })
        ));
        assert_eq!(
            LanRecord::from_txt(ok(&[("name", &[0xff, 0xfe])])),
            Err(DecodeError::InvalidUtf8 { field: "lan name" })
        );
        assert!(matches!(
            LanRecord::from_txt(ok(&[("name", &[b'a'; 65])])),
            Err(DecodeError::TooLong {
                field: "lan name",
                ..
            })
        ));
    }

    #[test]
    fn rdata_splitting_follows_dns_sd() {
        let props = LanRecord::split_rdata(b"\x03a=b\x00\x01c\x02=x\x05d=");
        // "a=b", "", "c" (no value), "=x" (empty key, skipped); the last length runs past
        // the end and ends the list.
        assert_eq!(props, vec![("a", Some(&b"b"[..])), ("c", None)]);
    }
}
