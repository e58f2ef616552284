//! The window: first run, the peer list, a conversation with its files, toasts. It renders
//! the [`Model`] and turns clicks into [`UiCmd`]s; it never waits on the engine.

mod grid;
mod invite;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use eframe::egui::{self, Color32, RichText};
use p2pcall_core::settings::Settings;
use p2pcall_core::{MessageState, PeerId};

use crate::bridge::{Bridge, Network, Status, UiCmd};
use crate::model::{CallPhase, CallView, Devices, Model, Sample, bytes};

/// The first run's choice of how to find peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// A relay server somewhere.
    Relay,
    /// A relay hosted by this app.
    Host,
    /// No relay: mDNS on the local network.
    Lan,
}

/// First-run answers being typed.
#[derive(Debug, Clone)]
pub struct SetupForm {
    /// Display name.
    pub name: String,
    /// How to find peers.
    pub reach: Reach,
    /// Relay address, `HOST[:PORT]`.
    pub relay: String,
    /// Where a hosted relay listens.
    pub listen: String,
}

impl Default for SetupForm {
    fn default() -> Self {
        Self {
            name: std::env::var("USER").unwrap_or_default(),
            reach: Reach::Relay,
            relay: String::new(),
            listen: "0.0.0.0:7700".into(),
        }
    }
}

/// The app: a bridge to the engine, the model built from its events, and what is being
/// typed.
pub struct App {
    bridge: Bridge,
    /// What is shown.
    pub model: Model,
    setup: SetupForm,
    search: String,
    drafts: HashMap<PeerId, String>,
    attach: String,
    /// The peer whose history was last asked for.
    opened: Option<PeerId>,
    /// Call pictures as textures, and the frame count they show.
    remote: std::collections::BTreeMap<PeerId, (egui::TextureHandle, u64)>,
    local: Option<(egui::TextureHandle, u64)>,
    /// The safety-number dialog is open for this peer.
    verifying: Option<PeerId>,
    /// The settings being edited (the window is open).
    editing: Option<p2pcall_core::settings::Settings>,
    /// The invitation window.
    invite: invite::InviteForm,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl App {
    /// An app on a running bridge.
    pub fn new(bridge: Bridge) -> Self {
        Self {
            bridge,
            model: Model::default(),
            setup: SetupForm::default(),
            search: String::new(),
            drafts: HashMap::new(),
            attach: String::new(),
            opened: None,
            remote: std::collections::BTreeMap::new(),
            local: None,
            verifying: None,
            editing: None,
            invite: invite::InviteForm::default(),
        }
    }

    /// Takes what the engine sent.
    /// Returns whether the settings changed.
    pub fn pump(&mut self, now: Instant) -> bool {
        let mut settings = false;
        for e in self.bridge.poll() {
            settings |= matches!(e, crate::bridge::AppEvent::Settings(_));
            // A message into the open conversation is read as it arrives.
            if let crate::bridge::AppEvent::Message(m) = &e
                && !m.outgoing
                && self.model.selected == Some(m.peer)
            {
                self.bridge.send(UiCmd::MarkRead(m.peer));
            }
            self.model.apply(now, e);
        }
        self.model.expire(now);
        settings
    }

    /// Draws the whole window into `ui` (what the frame calls each time).
    pub fn show(&mut self, ui: &mut egui::Ui) {
        let now = Instant::now();
        let settings_changed = self.pump(now);
        let ctx = ui.ctx().clone();
        // While the window is not focused, what happened goes to the desktop too (the
        // toasts are in the model either way).
        let focused = ctx.input(|i| i.focused);
        let wanted = self.model.settings.notifications != Some(false);
        for (title, body) in std::mem::take(&mut self.model.notify) {
            if !focused && wanted {
                self.bridge.send(UiCmd::Notify { title, body });
            }
        }
        if settings_changed {
            ctx.set_theme(match self.model.settings.theme.as_deref() {
                Some("dark") => egui::ThemePreference::Dark,
                Some("light") => egui::ThemePreference::Light,
                _ => egui::ThemePreference::System,
            });
        }
        // First run, or a first start that failed (a relay that does not resolve, a port
        // taken): the form again, with what went wrong.
        let failed_start =
            matches!(self.model.status, Status::Failed(_)) && self.model.me.is_none();
        if self.model.status == Status::NeedsSetup || failed_start {
            egui::CentralPanel::default().show(ui, |ui| {
                if let Status::Failed(why) = &self.model.status {
                    ui.colored_label(Color32::from_rgb(230, 80, 80), why.clone());
                }
                self.first_run(ui);
            });
            self.toasts(&ctx);
            return;
        }
        self.textures(&ctx);
        self.incoming(&ctx);
        self.verify_dialog(&ctx);
        self.settings_window(&ctx);
        self.invite_window(&ctx);
        self.top_bar(ui);
        egui::Panel::left("peers")
            .resizable(true)
            .default_size(260.0)
            .show(ui, |ui| self.peer_list(ui));
        egui::CentralPanel::default().show(ui, |ui| {
            self.call_panel(ui);
            self.conversation(ui);
        });
        if self.model.call.is_some() {
            ctx.request_repaint_after(Duration::from_millis(500)); // the call timer
        }
        if !focused {
            self.mini_window(&ctx);
        }
        self.toasts(&ctx);
        // Toasts expire, progress moves: look again soon even without events.
        let moving = self.model.transfers.iter().any(|t| t.outcome.is_none());
        if !self.model.toasts.is_empty() || moving {
            ctx.request_repaint_after(Duration::from_millis(250));
        }
        // Files dropped on the window go to the open conversation.
        let dropped: Vec<PathBuf> = ctx.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        });
        if !dropped.is_empty() {
            match self.model.selected {
                Some(peer) => self.bridge.send(UiCmd::SendFiles {
                    peer,
                    paths: dropped,
                }),
                None => self.model.apply(
                    now,
                    crate::bridge::AppEvent::Error("pick a peer to send files to first".into()),
                ),
            }
        }
    }

    fn first_run(&mut self, ui: &mut egui::Ui) {
        ui.vertical_centered(|ui| {
            ui.add_space(40.0);
            ui.heading("Welcome to p2pcall");
            ui.label("End-to-end encrypted calls, chat and files, peer to peer.");
            ui.add_space(20.0);
        });
        egui::Grid::new("setup")
            .num_columns(2)
            .spacing([12.0, 10.0])
            .show(ui, |ui| {
                let l = ui.label("Your name");
                ui.add(
                    egui::TextEdit::singleline(&mut self.setup.name).hint_text("shown to others"),
                )
                .labelled_by(l.id);
                ui.end_row();
                ui.label("Find peers through");
                ui.vertical(|ui| {
                    let r = &mut self.setup.reach;
                    ui.radio_value(r, Reach::Relay, "A relay server");
                    ui.radio_value(r, Reach::Host, "A relay hosted on this machine");
                    ui.radio_value(r, Reach::Lan, "LAN only")
                        .on_hover_text("no relay at all: apps on this network find each other by mDNS");
                });
                ui.end_row();
                match self.setup.reach {
                    Reach::Host => {
                        let l = ui.label("Listen on");
                        ui.add(egui::TextEdit::singleline(&mut self.setup.listen))
                            .labelled_by(l.id);
                    }
                    Reach::Relay => {
                        let l = ui.label("Relay address");
                        ui.add(
                            egui::TextEdit::singleline(&mut self.setup.relay)
                                .hint_text("relay.example.org or 192.0.2.7:7700"),
                        )
                        .labelled_by(l.id);
                    }
                    Reach::Lan => {
                        ui.label("");
                        ui.weak("Peers running p2pcall on this network appear by themselves. Calls, chat and files stay end-to-end encrypted.");
                    }
                }
                ui.end_row();
            });
        ui.add_space(10.0);
        let ready = !self.setup.name.trim().is_empty()
            && (self.setup.reach != Reach::Relay || !self.setup.relay.trim().is_empty());
        if ui.add_enabled(ready, egui::Button::new("Start")).clicked() {
            let network = match self.setup.reach {
                Reach::Host => Network::HostRelay(self.setup.listen.clone()),
                Reach::Relay => Network::Relay(self.setup.relay.clone()),
                Reach::Lan => Network::Lan,
            };
            self.model.status = Status::Connecting("starting".into());
            self.bridge.send(UiCmd::Setup {
                name: self.setup.name.clone(),
                network,
            });
        }
        ui.small("A new identity (an Ed25519 key) is created in this computer's data folder.");
    }

    fn top_bar(&mut self, ui: &mut egui::Ui) {
        egui::Panel::top("top").show(ui, |ui| {
            ui.horizontal(|ui| {
                if let Some((me, name)) = &self.model.me {
                    ui.strong(name);
                    ui.monospace(me.fingerprint().to_string())
                        .on_hover_text("your fingerprint: peers compare it to know it is you");
                }
                ui.separator();
                let (color, text) = match &self.model.status {
                    Status::Online(t) => (
                        Color32::GREEN,
                        match t {
                            p2pcall_net::RelayTransport::Udp => "online".to_string(),
                            p2pcall_net::RelayTransport::Tcp => {
                                "online (TCP fallback: UDP to the relay is blocked)".to_string()
                            }
                        },
                    ),
                    Status::OnLan => (Color32::GREEN, "on the LAN (no relay)".to_string()),
                    Status::Connecting(why) => (Color32::YELLOW, format!("connecting: {why}")),
                    Status::Failed(why) => (Color32::RED, why.clone()),
                    Status::NeedsSetup => (Color32::GRAY, "not set up".into()),
                    Status::DaemonStopped => (
                        Color32::RED,
                        "the p2pcall daemon stopped: this window shows nothing new".into(),
                    ),
                };
                dot(ui, color);
                ui.label(text);
                if self.model.status == Status::DaemonStopped {
                    if ui.button("Restart the daemon").clicked() {
                        self.model.status = Status::Connecting("restarting the daemon".into());
                        self.bridge.send(UiCmd::RestartDaemon);
                    }
                } else if let Some(pid) = self.model.daemon {
                    ui.weak("via the daemon").on_hover_text(format!(
                        "this window shows the engine of `p2pcall daemon` (pid {pid}): it stays \
                         online when the window closes"
                    ));
                }
                if let Some(a) = self.model.hosting {
                    ui.separator();
                    ui.label(format!("hosting a relay on port {}", a.port()))
                        .on_hover_text(
                            "others set this machine's address and this port as their relay \
                         (UDP, and TCP for networks that block UDP)",
                        );
                }
                ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                    if ui.button("Settings").clicked() {
                        self.editing = Some(self.model.settings.clone());
                        self.bridge.send(UiCmd::ListScreens); // devices for the pickers
                    }
                    if ui
                        .button("Invite / add")
                        .on_hover_text("your ticket to give, and a place to paste someone's")
                        .clicked()
                    {
                        self.open_invite();
                    }
                });
            });
        });
    }

    fn peer_list(&mut self, ui: &mut egui::Ui) {
        ui.add_space(4.0);
        let l = ui.label("Search");
        ui.add(egui::TextEdit::singleline(&mut self.search).hint_text("name or fingerprint"))
            .labelled_by(l.id);
        ui.separator();
        let rows = self.model.peers(&self.search);
        if rows.is_empty() {
            ui.weak(if self.model.status == Status::OnLan {
                "Nobody here yet. Peers appear when they run p2pcall on this network."
            } else {
                "Nobody here yet. Peers appear when they are online on the same relay."
            });
        }
        egui::ScrollArea::vertical().show(ui, |ui| {
            for r in rows {
                let selected = self.model.selected == Some(r.id);
                let mut text = RichText::new(&r.name);
                if !r.online {
                    text = text.weak();
                }
                let resp = ui
                    .horizontal(|ui| {
                        dot(
                            ui,
                            if r.online {
                                Color32::GREEN
                            } else {
                                Color32::GRAY
                            },
                        );
                        let b = ui.selectable_label(selected, text);
                        if r.request {
                            ui.label(
                                RichText::new("REQUEST")
                                    .small()
                                    .strong()
                                    .color(Color32::from_rgb(230, 160, 30)),
                            )
                            .on_hover_text("not a contact: open to accept or delete");
                        }
                        if let Some(a) = &r.announced {
                            ui.weak(RichText::new(format!("“{a}”")).small())
                                .on_hover_text("the name this contact announces; yours stays");
                        }
                        if r.verified {
                            ui.label(RichText::new("verified").small().color(Color32::GREEN))
                                .on_hover_text("you compared safety numbers with this key");
                        }
                        if r.lookalike.is_some() {
                            ui.label(
                                RichText::new("NEW KEY?")
                                    .small()
                                    .strong()
                                    .color(Color32::RED),
                            )
                            .on_hover_text(
                                "goes by the name of a peer you verified, with another key",
                            );
                        }
                        if r.unread > 0 {
                            ui.label(
                                RichText::new(format!(" {} ", r.unread))
                                    .color(Color32::WHITE)
                                    .background_color(Color32::from_rgb(200, 40, 40)),
                            );
                        }
                        b
                    })
                    .inner;
                let fp = r.id.fingerprint().to_string();
                ui.weak(RichText::new(&fp[..14]).monospace().small());
                if resp.clicked() {
                    self.model.select(r.id);
                }
            }
        });
    }

    fn conversation(&mut self, ui: &mut egui::Ui) {
        let Some(peer) = self.model.selected else {
            ui.centered_and_justified(|ui| ui.weak("Pick a peer on the left to talk to them."));
            return;
        };
        if self.opened != Some(peer) {
            self.opened = Some(peer);
            self.bridge.send(UiCmd::Open(peer));
        }
        let online = self.model.is_online(&peer);
        self.conversation_header(ui, peer, online);
        ui.separator();
        self.offers_and_transfers(ui, peer);
        // The composer at the bottom, the history above it.
        self.composer(ui, peer, online);
        self.history(ui, peer);
    }

    /// Name, presence, call button, fingerprint and verification, and the warning when the
    /// name belongs to a verified contact with another key.
    fn conversation_header(&mut self, ui: &mut egui::Ui, peer: PeerId, online: bool) {
        let name = self.model.name_of(&peer);
        ui.horizontal(|ui| {
            ui.heading(&name);
            ui.weak(if online { "online" } else { "offline" });
            if self.model.call.is_none()
                && ui
                    .add_enabled(online, egui::Button::new("Call"))
                    .on_disabled_hover_text("they are offline")
                    .clicked()
            {
                self.model.calling(peer);
                self.bridge.send(UiCmd::Call(peer));
            }
        });
        ui.horizontal(|ui| {
            ui.monospace(peer.fingerprint().to_string());
            let verified = self.model.is_verified(&peer);
            if verified {
                ui.label(RichText::new("verified").color(Color32::GREEN));
            }
            if ui
                .button(if verified { "Safety number" } else { "Verify" })
                .clicked()
            {
                self.verifying = Some(peer);
            }
        });
        if self.model.requests.contains_key(&peer) {
            egui::Frame::new()
                .fill(Color32::from_rgb(90, 70, 10))
                .inner_margin(8.0)
                .show(ui, |ui| {
                    ui.label(
                        RichText::new(format!(
                            "{name} is not your contact: this is a message request. They do \
                             not know whether you read it. Accept to make them a contact, or \
                             delete their messages."
                        ))
                        .color(Color32::WHITE),
                    );
                    ui.horizontal(|ui| {
                        if ui.button("Accept request").clicked() {
                            self.bridge.send(UiCmd::AcceptRequest(peer));
                        }
                        if ui.button("Delete request").clicked() {
                            self.bridge.send(UiCmd::DeleteRequest(peer));
                        }
                    });
                });
        }
        if let Some(real) = self.model.lookalike(&peer) {
            egui::Frame::new()
                .fill(Color32::from_rgb(120, 20, 20))
                .inner_margin(8.0)
                .show(ui, |ui| {
                    ui.label(
                        RichText::new(format!(
                            "Warning: this is not the {real} you verified. It uses the same \
                             name with a different key: {real} may have reinstalled, or \
                             someone may be posing as them. Compare safety numbers before \
                             you trust it."
                        ))
                        .color(Color32::WHITE)
                        .strong(),
                    );
                });
        }
    }

    /// The message line and the file offer line.
    fn composer(&mut self, ui: &mut egui::Ui, peer: PeerId, online: bool) {
        egui::Panel::bottom("composer").show(ui, |ui| {
            ui.add_space(4.0);
            ui.horizontal(|ui| {
                let draft = self.drafts.entry(peer).or_default();
                let l = ui.label("Message");
                let edit = ui.add(
                    egui::TextEdit::singleline(draft)
                        .hint_text(if online {
                            "type a message"
                        } else {
                            "type a message (delivered when they are back)"
                        })
                        .desired_width(ui.available_width() - 70.0),
                );
                let edit = edit.labelled_by(l.id);
                let enter = edit.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
                if (ui.button("Send").clicked() || enter) && !draft.trim().is_empty() {
                    let text = std::mem::take(draft);
                    self.bridge.send(UiCmd::Send { peer, text });
                    edit.request_focus();
                }
            });
            ui.horizontal(|ui| {
                let l = ui.label("Files");
                ui.add(
                    egui::TextEdit::singleline(&mut self.attach)
                        .hint_text("paths to send, ; between them (or drop files on the window)")
                        .desired_width(ui.available_width() - 190.0),
                )
                .labelled_by(l.id);
                if ui.button("Files…").clicked() {
                    self.bridge.send(UiCmd::PickFiles {
                        peer,
                        folders: false,
                    });
                }
                if ui.button("Folder…").clicked() {
                    self.bridge.send(UiCmd::PickFiles {
                        peer,
                        folders: true,
                    });
                }
                if ui.button("Offer").clicked() && !self.attach.trim().is_empty() {
                    let paths = self
                        .attach
                        .split(';')
                        .map(|p| PathBuf::from(p.trim()))
                        .filter(|p| !p.as_os_str().is_empty())
                        .collect();
                    self.attach.clear();
                    self.bridge.send(UiCmd::SendFiles { peer, paths });
                }
            });
        });
    }

    /// The conversation's messages, newest at the bottom, with "Load older" at the top.
    fn history(&mut self, ui: &mut egui::Ui, peer: PeerId) {
        // Borrowed, not copied, while it is drawn (it can hold thousands of messages and a
        // call repaints at its frame rate); a click on "Load older" is applied afterwards.
        let empty = crate::model::Conversation::default();
        let conv = self.model.conversations.get(&peer).unwrap_or(&empty);
        let mut older_than = None;
        egui::ScrollArea::vertical()
            .stick_to_bottom(true)
            .auto_shrink([false, false])
            .show(ui, |ui| {
                if conv.more {
                    let older = ui.add_enabled(!conv.loading, egui::Button::new("Load older"));
                    if older.clicked() {
                        older_than = conv.messages.first().map(|m| m.rowid);
                    }
                }
                for m in &conv.messages {
                    let layout = if m.outgoing {
                        egui::Layout::right_to_left(egui::Align::TOP)
                    } else {
                        egui::Layout::left_to_right(egui::Align::TOP)
                    };
                    ui.with_layout(layout, |ui| {
                        let fill = if m.outgoing {
                            Color32::from_rgb(40, 80, 140)
                        } else {
                            ui.visuals().faint_bg_color
                        };
                        egui::Frame::new()
                            .fill(fill)
                            .corner_radius(6.0)
                            .inner_margin(6.0)
                            .show(ui, |ui| {
                                ui.set_max_width(ui.available_width() * 0.7);
                                ui.label(&m.text);
                                let mut meta = clock(m.sent_ms);
                                if m.outgoing {
                                    meta.push_str("  ");
                                    meta.push_str(state_mark(m.state));
                                }
                                ui.small(meta).on_hover_text(state_text(m.state));
                            });
                    });
                }
            });
        if let Some(before) = older_than {
            if let Some(c) = self.model.conversations.get_mut(&peer) {
                c.loading = true;
            }
            self.bridge.send(UiCmd::Older { peer, before });
        }
    }

    fn offers_and_transfers(&mut self, ui: &mut egui::Ui, peer: PeerId) {
        let offers: Vec<_> = self
            .model
            .offers
            .iter()
            .filter(|o| o.peer == peer)
            .cloned()
            .collect();
        for o in offers {
            egui::Frame::group(ui.style()).show(ui, |ui| {
                ui.strong(format!(
                    "Offers {} file(s), {} folder(s), {}",
                    o.files,
                    o.dirs,
                    bytes(o.total_bytes)
                ));
                for (path, size) in o.sample.iter().take(8) {
                    ui.label(match size {
                        Some(s) => format!("{path}  ({})", bytes(*s)),
                        None => format!("{path}/"),
                    });
                }
                if let Some(d) = &self.model.downloads {
                    ui.weak(format!("into {}", d.display()));
                }
                ui.horizontal(|ui| {
                    if ui.button("Accept").clicked() {
                        self.bridge.send(UiCmd::Accept { peer, id: o.id });
                    }
                    if ui.button("Reject").clicked() {
                        self.bridge.send(UiCmd::Reject { peer, id: o.id });
                        self.model.offers.retain(|x| x.id != o.id);
                    }
                });
            });
        }
        let rows: Vec<_> = self
            .model
            .transfers
            .iter()
            .filter(|t| t.peer == peer)
            .cloned()
            .collect();
        for t in rows.iter().rev().take(4) {
            ui.horizontal(|ui| {
                let (done, total) = t
                    .progress
                    .as_ref()
                    .map_or((0, 0), |p| (p.done_bytes, p.total_bytes));
                let frac = if total == 0 {
                    0.0
                } else {
                    done as f32 / total as f32
                };
                let mut text = format!("{} / {}", bytes(done), bytes(total));
                if !t.label.is_empty() {
                    text = format!("{}: {text}", t.label);
                }
                if let Some(p) = &t.progress
                    && t.outcome.is_none()
                {
                    if let Some(r) = p.rate {
                        text.push_str(&format!("  {}/s", bytes(r as u64)));
                    }
                    if let Some(eta) = p.eta {
                        text.push_str(&format!("  {} s left", eta.as_secs()));
                    }
                }
                match &t.outcome {
                    None => {
                        ui.add(egui::ProgressBar::new(frac).text(text).desired_width(300.0));
                        if ui.button("Cancel").clicked() {
                            self.bridge.send(UiCmd::Cancel { peer, id: t.id });
                        }
                    }
                    Some(Ok(placed)) => {
                        ui.label(format!("done: {text}"));
                        let folder = placed
                            .first()
                            .and_then(|p| p.parent().map(|d| d.to_path_buf()))
                            .or_else(|| self.model.downloads.clone());
                        if let Some(dir) = folder
                            && !t.progress.as_ref().is_some_and(|p| p.outgoing)
                            && ui.button("Open folder").clicked()
                        {
                            // The desktop's file manager; not waited for.
                            let _ = std::process::Command::new("xdg-open").arg(dir).spawn();
                        }
                    }
                    Some(Err(why)) => {
                        ui.colored_label(Color32::RED, format!("stopped: {why}"));
                    }
                }
            });
        }
    }

    fn incoming(&mut self, ctx: &egui::Context) {
        let Some(c) = &self.model.call else { return };
        let CallPhase::Incoming { video, members } = &c.phase else {
            return;
        };
        let (id, peer, video) = (c.id, c.peer, *video);
        let who = self.model.name_of(&peer);
        let with: Vec<String> = members.iter().map(|m| self.model.name_of(m)).collect();
        egui::Modal::new(egui::Id::unique("incoming call")).show(ctx, |ui| {
            ui.heading(format!("{who} is calling"));
            ui.monospace(peer.fingerprint().to_string());
            ui.label(match (video, with.is_empty()) {
                (true, true) => "video call".to_string(),
                (false, true) => "voice call".to_string(),
                (true, false) => format!("group video call with {}", with.join(", ")),
                (false, false) => format!("group voice call with {}", with.join(", ")),
            });
            ui.horizontal(|ui| {
                if ui.button("Accept").clicked() {
                    self.answer();
                }
                if ui.button("Decline").clicked()
                    && let Some(id) = id
                {
                    self.model.call = None;
                    self.bridge.send(UiCmd::Decline(id));
                }
            });
        });
    }

    /// Answers the ringing call (what its Accept button does) and opens the caller's
    /// conversation.
    pub fn answer(&mut self) {
        let Some(c) = &mut self.model.call else {
            return;
        };
        let (CallPhase::Incoming { .. }, Some(id)) = (&c.phase, c.id) else {
            return;
        };
        c.phase = CallPhase::Active(Instant::now());
        let peer = c.peer;
        self.model.select(peer);
        self.bridge.send(UiCmd::Answer(id));
    }

    /// During a call, while the main window is in the background: a small always-on-top
    /// window with the remote picture and a hang-up button.
    fn mini_window(&mut self, ctx: &egui::Context) {
        let Some(c) = &self.model.call else { return };
        if !matches!(c.phase, CallPhase::Active(_)) {
            return;
        }
        let who = self.model.name_of(&self.spotlight(c).unwrap_or(c.peer));
        // As the grid: a participant whose camera is off shows no (frozen) picture.
        let camera_on = |p: &PeerId| (c.participants.iter()).all(|x| x.peer != *p || x.camera);
        let remote = (self.spotlight(c).filter(camera_on))
            .and_then(|p| self.remote.get(&p))
            .map(|(t, _)| (t.id(), t.size()));
        let builder = egui::ViewportBuilder::default()
            .with_title(format!("p2pcall: {who}"))
            .with_inner_size([320.0, 230.0])
            .with_window_level(egui::WindowLevel::AlwaysOnTop);
        let hang_up = ctx.show_viewport_immediate(
            egui::ViewportId::from_hash_of("mini call window"),
            builder,
            |ui, _class| {
                let mut hang_up = false;
                egui::CentralPanel::default().show(ui, |ui| {
                    ui.label(format!("In a call with {who}"));
                    let size = egui::vec2(ui.available_width(), ui.available_height() - 30.0);
                    match remote {
                        Some((id, [w, h])) => {
                            let scale = (size.x / w as f32).min(size.y / h as f32);
                            ui.image((id, egui::vec2(w as f32, h as f32) * scale));
                        }
                        None => {
                            ui.weak("no video from them");
                        }
                    }
                    hang_up = ui.button("Hang up (mini window)").clicked();
                });
                hang_up
            },
        );
        if hang_up {
            self.bridge.send(UiCmd::Hangup);
        }
    }

    fn settings_window(&mut self, ctx: &egui::Context) {
        let Some(mut s) = self.editing.take() else {
            return;
        };
        let mut open = true;
        let mut save = false;
        egui::Window::new("Settings")
            .collapsible(false)
            .open(&mut open)
            .show(ctx, |ui| {
                egui::Grid::new("settings")
                    .num_columns(2)
                    .spacing([12.0, 8.0])
                    .show(ui, |ui| {
                        setting_text(ui, "Name", &mut s.name, "shown to others");
                        let l = ui.label("Network");
                        let mut lan = s.lan_only == Some(true);
                        ui.checkbox(&mut lan, "LAN only: mDNS, no relay (from the next start)")
                            .labelled_by(l.id);
                        s.lan_only = lan.then_some(true);
                        ui.end_row();
                        if !lan {
                            setting_text(
                                ui,
                                "Relay",
                                &mut s.relay,
                                "HOST[:PORT] (used from the next start)",
                            );
                        }
                        media_settings(ui, &mut s, self.model.devices.as_ref());
                        ui.label("Files");
                        let mut auto = s.auto_accept_verified == Some(true);
                        ui.checkbox(&mut auto, "Accept files from verified peers without asking");
                        s.auto_accept_verified = Some(auto);
                        ui.end_row();
                        ui.label("Background");
                        let mut keep = s.keep_online == Some(true);
                        ui.checkbox(
                            &mut keep,
                            "Keep online after the window closes: a background p2pcall daemon \
                             runs this identity (from the next start; not with a hosted relay)",
                        );
                        s.keep_online = keep.then_some(true);
                        ui.end_row();
                        ui.label("Notifications");
                        let mut n = s.notifications != Some(false);
                        ui.checkbox(
                            &mut n,
                            "Desktop notifications while the window is in the background",
                        );
                        s.notifications = Some(n);
                        ui.end_row();
                        ui.label("Theme");
                        ui.horizontal(|ui| {
                            let mut t = s.theme.clone().unwrap_or_else(|| "system".into());
                            for v in ["system", "dark", "light"] {
                                ui.radio_value(&mut t, v.to_string(), v);
                            }
                            s.theme = Some(t);
                        });
                        ui.end_row();
                    });
                if let Some(d) = &self.model.downloads {
                    ui.weak(format!("Accepted files go to {}", d.display()));
                }
                let size_ok = s
                    .video_size
                    .as_deref()
                    .is_none_or(|v| crate::bridge::parse_size(v).is_some());
                if !size_ok {
                    ui.colored_label(Color32::RED, "video size: WIDTHxHEIGHT, e.g. 1280x720");
                }
                save = ui.add_enabled(size_ok, egui::Button::new("Save")).clicked();
            });
        if save {
            self.model.settings = s.clone();
            self.bridge.send(UiCmd::SaveSettings(Box::new(s)));
        } else if open {
            self.editing = Some(s);
        }
    }

    fn verify_dialog(&mut self, ctx: &egui::Context) {
        let (Some(peer), Some((me, _))) = (self.verifying, &self.model.me) else {
            return;
        };
        let number = p2pcall_core::SafetyNumber::new(me, &peer).to_string();
        let name = self.model.name_of(&peer);
        let verified = self.model.is_verified(&peer);
        let mut open = true;
        egui::Window::new(format!("Safety number with {name}"))
            .collapsible(false)
            .resizable(false)
            .open(&mut open)
            .show(ctx, |ui| {
                ui.label(
                    "Compare these digits with what their app shows, in person or on a call \
                     you recognise their voice on. If they match, nobody is in the middle.",
                );
                for line in number.split("  ") {
                    ui.label(RichText::new(line).monospace().size(20.0));
                }
                ui.label(format!("their fingerprint: {}", peer.fingerprint()));
                ui.horizontal(|ui| {
                    if !verified && ui.button("They match: mark as verified").clicked() {
                        self.bridge.send(UiCmd::Verify {
                            peer,
                            name: name.clone(),
                            verified: true,
                        });
                        self.verifying = None;
                    }
                    if verified && ui.button("Remove verification").clicked() {
                        self.bridge.send(UiCmd::Verify {
                            peer,
                            name: name.clone(),
                            verified: false,
                        });
                        self.verifying = None;
                    }
                });
            });
        if !open {
            self.verifying = None;
        }
    }

    fn call_panel(&mut self, ui: &mut egui::Ui) {
        let Some(c) = self.model.call.clone() else {
            return;
        };
        let who = (c.others().iter())
            .map(|p| self.model.name_of(p))
            .collect::<Vec<_>>()
            .join(", ");
        match c.phase {
            CallPhase::Incoming { .. } => return,
            CallPhase::Calling { ringing } => {
                ui.horizontal(|ui| {
                    ui.spinner();
                    ui.label(if ringing {
                        format!("Calling {who}: ringing")
                    } else {
                        format!("Calling {who}")
                    });
                    if ui.button("Hang up").clicked() {
                        self.bridge.send(UiCmd::Hangup);
                    }
                });
                ui.separator();
                return;
            }
            CallPhase::Active(_) => {}
        }
        let CallPhase::Active(since) = c.phase else {
            return;
        };
        let secs = since.elapsed().as_secs();
        ui.horizontal(|ui| {
            ui.strong(format!("In a call with {who}"));
            ui.monospace(format!("{:02}:{:02}", secs / 60, secs % 60));
            if let Some(st) = &c.stats {
                let loss = c.history.back().map_or(0.0, |s| s.loss_pct);
                let (color, quality) = if loss > 5.0 || st.rtt_ms > 300.0 {
                    (Color32::RED, "poor")
                } else if loss > 1.0 || st.rtt_ms > 150.0 {
                    (Color32::YELLOW, "fair")
                } else {
                    (Color32::GREEN, "good")
                };
                dot(ui, color);
                let path = if st.path.starts_with("direct") {
                    "direct"
                } else {
                    "relayed"
                };
                ui.label(format!("{quality}, {path}, RTT {:.0} ms", st.rtt_ms))
                    .on_hover_text(&st.path);
            }
        });
        self.call_video(ui, &c);
        self.call_controls(ui, &c);
        for n in &c.notes {
            ui.horizontal(|ui| {
                dot(ui, Color32::from_rgb(230, 160, 40));
                ui.colored_label(Color32::from_rgb(230, 160, 40), n);
            });
        }
        egui::CollapsingHeader::new("Statistics")
            .default_open(false)
            .show(ui, |ui| stats(ui, &c, &|p| self.model.name_of(p)));
        ui.separator();
    }

    /// Mute, camera, screen sharing and hang-up.
    fn call_controls(&mut self, ui: &mut egui::Ui, c: &CallView) {
        ui.horizontal(|ui| {
            if ui.button(if c.muted { "Unmute" } else { "Mute" }).clicked() {
                self.bridge.send(UiCmd::Mute(!c.muted));
                if let Some(v) = &mut self.model.call {
                    v.muted = !c.muted;
                }
            }
            if ui
                .button(if c.camera { "Camera off" } else { "Camera on" })
                .clicked()
            {
                self.bridge.send(UiCmd::Camera(!c.camera));
                if let Some(v) = &mut self.model.call {
                    v.camera = !c.camera;
                }
            }
            let share = ui.menu_button(
                if c.sharing.is_some() {
                    "Sharing…"
                } else {
                    "Share screen"
                },
                |ui| self.share_menu(ui, c.sharing.is_some()),
            );
            if share.response.clicked() {
                self.bridge.send(UiCmd::ListScreens);
            }
            self.add_to_call_menu(ui, c);
            if ui
                .add(
                    egui::Button::new(RichText::new("Hang up").color(Color32::WHITE))
                        .fill(Color32::from_rgb(190, 40, 40)),
                )
                .clicked()
            {
                self.bridge.send(UiCmd::Hangup);
            }
        });
    }

    fn share_menu(&mut self, ui: &mut egui::Ui, sharing: bool) {
        if sharing && ui.button("Stop sharing (camera again)").clicked() {
            self.bridge.send(UiCmd::Share(None));
            if let Some(c) = &mut self.model.call {
                c.sharing = None;
            }
            ui.close();
        }
        match &self.model.screens {
            None => {
                ui.spinner();
            }
            Some(Err(why)) => {
                ui.label(why.clone());
            }
            Some(Ok(list)) => {
                for (id, name) in list.clone() {
                    if ui.button(format!("{name} ({id})")).clicked() {
                        self.bridge.send(UiCmd::Share(Some(id.clone())));
                        if let Some(c) = &mut self.model.call {
                            c.sharing = Some(id);
                        }
                        ui.close();
                    }
                }
            }
        }
    }

    fn toasts(&self, ctx: &egui::Context) {
        if self.model.toasts.is_empty() {
            return;
        }
        egui::Area::new(egui::Id::unique("toasts"))
            .anchor(egui::Align2::RIGHT_TOP, [-12.0, 36.0])
            .show(ctx, |ui| {
                for t in &self.model.toasts {
                    egui::Frame::popup(ui.style()).show(ui, |ui| {
                        let text = RichText::new(&t.text);
                        ui.label(if t.error {
                            text.color(Color32::from_rgb(230, 80, 80))
                        } else {
                            text
                        });
                    });
                }
            });
    }
}

impl eframe::App for App {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.show(ui);
    }
}

/// A settings row choosing a device: the default, the devices found, fixed choices; shows
/// why there are no devices when there are none.
/// The media rows of the settings: camera, microphone, speaker, video size, rate, bitrate.
fn media_settings(ui: &mut egui::Ui, s: &mut Settings, devices: Option<&Devices>) {
    let none = || Err("listing…".to_string());
    pick(
        ui,
        "Camera",
        &mut s.video,
        ("camera", "the default camera"),
        &[("testsrc", "test pattern"), ("none", "no video")],
        devices.map_or_else(none, |d| d.cameras.clone()),
    );
    pick(
        ui,
        "Microphone",
        &mut s.audio,
        ("mic", "the default microphone"),
        &[("tone", "test tone"), ("none", "no audio")],
        devices.map_or_else(none, |d| d.microphones.clone()),
    );
    pick(
        ui,
        "Speaker",
        &mut s.speaker,
        ("auto", "the default speaker"),
        &[("off", "none")],
        devices.map_or_else(none, |d| d.speakers.clone()),
    );
    setting_text(ui, "Largest video size", &mut s.video_size, "640x360");
    let l = ui.label("Frame rate");
    let mut fps = s.video_fps.unwrap_or(30);
    ui.add(egui::Slider::new(&mut fps, 5..=60).suffix(" fps"))
        .labelled_by(l.id);
    s.video_fps = Some(fps);
    ui.end_row();
    let l = ui.label("Most video bitrate");
    let mut kbps = s.video_kbps.unwrap_or(1000);
    ui.add(
        egui::Slider::new(&mut kbps, 100..=8000)
            .suffix(" kbit/s")
            .logarithmic(true),
    )
    .labelled_by(l.id);
    s.video_kbps = Some(kbps);
    ui.end_row();
}

/// A text row of the settings grid; empty text is "not set".
fn setting_text(ui: &mut egui::Ui, label: &str, v: &mut Option<String>, hint: &str) {
    let l = ui.label(label);
    let mut t = v.clone().unwrap_or_default();
    ui.add(egui::TextEdit::singleline(&mut t).hint_text(hint))
        .labelled_by(l.id);
    *v = (!t.trim().is_empty()).then(|| t.trim().to_string());
    ui.end_row();
}

fn pick(
    ui: &mut egui::Ui,
    label: &str,
    value: &mut Option<String>,
    default: (&str, &str),
    fixed: &[(&str, &str)],
    found: Result<Vec<(String, String)>, String>,
) {
    let mut options: Vec<(String, String)> = vec![(default.0.into(), default.1.into())];
    if let Ok(f) = &found {
        options.extend(f.iter().cloned());
    }
    options.extend(fixed.iter().map(|(a, b)| (a.to_string(), b.to_string())));
    let current = value.clone().unwrap_or_else(|| default.0.to_string());
    if !options.iter().any(|o| o.0 == current) {
        options.push((current.clone(), current.clone()));
    }
    let shown = options
        .iter()
        .find(|o| o.0 == current)
        .map_or(current.clone(), |o| o.1.clone());
    ui.label(label);
    ui.horizontal(|ui| {
        let mut chosen = current.clone();
        egui::ComboBox::from_id_salt(label)
            .selected_text(shown)
            .show_ui(ui, |ui| {
                for (v, name) in &options {
                    ui.selectable_value(&mut chosen, v.clone(), name);
                }
            })
            .response
            .on_hover_text(format!("{label}: {current}"));
        if let Err(why) = &found {
            ui.weak(why);
        }
        *value = (chosen != default.0).then_some(chosen);
    });
    ui.end_row();
}

/// Live plots of a call's last minutes, and its path.
fn stats(ui: &mut egui::Ui, c: &crate::model::CallView, name: &dyn Fn(&PeerId) -> String) {
    use egui_plot::{Legend, Line, Plot};
    let series = |f: fn(&Sample) -> f64| -> Vec<[f64; 2]> {
        c.history.iter().map(|s| [s.t, f(s)]).collect()
    };
    let plot = |ui: &mut egui::Ui, id: &str, lines: Vec<(&str, Vec<[f64; 2]>)>| {
        Plot::new(id)
            .height(110.0)
            .legend(Legend::default())
            .allow_zoom(false)
            .allow_drag(false)
            .allow_scroll(false)
            .show(ui, |p| {
                for (name, pts) in lines {
                    p.line(Line::new(name, pts));
                }
            });
    };
    if let Some(st) = &c.stats {
        if st.participants.is_empty() {
            ui.label(format!("path: {}", st.path));
            if let Some((w, h)) = st.resolution {
                ui.label(format!("receiving {w}x{h}"));
            }
        } else {
            participant_table(ui, &st.participants, name);
        }
    }
    ui.columns(2, |cols| {
        plot(&mut cols[0], "rtt", vec![("RTT ms", series(|s| s.rtt_ms))]);
        plot(
            &mut cols[1],
            "rates",
            vec![
                ("send kbit/s", series(|s| s.send_kbps)),
                ("receive kbit/s", series(|s| s.recv_kbps)),
                ("estimate kbit/s", series(|s| s.target_kbps)),
            ],
        );
        plot(
            &mut cols[0],
            "loss",
            vec![("loss %", series(|s| s.loss_pct))],
        );
        plot(
            &mut cols[1],
            "delay",
            vec![
                ("audio buffer ms", series(|s| s.buffer_ms)),
                ("video fps", series(|s| s.fps)),
            ],
        );
    });
}

/// A group call: each participant's path, RTT, what we receive and send, and the layer it
/// gets of our video.
fn participant_table(
    ui: &mut egui::Ui,
    all: &[p2pcall_core::call::CallStats],
    name: &dyn Fn(&PeerId) -> String,
) {
    egui::Grid::new("participants")
        .num_columns(7)
        .striped(true)
        .show(ui, |ui| {
            for h in [
                "participant",
                "path",
                "RTT",
                "receiving",
                "loss",
                "sending",
                "our layer",
            ] {
                ui.strong(h);
            }
            ui.end_row();
            for s in all {
                let who = s.peer.as_deref().and_then(|p| p.parse::<PeerId>().ok());
                ui.label(who.map_or_else(|| "?".into(), |p| name(&p)));
                ui.label(&s.path);
                ui.label(format!("{:.0} ms", s.rtt_ms));
                let video = s.recv.iter().find(|r| r.kind != "audio");
                let kbps: f64 = s.recv.iter().map(|r| r.kbps).sum();
                let size = s.resolution.map(|(w, h)| format!(" {w}x{h}"));
                ui.label(format!(
                    "{kbps:.0} kbit/s{}, {:.0} fps",
                    size.unwrap_or_default(),
                    video.map_or(0.0, |v| v.fps)
                ));
                let loss = s.recv.iter().map(|r| r.loss_pct).fold(0.0, f64::max);
                ui.label(format!("{loss:.1} %"));
                ui.label(format!("{:.0} kbit/s", s.upload_kbps));
                ui.label(s.layer.as_deref().unwrap_or("-"));
                ui.end_row();
            }
        });
}

fn state_mark(s: MessageState) -> &'static str {
    match s {
        MessageState::Queued => "queued",
        MessageState::Sent => "sent",
        MessageState::Delivered => "delivered",
        MessageState::Read => "read",
        MessageState::Received => "",
    }
}

/// A filled circle (online, status) drawn rather than taken from a font.
fn dot(ui: &mut egui::Ui, color: Color32) {
    let (rect, _) = ui.allocate_exact_size(egui::vec2(10.0, 10.0), egui::Sense::hover());
    ui.painter().circle_filled(rect.center(), 4.0, color);
}

fn state_text(s: MessageState) -> &'static str {
    match s {
        MessageState::Queued => "queued: sent when the peer is online",
        MessageState::Sent => "sent",
        MessageState::Delivered => "delivered",
        MessageState::Read => "read",
        MessageState::Received => "received",
    }
}

/// `HH:MM` (UTC) of a time in ms since the epoch, with the date when not today.
fn clock(ms: u64) -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let (day, now_day) = (ms / 86_400_000, now / 86_400_000);
    let secs = (ms / 1000) % 86_400;
    let hm = format!("{:02}:{:02}", secs / 3600, (secs / 60) % 60);
    if day == now_day {
        hm
    } else {
        format!("{} days ago {hm}", now_day.saturating_sub(day))
    }
}
