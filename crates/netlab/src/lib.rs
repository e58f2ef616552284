//! A NAT lab on this machine's kernel: network namespaces joined by veth pairs, two home
//! routers doing NAT with nftables, a "public" relay host, and impairments (rate with tbf,
//! delay / jitter / loss with a userspace NFQUEUE delayer, since this kernel has no netem).
//!
//! ```text
//!   peer-a (10.1.0.2) -- lan [router-a: NAT] wan 203.0.113.1  --ra-+
//!                                                                   [inet] --rr-- relay 198.51.100.1
//!   peer-b (10.2.0.2) -- lan [router-b: NAT] wan 203.0.113.17 --rb-+
//! ```
//!
//! Every packet from a router to the internet passes the delayer once (queued in the raw
//! PREROUTING hook of `inet`, before conntrack), so a one-way delay `d` gives peer-to-peer
//! RTT `2d`. Programs run with `ip netns exec`; nothing is created in the root namespace, and
//! only documentation and private ranges are used inside the lab. Dropping the [`Lab`] kills
//! the lab's processes and deletes its namespaces. Needs root.
#![deny(missing_docs)]

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The relay's public address inside the lab.
pub const RELAY_IP: &str = "198.51.100.1";

/// How a home router treats UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// No NAT and no firewall: the peer's address is reachable from the internet.
    Public,
    /// Endpoint-independent mapping (`masquerade`, port preserved when free) with
    /// address-and-port-dependent filtering (unsolicited input dropped), like most home
    /// routers running Linux.
    Cone,
    /// Endpoint-dependent mapping (`masquerade random`): a new random port for every
    /// destination.
    Symmetric,
    /// Endpoint-independent NAT that drops all UDP (TCP passes): forces the TCP relay path.
    UdpBlocked,
}

impl Nat {
    /// Short name for tables and test names.
    pub fn name(self) -> &'static str {
        match self {
            Nat::Public => "public",
            Nat::Cone => "cone",
            Nat::Symmetric => "symmetric",
            Nat::UdpBlocked => "udp-blocked",
        }
    }
}

/// Network impairments on the internet side of both routers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Impair {
    /// Added to every packet entering the internet from a router (peer-to-peer RTT is twice
    /// this).
    pub one_way_delay: Duration,
    /// Uniform extra delay in `[0, jitter]` (reorders packets).
    pub jitter: Duration,
    /// Packets dropped per thousand, at random.
    pub loss_permille: u32,
    /// Rate limit in kbit/s on each router's internet link (tbf), both directions.
    pub rate_kbit: Option<u32>,
}

impl Impair {
    fn needs_delayer(&self) -> bool {
        !self.one_way_delay.is_zero() || !self.jitter.is_zero() || self.loss_permille > 0
    }
}

/// A host of the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// The relay server, on a public address.
    Relay,
    /// The internet router between everyone.
    Inet,
    /// Home router of peer A.
    RouterA,
    /// Home router of peer B.
    RouterB,
    /// Peer A, behind router A.
    PeerA,
    /// Peer B, behind router B.
    PeerB,
}

const HOSTS: [Host; 6] = [
    Host::Relay,
    Host::Inet,
    Host::RouterA,
    Host::RouterB,
    Host::PeerA,
    Host::PeerB,
];

impl Host {
    fn tag(self) -> &'static str {
        match self {
            Host::Relay => "relay",
            Host::Inet => "inet",
            Host::RouterA => "ra",
            Host::RouterB => "rb",
            Host::PeerA => "pa",
            Host::PeerB => "pb",
        }
    }
}

/// Why the lab cannot run here.
pub fn unavailable() -> Option<String> {
    if !is_root() {
        return Some("the NAT lab needs root (network namespaces, nftables)".into());
    }
    for tool in ["ip", "nft", "iptables"] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!(
                "`{tool}` is missing; run scripts/setup.sh --dev as root"
            ));
        }
    }
    None
}

/// Environment variable set for a test re-run inside its own namespace.
const IN_PRIVATE_NETNS: &str = "P2PCALL_TEST_IN_NETNS";

/// For tests that multicast (mDNS), which must not leave this machine: runs test `name` of
/// the current test binary again inside a fresh network namespace holding only a loopback
/// interface (up, multicast on), and fails if it fails there. Returns `true` when called
/// from inside that namespace (run the test body), `false` otherwise (done: the re-run passed,
/// or it was skipped without root, which it says).
pub fn rerun_in_private_netns(name: &str) -> bool {
    if std::env::var_os(IN_PRIVATE_NETNS).is_some() {
        return true;
    }
    if !is_root() {
        eprintln!("SKIPPED: {name} needs root for a private network namespace");
        return false;
    }
    let status = std::env::current_exe().and_then(|exe| {
        Command::new("unshare")
            .args(["--net", "--", "sh", "-c"])
            .arg(
                r#"ip link set lo up && ip link set lo multicast on && exec "$0" --exact "$1" --nocapture"#,
            )
            .arg(exe)
            .arg(name)
            .env(IN_PRIVATE_NETNS, "1")
            .status()
    });
    match status {
        Ok(s) if s.success() => false,
        Ok(s) => panic!("{name} failed inside its private network namespace ({s})"),
        Err(e) => panic!("cannot re-run {name} in a private network namespace: {e}"),
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// A running lab. Dropping it tears everything down.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    children: Vec<Child>,
    /// Scratch directory for the programs' data (removed on drop).
    pub dir: PathBuf,
    /// NAT of router A and B.
    pub nats: (Nat, Nat),
}

static LABS: AtomicU32 = AtomicU32::new(0);

fn run(cmd: &mut Command) -> io::Result<()> {
    run_stdin(cmd, "")
}

/// Runs `cmd` with `input` on its standard input; its error output becomes the error.
fn run_stdin(cmd: &mut Command, input: &str) -> io::Result<()> {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut s) = child.stdin.take() {
        s.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{cmd:?} failed: {}\n{input}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl Lab {
    /// Builds the lab: router A with `a`, router B with `b`, impairments on both internet
    /// links. `delayer` is the path of the `netlab-delay` program (needed only when
    /// `impair` delays or drops).
    pub fn new(a: Nat, b: Nat, impair: Impair, delayer: &Path) -> io::Result<Lab> {
        let (prefix, dir) = scratch("p2l")?;
        let mut lab = Lab {
            prefix,
            children: Vec::new(),
            dir,
            nats: (a, b),
        };
        lab.build(impair, delayer)?;
        Ok(lab)
    }

    /// The namespace name of `h`.
    pub fn ns(&self, h: Host) -> String {
        format!("{}-{}", self.prefix, h.tag())
    }

    fn ip(&self, h: Host, args: &str) -> io::Result<()> {
        run(Command::new("ip")
            .arg("-n")
            .arg(self.ns(h))
            .args(args.split_whitespace()))
    }

    /// Sets (or changes, while traffic flows) the rate limit of both routers' internet
    /// links, both directions: tbf, 16 kB burst, 200 ms of queue.
    pub fn set_rate(&self, kbit: u32) -> io::Result<()> {
        self.set_rate_queue(kbit, 200)
    }

    /// The same with `queue_ms` of queue (tbf's latency: a drop-tail buffer holding
    /// `queue_ms` of traffic at `kbit`) instead of 200 ms.
    pub fn set_rate_queue(&self, kbit: u32, queue_ms: u32) -> io::Result<()> {
        for (h, dev) in [
            (Host::Inet, "ra"),
            (Host::Inet, "rb"),
            (Host::RouterA, "wan"),
            (Host::RouterB, "wan"),
        ] {
            run(self.command(h, "tc").args(
                format!(
                    "qdisc replace dev {dev} root tbf rate {kbit}kbit burst 16kb \
                     latency {queue_ms}ms"
                )
                .split_whitespace(),
            ))?;
        }
        Ok(())
    }

    /// A command that runs `program` inside `h`.
    pub fn command(&self, h: Host, program: impl AsRef<std::ffi::OsStr>) -> Command {
        exec_in(&self.ns(h), program)
    }

    /// Starts `cmd` (from [`command`](Self::command)) and kills it when the lab ends.
    pub fn spawn(&mut self, cmd: &mut Command) -> io::Result<&mut Child> {
        spawn_kept(&mut self.children, cmd)
    }

    fn build(&mut self, impair: Impair, delayer: &Path) -> io::Result<()> {
        for h in HOSTS {
            run(Command::new("ip").args(["netns", "add"]).arg(self.ns(h)))?;
            self.ip(h, "link set lo up")?;
        }
        let veth = |a: Host, an: &str, b: Host, bn: &str| {
            run(Command::new("ip").args([
                "link",
                "add",
                an,
                "netns",
                &self.ns(a),
                "type",
                "veth",
                "peer",
                "name",
                bn,
                "netns",
                &self.ns(b),
            ]))
        };
        veth(Host::Relay, "eth0", Host::Inet, "rr")?;
        veth(Host::RouterA, "wan", Host::Inet, "ra")?;
        veth(Host::RouterB, "wan", Host::Inet, "rb")?;
        veth(Host::PeerA, "eth0", Host::RouterA, "lan")?;
        veth(Host::PeerB, "eth0", Host::RouterB, "lan")?;
        let addrs: [(Host, &str, &str); 10] = [
            (Host::Relay, "eth0", "198.51.100.1/24"),
            (Host::Inet, "rr", "198.51.100.254/24"),
            (Host::Inet, "ra", "203.0.113.14/28"),
            (Host::Inet, "rb", "203.0.113.30/28"),
            (Host::RouterA, "wan", "203.0.113.1/28"),
            (Host::RouterB, "wan", "203.0.113.17/28"),
            (Host::RouterA, "lan", "10.1.0.1/24"),
            (Host::RouterB, "lan", "10.2.0.1/24"),
            (Host::PeerA, "eth0", "10.1.0.2/24"),
            (Host::PeerB, "eth0", "10.2.0.2/24"),
        ];
        for (h, dev, cidr) in addrs {
            self.ip(h, &format!("addr add {cidr} dev {dev}"))?;
            self.ip(h, &format!("link set {dev} up"))?;
        }
        self.ip(Host::Relay, "route add default via 198.51.100.254")?;
        self.ip(Host::RouterA, "route add default via 203.0.113.14")?;
        self.ip(Host::RouterB, "route add default via 203.0.113.30")?;
        self.ip(Host::PeerA, "route add default via 10.1.0.1")?;
        self.ip(Host::PeerB, "route add default via 10.2.0.1")?;
        for h in [Host::Inet, Host::RouterA, Host::RouterB] {
            run(self
                .command(h, "sysctl")
                .args(["-qw", "net.ipv4.ip_forward=1"]))?;
        }
        let (a, b) = self.nats;
        for (router, nat, lan, gw) in [
            (Host::RouterA, a, "10.1.0.0/24", "203.0.113.1"),
            (Host::RouterB, b, "10.2.0.0/24", "203.0.113.17"),
        ] {
            if nat == Nat::Public {
                self.ip(Host::Inet, &format!("route add {lan} via {gw}"))?;
            }
            run_stdin(self.command(router, "nft").args(["-f", "-"]), &ruleset(nat))?;
        }
        if let Some(kbit) = impair.rate_kbit {
            self.set_rate(kbit)?;
        }
        if impair.needs_delayer() {
            for dev in ["ra", "rb"] {
                run(self.command(Host::Inet, "iptables").args(
                    format!(
                        "-t raw -A PREROUTING -i {dev} -j NFQUEUE --queue-num 0 --queue-bypass"
                    )
                    .split_whitespace(),
                ))?;
            }
            let mut cmd = self.command(Host::Inet, delayer);
            cmd.args([
                "--queue",
                "0",
                "--delay-us",
                &impair.one_way_delay.as_micros().to_string(),
                "--jitter-us",
                &impair.jitter.as_micros().to_string(),
                "--loss-permille",
                &impair.loss_permille.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
            let child = self.spawn(&mut cmd)?;
            // The delayer says "ready" on stderr once bound to the queue.
            let mut err = child
                .stderr
                .take()
                .ok_or_else(|| io::Error::other("no stderr"))?;
            let mut line = String::new();
            use std::io::BufRead;
            io::BufReader::new(&mut err).read_line(&mut line)?;
            if !line.starts_with("ready") {
                return Err(io::Error::other(format!("delayer failed: {line}")));
            }
            std::thread::spawn(move || io::copy(&mut err, &mut io::sink()));
        }
        Ok(())
    }

    /// Cuts (or restores) the internet between the two home routers, leaving both able to
    /// reach the relay: the direct path dies, the relayed one lives.
    pub fn cut_direct(&self, cut: bool) -> io::Result<()> {
        let rules = if cut {
            "table ip cut {
  chain forward_cut {
    type filter hook forward priority -10; policy accept;
    ip saddr 203.0.113.0/28 ip daddr 203.0.113.16/28 drop
    ip saddr 203.0.113.16/28 ip daddr 203.0.113.0/28 drop
  }
}
"
        } else {
            "delete table ip cut\n"
        };
        run_stdin(self.command(Host::Inet, "nft").args(["-f", "-"]), rules)
    }

    /// Cuts (or restores) every path of peer A: router A loses the internet, the relay
    /// included (a network outage on A's side).
    pub fn cut_a(&self, cut: bool) -> io::Result<()> {
        let rules = if cut {
            "table ip cut_a {
  chain forward_cut {
    type filter hook forward priority -10; policy accept;
    ip saddr 203.0.113.0/28 drop
    ip daddr 203.0.113.0/28 drop
  }
}
"
        } else {
            "delete table ip cut_a\n"
        };
        run_stdin(self.command(Host::Inet, "nft").args(["-f", "-"]), rules)
    }

    /// The UDP NAT mappings router `h` holds now (`conntrack -L -p udp`), for diagnostics.
    pub fn conntrack(&self, h: Host) -> String {
        self.command(h, "conntrack")
            .args(["-L", "-p", "udp"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

/// The nftables ruleset of a home router.
fn ruleset(nat: Nat) -> String {
    let masq = match nat {
        Nat::Public => "",
        Nat::Cone | Nat::UdpBlocked => "oifname \"wan\" masquerade",
        Nat::Symmetric => "oifname \"wan\" masquerade random",
    };
    let udp = if nat == Nat::UdpBlocked {
        "meta l4proto udp drop"
    } else {
        ""
    };
    let (input_policy, fwd_policy) = if nat == Nat::Public {
        ("accept", "accept")
    } else {
        ("drop", "drop")
    };
    format!(
        "table ip lab {{
  chain postrouting_nat {{
    type nat hook postrouting priority srcnat; policy accept;
    {masq}
  }}
  chain input_filter {{
    type filter hook input priority filter; policy {input_policy};
    ct state established,related accept
    iifname {{ \"lo\", \"lan\" }} accept
  }}
  chain forward_filter {{
    type filter hook forward priority filter; policy {fwd_policy};
    {udp}
    ct state established,related accept
    iifname \"lan\" oifname \"wan\" accept
  }}
}}
"
    )
}

impl Drop for Lab {
    fn drop(&mut self) {
        let names: Vec<String> = HOSTS.iter().map(|h| self.ns(*h)).collect();
        teardown(&mut self.children, &names, &self.dir);
    }
}

/// One host with several equal paths to itself: loopback plus two interfaces, each with an
/// IPv4 and an IPv6 address (`eth0`: 192.0.2.2/24 and fd00::2/64, `eth1`: 198.51.100.2/24
/// and fd01::2/64), as a laptop on a dual-stack LAN has. Peers on it see six candidate
/// addresses of equal RTT for each other. Nothing routes out of it. Dropping it kills its
/// programs and deletes the namespace.
#[derive(Debug)]
pub struct MultiHomed {
    name: String,
    children: Vec<Child>,
    /// Scratch directory for the programs' data (removed on drop).
    pub dir: PathBuf,
}

impl MultiHomed {
    /// The interfaces and their addresses.
    pub const INTERFACES: [(&'static str, &'static str, &'static str); 2] = [
        ("eth0", "192.0.2.2/24", "fd00::2/64"),
        ("eth1", "198.51.100.2/24", "fd01::2/64"),
    ];

    /// Builds the host.
    pub fn new() -> io::Result<MultiHomed> {
        let (name, dir) = scratch("p2m")?;
        let host = MultiHomed {
            name,
            children: Vec::new(),
            dir,
        };
        run(Command::new("ip").args(["netns", "add", &host.name]))?;
        let ip = |args: String| {
            run(Command::new("ip")
                .arg("-n")
                .arg(&host.name)
                .args(args.split_whitespace()))
        };
        ip("link set lo up".into())?;
        for (dev, v4, v6) in Self::INTERFACES {
            // A veth pair inside the namespace: the kernel has no dummy interfaces here.
            ip(format!("link add {dev} type veth peer name {dev}p"))?;
            ip(format!("addr add {v4} dev {dev}"))?;
            ip(format!("addr add {v6} dev {dev} nodad"))?;
            ip(format!("link set {dev} up"))?;
            ip(format!("link set {dev}p up"))?;
        }
        Ok(host)
    }

    /// The namespace's name.
    pub fn ns(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` on the host.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        exec_in(&self.name, program)
    }

    /// Starts `cmd` (from [`command`](Self::command)) and kills it when the host ends.
    pub fn spawn(&mut self, cmd: &mut Command) -> io::Result<&mut Child> {
        spawn_kept(&mut self.children, cmd)
    }
}

impl Drop for MultiHomed {
    fn drop(&mut self) {
        let names = [self.name.clone()];
        teardown(&mut self.children, &names, &self.dir);
    }
}

/// A unique name for a lab's namespaces (`tag`, this process, a counter) and its scratch
/// directory, created.
fn scratch(tag: &str) -> io::Result<(String, PathBuf)> {
    let n = LABS.fetch_add(1, Ordering::Relaxed);
    let name = format!("{tag}{}x{n}", std::process::id());
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir)?;
    Ok((name, dir))
}

/// Starts `cmd` and keeps it in `children` (killed on teardown).
fn spawn_kept<'a>(children: &'a mut Vec<Child>, cmd: &mut Command) -> io::Result<&'a mut Child> {
    children.push(cmd.spawn()?);
    let last = children.len() - 1;
    Ok(&mut children[last])
}

/// Kills `children` and anything else still running in `namespaces` (started by a test by
/// hand), deletes the namespaces and the scratch `dir`.
fn teardown(children: &mut [Child], namespaces: &[String], dir: &Path) {
    for c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    for ns in namespaces {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A command that runs `program` inside namespace `ns`.
fn exec_in(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.arg("netns").arg("exec").arg(ns).arg(program);
    c
}

/// Two hosts on one Ethernet segment and nothing else: no router, no relay, no way out
/// (LAN-only mode). Host 0 is 10.77.0.1/24 on `eth0`, host 1 is 10.77.0.2/24; multicast
/// (mDNS) works between them. Dropping it kills its programs and deletes its namespaces.
#[derive(Debug)]
pub struct LanPair {
    prefix: String,
    children: Vec<Child>,
    /// Scratch directory for the programs' data (removed on drop).
    pub dir: PathBuf,
}

impl LanPair {
    /// The address of host `i` (0 or 1).
    pub fn addr(i: usize) -> String {
        format!("10.77.0.{}", i + 1)
    }

    /// Builds the segment.
    pub fn new() -> io::Result<LanPair> {
        let (prefix, dir) = scratch("p2n")?;
        let pair = LanPair {
            prefix,
            children: Vec::new(),
            dir,
        };
        for i in 0..2 {
            run(Command::new("ip").args(["netns", "add"]).arg(pair.ns(i)))?;
        }
        run(Command::new("ip").args([
            "link",
            "add",
            "eth0",
            "netns",
            &pair.ns(0),
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &pair.ns(1),
        ]))?;
        for i in 0..2 {
            let ip = |args: String| {
                run(Command::new("ip")
                    .arg("-n")
                    .arg(pair.ns(i))
                    .args(args.split_whitespace()))
            };
            ip("link set lo up".into())?;
            ip(format!("addr add {}/24 dev eth0", Self::addr(i)))?;
            ip("link set eth0 up".into())?;
        }
        Ok(pair)
    }

    /// The namespace name of host `i`.
    pub fn ns(&self, i: usize) -> String {
        format!("{}-{i}", self.prefix)
    }

    /// A command that runs `program` on host `i`.
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        exec_in(&self.ns(i), program)
    }

    /// Starts `cmd` (from [`command`](Self::command)) and kills it when the pair ends.
    pub fn spawn(&mut self, cmd: &mut Command) -> io::Result<&mut Child> {
        spawn_kept(&mut self.children, cmd)
    }
}

impl Drop for LanPair {
    fn drop(&mut self) {
        let names = [self.ns(0), self.ns(1)];
        teardown(&mut self.children, &names, &self.dir);
    }
}
