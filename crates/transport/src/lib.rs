//! The transport plumbing the peer endpoint (`net`) and the relay share: identities as TLS
//! 1.3 raw public keys and the QUIC/TLS configurations built on them (this module), frames
//! on byte streams ([`framed`]), and UDP sockets ([`udp`]).
//!
//! Every installation owns one Ed25519 key ([`Identity`]). In every TLS handshake, relay or
//! peer-to-peer, both sides present their key as an RFC 7250 raw public key and prove
//! possession of it with the handshake signature; no certificate authority is involved.
//!
//! * A peer dialing another peer accepts only the exact key it expects
//!   ([`client_config_for_peer`]): a different key fails the handshake with
//!   [`rustls::Error::InvalidCertificate`] (`ApplicationVerificationFailure`).
//! * Servers (the relay, and every peer for incoming connections) require a client key and
//!   accept any well-formed Ed25519 key; the application then reads it with [`peer_id`] and
//!   decides (the relay registers it; a peer checks it against the relay-authenticated sender).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use p2pcall_proto::PeerId;
use ring::signature::KeyPair as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{
    CertificateDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

pub mod framed;
pub mod udp;

/// ALPN of the peer-to-relay control connection.
pub const ALPN_RELAY: &[u8] = b"p2pcall-relay/1";
/// ALPN of peer-to-peer connections.
pub const ALPN_PEER: &[u8] = b"p2pcall-peer/1";
/// Server name used in peer-to-peer handshakes (the key, not the name, is verified).
pub const PEER_SERVER_NAME: &str = "peer.p2pcall.invalid";
/// Server name used toward the relay.
pub const RELAY_SERVER_NAME: &str = "relay.p2pcall.invalid";

/// Errors building identities and TLS configurations.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The stored key is not a valid Ed25519 PKCS#8 document.
    /// (ring's `KeyRejected` is a fixed description, not an `Error` with a source chain.)
    #[error("the identity key is not a valid Ed25519 PKCS#8 key: {0}")]
    BadKey(String),
    /// Key generation failed (system RNG unavailable).
    #[error("could not generate a key: the system random number generator failed")]
    Rng,
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// quinn refused the TLS configuration.
    #[error("QUIC crypto configuration: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

/// An installation's long-term Ed25519 key.
#[derive(Clone)]
pub struct Identity {
    pkcs8: Vec<u8>,
    id: PeerId,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Creates a fresh key from the system RNG.
    pub fn generate() -> Result<Self, TlsError> {
        let rng = ring::rand::SystemRandom::new();
        let doc =
            ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| TlsError::Rng)?;
        Self::from_pkcs8(doc.as_ref())
    }

    /// Loads a key from its PKCS#8 document.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, TlsError> {
        let kp = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|e| TlsError::BadKey(e.to_string()))?;
        let pk: [u8; 32] = kp
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| TlsError::BadKey("public key is not 32 bytes".into()))?;
        Ok(Self {
            pkcs8: pkcs8.to_vec(),
            id: PeerId::from_bytes(pk),
        })
    }

    /// The PKCS#8 document (secret: store with mode 0600).
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public identity.
    pub fn id(&self) -> PeerId {
        self.id
    }

    fn certified_key(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        let der = PrivatePkcs8KeyDer::from(self.pkcs8.clone());
        let signer = rustls::crypto::ring::sign::any_eddsa_type(&der)?;
        Ok(Arc::new(CertifiedKey::new(
            vec![CertificateDer::from(self.id.to_spki())],
            signer,
        )))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

fn verify_sig(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if PeerId::from_spki(cert.as_ref()).is_none() {
        return Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadEncoding,
        ));
    }
    rustls::crypto::verify_tls13_signature_with_raw_key(
        message,
        &SubjectPublicKeyInfoDer::from(cert.as_ref()),
        dss,
        &algorithms(),
    )
}

/// The Ed25519 key a peer presented as its raw public key (alone: no chain).
fn key_of(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<PeerId, rustls::Error> {
    match PeerId::from_spki(end_entity.as_ref()) {
        Some(id) if intermediates.is_empty() => Ok(id),
        _ => Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadEncoding,
        )),
    }
}

/// The signature checks shared by both verifiers: TLS 1.3 only, Ed25519 only, raw keys only.
macro_rules! raw_key_signature_methods {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::Tls12NotOffered,
            ))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_sig(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            vec![SignatureScheme::ED25519]
        }

        fn requires_raw_public_keys(&self) -> bool {
            true
        }
    };
}

/// What a handshake error says when the server presented another key than the one pinned
/// for it (followed by that key, 64 hex digits).
pub const KEY_MISMATCH: &str = "the server presented the key ";

/// The key a server presented instead of the pinned one, from a handshake error's text
/// (however many layers wrapped it).
pub fn presented_key(error: &str) -> Option<PeerId> {
    let at = error.find(KEY_MISMATCH)? + KEY_MISMATCH.len();
    error.get(at..at + 64)?.parse().ok()
}

/// Server-key check used by clients: a pinned key, or any Ed25519 key.
#[derive(Debug)]
struct ServerKey {
    expected: Option<PeerId>,
}

impl ServerCertVerifier for ServerKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = key_of(end_entity, intermediates)?;
        match self.expected {
            // The key it did present goes with the error: the user must see both.
            Some(want) if want != id => Err(rustls::Error::General(format!(
                "{KEY_MISMATCH}{}",
                id.to_hex()
            ))),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    raw_key_signature_methods!();
}

/// Client-key check used by servers: any well-formed Ed25519 key, required.
#[derive(Debug)]
struct AnyClientKey;

impl ClientCertVerifier for AnyClientKey {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        key_of(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    raw_key_signature_methods!();
}

/// A rustls client config presenting `me` and checking the server key (`expected`, or any).
pub fn rustls_client_config(
    me: &Identity,
    expected: Option<PeerId>,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, TlsError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerKey { expected }))
        .with_client_cert_resolver(Arc::new(
            rustls::client::AlwaysResolvesClientRawPublicKeys::new(me.certified_key()?),
        ));
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(cfg)
}

/// A rustls server config presenting `me` and requiring an Ed25519 client key.
pub fn rustls_server_config(me: &Identity, alpn: &[u8]) -> Result<rustls::ServerConfig, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(AnyClientKey))
        .with_cert_resolver(Arc::new(
            rustls::server::AlwaysResolvesServerRawPublicKeys::new(me.certified_key()?),
        ));
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(cfg)
}

/// Transport settings shared by every p2pcall QUIC connection.
pub fn transport_config(keep_alive: Duration, idle_timeout: Duration) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(keep_alive));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle_timeout).ok());
    t.datagram_receive_buffer_size(Some(1 << 20));
    // Datagrams are real-time media: what cannot leave within ~0.25 s at call rates is
    // better dropped (quinn drops the oldest) than queued (1 MiB queued 4-8 s of video
    // behind a congestion window in the NAT lab's jitter run).
    t.datagram_send_buffer_size(64 << 10);
    // Jittery paths reorder packets; with the default threshold of 3, reordering counts as
    // loss and collapses the congestion window. The time threshold (9/8 RTT) still catches
    // real losses.
    t.packet_threshold(16);
    // BBR: right for bulk; media is paced below it by the call's own estimator. In the
    // RFC 8867 simulation BBR's window never limited media (a window floor set by the call
    // changed no figure), so media and BBR need no coupling beyond the bulk gate.
    t.congestion_controller_factory(std::sync::Arc::new(quinn::congestion::BbrConfig::default()));
    // The peer acknowledges every 4th packet, not every 2nd (a call's receiver sent ~90
    // acknowledgements a second for 1 Mbit/s of video, now ~30: decision 0093). The
    // reordering threshold stays quinn's 2, so a gap is acknowledged at once: 15 collapsed
    // bulk throughput (0091).
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(quinn::VarInt::from_u32(3));
    t.ack_frequency_config(Some(ack));
    // Relayed packets carry a 49-byte header; keep discovered MTUs below what a 1500-byte
    // Ethernet path can carry with it so a switch to the relay path loses no packets.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_QUIC_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtu));
    t
}

/// Largest QUIC UDP payload we let MTU discovery reach: 1500 (Ethernet) − 40 (IPv6) −
/// 8 (UDP) − 49 (relay header).
pub const MAX_QUIC_UDP_PAYLOAD: u16 = 1500 - 40 - 8 - 49;

/// quinn client config for dialing the peer `expected` (or a relay with `ALPN_RELAY`).
pub fn quinn_client_config(
    me: &Identity,
    expected: Option<PeerId>,
    alpn: &[u8],
    transport: quinn::TransportConfig,
) -> Result<quinn::ClientConfig, TlsError> {
    let tls = rustls_client_config(me, expected, alpn)?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// quinn server config presenting `me`.
pub fn quinn_server_config(
    me: &Identity,
    alpn: &[u8],
    transport: quinn::TransportConfig,
) -> Result<quinn::ServerConfig, TlsError> {
    let tls = rustls_server_config(me, alpn)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// Endpoint settings for every p2pcall endpoint: no QUIC bit greasing, so that the first byte
/// of every QUIC packet has bit 0x40 set and never collides with p2pcall's own packet types.
pub fn endpoint_config() -> quinn::EndpointConfig {
    let mut cfg = quinn::EndpointConfig::default();
    cfg.grease_quic_bit(false);
    cfg
}

/// The authenticated key of the other side of an established connection.
pub fn peer_id(conn: &quinn::Connection) -> Option<PeerId> {
    let any = conn.peer_identity()?;
    let certs = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    PeerId::from_spki(certs.first()?.as_ref())
}

/// The authenticated key of the other side of a rustls connection (TCP+TLS fallback).
pub fn peer_id_of_tls(certs: Option<&[CertificateDer<'static>]>) -> Option<PeerId> {
    PeerId::from_spki(certs?.first()?.as_ref())
}
