//! Call signaling between two peers, inside their end-to-end encrypted QUIC connection.
//!
//! The caller opens a bidirectional stream whose first byte is the call stream kind and sends
//! [`CallFrame::Offer`]; the callee answers `Ringing` at once, then `Accept` or `Reject`.
//! Either side may send `Update` (mute, camera on/off, a new source: the full description
//! again) and `Hangup`; both send `Alive` when they have sent nothing else for a while, so a
//! peer that vanishes is noticed within seconds. The stream lives as long as the call.
//!
//! A group call is a full mesh of such calls, one per pair of members, all with the group's
//! id: the offer says how it joins the group ([`GroupJoin`]), and `Roster` frames carry what
//! members tell each other about who is in (`crate::group`).
//!
//! Codec negotiation: each [`SessionDesc`] lists the codecs its sender can *receive* and the
//! streams it will *send*. A side sends only streams whose codec the other side listed.
//! Media then flows as QUIC datagrams (`crate::media`), tagged by the stream numbers given
//! here.

use bytes::BufMut;

use crate::codec::{Reader, WriteExt};
use crate::frame::{self, RawFrame};
use crate::group::{MAX_MEMBERS, RosterMsg};
use crate::{DecodeError, PeerId};

/// Largest frame on a call stream.
pub const MAX_FRAME: usize = 1024;
/// Most codecs in one description.
pub const MAX_CODECS: usize = 8;
/// Most streams one side sends.
pub const MAX_STREAMS: usize = 4;
/// Longest free-text reason.
pub const MAX_REASON: usize = 200;

pub use crate::id::CallId;

/// Codecs, by their wire number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Opus, 48 kHz mono, 20 ms frames, in-band FEC.
    Opus,
    /// H264 constrained baseline (openh264), Annex B, 90 kHz clock.
    H264,
    /// A codec this build does not know (kept so lists round-trip; never selected).
    Unknown(u8),
}

impl Codec {
    fn to_u8(self) -> u8 {
        match self {
            Self::Opus => 1,
            Self::H264 => 2,
            Self::Unknown(v) => v,
        }
    }
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Opus,
            2 => Self::H264,
            v => Self::Unknown(v),
        }
    }
    /// Whether this is an audio codec.
    pub fn is_audio(self) -> bool {
        self == Self::Opus
    }
}

/// What a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// Microphone or file audio.
    Audio,
    /// Camera or file video.
    Camera,
    /// A screen or window.
    Screen,
}

/// Wire numbers of a field-less enum, one table used by both encode and decode; an
/// undefined number is `DecodeError::InvalidValue` for `$field`.
macro_rules! wire_numbers {
    ($ty:ty, $field:literal, { $($v:ident = $n:literal),+ $(,)? }) => {
        impl $ty {
            fn to_u8(self) -> u8 {
                match self {
                    $(Self::$v => $n),+
                }
            }
            fn from_u8(v: u8) -> Result<Self, DecodeError> {
                match v {
                    $($n => Ok(Self::$v),)+
                    value => Err(DecodeError::InvalidValue {
                        field: $field,
                        value: value.into(),
                    }),
                }
            }
        }
    };
}

wire_numbers!(StreamKind, "stream kind", { Audio = 1, Camera = 2, Screen = 3 });

impl StreamKind {
    /// `audio`, `camera` or `screen`: how statistics, the local API and the CLI name it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Audio => "audio",
            Self::Camera => "camera",
            Self::Screen => "screen",
        }
    }
}

/// One stream a side sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamDesc {
    /// Stream number used in media datagrams.
    pub id: u8,
    /// What it carries.
    pub kind: StreamKind,
    /// Its codec.
    pub codec: Codec,
    /// `false` while muted / camera off: no media flows, the stream stays negotiated.
    pub active: bool,
}

/// One side's description of the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDesc {
    /// Codecs this side can decode, preferred first.
    pub receive: Vec<Codec>,
    /// Largest video this side wants to receive.
    pub max_width: u16,
    /// Largest video height.
    pub max_height: u16,
    /// Highest frame rate.
    pub max_fps: u8,
    /// Most media bitrate this side wants to receive, kbit/s.
    pub max_kbps: u32,
    /// Streams this side sends.
    pub streams: Vec<StreamDesc>,
}

/// Why a call was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The user declined.
    Declined,
    /// Already in a call.
    Busy,
    /// Nobody answered in time.
    NoAnswer,
    /// No codec in common.
    Incompatible,
}

/// Why a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HangupReason {
    /// The user hung up (or the caller cancelled before an answer).
    Normal,
    /// A limit of the call ran out (e.g. `--duration`).
    Finished,
    /// Something failed on the sender's side (devices, codec).
    Error,
}

wire_numbers!(RejectReason, "reject reason", {
    Declined = 1,
    Busy = 2,
    NoAnswer = 3,
    Incompatible = 4,
});
wire_numbers!(HangupReason, "hangup reason", { Normal = 1, Finished = 2, Error = 3 });

/// How an offer joins a group call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupJoin {
    /// The caller invites the callee: the members as the caller knows them, each with the
    /// member that invited it (the callee among them).
    Invite {
        /// `(member, inviter)` pairs, at most [`MAX_MEMBERS`].
        members: Vec<(PeerId, PeerId)>,
    },
    /// The caller, a member, connects to the callee, another member (the mesh).
    Mesh,
}

/// Frames on a call stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallFrame {
    /// Caller → callee: a new call.
    Offer {
        /// The call.
        id: CallId,
        /// The caller's description.
        session: SessionDesc,
        /// `Some`: a pairwise call of group call `id`.
        group: Option<GroupJoin>,
    },
    /// Callee → caller: the user is being asked.
    Ringing,
    /// Callee → caller: accepted.
    Accept {
        /// The callee's description.
        session: SessionDesc,
    },
    /// Callee → caller: not accepted.
    Reject {
        /// Why.
        reason: RejectReason,
    },
    /// Either side: a new description (mute, camera, source).
    Update {
        /// The sender's description, complete.
        session: SessionDesc,
    },
    /// Either side: the call is over.
    Hangup {
        /// Why.
        reason: HangupReason,
        /// Human-readable details (may be empty).
        detail: String,
    },
    /// Either side: still here.
    Alive,
    /// Either side of a group call's pairwise call: what the sender says about the roster.
    Roster(RosterMsg),
}

mod ty {
    pub const OFFER: u8 = 0x01;
    pub const RINGING: u8 = 0x02;
    pub const ACCEPT: u8 = 0x03;
    pub const REJECT: u8 = 0x04;
    pub const UPDATE: u8 = 0x05;
    pub const HANGUP: u8 = 0x06;
    pub const ALIVE: u8 = 0x07;
    pub const ROSTER: u8 = 0x08;
}

mod group_ty {
    pub const INVITE: u8 = 1;
    pub const MESH: u8 = 2;
    pub const WELCOME: u8 = 1;
    pub const ADDED: u8 = 2;
    pub const LEAVE: u8 = 3;
    pub const WITHDRAWN: u8 = 4;
}

fn write_members(b: &mut Vec<u8>, members: &[(PeerId, PeerId)]) {
    let members = &members[..members.len().min(MAX_MEMBERS)];
    b.put_u8(members.len() as u8);
    for (m, by) in members {
        b.put_peer_id(m);
        b.put_peer_id(by);
    }
}

fn members_len(members: &[(PeerId, PeerId)]) -> usize {
    1 + 64 * members.len().min(MAX_MEMBERS)
}

fn read_members(r: &mut Reader<'_>) -> Result<Vec<(PeerId, PeerId)>, DecodeError> {
    let n = count8(r, "members", MAX_MEMBERS)?;
    (0..n)
        .map(|_| Ok((r.peer_id("member")?, r.peer_id("inviter")?)))
        .collect()
}

impl GroupJoin {
    fn write(&self, b: &mut Vec<u8>) {
        match self {
            Self::Invite { members } => {
                b.put_u8(group_ty::INVITE);
                write_members(b, members);
            }
            Self::Mesh => b.put_u8(group_ty::MESH),
        }
    }

    fn len(&self) -> usize {
        1 + match self {
            Self::Invite { members } => members_len(members),
            Self::Mesh => 0,
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match r.u8("group join")? {
            group_ty::INVITE => Self::Invite {
                members: read_members(r)?,
            },
            group_ty::MESH => Self::Mesh,
            value => {
                return Err(DecodeError::InvalidValue {
                    field: "group join",
                    value: value.into(),
                });
            }
        })
    }
}

fn write_roster(b: &mut Vec<u8>, m: &RosterMsg) {
    match m {
        RosterMsg::Welcome { members } => {
            b.put_u8(group_ty::WELCOME);
            write_members(b, members);
        }
        RosterMsg::Added { peer } => {
            b.put_u8(group_ty::ADDED);
            b.put_peer_id(peer);
        }
        RosterMsg::Leave => b.put_u8(group_ty::LEAVE),
        RosterMsg::Withdrawn { peer } => {
            b.put_u8(group_ty::WITHDRAWN);
            b.put_peer_id(peer);
        }
    }
}

fn roster_len(m: &RosterMsg) -> usize {
    1 + match m {
        RosterMsg::Welcome { members } => members_len(members),
        RosterMsg::Added { .. } | RosterMsg::Withdrawn { .. } => 32,
        RosterMsg::Leave => 0,
    }
}

fn read_roster(r: &mut Reader<'_>) -> Result<RosterMsg, DecodeError> {
    Ok(match r.u8("roster message")? {
        group_ty::WELCOME => RosterMsg::Welcome {
            members: read_members(r)?,
        },
        group_ty::ADDED => RosterMsg::Added {
            peer: r.peer_id("added")?,
        },
        group_ty::LEAVE => RosterMsg::Leave,
        group_ty::WITHDRAWN => RosterMsg::Withdrawn {
            peer: r.peer_id("withdrawn")?,
        },
        value => {
            return Err(DecodeError::InvalidValue {
                field: "roster message",
                value: value.into(),
            });
        }
    })
}

fn count8(r: &mut Reader<'_>, field: &'static str, max: usize) -> Result<usize, DecodeError> {
    let len = usize::from(r.u8(field)?);
    if len > max {
        return Err(DecodeError::TooLong { field, len, max });
    }
    Ok(len)
}

impl SessionDesc {
    fn write(&self, b: &mut Vec<u8>) {
        let codecs = &self.receive[..self.receive.len().min(MAX_CODECS)];
        b.put_u8(codecs.len() as u8);
        for c in codecs {
            b.put_u8(c.to_u8());
        }
        b.put_u16(self.max_width);
        b.put_u16(self.max_height);
        b.put_u8(self.max_fps);
        b.put_u32(self.max_kbps);
        let streams = &self.streams[..self.streams.len().min(MAX_STREAMS)];
        b.put_u8(streams.len() as u8);
        for s in streams {
            b.put_u8(s.id);
            b.put_u8(s.kind.to_u8());
            b.put_u8(s.codec.to_u8());
            b.put_u8(u8::from(s.active));
        }
    }

    fn len(&self) -> usize {
        1 + self.receive.len().min(MAX_CODECS)
            + 2
            + 2
            + 1
            + 4
            + 1
            + 4 * self.streams.len().min(MAX_STREAMS)
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = count8(r, "codecs", MAX_CODECS)?;
        let receive = (0..n)
            .map(|_| r.u8("codec").map(Codec::from_u8))
            .collect::<Result<_, _>>()?;
        let max_width = r.u16("max width")?;
        let max_height = r.u16("max height")?;
        let max_fps = r.u8("max fps")?;
        let max_kbps = r.u32("max kbps")?;
        let n = count8(r, "streams", MAX_STREAMS)?;
        let mut streams: Vec<StreamDesc> = Vec::with_capacity(n);
        for _ in 0..n {
            let s = StreamDesc {
                id: r.u8("stream id")?,
                kind: StreamKind::from_u8(r.u8("stream kind")?)?,
                codec: Codec::from_u8(r.u8("stream codec")?),
                active: r.bool("stream active")?,
            };
            if streams.iter().any(|o| o.id == s.id) {
                return Err(DecodeError::InvalidValue {
                    field: "duplicate stream id",
                    value: s.id.into(),
                });
            }
            streams.push(s);
        }
        Ok(Self {
            receive,
            max_width,
            max_height,
            max_fps,
            max_kbps,
            streams,
        })
    }
}

impl CallFrame {
    /// Appends the enveloped frame to `out`. Lists beyond their limits are cut.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Offer { id, session, group } => frame::write(out, ty::OFFER, |b| {
                b.put_slice(id.as_bytes());
                session.write(b);
                // Absent for a one-to-one call (what calls before groups sent).
                if let Some(g) = group {
                    g.write(b);
                }
            }),
            Self::Ringing => frame::write(out, ty::RINGING, |_| {}),
            Self::Accept { session } => frame::write(out, ty::ACCEPT, |b| session.write(b)),
            Self::Reject { reason } => frame::write(out, ty::REJECT, |b| b.put_u8(reason.to_u8())),
            Self::Update { session } => frame::write(out, ty::UPDATE, |b| session.write(b)),
            Self::Hangup { reason, detail } => frame::write(out, ty::HANGUP, |b| {
                b.put_u8(reason.to_u8());
                b.put_str16(crate::codec::truncate_utf8(detail, MAX_REASON));
            }),
            Self::Alive => frame::write(out, ty::ALIVE, |_| {}),
            Self::Roster(m) => frame::write(out, ty::ROSTER, |b| write_roster(b, m)),
        }
    }

    /// Exact length of [`encode`](Self::encode)'s output.
    pub fn encoded_len(&self) -> usize {
        frame::HEADER_LEN
            + match self {
                Self::Offer { session, group, .. } => {
                    16 + session.len() + group.as_ref().map_or(0, GroupJoin::len)
                }
                Self::Accept { session } | Self::Update { session } => session.len(),
                Self::Reject { .. } => 1,
                Self::Hangup { detail, .. } => 1 + 2 + detail.len().min(MAX_REASON),
                Self::Ringing | Self::Alive => 0,
                Self::Roster(m) => roster_len(m),
            }
    }

    /// Decodes a frame taken by [`frame::split`].
    pub fn decode(f: RawFrame<'_>) -> Result<Self, DecodeError> {
        let mut r = Reader::new(f.body);
        let frame = match f.ty {
            ty::OFFER => Self::Offer {
                id: r.array("call id").map(CallId::from_bytes)?,
                session: SessionDesc::read(&mut r)?,
                group: match r.remaining() {
                    0 => None,
                    _ => Some(GroupJoin::read(&mut r)?),
                },
            },
            ty::RINGING => Self::Ringing,
            ty::ACCEPT => Self::Accept {
                session: SessionDesc::read(&mut r)?,
            },
            ty::REJECT => Self::Reject {
                reason: RejectReason::from_u8(r.u8("reject reason")?)?,
            },
            ty::UPDATE => Self::Update {
                session: SessionDesc::read(&mut r)?,
            },
            ty::HANGUP => Self::Hangup {
                reason: HangupReason::from_u8(r.u8("hangup reason")?)?,
                detail: r.str16("hangup detail", MAX_REASON)?,
            },
            ty::ALIVE => Self::Alive,
            ty::ROSTER => Self::Roster(read_roster(&mut r)?),
            other => return Err(DecodeError::UnknownFrameType(other)),
        };
        r.finish()?;
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::split;
    use proptest::prelude::*;

    fn codec() -> impl Strategy<Value = Codec> {
        any::<u8>().prop_map(Codec::from_u8)
    }

    fn session() -> impl Strategy<Value = SessionDesc> {
        (
            proptest::collection::vec(codec(), 0..=MAX_CODECS),
            any::<(u16, u16, u8, u32)>(),
            proptest::collection::btree_map(
                any::<u8>(),
                (1u8..=3, codec(), any::<bool>()),
                0..=MAX_STREAMS,
            ),
        )
            .prop_map(|(receive, (w, h, fps, kbps), streams)| SessionDesc {
                receive,
                max_width: w,
                max_height: h,
                max_fps: fps,
                max_kbps: kbps,
                streams: streams
                    .into_iter()
                    .map(|(id, (k, codec, active))| StreamDesc {
                        id,
                        kind: StreamKind::from_u8(k).unwrap(),
                        codec,
                        active,
                    })
                    .collect(),
            })
    }

    fn members() -> impl Strategy<Value = Vec<(PeerId, PeerId)>> {
        proptest::collection::vec(
            (any::<[u8; 32]>(), any::<[u8; 32]>())
                .prop_map(|(m, by)| (PeerId::from_bytes(m), PeerId::from_bytes(by))),
            0..=MAX_MEMBERS,
        )
    }

    fn group() -> impl Strategy<Value = Option<GroupJoin>> {
        prop_oneof![
            Just(None),
            Just(Some(GroupJoin::Mesh)),
            members().prop_map(|members| Some(GroupJoin::Invite { members })),
        ]
    }

    fn roster() -> impl Strategy<Value = RosterMsg> {
        let peer = any::<[u8; 32]>().prop_map(PeerId::from_bytes);
        prop_oneof![
            members().prop_map(|members| RosterMsg::Welcome { members }),
            peer.clone().prop_map(|peer| RosterMsg::Added { peer }),
            Just(RosterMsg::Leave),
            peer.prop_map(|peer| RosterMsg::Withdrawn { peer }),
        ]
    }

    fn call_frame() -> impl Strategy<Value = CallFrame> {
        prop_oneof![
            (any::<[u8; 16]>(), session(), group()).prop_map(|(id, session, group)| {
                CallFrame::Offer {
                    id: CallId::from_bytes(id),
                    session,
                    group,
                }
            }),
            roster().prop_map(CallFrame::Roster),
            Just(CallFrame::Ringing),
            session().prop_map(|session| CallFrame::Accept { session }),
            (1u8..=4).prop_map(|r| CallFrame::Reject {
                reason: RejectReason::from_u8(r).unwrap()
            }),
            session().prop_map(|session| CallFrame::Update { session }),
            (
                (1u8..=3).prop_map(|h| HangupReason::from_u8(h).unwrap()),
                "\\PC{0,60}"
            )
                .prop_map(|(reason, detail)| CallFrame::Hangup { reason, detail }),
            Just(CallFrame::Alive),
        ]
    }

    proptest! {
        #[test]
        fn call_frames_round_trip(f in call_frame()) {
            let mut buf = Vec::new();
            f.encode(&mut buf);
            prop_assert_eq!(buf.len(), f.encoded_len());
            prop_assert!(buf.len() <= MAX_FRAME);
            let (used, raw) = split(&buf, MAX_FRAME).unwrap().unwrap();
            prop_assert_eq!(used, buf.len());
            prop_assert_eq!(CallFrame::decode(raw).unwrap(), f);
        }

        #[test]
        fn call_decoder_never_panics(ty in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = CallFrame::decode(RawFrame { ty, body: &body });
        }
    }

    #[test]
    fn duplicate_stream_ids_and_bad_kinds_are_refused() {
        let s = |id| StreamDesc {
            id,
            kind: StreamKind::Audio,
            codec: Codec::Opus,
            active: true,
        };
        let mut buf = Vec::new();
        CallFrame::Update {
            session: SessionDesc {
                receive: vec![Codec::Opus],
                max_width: 640,
                max_height: 480,
                max_fps: 30,
                max_kbps: 1000,
                streams: vec![s(1), s(1)],
            },
        }
        .encode(&mut buf);
        let (_, raw) = split(&buf, MAX_FRAME).unwrap().unwrap();
        assert_eq!(
            CallFrame::decode(raw),
            Err(DecodeError::InvalidValue {
                field: "duplicate stream id",
                value: 1
            })
        );
        // no codecs, 0×0, 0 fps, 0 kbps, one stream: id 7, kind 9.
        let bad_kind = [0u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 7, 9, 1, 1];
        assert!(matches!(
            CallFrame::decode(RawFrame {
                ty: ty::UPDATE,
                body: &bad_kind
            }),
            Err(DecodeError::InvalidValue {
                field: "stream kind",
                ..
            })
        ));
    }
}
