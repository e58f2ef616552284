//! NAT models (RFC 4787 vocabulary): mapping behaviour, filtering behaviour, port
//! preservation and mapping timeouts.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// How the NAT picks the public address of an outgoing flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappingKind {
    /// One mapping per inside address:port, whatever the destination ("cone").
    EndpointIndependent,
    /// A new mapping per destination address:port ("symmetric").
    EndpointDependent,
}

/// Which inbound packets the NAT lets through a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filtering {
    /// Anyone may send to a mapping ("full cone").
    EndpointIndependent,
    /// Only addresses the inside host has sent to ("restricted cone").
    AddressDependent,
    /// Only address:port pairs the inside host has sent to ("port restricted"; what a
    /// conntrack-based home router does).
    AddressAndPortDependent,
}

/// A NAT's behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatConfig {
    /// Mapping behaviour.
    pub mapping: MappingKind,
    /// Filtering behaviour.
    pub filtering: Filtering,
    /// Keep the inside port when it is free.
    pub port_preserving: bool,
    /// Pick new public ports at random (Linux `masquerade random`) instead of in sequence.
    pub random_ports: bool,
    /// Idle mappings expire after this long.
    pub timeout: Duration,
}

impl NatConfig {
    /// A NAT with the given mapping and filtering, no port preservation, 30 s timeout.
    pub fn new(mapping: MappingKind, filtering: Filtering) -> Self {
        Self {
            mapping,
            filtering,
            port_preserving: false,
            random_ports: false,
            timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug)]
struct Mapping {
    inside: SocketAddr,
    /// The destination this mapping is for (endpoint-dependent mapping only).
    dest: Option<SocketAddr>,
    public_port: u16,
    contacted: HashSet<SocketAddr>,
    last_used: Instant,
}

/// One NAT router.
#[derive(Debug)]
pub(crate) struct NatBox {
    public: IpAddr,
    cfg: NatConfig,
    inside: Vec<IpAddr>,
    mappings: Vec<Mapping>,
    next_port: u16,
}

impl NatBox {
    pub(crate) fn new(public: IpAddr, cfg: NatConfig, inside: Vec<IpAddr>) -> Self {
        Self {
            public,
            cfg,
            inside,
            mappings: Vec::new(),
            next_port: 40_000,
        }
    }

    pub(crate) fn public(&self) -> IpAddr {
        self.public
    }

    pub(crate) fn is_inside(&self, ip: IpAddr) -> bool {
        self.inside.contains(&ip)
    }

    fn expire(&mut self, now: Instant) {
        let t = self.cfg.timeout;
        self.mappings
            .retain(|m| now.saturating_duration_since(m.last_used) < t);
    }

    /// Translates an outgoing datagram's source.
    pub(crate) fn outbound(
        &mut self,
        now: Instant,
        from: SocketAddr,
        to: SocketAddr,
    ) -> SocketAddr {
        self.expire(now);
        let dest = match self.cfg.mapping {
            MappingKind::EndpointIndependent => None,
            MappingKind::EndpointDependent => Some(to),
        };
        let idx = match self
            .mappings
            .iter()
            .position(|m| m.inside == from && m.dest == dest)
        {
            Some(i) => i,
            None => {
                let taken = |p: u16, ms: &[Mapping]| ms.iter().any(|m| m.public_port == p);
                let port = if self.cfg.port_preserving && !taken(from.port(), &self.mappings) {
                    from.port()
                } else {
                    loop {
                        self.next_port = if self.cfg.random_ports {
                            // xorshift16 (full period over 1..=65535), skipping the
                            // privileged ports: a repeatable random-looking sequence.
                            let mut x = self.next_port;
                            loop {
                                x ^= x << 7;
                                x ^= x >> 9;
                                x ^= x << 8;
                                if x >= 1024 {
                                    break x;
                                }
                            }
                        } else {
                            self.next_port.wrapping_add(1).max(1024)
                        };
                        if !taken(self.next_port, &self.mappings) {
                            break self.next_port;
                        }
                    }
                };
                self.mappings.push(Mapping {
                    inside: from,
                    dest,
                    public_port: port,
                    contacted: HashSet::new(),
                    last_used: now,
                });
                self.mappings.len() - 1
            }
        };
        let m = &mut self.mappings[idx];
        m.contacted.insert(to);
        m.last_used = now;
        SocketAddr::new(self.public, m.public_port)
    }

    /// The inside address for an incoming datagram, if a mapping exists and its filter
    /// lets `from` through.
    pub(crate) fn inbound(
        &mut self,
        now: Instant,
        from: SocketAddr,
        to: SocketAddr,
    ) -> Option<SocketAddr> {
        self.expire(now);
        let filtering = self.cfg.filtering;
        let m = self.mappings.iter_mut().find(|m| {
            m.public_port == to.port()
                && match filtering {
                    Filtering::EndpointIndependent => true,
                    Filtering::AddressDependent => m.contacted.iter().any(|c| c.ip() == from.ip()),
                    Filtering::AddressAndPortDependent => m.contacted.contains(&from),
                }
        })?;
        // Inbound traffic does not refresh mappings on many NATs; we refresh only on
        // outbound traffic, the stricter choice.
        Some(m.inside)
    }
}
