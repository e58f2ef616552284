//! Renders the real app window during a call and saves it as a PNG:
//! `scripts/screenshot.sh [OUT.png]` (starts Xvfb and runs this with software GL).
//!
//! In-process: a relay, a second peer "bob" (test pattern + tone), and the app as "Ada" with
//! synthetic media. Bob writes, then calls; the app answers as a user would (the dialog's
//! Accept), and once both pictures and a few seconds of statistics are on screen the window
//! takes its own screenshot. With `--invite` after the file name: the invitation window (our
//! ticket and its QR code) instead of the call; with `--group`: bob adds carol (silent) to
//! the call, and the shot shows the group call's grid with bob speaking.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a tool: a failed step ends it loudly

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use eframe::egui;
use p2pcall_app::model::CallPhase;
use p2pcall_app::{App, Bridge, BridgeConfig, Dirs};
use p2pcall_core::call::CallOptions;
use p2pcall_core::engine::EngineHandle;
use p2pcall_core::settings::Settings;

struct Shot {
    app: App,
    rt: tokio::runtime::Runtime,
    bob: EngineHandle,
    out: PathBuf,
    called: bool,
    asked: bool,
    done: std::sync::mpsc::Sender<()>,
    done_rx: std::sync::mpsc::Receiver<()>,
    start: Instant,
    /// Show the invitation window instead of a call.
    invite: bool,
    /// A third participant bob adds once the call runs (`--group`).
    carol: Option<EngineHandle>,
    added: bool,
    _keep: (p2pcall_relay::Relay, tempfile::TempDir),
}

impl eframe::App for Shot {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.app.show(ui);
        let ctx = ui.ctx().clone();
        ctx.request_repaint_after(Duration::from_millis(50));
        assert!(
            self.start.elapsed() < Duration::from_secs(90),
            "no call picture within 90 s"
        );
        let m = &self.app.model;
        if self.invite {
            if !self.called && m.me.is_some() && m.peers("").iter().any(|p| p.id == self.bob.id()) {
                self.app.open_invite();
                self.called = true;
            }
            let shown = matches!(self.app.model.ticket, Some(Ok(_)));
            self.shoot(&ctx, shown && self.start.elapsed() > Duration::from_secs(2));
            return;
        }
        if !self.called
            && let Some((ada, _)) = &m.me
            && m.peers("").iter().any(|p| p.id == self.bob.id())
        {
            let (bob, ada) = (self.bob.clone(), *ada);
            self.rt.spawn(async move {
                bob.send_message(ada, "Hi Ada! Calling you now, the build finished.")
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(300)).await;
                bob.call(ada, CallOptions::default()).await.unwrap();
            });
            self.called = true;
        }
        let stats = m.call.as_ref().map_or(0, |c| c.history.len());
        if m.call
            .as_ref()
            .is_some_and(|c| matches!(c.phase, CallPhase::Incoming { .. }))
        {
            self.app.answer();
        }
        if let Some(carol) = &self.carol
            && stats >= 2
            && !self.added
        {
            let (bob, carol) = (self.bob.clone(), carol.id());
            self.rt
                .spawn(async move { bob.add_to_call(carol).await.unwrap() });
            self.added = true;
        }
        let group = (self.app.model.call.as_ref())
            .is_some_and(|c| c.participants.len() == 2 && c.speaker.is_some());
        let ready =
            self.app.shows_video() == (true, true) && stats >= 4 && (self.carol.is_none() || group);
        self.shoot(&ctx, ready);
    }
}

impl Shot {
    /// Once `ready`, takes the screenshot, saves it, and closes the window.
    fn shoot(&mut self, ctx: &egui::Context, ready: bool) {
        if ready && !self.asked {
            let (out, tx) = (self.out.clone(), self.done.clone());
            let wake = ctx.clone();
            ctx.send_viewport_cmd(egui::ViewportCommand::Screenshot(
                egui::ScreenshotCallback::new(move |img| {
                    save(&out, &img);
                    println!("saved {} ({}x{})", out.display(), img.size[0], img.size[1]);
                    let _ = tx.send(());
                    wake.request_repaint();
                }),
            ));
            self.asked = true;
        }
        if self.done_rx.try_recv().is_ok() {
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        }
    }
}

fn save(path: &PathBuf, img: &egui::ColorImage) {
    let file = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(
        std::io::BufWriter::new(file),
        img.size[0] as u32,
        img.size[1] as u32,
    );
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    let data: Vec<u8> = img.pixels.iter().flat_map(|p| p.to_array()).collect();
    enc.write_header().unwrap().write_image_data(&data).unwrap();
}

fn main() {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "p2pcall-call.png".into()),
    );
    let invite = std::env::args().any(|a| a == "--invite");
    let group = std::env::args().any(|a| a == "--group");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let relay = rt.block_on(p2pcall_demo::local_relay()).unwrap();
    let addr = relay.udp_addr;
    let (bob, mut events) = rt.block_on(p2pcall_demo::local_peer("bob", addr)).unwrap();
    rt.spawn(async move { while events.recv().await.is_some() {} });
    let carol = group.then(|| {
        let (carol, mut events) = rt
            .block_on(p2pcall_demo::local_peer("carol", addr))
            .unwrap();
        let c = carol.clone();
        rt.spawn(async move {
            while let Some(e) = events.recv().await {
                if let p2pcall_core::engine::EngineEvent::Call(
                    p2pcall_core::call::CallEvent::Incoming { call, .. },
                ) = e
                {
                    let silent = CallOptions {
                        audio: p2pcall_core::call::AudioSource::None,
                        ..CallOptions::default()
                    };
                    let _ = c.answer(call, silent).await;
                }
            }
        });
        carol
    });
    let dir = tempfile::tempdir().unwrap();
    let dirs = Dirs::resolve(Some(dir.path())).unwrap();
    Settings {
        name: Some("Ada".into()),
        relay: Some(addr.to_string()),
        port_mapping: Some(false),
        video: Some("testsrc".into()),
        audio: Some("tone".into()),
        speaker: Some("off".into()),
        // Xvfb has no window manager, so the window never has focus; no desktop to notify.
        notifications: Some(false),
        ..Settings::default()
    }
    .save(&dirs.settings)
    .unwrap();
    let (done, done_rx) = std::sync::mpsc::channel();
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("p2pcall")
            .with_inner_size([1100.0, 760.0]),
        ..Default::default()
    };
    eframe::run_native(
        "p2pcall screenshot",
        options,
        Box::new(move |cc| {
            let ctx = cc.egui_ctx.clone();
            let bridge = Bridge::start(
                BridgeConfig {
                    dirs,
                    bind: SocketAddr::from(([127, 0, 0, 1], 0)),
                    daemon_exe: None,
                },
                move || ctx.request_repaint(),
            )?;
            Ok(Box::new(Shot {
                app: App::new(bridge),
                rt,
                bob,
                out,
                called: false,
                asked: false,
                done,
                done_rx,
                start: Instant::now(),
                invite,
                carol,
                added: false,
                _keep: (relay, dir),
            }))
        }),
    )
    .unwrap();
}
