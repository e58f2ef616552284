//! Persistent chat: messages are stored first (queued), then delivered on a chat stream when
//! the peer is reachable, in the sender's sequence order; the receiver stores each one before
//! it acknowledges it (`Delivered`), so a message is never lost and never stored twice.
//! Read receipts travel the same way. See [`p2pcall_proto::chat`] for the frames.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use p2pcall_net::PeerConnection;
use p2pcall_proto::PeerId;
use p2pcall_proto::chat::{ChatFrame, MAX_FRAME, MAX_READ_IDS, MAX_TEXT, MessageId};
use p2pcall_store::{Message, MessageState, Received, StoreError, now_ms};
use p2pcall_transport::framed::{FrameReadError, FrameReader};

use crate::context::Context;
use crate::error::{EngineError, StreamError};
use crate::events::Emitter;

/// Kind byte of a chat stream.
pub const CHAT: u8 = p2pcall_proto::stream::StreamKind::Chat.byte();
/// Stream error code: the peer broke the chat protocol.
const PROTOCOL_ERROR: u32 = 2;
/// Stream error code: we are not the sender's contact and keep no more of its messages until
/// our user answers its message request (it keeps them and tries again later).
pub const REQUESTS_FULL: u32 = 3;

/// Chat events for the UI.
#[derive(Debug, Clone)]
pub enum ChatEvent {
    /// A new message arrived (already stored); from someone who is not a contact it is a
    /// message request ([`Message::request`]).
    Received(Message),
    /// We wrote a message (stored, queued for delivery): every front end of this engine
    /// shows it, whichever one sent it.
    Queued(Message),
    /// One of our messages changed state.
    State {
        /// Conversation.
        peer: PeerId,
        /// Which message.
        id: MessageId,
        /// New state.
        state: MessageState,
    },
}

/// The chat service.
#[derive(Debug)]
pub(crate) struct Chat {
    ctx: Arc<Context>,
    events: Emitter<ChatEvent>,
    /// One delivery at a time per peer (a second caller waits, then finds nothing left).
    flushing: Mutex<HashMap<PeerId, Arc<tokio::sync::Mutex<()>>>>,
}

fn encode(f: &ChatFrame) -> Vec<u8> {
    let mut b = Vec::with_capacity(f.encoded_len());
    f.encode(&mut b);
    b
}

impl Chat {
    pub(crate) fn new(ctx: Arc<Context>, events: Emitter<ChatEvent>) -> Self {
        Self {
            ctx,
            events,
            flushing: Mutex::default(),
        }
    }

    /// Stores a message to `peer` (state queued) and tries to deliver it now. A peer that is
    /// offline gets it when both are online again. Returns the message as it stands after
    /// the attempt.
    pub(crate) async fn send(&self, peer: PeerId, text: &str) -> Result<Message, EngineError> {
        if text.len() > MAX_TEXT {
            return Err(EngineError::MessageTooLong {
                len: text.len(),
                max: MAX_TEXT,
            });
        }
        let text = text.to_string();
        let m = (self.ctx)
            .db(move |s| s.queue_message(&peer, &text, now_ms()))
            .await?;
        self.events.emit(ChatEvent::Queued(m.clone()));
        match self.flush(peer).await {
            // Someone else answered for the peer: the message waits for the real one, and
            // the user must know.
            Err(e @ EngineError::Net(p2pcall_net::NetError::PeerKeyMismatch { .. })) => {
                return Err(e);
            }
            Err(e) => tracing::debug!(%peer, "message queued: {e}"),
            Ok(()) => {}
        }
        let after = m.rowid + 1;
        let latest = (self.ctx)
            .db(move |s| s.history(&peer, Some(after), 1))
            .await?
            .pop()
            .filter(|x| x.id == m.id)
            .unwrap_or(m);
        Ok(latest)
    }

    /// Marks the conversation with `peer` as read and sends the read receipts (now, or when
    /// the peer is reachable). Returns how many messages were newly read.
    pub(crate) async fn mark_read(&self, peer: PeerId) -> Result<usize, EngineError> {
        let n = self.ctx.db(move |s| s.mark_read(&peer)).await?;
        if n > 0
            && let Err(e) = self.flush(peer).await
        {
            tracing::debug!(%peer, "read receipts queued: {e}");
        }
        Ok(n)
    }

    /// Delivers every queued message and read receipt to `peer` if it is online. Does
    /// nothing (and connects nowhere) when nothing waits.
    pub(crate) async fn flush(&self, peer: PeerId) -> Result<(), EngineError> {
        let lock = self.flushing.lock().entry(peer).or_default().clone();
        let _guard = lock.lock().await;
        let (messages, receipts) = (self.ctx)
            .db(move |s| Ok::<_, StoreError>((s.undelivered(&peer)?, s.pending_receipts(&peer)?)))
            .await?;
        if messages.is_empty() && receipts.is_empty() || !self.ctx.reachable(peer) {
            return Ok(());
        }
        let conn = self.ctx.connect(peer).await?;
        self.deliver(&conn, messages, receipts).await
    }

    async fn deliver(
        &self,
        conn: &PeerConnection,
        messages: Vec<Message>,
        receipts: Vec<MessageId>,
    ) -> Result<(), EngineError> {
        let peer = conn.peer();
        let (mut send, recv) = conn
            .quic()
            .open_bi()
            .await
            .map_err(|e| EngineError::Net(e.into()))?;
        let mut out = vec![CHAT];
        for m in &messages {
            ChatFrame::Message {
                id: m.id,
                seq: m.seq,
                sent_ms: m.sent_ms,
                text: m.text.clone(),
            }
            .encode(&mut out);
        }
        let receipt_batches: Vec<&[MessageId]> = receipts.chunks(MAX_READ_IDS).collect();
        for ids in &receipt_batches {
            ChatFrame::Read { ids: ids.to_vec() }.encode(&mut out);
        }
        send.write_all(&out).await.map_err(StreamError::from)?;
        let _ = send.finish();
        let queued: Vec<MessageId> = (messages.iter())
            .filter(|m| m.state == MessageState::Queued)
            .map(|m| m.id)
            .collect();
        let sent = (self.ctx)
            .db(move |s| {
                let mut sent = Vec::new();
                for id in queued {
                    if s.advance(&peer, &id, MessageState::Sent)? {
                        sent.push(id);
                    }
                }
                Ok::<_, StoreError>(sent)
            })
            .await?;
        for id in sent {
            let state = MessageState::Sent;
            self.events.emit(ChatEvent::State { peer, id, state });
        }
        let mut reader = FrameReader::new(recv, MAX_FRAME);
        let mut waiting: std::collections::VecDeque<MessageId> =
            messages.iter().map(|m| m.id).collect();
        let mut batches = receipt_batches.into_iter();
        while !waiting.is_empty() || batches.len() > 0 {
            let raw = reader.next().await.map_err(StreamError::from)?;
            match ChatFrame::decode(raw)? {
                ChatFrame::Delivered { id } if waiting.front() == Some(&id) => {
                    waiting.pop_front();
                    let state = MessageState::Delivered;
                    if self.ctx.db(move |s| s.advance(&peer, &id, state)).await? {
                        self.events.emit(ChatEvent::State {
                            peer,
                            id,
                            state: MessageState::Delivered,
                        });
                    }
                }
                ChatFrame::ReadStored { count } if waiting.is_empty() => {
                    let Some(ids) = batches.next() else {
                        return Err(EngineError::Protocol("unexpected ReadStored".into()));
                    };
                    if count as usize != ids.len() {
                        return Err(EngineError::Protocol("ReadStored count differs".into()));
                    }
                    let ids = ids.to_vec();
                    self.ctx.db(move |s| s.receipts_sent(&peer, &ids)).await?;
                }
                other => {
                    return Err(EngineError::Protocol(format!(
                        "unexpected chat answer {other:?}"
                    )));
                }
            }
        }
        Ok(())
    }

    async fn apply_read(
        &self,
        peer: PeerId,
        ids: Vec<MessageId>,
    ) -> Result<Vec<MessageId>, EngineError> {
        self.ctx.db(move |s| s.apply_read(&peer, &ids)).await
    }

    /// Serves a chat stream the peer opened (its kind byte already read).
    pub(crate) async fn serve(
        &self,
        peer: PeerId,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) {
        let mut reader = FrameReader::new(recv, MAX_FRAME);
        loop {
            let raw = match reader.next().await {
                Ok(raw) => raw,
                Err(FrameReadError::Closed) => break,
                Err(e) => {
                    tracing::debug!(%peer, "chat stream: {e}");
                    let _ = send.reset(PROTOCOL_ERROR.into());
                    return;
                }
            };
            let answer = match ChatFrame::decode(raw) {
                Ok(ChatFrame::Message {
                    id,
                    seq,
                    sent_ms,
                    text,
                }) => {
                    let stored = (self.ctx)
                        .db(move |s| s.receive_message(&peer, &id, seq, sent_ms, &text, now_ms()))
                        .await;
                    match stored {
                        Ok(Received::New(m)) => {
                            self.events.emit(ChatEvent::Received(m));
                            ChatFrame::Delivered { id }
                        }
                        Ok(Received::Again) => ChatFrame::Delivered { id },
                        Ok(Received::RequestsFull) => {
                            tracing::debug!(%peer, "message requests full: refused a message");
                            let _ = send.reset(REQUESTS_FULL.into());
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(%peer, "cannot store a message: {e}");
                            let _ = send.reset(PROTOCOL_ERROR.into());
                            return;
                        }
                    }
                }
                Ok(ChatFrame::Read { ids }) => match self.apply_read(peer, ids.clone()).await {
                    Ok(changed) => {
                        for id in changed {
                            self.events.emit(ChatEvent::State {
                                peer,
                                id,
                                state: MessageState::Read,
                            });
                        }
                        ChatFrame::ReadStored {
                            count: ids.len() as u32,
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%peer, "cannot store receipts: {e}");
                        let _ = send.reset(PROTOCOL_ERROR.into());
                        return;
                    }
                },
                Ok(other) => {
                    tracing::debug!(%peer, "unexpected chat frame {other:?}");
                    let _ = send.reset(PROTOCOL_ERROR.into());
                    return;
                }
                Err(e) => {
                    tracing::debug!(%peer, "bad chat frame: {e}");
                    let _ = send.reset(PROTOCOL_ERROR.into());
                    return;
                }
            };
            if send.write_all(&encode(&answer)).await.is_err() {
                return;
            }
        }
        let _ = send.finish();
    }
}
