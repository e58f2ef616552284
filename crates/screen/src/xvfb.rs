//! A private virtual X server (Xvfb) for tests and measurements: started on a display number
//! the server picks itself (`-displayfd`, so parallel tests never collide), stopped on drop.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running Xvfb, killed when dropped.
#[derive(Debug)]
pub struct Xvfb {
    child: Child,
    number: u32,
    display: String,
}

impl Xvfb {
    /// Starts `Xvfb -screen 0 WxHx24 -nolisten tcp` and waits until it accepts connections.
    /// `Ok(None)` when the `Xvfb` binary is not installed (`apt-get install xvfb`).
    pub fn start(width: u32, height: u32) -> std::io::Result<Option<Xvfb>> {
        let spawned = Command::new("Xvfb")
            .args(["-displayfd", "1", "-screen", "0"])
            .arg(format!("{width}x{height}x24"))
            .args(["-nolisten", "tcp", "-noreset"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let failed = |child: &mut Child, why: String| {
            let _ = child.kill();
            let _ = child.wait();
            std::io::Error::other(why)
        };
        // The server writes its display number on that fd once it is ready.
        let Some(stdout) = child.stdout.take() else {
            return Err(failed(&mut child, "Xvfb: no stdout".to_owned()));
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => return Err(failed(&mut child, "Xvfb did not start in 20 s".to_owned())),
        };
        let Ok(number) = line.trim().parse::<u32>() else {
            return Err(failed(
                &mut child,
                format!("Xvfb exited or printed no display number ({line:?})"),
            ));
        };
        let socket = PathBuf::from(format!("/tmp/.X11-unix/X{number}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if Instant::now() > deadline {
                return Err(failed(
                    &mut child,
                    format!("no socket {}", socket.display()),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Some(Xvfb {
            child,
            number,
            display: format!(":{number}"),
        }))
    }

    /// The display name, `:N`.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// The display number.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// The server's process id (to read its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
