use proptest::prelude::*;

use super::*;

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,40}"
}

fn message() -> impl Strategy<Value = Message> {
    (
        any::<i64>(),
        text(),
        any::<bool>(),
        text(),
        any::<u64>(),
        any::<u64>(),
        any::<Option<u64>>(),
        text(),
        (text(), any::<bool>()),
    )
        .prop_map(
            |(n, peer, outgoing, id, seq, sent_ms, received_ms, text, (state, request))| Message {
                n,
                peer,
                outgoing,
                id,
                seq,
                sent_ms,
                received_ms,
                text,
                state,
                request,
            },
        )
}

fn peer() -> impl Strategy<Value = Peer> {
    (text(), text(), any::<u64>()).prop_map(|(id, name, online_since_ms)| Peer {
        id,
        name,
        online_since_ms,
    })
}

fn offer() -> impl Strategy<Value = Offer> {
    (
        text(),
        text(),
        proptest::option::of(text()),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(text(), 0..3),
        proptest::collection::vec((text(), any::<Option<u64>>()), 0..3),
    )
        .prop_map(
            |(id, peer, name, files, dirs, total_bytes, tops, sample)| Offer {
                id,
                peer,
                name,
                files,
                dirs,
                total_bytes,
                tops,
                sample,
            },
        )
}

fn progress() -> impl Strategy<Value = TransferProgress> {
    (
        (text(), text(), any::<bool>()),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
        (any::<Option<u64>>(), any::<Option<u64>>()),
    )
        .prop_map(
            |(
                (peer, id, outgoing),
                (done_bytes, total_bytes, files_done, files),
                (rate_bps, eta_ms),
            )| {
                TransferProgress {
                    peer,
                    id,
                    outgoing,
                    done_bytes,
                    total_bytes,
                    files_done,
                    files,
                    rate_bps,
                    eta_ms,
                }
            },
        )
}

fn summary() -> impl Strategy<Value = TransferSummary> {
    (
        (text(), text(), any::<bool>()),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        ),
        (
            proptest::collection::vec(text(), 0..3),
            proptest::collection::vec(text(), 0..3),
            proptest::collection::vec((text(), text()), 0..3),
        ),
    )
        .prop_map(
            |(
                (peer, id, outgoing),
                (files, dirs, total_bytes, resumed_bytes, elapsed_ms),
                (placed, skipped, hashes),
            )| TransferSummary {
                peer,
                id,
                outgoing,
                files,
                dirs,
                total_bytes,
                resumed_bytes,
                elapsed_ms,
                placed,
                skipped,
                hashes,
            },
        )
}

fn media() -> impl Strategy<Value = Media> {
    (
        (text(), text(), text()),
        (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()),
        (
            proptest::option::of(text()),
            proptest::option::of(text()),
            any::<Option<u64>>(),
        ),
    )
        .prop_map(
            |(
                (video, audio, speaker),
                (width, height, fps, video_kbps),
                (record_video, record_audio, duration_ms),
            )| Media {
                video,
                audio,
                speaker,
                width,
                height,
                fps,
                video_kbps,
                record_video,
                record_audio,
                duration_ms,
            },
        )
}

fn change() -> impl Strategy<Value = CallChange> {
    prop_oneof![
        any::<bool>().prop_map(|muted| CallChange::Mute { muted }),
        any::<bool>().prop_map(|on| CallChange::Camera { on }),
        text().prop_map(|source| CallChange::Source { source }),
        text().prop_map(|peer| CallChange::Add { peer }),
    ]
}

fn call_requests() -> impl Strategy<Value = Request> {
    prop_oneof![
        (text(), media(), proptest::collection::vec(text(), 0..3))
            .prop_map(|(peer, media, also)| Request::Call { peer, media, also }),
        Just(Request::Ringing),
        (proptest::option::of(text()), media())
            .prop_map(|(id, media)| Request::AnswerCall { id, media }),
        proptest::option::of(text()).prop_map(|id| Request::DeclineCall { id }),
        Just(Request::Hangup),
        change().prop_map(Request::ChangeCall),
        (
            proptest::option::of(text()),
            proptest::option::of(media()),
            text()
        )
            .prop_map(|(accept_files, answer, from)| Request::Policy {
                accept_files,
                answer,
                from
            }),
        text().prop_map(|peer| Request::Connect { peer }),
        (text(), any::<u32>()).prop_map(|(peer, seq)| Request::Ping { peer, seq }),
        (text(), any::<u64>()).prop_map(|(peer, bytes)| Request::Speedtest { peer, bytes }),
        Just(Request::Netcheck),
        Just(Request::VideoFeed),
        (text(), proptest::option::of(text()))
            .prop_map(|(peer, name)| Request::AddContact { peer, name }),
        Just(Request::Contacts),
        (text(), proptest::option::of(text()))
            .prop_map(|(ticket, name)| Request::AddTicket { ticket, name }),
        Just(Request::MessageRequests),
        (text(), proptest::option::of(text()))
            .prop_map(|(peer, name)| Request::AcceptRequest { peer, name }),
        text().prop_map(|peer| Request::DeleteRequest { peer }),
        text().prop_map(|name| Request::SetName { name }),
        (text(), text()).prop_map(|(peer, id)| Request::CancelTransfer { peer, id }),
    ]
}

fn stream() -> impl Strategy<Value = Stream> {
    (any::<u8>(), text(), text(), any::<bool>()).prop_map(|(id, kind, codec, active)| Stream {
        id,
        kind,
        codec,
        active,
    })
}

fn streams() -> impl Strategy<Value = Streams> {
    (
        proptest::collection::vec(stream(), 0..3),
        proptest::collection::vec(stream(), 0..3),
    )
        .prop_map(|(send, receive)| Streams { send, receive })
}

/// A statistics object: numbers, text, null and nested lists, as the engine's are.
fn stats() -> impl Strategy<Value = serde_json::Value> {
    (text(), any::<u32>(), any::<Option<i32>>(), any::<bool>()).prop_map(|(call, n, o, b)| {
        serde_json::json!({"call": call, "elapsed_s": f64::from(n) / 8.0, "skew": o, "recv": [{"ok": b}]})
    })
}

fn end() -> impl Strategy<Value = CallEnd> {
    prop_oneof![
        (any::<bool>(), text(), text()).prop_map(|(remote, reason, detail)| CallEnd::HungUp {
            remote,
            reason,
            detail
        }),
        (any::<bool>(), text()).prop_map(|(remote, reason)| CallEnd::Rejected { remote, reason }),
        Just(CallEnd::Unreachable),
        Just(CallEnd::PeerVanished),
        text().prop_map(|detail| CallEnd::Protocol { detail }),
    ]
}

fn call_note() -> impl Strategy<Value = CallNote> {
    prop_oneof![
        (
            text(),
            text(),
            proptest::option::of(text()),
            any::<bool>(),
            any::<bool>(),
            proptest::collection::vec(text(), 0..3)
        )
            .prop_map(
                |(call, peer, name, audio, video, members)| CallNote::Incoming {
                    call,
                    peer,
                    name,
                    audio,
                    video,
                    members
                }
            ),
        text().prop_map(|call| CallNote::Ringing { call }),
        (text(), text(), streams()).prop_map(|(call, peer, streams)| CallNote::Started {
            call,
            peer,
            streams
        }),
        (text(), text(), streams()).prop_map(|(call, peer, streams)| CallNote::Updated {
            call,
            peer,
            streams
        }),
        (text(), text(), proptest::option::of(text()), streams()).prop_map(
            |(call, peer, name, streams)| CallNote::Joined {
                call,
                peer,
                name,
                streams
            }
        ),
        (text(), text(), end()).prop_map(|(call, peer, end)| CallNote::Left { call, peer, end }),
        (text(), text()).prop_map(|(call, peer)| CallNote::Speaker { call, peer }),
        stats().prop_map(|stats| CallNote::Stats { stats }),
        (text(), text()).prop_map(|(call, message)| CallNote::Warning { call, message }),
        (text(), any::<bool>(), any::<bool>()).prop_map(|(call, audio, video)| CallNote::Sending {
            call,
            audio,
            video
        }),
        (text(), text(), end(), proptest::option::of(stats())).prop_map(
            |(call, peer, end, stats)| CallNote::Ended {
                call,
                peer,
                end,
                stats
            }
        ),
    ]
}

fn call_answers() -> impl Strategy<Value = Answer> {
    prop_oneof![
        (text(), text()).prop_map(|(call, peer)| Answer::Calling { call, peer }),
        proptest::option::of(
            (text(), text(), text(), any::<bool>(), any::<bool>()).prop_map(
                |(call, peer, name, audio, video)| Ringing {
                    call,
                    peer,
                    name,
                    audio,
                    video
                }
            )
        )
        .prop_map(|call| Answer::Ringing { call }),
        Just(Answer::Done),
        (
            peer(),
            any::<u64>(),
            text(),
            proptest::option::of(text()),
            text()
        )
            .prop_map(|(peer, connect_us, path, relay_transport, safety_number)| {
                Answer::Connected(Connection {
                    peer,
                    connect_us,
                    path,
                    relay_transport,
                    safety_number,
                })
            }),
        (any::<Option<u64>>(), text(), any::<u64>()).prop_map(|(rtt_us, path, probes_sent)| {
            Answer::Pong(Pong {
                rtt_us,
                path,
                probes_sent,
            })
        }),
        (
            (any::<u64>(), any::<u64>(), any::<bool>()),
            (any::<u64>(), any::<u64>(), text())
        )
            .prop_map(
                |((bytes, elapsed_us, verified), (tx_relay, tx_direct, path))| {
                    Answer::Speed(Speed {
                        bytes,
                        elapsed_us,
                        verified,
                        tx_relay,
                        tx_direct,
                        path,
                    })
                }
            ),
        (
            (any::<bool>(), text(), text(), any::<bool>()),
            (
                proptest::collection::vec(text(), 0..3),
                any::<bool>(),
                proptest::collection::vec(text(), 0..3)
            )
        )
            .prop_map(
                |(
                    (udp, relay_transport, mapping, port_preserved),
                    (observed, ipv6, candidates),
                )| {
                    Answer::Netcheck(Netcheck {
                        udp,
                        relay_transport,
                        mapping,
                        port_preserved,
                        observed,
                        ipv6,
                        candidates,
                    })
                }
            ),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (any::<u32>(), text()).prop_map(|(version, client)| Request::Hello { version, client }),
        Just(Request::Status),
        any::<u64>().prop_map(|wait_ms| Request::Peers { wait_ms }),
        (text(), text()).prop_map(|(peer, text)| Request::SendMessage { peer, text }),
        (text(), any::<Option<i64>>(), any::<u32>()).prop_map(|(peer, before, limit)| {
            Request::History {
                peer,
                before,
                limit,
            }
        }),
        text().prop_map(|peer| Request::MarkRead { peer }),
        Just(Request::Subscribe),
        Just(Request::Offers),
        (text(), proptest::option::of(text())).prop_map(|(id, dir)| Request::Accept { id, dir }),
        text().prop_map(|id| Request::Reject { id }),
        text().prop_map(|peer| Request::Resolve { peer }),
        (text(), proptest::collection::vec(text(), 0..3))
            .prop_map(|(peer, paths)| Request::SendFiles { peer, paths }),
        (text(), text()).prop_map(|(peer, id)| Request::InterruptTransfer { peer, id }),
        call_requests(),
    ]
}

fn answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        (any::<u32>(), any::<u32>()).prop_map(|(version, pid)| Answer::Hello { version, pid }),
        (
            text(),
            text(),
            proptest::option::of(text()),
            any::<bool>(),
            text(),
            any::<u32>()
        )
            .prop_map(
                |(id, name, relay, lan, data_dir, pid)| Answer::Status(Status {
                    id,
                    name,
                    relay,
                    lan,
                    data_dir,
                    pid
                })
            ),
        proptest::collection::vec(peer(), 0..4).prop_map(|peers| Answer::Peers { peers }),
        (message(), text(), any::<bool>()).prop_map(|(message, name, offline)| Answer::Sent {
            message,
            name,
            offline
        }),
        proptest::collection::vec(message(), 0..4)
            .prop_map(|messages| Answer::History { messages }),
        any::<u64>().prop_map(|n| Answer::Count { n }),
        Just(Answer::Subscribed),
        proptest::collection::vec(offer(), 0..3).prop_map(|offers| Answer::Offers { offers }),
        (text(), text()).prop_map(|(id, dir)| Answer::Accepted { id, dir }),
        text().prop_map(|id| Answer::Rejected { id }),
        (peer(), any::<bool>()).prop_map(|(peer, contact)| Answer::Resolved { peer, contact }),
        proptest::collection::vec(contact(), 0..3)
            .prop_map(|contacts| Answer::Contacts { contacts }),
        proptest::collection::vec(
            (text(), text(), any::<u64>(), any::<u64>(), text()).prop_map(
                |(peer, name, messages, first_ms, last_text)| MessageRequest {
                    peer,
                    name,
                    messages,
                    first_ms,
                    last_text
                }
            ),
            0..3
        )
        .prop_map(|requests| Answer::MessageRequests { requests }),
        (
            contact(),
            proptest::option::of((text(), text(), any::<bool>(), proptest::option::of(text())))
        )
            .prop_map(|(contact, relay)| Answer::Invited {
                contact,
                relay: relay.map(|(relay, key, new, conflict)| RelayPin {
                    relay,
                    key,
                    new,
                    conflict
                })
            }),
        summary().prop_map(Answer::Transferred),
        call_answers(),
    ]
}

fn error() -> impl Strategy<Value = RpcError> {
    let kinds = [
        ErrorKind::BadRequest,
        ErrorKind::Version,
        ErrorKind::PeerNotFound,
        ErrorKind::Ambiguous,
        ErrorKind::PeerOffline,
        ErrorKind::NoPresence,
        ErrorKind::Timeout,
        ErrorKind::NoSuchOffer,
        ErrorKind::Declined,
        ErrorKind::Interrupted,
        ErrorKind::NoSuchCall,
        ErrorKind::BadMedia,
        ErrorKind::WrongPeerKey,
        ErrorKind::Failure,
    ];
    (proptest::sample::select(kinds.to_vec()), text()).prop_map(|(kind, m)| RpcError::new(kind, m))
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        message().prop_map(Event::MessageReceived),
        message().prop_map(Event::MessageQueued),
        (text(), text(), text()).prop_map(|(peer, id, state)| Event::MessageState {
            peer,
            id,
            state
        }),
        proptest::collection::vec(peer(), 0..3).prop_map(|peers| Event::PeersOnline { peers }),
        peer().prop_map(Event::PeerJoined),
        peer().prop_map(Event::PeerUpdated),
        text().prop_map(|id| Event::PeerLeft { id }),
        offer().prop_map(Event::OfferReceived),
        progress().prop_map(Event::TransferProgress),
        call_note().prop_map(Event::Call),
        offer().prop_map(Event::TransferResumed),
        summary().prop_map(Event::TransferDone),
        (text(), text(), any::<bool>(), text(), any::<bool>()).prop_map(
            |(peer, id, outgoing, reason, resumable)| Event::TransferFailed {
                peer,
                id,
                outgoing,
                reason,
                resumable
            }
        ),
        (text(), text(), any::<Option<u64>>())
            .prop_map(|(peer, path, rtt_us)| Event::PathChanged { peer, path, rtt_us }),
        text().prop_map(|transport| Event::RelayConnected { transport }),
        (text(), any::<u64>()).prop_map(|(reason, retry_in_ms)| Event::RelayDisconnected {
            reason,
            retry_in_ms
        }),
        (text(), text()).prop_map(|(reason, detail)| Event::RelayRefused { reason, detail }),
        any::<u64>().prop_map(|dropped| Event::Lagged { dropped }),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u64>(), request()).prop_map(|(id, request)| Frame::Request { id, request }),
        (any::<u64>(), answer()).prop_map(|(id, a)| Frame::Reply { id, result: Ok(a) }),
        (any::<u64>(), error()).prop_map(|(id, e)| Frame::Reply { id, result: Err(e) }),
        event().prop_map(Frame::Event),
    ]
}

proptest! {
    #[test]
    fn every_frame_round_trips_as_one_line(f in frame()) {
        let bytes = f.encode();
        prop_assert_eq!(bytes.iter().filter(|b| **b == b'\n').count(), 1);
        prop_assert_eq!(bytes.last(), Some(&b'\n'));
        prop_assert_eq!(Frame::decode(&bytes[..bytes.len() - 1]).unwrap(), f);
    }

    #[test]
    fn frames_split_anywhere_come_out_whole(fs in proptest::collection::vec(frame(), 1..6), cut in any::<prop::sample::Index>()) {
        let all: Vec<u8> = fs.iter().flat_map(Frame::encode).collect();
        let at = cut.index(all.len());
        let mut lines = Lines::default();
        let mut got = Vec::new();
        for part in [&all[..at], &all[at..]] {
            lines.push(part);
            while let Some(l) = lines.next_line().unwrap() {
                got.push(Frame::decode(&l).unwrap());
            }
        }
        prop_assert_eq!(got, fs);
        prop_assert_eq!(lines.buffered(), 0);
    }

    #[test]
    fn any_line_decodes_or_is_refused_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Frame::decode(&bytes);
    }
}

#[test]
fn the_wire_form_is_json_rpc_2() {
    let req = Frame::Request {
        id: 7,
        request: Request::SendMessage {
            peer: "bob".into(),
            text: "hi".into(),
        },
    };
    let v: serde_json::Value = serde_json::from_slice(&req.encode()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"jsonrpc": "2.0", "id": 7, "method": "send_message", "params": {"peer": "bob", "text": "hi"}})
    );
    // A method without parameters may leave them out, as JSON-RPC allows.
    let status = br#"{"jsonrpc":"2.0","id":1,"method":"status"}"#;
    assert_eq!(
        Frame::decode(status).unwrap(),
        Frame::Request {
            id: 1,
            request: Request::Status
        }
    );
    let err = Frame::Reply {
        id: 7,
        result: Err(RpcError::new(ErrorKind::PeerOffline, "bob is offline")),
    };
    let v: serde_json::Value = serde_json::from_slice(&err.encode()).unwrap();
    assert_eq!(v["error"]["code"], -32000);
    assert_eq!(v["error"]["data"]["kind"], "peer_offline");
    // Another implementation's error without our kind is a plain failure.
    let foreign =
        br#"{"jsonrpc":"2.0","id":3,"error":{"code":-32601,"message":"Method not found"}}"#;
    assert_eq!(
        Frame::decode(foreign).unwrap(),
        Frame::Reply {
            id: 3,
            result: Err(RpcError::new(ErrorKind::Failure, "Method not found"))
        }
    );
}

#[test]
fn hostile_lines_are_refused_with_a_reason() {
    let cases: [(&[u8], &str); 8] = [
        (b"", "EOF"),
        (b"[1,2]", "not a JSON object"),
        (br#"{"id":1,"method":"status"}"#, "not JSON-RPC 2.0"),
        (
            br#"{"jsonrpc":"1.0","id":1,"method":"status"}"#,
            "not JSON-RPC 2.0",
        ),
        (br#"{"jsonrpc":"2.0","method":"status"}"#, "without an id"),
        (
            br#"{"jsonrpc":"2.0","id":-1,"method":"status"}"#,
            "id is not a number",
        ),
        (
            br#"{"jsonrpc":"2.0","id":1,"method":"format_disk"}"#,
            "unknown variant",
        ),
        (br#"{"jsonrpc":"2.0","id":1}"#, "neither a request"),
    ];
    for (line, why) in cases {
        match Frame::decode(line) {
            Err(ApiError::Malformed(m)) => assert!(m.contains(why), "{m:?} should say {why:?}"),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(line)),
        }
    }
}

#[test]
fn a_line_too_long_is_refused_before_it_is_all_buffered() {
    let mut lines = Lines::default();
    let chunk = vec![b'x'; 64 << 10];
    let mut pushed = 0;
    let err = loop {
        lines.push(&chunk);
        pushed += chunk.len();
        match lines.next_line() {
            Ok(None) => continue,
            Ok(Some(_)) => panic!("no newline was sent"),
            Err(e) => break e,
        }
    };
    assert_eq!(err, ApiError::LineTooLong);
    assert!(pushed <= MAX_LINE + chunk.len());
    // A long line with its newline is refused too, not handed out.
    let mut lines = Lines::default();
    let mut long = vec![b'x'; MAX_LINE + 1];
    long.push(b'\n');
    lines.push(&long);
    assert_eq!(lines.next_line(), Err(ApiError::LineTooLong));
}

fn contact() -> impl Strategy<Value = Contact> {
    (text(), text(), text(), any::<bool>(), any::<u64>()).prop_map(
        |(id, name, announced, verified, last_seen_ms)| Contact {
            id,
            name,
            announced,
            verified,
            last_seen_ms,
        },
    )
}
