//! A call's pictures: one participant large with our preview in its corner; in a group call
//! the active speaker large and highlighted, everyone else in a row of tiles under it, each
//! tile with the participant's name, whether they are muted, and their connection.

use eframe::egui::{self, Color32};
use p2pcall_core::PeerId;

use super::App;
use crate::bridge::{Frame, UiCmd};
use crate::model::{CallView, Participant};

/// A texture and the frame count it shows.
type Slot = Option<(egui::TextureHandle, u64)>;

/// Uploads `pic` into `slot` when it is new.
fn upload(ctx: &egui::Context, slot: &mut Slot, pic: &Frame, name: &str) {
    let fresh = slot.as_ref().is_none_or(|(_, seq)| *seq != pic.seq);
    if pic.rgba.is_empty() || !fresh {
        return;
    }
    let img = egui::ColorImage::from_rgba_unmultiplied(pic.size, &pic.rgba);
    match slot {
        Some((t, seq)) => {
            t.set(img, egui::TextureOptions::LINEAR);
            *seq = pic.seq;
        }
        None => {
            *slot = Some((
                ctx.load_texture(name, img, egui::TextureOptions::LINEAR),
                pic.seq,
            ));
        }
    }
}

/// Where a picture of `size` fits in `area`, aspect ratio kept.
fn fit(size: [usize; 2], area: egui::Rect) -> egui::Rect {
    let [w, h] = size.map(|v| v as f32);
    let scale = (area.width() / w).min(area.height() / h);
    egui::Rect::from_center_size(area.center(), egui::vec2(w, h) * scale)
}

const UV: egui::Rect = egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0));

impl App {
    /// New call frames become textures (one upload each; the conversion from I420 was done
    /// on the thread that had the frame).
    pub(super) fn textures(&mut self, ctx: &egui::Context) {
        if self.model.call.is_none() {
            self.remote.clear();
            self.local = None;
            return;
        }
        let v = self.bridge.videos().lock();
        self.remote.retain(|p, _| v.remote.contains_key(p));
        upload(ctx, &mut self.local, &v.local, "local video");
        for (peer, pic) in &v.remote {
            let mut slot = self.remote.remove(peer);
            upload(ctx, &mut slot, pic, &format!("video of {peer}"));
            if let Some(s) = slot {
                self.remote.insert(*peer, s);
            }
        }
    }

    /// Whether a participant's picture and our preview are on screen.
    pub fn shows_video(&self) -> (bool, bool) {
        (!self.remote.is_empty(), self.local.is_some())
    }

    /// Whose picture is shown large: the active speaker, else the peer of the call, else
    /// whoever sends one.
    pub(super) fn spotlight(&self, c: &CallView) -> Option<PeerId> {
        let shown = |p: &PeerId| self.remote.contains_key(p);
        (c.speaker.filter(|p| shown(p)))
            .or_else(|| shown(&c.peer).then_some(c.peer))
            .or_else(|| self.remote.keys().next().copied())
            .or(c.speaker)
    }

    /// The call's pictures.
    pub(super) fn call_video(&mut self, ui: &mut egui::Ui, c: &CallView) {
        let h = (ui.available_height() * 0.55).max(120.0);
        let big = self.spotlight(c);
        let group = c.participants.len() > 1;
        let tile_h = if group { h * 0.3 } else { 0.0 };
        let (rect, _) = ui.allocate_exact_size(
            egui::vec2(ui.available_width(), h - tile_h),
            egui::Sense::hover(),
        );
        let speaking = group && big.is_some() && big == c.speaker;
        self.picture(ui, rect, big, c, speaking);
        if let Some((t, _)) = &self.local
            && c.camera
        {
            let corner = egui::Rect::from_min_size(
                rect.right_bottom()
                    - egui::vec2(rect.width() * 0.25 + 8.0, rect.height() * 0.25 + 8.0),
                egui::vec2(rect.width() * 0.25, rect.height() * 0.25),
            );
            let r = fit(t.size(), corner);
            ui.painter().image(t.id(), r, UV, Color32::WHITE);
            ui.painter()
                .rect_stroke(r, 2.0, (1.0, Color32::WHITE), egui::StrokeKind::Outside);
        }
        if !group {
            return;
        }
        // Everyone else in a row under the large picture.
        let others: Vec<&Participant> = (c.participants.iter())
            .filter(|p| Some(p.peer) != big)
            .collect();
        let (row, _) = ui.allocate_exact_size(
            egui::vec2(ui.available_width(), tile_h),
            egui::Sense::hover(),
        );
        let w = row.width() / others.len().max(1) as f32;
        for (i, p) in others.iter().enumerate() {
            let r = egui::Rect::from_min_size(
                row.min + egui::vec2(w * i as f32, 4.0),
                egui::vec2(w - 6.0, tile_h - 4.0),
            );
            self.picture(ui, r, Some(p.peer), c, false);
        }
    }

    /// One participant's picture in `rect`, with its caption (a group call's tile).
    fn picture(
        &self,
        ui: &mut egui::Ui,
        rect: egui::Rect,
        who: Option<PeerId>,
        c: &CallView,
        speaking: bool,
    ) {
        ui.painter().rect_filled(rect, 4.0, Color32::from_gray(16));
        let tex = who.and_then(|p| self.remote.get(&p));
        let part = who.and_then(|p| c.participants.iter().find(|x| x.peer == p));
        match tex {
            Some((t, _)) if part.is_none_or(|p| p.camera) => {
                ui.painter()
                    .image(t.id(), fit(t.size(), rect), UV, Color32::WHITE);
            }
            _ => {
                ui.painter().text(
                    rect.center(),
                    egui::Align2::CENTER_CENTER,
                    "no video",
                    egui::FontId::proportional(14.0),
                    Color32::GRAY,
                );
            }
        }
        if speaking {
            ui.painter()
                .rect_stroke(rect, 4.0, (3.0, Color32::GREEN), egui::StrokeKind::Inside);
        }
        let (Some(who), Some(p)) = (who, part) else {
            return;
        };
        if c.participants.len() < 2 {
            return;
        }
        let mut caption = self.model.name_of(&who);
        if speaking {
            caption.push_str(" (speaking)");
        }
        if p.muted {
            caption.push_str(", muted");
        }
        if let (Some(path), Some(rtt)) = (&p.path, p.rtt_ms) {
            caption.push_str(&format!(", {path} {rtt:.0} ms"));
        }
        let at = egui::Rect::from_min_size(
            rect.left_bottom() - egui::vec2(-6.0, 22.0),
            egui::vec2(rect.width() - 12.0, 20.0),
        );
        let text = egui::RichText::new(caption)
            .color(Color32::WHITE)
            .background_color(Color32::from_black_alpha(160));
        ui.put(at, egui::Label::new(text).truncate());
    }

    /// Invites an online contact who is not in the call yet.
    pub(super) fn add_to_call_menu(&mut self, ui: &mut egui::Ui, c: &CallView) {
        let (others, full) = (c.others(), c.is_full());
        let inside = |p: &PeerId| others.contains(p);
        let candidates: Vec<(PeerId, String)> = (self.model.peers(""))
            .into_iter()
            .filter(|r| r.online && !r.request && !inside(&r.id))
            .map(|r| (r.id, r.name))
            .collect();
        ui.add_enabled_ui(!full, |ui| {
            ui.menu_button("Add to call", |ui| {
                if candidates.is_empty() {
                    ui.weak("nobody else is online");
                }
                for (peer, name) in candidates {
                    if ui.button(format!("Add {name}")).clicked() {
                        self.bridge.send(UiCmd::AddToCall(peer));
                        ui.close();
                    }
                }
            })
        })
        .response
        .on_disabled_hover_text("the call is full (six people)");
    }
}
