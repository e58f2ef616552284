//! The p2pcall desktop app (eframe/egui).
//!
//! * [`bridge`]: the engine on a tokio runtime thread; commands in, events out.
//! * [`model`]: what the window shows, built from events only.
//! * [`ui`]: the window; renders the model, sends commands, never blocks.
#![forbid(unsafe_code)]

pub mod bridge;
mod link;

pub use link::start_daemon;
pub mod model;
pub mod ui;

use std::net::SocketAddr;

pub use bridge::{Bridge, BridgeConfig};
pub use p2pcall_core::settings::Dirs;
pub use ui::App;

/// Why the app could not run.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// No thread or async runtime for the engine.
    #[error("cannot start the engine thread: {0}")]
    Runtime(#[source] std::io::Error),
    /// The window could not be opened. (eframe's error as text: it is neither `Send` nor
    /// `Sync`, which this error must be to leave the window's start-up closure.)
    #[error(
        "cannot open the window: {0} (is there a display? run inside an X11 or Wayland session, or use the CLI commands)"
    )]
    Window(String),
}

/// Opens the window and runs until it is closed.
pub fn run(dirs: Dirs) -> Result<(), AppError> {
    let cfg = BridgeConfig {
        dirs,
        bind: SocketAddr::from(([0u16; 8], 0)),
        daemon_exe: std::env::current_exe().ok(),
    };
    let options = eframe::NativeOptions {
        viewport: eframe::egui::ViewportBuilder::default()
            .with_title("p2pcall")
            .with_inner_size([980.0, 680.0])
            .with_min_inner_size([520.0, 360.0])
            .with_drag_and_drop(true),
        ..Default::default()
    };
    eframe::run_native(
        "p2pcall",
        options,
        Box::new(move |cc| {
            let ctx = cc.egui_ctx.clone();
            let bridge = Bridge::start(cfg, move || ctx.request_repaint())?;
            Ok(Box::new(App::new(bridge)))
        }),
    )
    .map_err(|e| AppError::Window(e.to_string()))
}
