//! `nats-server` processes for tests: one alone, or a cluster of several routed to each
//! other, on free loopback ports; each killed when dropped (or on demand). Shared by the
//! relay, net and cli tests (`#[path]`-included).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback TCP port (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `nats-server` process, killed when dropped.
pub struct Nats {
    child: Child,
    /// Its client port.
    pub port: u16,
}

impl Nats {
    /// A server alone on `port`.
    pub fn start(port: u16) -> Self {
        Self::spawn(port, &[])
    }

    fn spawn(port: u16, extra: &[String]) -> Self {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (scripts/setup.sh --dev installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Several `nats-server`s routed into one cluster.
pub struct NatsCluster {
    /// The nodes (`None`: killed).
    pub nodes: Vec<Option<Nats>>,
}

impl NatsCluster {
    /// `n` nodes, each routed to every other, once they have formed the cluster.
    pub fn start(n: usize) -> Self {
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let all_routes = routes
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = (0..n)
            .map(|i| {
                let extra = [
                    "--cluster_name".to_string(),
                    "p2pcall-test".to_string(),
                    "--cluster".to_string(),
                    format!("nats://127.0.0.1:{}", routes[i]),
                    "--routes".to_string(),
                    all_routes.clone(),
                ];
                Some(Nats::spawn(free_port(), &extra))
            })
            .collect();
        let c = Self { nodes };
        // Routes form within a moment; a message published before may miss a node.
        std::thread::sleep(Duration::from_millis(1500));
        c
    }

    /// Every node's URL, starting with node `first` (a client connects to the first it
    /// reaches, and knows the others to move to).
    pub fn urls_from(&self, first: usize) -> Vec<String> {
        let n = self.nodes.len();
        (0..n)
            .filter_map(|i| self.nodes[(first + i) % n].as_ref().map(Nats::url))
            .collect()
    }

    /// Kills node `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i] = None;
    }
}
