//! The invitation window: our ticket as text and as a QR code, and a field to paste someone
//! else's ticket into.

use eframe::egui::{self, Color32, RichText};

use super::App;
use crate::bridge::UiCmd;

/// What is typed into the invitation window.
#[derive(Debug, Default)]
pub(super) struct InviteForm {
    /// The window is open.
    pub(super) open: bool,
    /// A ticket pasted.
    pub(super) ticket: String,
    /// Our user's name for its peer.
    pub(super) name: String,
}

impl App {
    /// Opens the invitation window (and asks for our ticket).
    pub fn open_invite(&mut self) {
        self.invite.open = true;
        self.bridge.send(UiCmd::Invite);
    }

    pub(super) fn invite_window(&mut self, ctx: &egui::Context) {
        if !self.invite.open {
            return;
        }
        let mut open = true;
        egui::Window::new("Invite someone, or add them")
            .collapsible(false)
            .open(&mut open)
            .show(ctx, |ui| {
                ui.heading("Your ticket");
                match &self.model.ticket {
                    None => {
                        ui.spinner();
                    }
                    Some(Err(why)) => {
                        ui.colored_label(Color32::from_rgb(230, 80, 80), why);
                    }
                    Some(Ok(ticket)) => {
                        ui.label(
                            "Whoever adds it reaches you, through your relay with its key \
                             pinned. Send the line, or let them scan the code.",
                        );
                        qr_code(ui, ticket);
                        ui.label(RichText::new(ticket).monospace().small());
                        if ui.button("Copy the ticket").clicked() {
                            ui.ctx().copy_text(ticket.clone());
                        }
                    }
                }
                ui.separator();
                ui.heading("Add someone from their ticket");
                let l = ui.label("Their ticket");
                ui.add(
                    egui::TextEdit::singleline(&mut self.invite.ticket)
                        .hint_text("p2pcall:…")
                        .desired_width(f32::INFINITY),
                )
                .labelled_by(l.id);
                let l = ui.label("Your name for them (optional)");
                ui.text_edit_singleline(&mut self.invite.name)
                    .labelled_by(l.id);
                let pasted = p2pcall_proto::ticket::looks_like_ticket(&self.invite.ticket);
                if ui
                    .add_enabled(pasted, egui::Button::new("Add contact"))
                    .clicked()
                {
                    let name = self.invite.name.trim();
                    self.bridge.send(UiCmd::AddTicket {
                        ticket: std::mem::take(&mut self.invite.ticket),
                        name: (!name.is_empty()).then(|| name.to_string()),
                    });
                    self.invite.name.clear();
                }
            });
        if !open {
            self.invite.open = false;
        }
    }
}

/// The QR code of a ticket (its upper-case form, in the QR alphanumeric mode), dark on
/// light whatever the theme, with its quiet zone.
fn qr_code(ui: &mut egui::Ui, ticket: &str) {
    const MODULE: f32 = 3.0;
    const QUIET: usize = 4;
    let Ok(code) = qrcode::QrCode::with_error_correction_level(
        ticket.to_ascii_uppercase(),
        qrcode::EcLevel::M,
    ) else {
        ui.weak("(the ticket is too long for a QR code)");
        return;
    };
    let width = code.width();
    let side = (width + 2 * QUIET) as f32 * MODULE;
    let (rect, response) = ui.allocate_exact_size(egui::vec2(side, side), egui::Sense::hover());
    response.on_hover_text("QR code of your ticket");
    let painter = ui.painter_at(rect);
    painter.rect_filled(rect, 0.0, Color32::WHITE);
    for (i, c) in code.to_colors().iter().enumerate() {
        if *c == qrcode::Color::Dark {
            let at = egui::vec2(
                (i % width + QUIET) as f32 * MODULE,
                (i / width + QUIET) as f32 * MODULE,
            );
            let module = egui::Rect::from_min_size(rect.min + at, egui::vec2(MODULE, MODULE));
            painter.rect_filled(module, 0.0, Color32::BLACK);
        }
    }
}
