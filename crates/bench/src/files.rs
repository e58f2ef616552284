//! A folder tree peer to peer through the p2pcall engine (offer, accept, parallel streams,
//! per-chunk BLAKE3 verification, files moved into place) against raw quinn moving the same
//! number of bytes from memory to memory on one stream, in the same run on loopback.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use p2pcall_core::engine::EngineEvent;
use p2pcall_core::transfer::TransferEvent;
use p2pcall_transport::Identity;

/// Measured runs of the transfer.
const RUNS: usize = 3;

/// Writes the tree: one large file and `small` files of `small_kib` KiB in 16 folders,
/// filled with pseudo-random bytes (no zero chunks to skip).
fn make_tree(root: &Path, large_mib: u64, small: u64, small_kib: u64) -> Result<u64> {
    let mut xof = blake3::Hasher::new_derive_key("p2pcall bench tree v1").finalize_xof();
    let mut block = vec![0u8; 1 << 20];
    std::fs::create_dir_all(root)?;
    let mut total = 0;
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(root.join("large.bin"))?);
        for _ in 0..large_mib {
            xof.fill(&mut block);
            f.write_all(&block)?;
        }
        f.flush()?;
        total += large_mib << 20;
    }
    let mut small_buf = vec![0u8; (small_kib << 10) as usize];
    for i in 0..small {
        let dir = root.join(format!("dir{:02}", i % 16));
        std::fs::create_dir_all(&dir)?;
        xof.fill(&mut small_buf);
        std::fs::write(dir.join(format!("file{i:05}.dat")), &small_buf)?;
        total += small_kib << 10;
    }
    Ok(total)
}

/// Sends `root` from one engine to another on loopback; returns (seconds, files).
async fn p2pcall_send(root: &Path, dest: &Path) -> Result<(f64, u64, String)> {
    let mut cfg = p2pcall_relay::RelayConfig::new(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    cfg.packet_rate = 1e9;
    cfg.byte_rate = 1e12;
    let relay = p2pcall_relay::Relay::start(&Identity::generate()?, cfg).await?;
    let (alice, _ae) = p2pcall_demo::local_peer("alice", relay.udp_addr).await?;
    let (bob, mut be) = p2pcall_demo::local_peer("bob", relay.udp_addr).await?;
    alice.wait_relay(std::time::Duration::from_secs(5)).await?;
    bob.wait_relay(std::time::Duration::from_secs(5)).await?;
    // Alice's presence list must hold bob before she dials: a peer the relay does not list
    // is refused at once as offline (bob may register after alice's snapshot).
    let seen = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while !alice.online_peers().iter().any(|p| p.id == bob.id()) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    anyhow::ensure!(seen.is_ok(), "alice never saw bob online");
    let conn = alice.connect(bob.id()).await?;
    conn.wait_path(std::time::Duration::from_secs(5), |p| {
        matches!(p, p2pcall_core::Path::Direct(_))
    })
    .await
    .context("no direct path on loopback")?;
    let dest2 = dest.to_path_buf();
    let bob2 = bob.clone();
    let acceptor = tokio::spawn(async move {
        while let Some(e) = be.recv().await {
            match e {
                EngineEvent::Transfer(TransferEvent::Offered(o)) => {
                    bob2.accept_offer(o.peer, o.id, dest2.clone())?;
                }
                EngineEvent::Transfer(TransferEvent::Finished(s)) => return Ok(s),
                EngineEvent::Transfer(TransferEvent::Failed { reason, .. }) => bail!("{reason}"),
                _ => {}
            }
        }
        bail!("bob's engine stopped")
    });
    let t0 = Instant::now();
    let sent = alice.send_files(bob.id(), &[root.to_path_buf()]).await?;
    let secs = t0.elapsed().as_secs_f64();
    let got = acceptor.await??;
    if got.hashes != sent.hashes {
        bail!("the receiver's hashes differ from the sender's");
    }
    let path = format!("{:?}", conn.path());
    alice.shutdown().await;
    bob.shutdown().await;
    relay.shutdown().await;
    Ok((secs, sent.files, path))
}

/// Hash of every file under `dir` by relative path (to check the copy).
fn digest(dir: &Path) -> Result<Vec<(PathBuf, [u8; 32])>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((
                    p.strip_prefix(dir)?.to_path_buf(),
                    *blake3::hash(&std::fs::read(&p)?).as_bytes(),
                ));
            }
        }
    }
    out.sort();
    Ok(out)
}

pub fn run(large_mib: u64, small: u64, small_kib: u64, dir: Option<PathBuf>) -> Result<()> {
    let work = match &dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let root = work.path().join("tree");
    let total = make_tree(&root, large_mib, small, small_kib)?;
    rustix::fs::sync();
    let rt = crate::runtime(2)?;
    println!(
        "file-transfer: tree of {:.2} GiB: one {large_mib} MiB file and {small} files of {small_kib} KiB, loopback, in {}",
        total as f64 / (1u64 << 30) as f64,
        work.path().display()
    );
    let gib = total as f64 / f64::from(1u32 << 30);
    rt.block_on(async {
        let (c0, t0) = (cpu_secs(), Instant::now());
        let raw_mbit = crate::throughput::raw_quinn(total).await?;
        let raw = raw_mbit * 1e6 / 8.0 / 1e6;
        let (cpu, wall) = (cpu_secs() - c0, t0.elapsed().as_secs_f64());
        println!(
            "  raw quinn, one stream, memory to memory (baseline): {raw:>7.1} MB/s   CPU {:.2} s/GiB, {:.2} cores busy",
            cpu / gib,
            cpu / wall
        );
        // The filesystem's own cost of creating this tree: a local copy, same folder.
        rustix::fs::sync();
        let t0 = Instant::now();
        let st = std::process::Command::new("cp")
            .arg("-r")
            .arg(&root)
            .arg(work.path().join("cp-copy"))
            .status()?;
        let cp = total as f64 / t0.elapsed().as_secs_f64() / 1e6;
        if st.success() {
            println!("  cp -r, local copy on the same filesystem (baseline): {cp:>7.1} MB/s");
            std::fs::remove_dir_all(work.path().join("cp-copy"))?;
        }
        let ceiling = raw.min(if st.success() { cp } else { f64::INFINITY });
        let mut ratios = Vec::new();
        for run in 1..=RUNS {
            // Start each run with no dirty pages pending (not timed).
            rustix::fs::sync();
            let dest = work.path().join(format!("received{run}"));
            let c0 = cpu_secs();
            let (secs, files, path) = p2pcall_send(&root, &dest).await?;
            let cpu = cpu_secs() - c0;
            let mbs = total as f64 / secs / 1e6;
            println!(
                "  p2pcall send, run {run} ({files} files, {path}):  {mbs:>7.1} MB/s   ratio {:.2} to raw quinn, {:.2} to min(raw quinn, cp)   ({secs:.2} s, CPU {:.2} s/GiB, {:.2} cores busy)",
                mbs / raw,
                mbs / ceiling,
                cpu / gib,
                cpu / secs
            );
            ratios.push((mbs / raw, mbs / ceiling, mbs));
            if digest(&root)? != digest(&dest.join("tree"))? {
                bail!("the received tree differs");
            }
            std::fs::remove_dir_all(&dest)?;
        }
        ratios.sort_by(|a, b| a.2.total_cmp(&b.2));
        let (r, c, m) = ratios[ratios.len() / 2];
        println!("  median of {RUNS}: {m:.1} MB/s, ratio {r:.2} to raw quinn, {c:.2} to min(raw quinn, cp)");
        match which("rsync").zip(which("sshd")) {
            Some(_) => println!("  rsync over ssh: installed but not measured (needs an ssh login to localhost)"),
            None => println!("  rsync over ssh: not available on this machine (rsync/sshd not installed)"),
        }
        Ok(())
    })
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.exists())
}

/// CPU seconds (user + system) this process has used, from `/proc/self/stat`.
fn cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces, inside parentheses).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ')'.
    (ticks(11) + ticks(12)) / 100.0
}
