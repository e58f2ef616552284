//! Invitations: a ticket is one line of text (and the QR code of it) that tells someone how to
//! reach you: your id, the name you suggest they know you by, and the relay you use with its
//! key, so that the person who adds it pins that relay without trusting its first answer.
//!
//! The text is `p2pcall:` and the base32 (RFC 4648, no padding, any case) of:
//!
//! ```text
//! version  u8 (1)
//! peer     32 bytes: the inviter's key
//! name     u8 length (1..=64) + UTF-8, no control, bidi-control or invisible characters
//! relay    u8 length (0: no relay, a LAN-only identity) + ASCII `host:port`
//! key      32 bytes, present only with a relay: the relay's key
//! check    4 bytes: BLAKE3 of everything before, so a mistyped ticket is refused
//! ```
//!
//! Base32 in upper case uses only characters of a QR code's alphanumeric mode, so the QR code
//! of the upper-cased line stays small.

use crate::PeerId;
use crate::codec::{DecodeError, Reader};
use crate::relay::MAX_NAME;
use crate::text::{is_bidi_control, is_invisible};

/// What every ticket starts with (in any case).
pub const PREFIX: &str = "p2pcall:";
/// The ticket layout this build writes and reads.
pub const TICKET_VERSION: u8 = 1;
/// Longest relay address a ticket holds (a DNS name of 253 bytes and a port).
pub const MAX_RELAY_ADDR: usize = 255;
const CHECK_LEN: usize = 4;

/// An invitation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// Who invites.
    pub peer: PeerId,
    /// The name the inviter suggests (the one it announces).
    pub name: String,
    /// The relay the inviter uses and its key; `None` for an identity that uses no relay.
    pub relay: Option<TicketRelay>,
}

/// A relay named in a ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketRelay {
    /// `host:port`, as a user would give it to `--relay`.
    pub addr: String,
    /// The key that relay presents.
    pub key: PeerId,
}

/// Why a text is not a ticket this build can use. Every variant names one cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// The text does not start with `p2pcall:`.
    #[error("not a p2pcall ticket (a ticket starts with \"{PREFIX}\")")]
    NotATicket,
    /// The part after the prefix is not base32.
    #[error("the ticket is damaged: it is not base32 (copy the whole line again)")]
    Encoding,
    /// The checksum does not match: a character was changed, lost or added.
    #[error("the ticket is damaged: its checksum does not match (copy the whole line again)")]
    Checksum,
    /// A ticket layout this build does not read.
    #[error(
        "ticket version {0} is not one this build reads (it reads version {TICKET_VERSION}); update p2pcall"
    )]
    Version(u8),
    /// A field could not be read.
    #[error("the ticket is damaged: {0}")]
    Decode(#[from] DecodeError),
    /// The suggested name is empty or holds characters that could disguise it.
    #[error("the ticket's name is empty or holds control, bidi or invisible characters")]
    Name,
    /// The relay address is not `host:port`.
    #[error("the ticket's relay address is not HOST:PORT")]
    RelayAddr,
}

impl Ticket {
    /// The ticket as one line of text.
    pub fn encode(&self) -> String {
        let mut body = Vec::with_capacity(128);
        body.push(TICKET_VERSION);
        body.extend_from_slice(self.peer.as_bytes());
        let name = crate::codec::truncate_utf8(&self.name, MAX_NAME);
        body.push(name.len() as u8);
        body.extend_from_slice(name.as_bytes());
        match &self.relay {
            Some(r) => {
                let addr = crate::codec::truncate_utf8(&r.addr, MAX_RELAY_ADDR);
                body.push(addr.len() as u8);
                body.extend_from_slice(addr.as_bytes());
                body.extend_from_slice(r.key.as_bytes());
            }
            None => body.push(0),
        }
        let check = checksum(&body);
        body.extend_from_slice(&check);
        let mut out = String::from(PREFIX);
        out.push_str(
            &data_encoding::BASE32_NOPAD
                .encode(&body)
                .to_ascii_lowercase(),
        );
        out
    }

    /// The text a QR code should hold: the same ticket in upper case, so that the code uses
    /// the QR alphanumeric mode (about 40 % smaller than bytes).
    pub fn qr_text(&self) -> String {
        self.encode().to_ascii_uppercase()
    }

    /// Reads a ticket. Spaces and line breaks inside it (a terminal that wrapped the line)
    /// are ignored, and so is the case of the letters.
    pub fn decode(text: &str) -> Result<Self, TicketError> {
        let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let Some(b32) = compact
            .get(..PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(PREFIX))
            .and_then(|_| compact.get(PREFIX.len()..))
        else {
            return Err(TicketError::NotATicket);
        };
        let raw = data_encoding::BASE32_NOPAD
            .decode(b32.to_ascii_uppercase().as_bytes())
            .map_err(|_| TicketError::Encoding)?;
        if raw.len() < CHECK_LEN {
            return Err(TicketError::Decode(DecodeError::Truncated {
                field: "ticket",
            }));
        }
        let (body, check) = raw.split_at(raw.len() - CHECK_LEN);
        if checksum(body) != check {
            return Err(TicketError::Checksum);
        }
        Self::decode_body(body)
    }

    fn decode_body(body: &[u8]) -> Result<Self, TicketError> {
        let mut r = Reader::new(body);
        let version = r.u8("ticket version")?;
        if version != TICKET_VERSION {
            return Err(TicketError::Version(version));
        }
        let peer = r.peer_id("ticket peer")?;
        let name = r.str8("ticket name", MAX_NAME)?;
        if !valid_name(&name) {
            return Err(TicketError::Name);
        }
        let addr = r.str8("ticket relay", MAX_RELAY_ADDR)?;
        let relay = if addr.is_empty() {
            None
        } else {
            if !valid_relay_addr(&addr) {
                return Err(TicketError::RelayAddr);
            }
            Some(TicketRelay {
                addr,
                key: r.peer_id("ticket relay key")?,
            })
        };
        r.finish()?;
        Ok(Self { peer, name, relay })
    }
}

impl std::str::FromStr for Ticket {
    type Err = TicketError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::decode(s)
    }
}

impl std::fmt::Display for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.encode())
    }
}

/// Whether `text` is meant as a ticket (starts with the prefix), valid or not.
pub fn looks_like_ticket(text: &str) -> bool {
    text.trim_start()
        .get(..PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(PREFIX))
}

fn checksum(body: &[u8]) -> [u8; CHECK_LEN] {
    let mut h = blake3::Hasher::new();
    h.update(b"p2pcall ticket");
    h.update(body);
    let mut out = [0u8; CHECK_LEN];
    out.copy_from_slice(&h.finalize().as_bytes()[..CHECK_LEN]);
    out
}

/// A name a ticket may suggest: not empty or blank, and nothing that hides or reorders it.
pub fn valid_name(name: &str) -> bool {
    !name.trim().is_empty()
        && name.len() <= MAX_NAME
        && !name
            .chars()
            .any(|c| c.is_control() || is_bidi_control(c) || is_invisible(c))
}

/// `host:port` with a non-empty host of printable ASCII (IPv6 in brackets) and a port.
pub fn valid_relay_addr(addr: &str) -> bool {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    let host_ok = !host.is_empty()
        && host.bytes().all(|b| b.is_ascii_graphic())
        && match host.strip_prefix('[') {
            Some(v6) => v6
                .strip_suffix(']')
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()),
            None => !host.contains(['[', ']', ':', '/', '@']),
        };
    host_ok && port.parse::<u16>().is_ok_and(|p| p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn relay_addr() -> impl Strategy<Value = String> {
        prop_oneof![
            ("[a-z][a-z0-9.-]{0,60}", 1u16..).prop_map(|(h, p)| format!("{h}:{p}")),
            (any::<[u8; 4]>(), 1u16..)
                .prop_map(|(ip, p)| format!("{}:{p}", std::net::Ipv4Addr::from(ip))),
            (any::<[u8; 16]>(), 1u16..)
                .prop_map(|(ip, p)| format!("[{}]:{p}", std::net::Ipv6Addr::from(ip))),
        ]
    }

    fn ticket() -> impl Strategy<Value = Ticket> {
        (
            any::<[u8; 32]>(),
            "[\\PC&&[^\u{200B}-\u{200F}\u{202A}-\u{202E}\u{2060}-\u{2069}\u{FEFF}\u{00AD}\u{061C}]]{1,16}",
            proptest::option::of((relay_addr(), any::<[u8; 32]>())),
        )
            .prop_filter("a name with something visible", |(_, n, _)| valid_name(n))
            .prop_map(|(peer, name, relay)| Ticket {
                peer: PeerId::from_bytes(peer),
                name,
                relay: relay.map(|(addr, key)| TicketRelay {
                    addr,
                    key: PeerId::from_bytes(key),
                }),
            })
    }

    proptest! {
        #[test]
        fn round_trip(t in ticket()) {
            let text = t.encode();
            prop_assert!(text.starts_with(PREFIX));
            prop_assert!(!text.contains(char::is_whitespace));
            prop_assert_eq!(Ticket::decode(&text), Ok(t.clone()));
            // The QR text, and a line a terminal wrapped, read back the same.
            prop_assert_eq!(Ticket::decode(&t.qr_text()), Ok(t.clone()));
            let (a, b) = text.split_at(text.len() / 2);
            prop_assert_eq!(Ticket::decode(&format!(" {a}\n  {b}\n")), Ok(t));
        }

        #[test]
        fn any_changed_character_is_refused(t in ticket(), at in any::<prop::sample::Index>(), to in "[a-z2-7]") {
            let text = t.encode();
            let i = PREFIX.len() + at.index(text.len() - PREFIX.len());
            let mut changed = text.clone();
            changed.replace_range(i..=i, &to);
            prop_assume!(changed != text);
            // The last character may carry only padding bits the decoder refuses as
            // non-canonical; either way the ticket is not accepted as another one.
            prop_assert!(Ticket::decode(&changed).is_err());
        }

        #[test]
        fn decoding_arbitrary_text_never_panics(s in "\\PC{0,300}") {
            let _ = Ticket::decode(&s);
            let _ = Ticket::decode(&format!("{PREFIX}{s}"));
        }
    }

    #[test]
    fn every_cause_is_named() {
        let t = Ticket {
            peer: PeerId::from_bytes([7; 32]),
            name: "alice".into(),
            relay: Some(TicketRelay {
                addr: "relay.example.org:7700".into(),
                key: PeerId::from_bytes([9; 32]),
            }),
        };
        let text = t.encode();
        assert_eq!(Ticket::decode("bob"), Err(TicketError::NotATicket));
        assert_eq!(Ticket::decode("p2pcall:0189"), Err(TicketError::Encoding));
        let mut truncated = text.clone();
        truncated.truncate(text.len() - 8);
        assert!(Ticket::decode(&truncated).is_err());
        // Bodies with a valid checksum but a bad field, as a hostile encoder would write them.
        let sealed = |body: Vec<u8>| {
            let mut b = body.clone();
            b.extend_from_slice(&checksum(&body));
            format!("{PREFIX}{}", data_encoding::BASE32_NOPAD.encode(&b))
        };
        let mut v2 = vec![2u8];
        v2.extend_from_slice(&[7; 32]);
        assert_eq!(Ticket::decode(&sealed(v2)), Err(TicketError::Version(2)));
        let with_name = |name: &[u8], relay: &[u8]| {
            let mut b = vec![TICKET_VERSION];
            b.extend_from_slice(&[7; 32]);
            b.push(name.len() as u8);
            b.extend_from_slice(name);
            b.push(relay.len() as u8);
            b.extend_from_slice(relay);
            if !relay.is_empty() {
                b.extend_from_slice(&[9; 32]);
            }
            sealed(b)
        };
        assert_eq!(
            Ticket::decode(&with_name("bob\u{200B}".as_bytes(), b"")),
            Err(TicketError::Name)
        );
        assert_eq!(
            Ticket::decode(&with_name("\u{202E}bob".as_bytes(), b"")),
            Err(TicketError::Name)
        );
        assert_eq!(
            Ticket::decode(&with_name(b"  ", b"")),
            Err(TicketError::Name)
        );
        assert_eq!(
            Ticket::decode(&with_name(b"bob", b"relay.example.org")),
            Err(TicketError::RelayAddr)
        );
        assert_eq!(
            Ticket::decode(&with_name(b"bob", b"user@host:7700")),
            Err(TicketError::RelayAddr)
        );
        assert_eq!(
            Ticket::decode(&with_name(&[0xff, 0xfe], b"")),
            Err(TicketError::Decode(DecodeError::InvalidUtf8 {
                field: "ticket name"
            }))
        );
        let ok = Ticket::decode(&with_name(b"bob", b"[::1]:7700")).map(|t| t.relay);
        assert_eq!(
            ok,
            Ok(Some(TicketRelay {
                addr: "[::1]:7700".into(),
                key: PeerId::from_bytes([9; 32])
            }))
        );
    }

    #[test]
    fn a_ticket_fits_a_small_qr_code() {
        let t = Ticket {
            peer: PeerId::from_bytes([0xab; 32]),
            name: "Alice Liddell".into(),
            relay: Some(TicketRelay {
                addr: "relay.example.org:7700".into(),
                key: PeerId::from_bytes([0xcd; 32]),
            }),
        };
        // 1 + 32 + 14 + 23 + 32 + 4 = 106 bytes: 170 base32 characters and the prefix.
        assert_eq!(t.encode().len(), PREFIX.len() + 170);
        assert!(
            t.qr_text()
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b':')
        );
    }
}
