//! NAT behaviour from address reflection (sans-IO).
//!
//! The relay answers reflection requests on two UDP ports. Sending from one local socket to
//! both and comparing what each saw tells the mapping behaviour (RFC 4787 terms):
//! the same public ip:port for both destinations means *endpoint-independent* mapping
//! (hole punching works with any peer), different ones mean *endpoint-dependent* mapping
//! ("symmetric": the peer must guess ports). The port tells whether the NAT preserves the
//! local port, and an observed address equal to a local one means there is no NAT.

use std::net::SocketAddr;

pub use p2pcall_proto::peer::Mapping;

/// What reflection revealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatReport {
    /// Mapping behaviour.
    pub mapping: Mapping,
    /// The public port equals the local port.
    pub port_preserved: bool,
    /// No reflection answered over UDP.
    pub udp_blocked: bool,
    /// Public addresses seen, one per reflection port that answered.
    pub observed: Vec<SocketAddr>,
}

/// Classifies from the local socket address(es) and the observations of each reflection
/// port (`None` where it did not answer).
pub fn classify(
    local: &[SocketAddr],
    local_port: u16,
    observed: &[Option<SocketAddr>],
) -> NatReport {
    let seen: Vec<SocketAddr> = observed.iter().flatten().copied().collect();
    let mapping = match seen.as_slice() {
        [] => Mapping::Unknown,
        [first, rest @ ..] => {
            if local.iter().any(|l| l.ip() == first.ip()) && first.port() == local_port {
                Mapping::None
            } else if rest.is_empty() {
                Mapping::Unknown
            } else if rest.iter().all(|o| o == first) {
                Mapping::EndpointIndependent
            } else {
                Mapping::EndpointDependent
            }
        }
    };
    NatReport {
        mapping,
        port_preserved: !seen.is_empty() && seen.iter().all(|o| o.port() == local_port),
        udp_blocked: seen.is_empty(),
        observed: seen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn each_behaviour_is_recognised() {
        let local = [a("10.0.0.2:5000")];
        let cone = classify(
            &local,
            5000,
            &[Some(a("203.0.113.7:5000")), Some(a("203.0.113.7:5000"))],
        );
        assert_eq!(cone.mapping, Mapping::EndpointIndependent);
        assert!(cone.port_preserved);
        let sym = classify(
            &local,
            5000,
            &[Some(a("203.0.113.7:40001")), Some(a("203.0.113.7:40002"))],
        );
        assert_eq!(sym.mapping, Mapping::EndpointDependent);
        assert!(!sym.port_preserved);
        let open = classify(
            &[a("198.51.100.9:5000")],
            5000,
            &[Some(a("198.51.100.9:5000")), Some(a("198.51.100.9:5000"))],
        );
        assert_eq!(open.mapping, Mapping::None);
        let blocked = classify(&local, 5000, &[None, None]);
        assert!(blocked.udp_blocked);
        assert_eq!(blocked.mapping, Mapping::Unknown);
        let half = classify(&local, 5000, &[Some(a("203.0.113.7:6000")), None]);
        assert_eq!(half.mapping, Mapping::Unknown);
        assert!(!half.udp_blocked);
    }
}
