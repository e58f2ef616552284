//! Encoded frames → media packets of at most the connection's current datagram size.

use bytes::Bytes;
use p2pcall_proto::media::{MAX_FRAGS, MEDIA_HEADER_LEN, MediaPacket};

use crate::MediaError;

/// Numbers packets and frames of one stream.
#[derive(Debug, Clone)]
pub struct Packetizer {
    stream: u8,
    seq: u32,
    frame: u32,
}

impl Packetizer {
    /// A packetizer for `stream`, starting at sequence 0 and frame 0.
    pub fn new(stream: u8) -> Self {
        Self {
            stream,
            seq: 0,
            frame: 0,
        }
    }

    /// Next sequence number to be used.
    pub fn next_seq(&self) -> u32 {
        self.seq
    }

    /// Cuts one encoded frame into packets that fit `max_datagram` bytes, fragments of
    /// nearly equal size (so no tiny last fragment).
    pub fn packetize(
        &mut self,
        data: Bytes,
        timestamp: u32,
        keyframe: bool,
        max_datagram: usize,
    ) -> Result<Vec<MediaPacket>, MediaError> {
        let room = max_datagram
            .checked_sub(MEDIA_HEADER_LEN)
            .filter(|r| *r >= 16)
            .ok_or(MediaError::DatagramTooSmall(max_datagram))?;
        let frags = data.len().div_ceil(room).max(1);
        if frags > usize::from(MAX_FRAGS) {
            return Err(MediaError::FrameTooLarge {
                bytes: data.len(),
                frags,
                max: MAX_FRAGS,
            });
        }
        // The first `rem` fragments carry one byte more: sizes differ by at most one.
        let (base, rem) = (data.len() / frags, data.len() % frags);
        let start_of = |i: usize| i * base + i.min(rem);
        let frame = self.frame;
        self.frame = self.frame.wrapping_add(1);
        let mut out = Vec::with_capacity(frags);
        for i in 0..frags {
            let (start, end) = (start_of(i), start_of(i + 1));
            out.push(MediaPacket {
                stream: self.stream,
                keyframe,
                retransmit: false,
                tw: 0,
                seq: self.seq,
                timestamp,
                frame,
                frag: i as u16,
                frags: frags as u16,
                payload: data.slice(start..end),
            });
            self.seq = self.seq.wrapping_add(1);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2pcall_proto::media::MediaDatagram;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn packets_fit_and_cover_the_frame(len in 0usize..100_000, max in 300usize..1500) {
            let mut p = Packetizer::new(1);
            let data = Bytes::from((0..len).map(|i| i as u8).collect::<Vec<_>>());
            let pkts = p.packetize(data.clone(), 90_000, true, max).unwrap();
            let sizes: Vec<usize> = pkts.iter().map(|p| p.payload.len()).collect();
            prop_assert!(pkts.iter().all(|p| MediaDatagram::Packet(p.clone()).encoded_len() <= max));
            // Nearly equal fragments.
            prop_assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1 || len == 0);
            let joined: Vec<u8> = pkts.iter().flat_map(|p| p.payload.to_vec()).collect();
            prop_assert_eq!(joined, data.to_vec());
            prop_assert!(pkts.iter().enumerate().all(|(i, p)| p.frag as usize == i && p.seq as usize == i && p.frags as usize == pkts.len()));
            prop_assert_eq!(p.next_seq() as usize, pkts.len());
        }
    }

    #[test]
    fn limits() {
        let mut p = Packetizer::new(0);
        assert_eq!(
            p.packetize(Bytes::from_static(b"x"), 0, false, MEDIA_HEADER_LEN + 3),
            Err(MediaError::DatagramTooSmall(MEDIA_HEADER_LEN + 3))
        );
        let huge = Bytes::from(vec![0u8; 1200 * 1100]);
        assert!(matches!(
            p.packetize(huge, 0, false, 1200 + MEDIA_HEADER_LEN),
            Err(MediaError::FrameTooLarge { frags: 1100, .. })
        ));
        let a = p
            .packetize(Bytes::from_static(b"a"), 0, false, 1200)
            .unwrap();
        let b = p
            .packetize(Bytes::from_static(b"b"), 0, false, 1200)
            .unwrap();
        assert_eq!((a[0].frame, b[0].frame, b[0].seq), (0, 1, 1));
    }
}
