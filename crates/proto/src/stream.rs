//! Application streams on a peer connection: every stream after the control stream starts
//! with one kind byte, [`StreamKind`]. Bidirectional: speed test, chat, call signaling,
//! transfer offers;
//! unidirectional: transfer data. A stream of an unknown kind (or of a kind opened in the
//! wrong direction) is refused with a stream error.

/// What an application stream carries (its first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// Bytes to hash and count (bidirectional).
    Speedtest,
    /// Chat messages and receipts (bidirectional).
    Chat,
    /// A call's signaling (bidirectional; its media travels on datagrams).
    Call,
    /// A transfer's offer and control frames (bidirectional).
    TransferOffer,
    /// A transfer's data records (unidirectional).
    TransferData,
}

impl StreamKind {
    /// Every kind.
    pub const ALL: [Self; 5] = [
        Self::Speedtest,
        Self::Chat,
        Self::Call,
        Self::TransferOffer,
        Self::TransferData,
    ];

    /// The kind byte on the wire.
    pub const fn byte(self) -> u8 {
        match self {
            Self::Speedtest => b'S',
            Self::Chat => b'C',
            Self::Call => b'V',
            Self::TransferOffer => b'F',
            Self::TransferData => b'D',
        }
    }

    /// The kind a first byte names, if any.
    pub fn from_byte(b: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.byte() == b)
    }

    /// Whether the kind is opened as a unidirectional stream.
    pub const fn is_unidirectional(self) -> bool {
        matches!(self, Self::TransferData)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_bytes_round_trip_and_unknown_bytes_are_none() {
        for k in StreamKind::ALL {
            assert_eq!(StreamKind::from_byte(k.byte()), Some(k));
        }
        let known: Vec<u8> = StreamKind::ALL.iter().map(|k| k.byte()).collect();
        for b in 0..=255u8 {
            assert_eq!(StreamKind::from_byte(b).is_some(), known.contains(&b));
        }
        assert!(StreamKind::TransferData.is_unidirectional());
        assert!(!StreamKind::Chat.is_unidirectional());
    }
}
