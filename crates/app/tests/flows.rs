//! The app's main flows, driven through its widgets (egui_kittest, headless) against a real
//! in-process relay and a second real engine ("bob"): first run, the peer list, chat both
//! ways, and a file offer accepted from the window.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use eframe::egui;
use egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use p2pcall_app::{App, Bridge, BridgeConfig, Dirs};
use p2pcall_core::call::{CallEvent, CallOptions};
use p2pcall_core::chat::ChatEvent;
use p2pcall_core::engine::{EngineEvent, EngineHandle};
use p2pcall_core::settings::Settings;
use p2pcall_core::transfer::TransferEvent;
use tokio::sync::mpsc;

struct World {
    rt: tokio::runtime::Runtime,
    relay: SocketAddr,
    _relay: p2pcall_relay::Relay,
    bob: EngineHandle,
    bob_events: mpsc::Receiver<EngineEvent>,
    dir: tempfile::TempDir,
}

fn world() -> World {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let relay = rt.block_on(p2pcall_demo::local_relay()).unwrap();
    let addr = relay.udp_addr;
    let (bob, bob_events) = rt.block_on(p2pcall_demo::local_peer("bob", addr)).unwrap();
    World {
        rt,
        relay: addr,
        _relay: relay,
        bob,
        bob_events,
        dir: tempfile::tempdir().unwrap(),
    }
}

/// An app with a fresh data dir (first run); no port mapping, loopback only, synthetic
/// media (this machine has no camera or sound card).
fn app(w: &World) -> Harness<'static, App> {
    app_with(
        w,
        Settings {
            port_mapping: Some(false),
            download_dir: Some(w.dir.path().join("downloads")),
            video: Some("testsrc".into()),
            audio: Some("tone".into()),
            speaker: Some("off".into()),
            ..Settings::default()
        },
    )
}

/// Settings of an app that was set up before (no first run): Ada on the test relay.
fn set_up(w: &World) -> Settings {
    Settings {
        name: Some("Ada".into()),
        relay: Some(w.relay.to_string()),
        port_mapping: Some(false),
        ..Settings::default()
    }
}

/// [`set_up`], with synthetic media and ALSA's null device as the speaker (the ring and the
/// call's audio play through the real path).
fn set_up_for_calls(w: &World) -> Settings {
    Settings {
        video: Some("testsrc".into()),
        audio: Some("tone".into()),
        speaker: Some("null".into()),
        ..set_up(w)
    }
}

fn app_with(w: &World, settings: Settings) -> Harness<'static, App> {
    let data = w.dir.path().join("app");
    let dirs = Dirs::resolve(Some(&data)).unwrap();
    settings.save(&dirs.settings).unwrap();
    let bridge = Bridge::start(
        BridgeConfig {
            dirs,
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            daemon_exe: None,
        },
        || {},
    )
    .unwrap();
    Harness::builder()
        .with_size([1000.0, 700.0])
        .build_ui_state(|ui, app: &mut App| app.show(ui), App::new(bridge))
}

/// Steps the UI until `cond` holds (the engine works on its own threads meanwhile).
fn until(h: &mut Harness<'_, App>, what: &str, cond: impl Fn(&Harness<'_, App>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond(h) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; status {:?}, toasts {:?}",
            h.state().model.status,
            h.state().model.toasts
        );
        h.step();
        std::thread::sleep(Duration::from_millis(20));
    }
    h.step();
}

/// Some node has this label.
fn has(h: &Harness<'_, App>, label: &str) -> bool {
    h.query_all_by_label(label).next().is_some()
}

/// Some node's label contains this.
fn has_part(h: &Harness<'_, App>, part: &str) -> bool {
    h.query_all_by_label_contains(part).next().is_some()
}

/// Replaces the whole text of a field.
fn replace_text(h: &mut Harness<'_, App>, label: &str, text: &str) {
    h.get_by_role_and_label(Role::TextInput, label).focus();
    h.step();
    h.key_combination_modifiers(egui::Modifiers::COMMAND, &[egui::Key::A]);
    h.get_by_role_and_label(Role::TextInput, label)
        .type_text(text);
    h.step();
}

fn type_into(h: &mut Harness<'_, App>, label: &str, text: &str) {
    let field = h.get_by_role_and_label(Role::TextInput, label);
    field.click();
    h.step();
    h.get_by_role_and_label(Role::TextInput, label)
        .type_text(text);
    h.step();
}

/// Opens `peer`'s conversation, sends `text`, and returns it as the peer's engine received it.
fn write_to(
    h: &mut Harness<'_, App>,
    rt: &tokio::runtime::Runtime,
    peer: &str,
    text: &str,
    events: &mut mpsc::Receiver<EngineEvent>,
) -> p2pcall_core::Message {
    h.get_by_role_and_label(Role::Button, peer).click();
    until(h, "the conversation", |h| {
        h.query_by_role_and_label(Role::TextInput, "Message")
            .is_some()
    });
    type_into(h, "Message", text);
    h.get_by_label("Send").click();
    h.step();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(EngineEvent::Chat(ChatEvent::Received(m))) = events.recv().await {
                    return m;
                }
            }
        })
        .await
        .unwrap()
    })
}

#[test]
fn first_run_chat_both_ways_and_an_accepted_file_offer() {
    let mut w = world();
    let mut h = app(&w);
    until(&mut h, "the first-run form", |h| {
        has(h, "Welcome to p2pcall")
    });
    // The form wants a name and a relay before it lets us start.
    replace_text(&mut h, "Your name", "Ada");
    type_into(&mut h, "Relay address", &w.relay.to_string());
    h.get_by_label("Start").click();
    // Online, and bob is in the list.
    until(&mut h, "bob in the peer list", |h| {
        h.query_by_role_and_label(Role::Button, "bob").is_some()
    });
    assert!(has(&h, "online"));
    let settings = Settings::load(&w.dir.path().join("app").join("config.toml")).unwrap();
    assert_eq!(settings.name.as_deref(), Some("Ada"));
    assert_eq!(
        settings.relay.as_deref(),
        Some(w.relay.to_string().as_str())
    );

    // Open bob's conversation and write to him.
    let got = write_to(&mut h, &w.rt, "bob", "hello bob", &mut w.bob_events);
    assert_eq!(got.text, "hello bob");
    until(&mut h, "our message delivered", |h| {
        has(h, "hello bob") && has_part(h, "delivered")
    });

    // Bob answers; it shows up in the open conversation.
    let ada = got.peer;
    w.rt.block_on(w.bob.send_message(ada, "hi Ada")).unwrap();
    until(&mut h, "bob's answer", |h| has(h, "hi Ada"));

    // Verify bob: the dialog shows the safety number both apps derive; marking it sticks.
    h.get_by_label("Verify").click();
    let number = p2pcall_core::SafetyNumber::new(&ada, &w.bob.id()).to_string();
    let first_line = number.split("  ").next().unwrap().to_string();
    until(&mut h, "the safety number", |h| has(h, &first_line));
    h.get_by_label("They match: mark as verified").click();
    until(&mut h, "the verified badge", |h| {
        has(h, "verified") && h.query_by_label("Verify").is_none()
    });

    // Bob offers a file; we accept it from the window and it lands in the download folder.
    let file = w.dir.path().join("notes.txt");
    std::fs::write(&file, b"twelve bytes").unwrap();
    let bob = w.bob.clone();
    let sent =
        w.rt.spawn(async move { bob.send_files(ada, &[file]).await });
    until(&mut h, "the offer", |h| has(h, "Accept"));
    assert!(has_part(&h, "notes.txt"));
    h.get_by_label("Accept").click();
    until(&mut h, "the transfer done", |h| has_part(h, "done:"));
    let summary = w.rt.block_on(sent).unwrap().unwrap();
    assert_eq!(summary.files, 1);
    let landed = w.dir.path().join("downloads").join("notes.txt");
    assert_eq!(std::fs::read(&landed).unwrap(), b"twelve bytes");
    while let Ok(e) = w.bob_events.try_recv() {
        if let EngineEvent::Transfer(TransferEvent::Failed { reason, .. }) = e {
            panic!("transfer failed: {reason}");
        }
    }
}

#[test]
fn an_incoming_call_is_answered_shows_both_pictures_and_hangs_up() {
    let mut w = world();
    // Set up before: no first run, straight online.
    let mut h = app_with(&w, set_up_for_calls(&w));
    until(&mut h, "online with bob listed", |h| {
        h.query_by_role_and_label(Role::Button, "bob").is_some()
    });
    let ada = h.state().model.me.as_ref().unwrap().0;
    // A new name in the settings is saved and announced to everyone at once.
    h.get_by_label("Settings").click();
    until(&mut h, "the settings window", |h| {
        h.query_by_role_and_label(Role::TextInput, "Name").is_some()
    });
    // The device pickers show the configured sources by name.
    until(&mut h, "the device pickers", |h| {
        let value = |v: &str| h.query_all_by_value(v).next().is_some() || has(h, v);
        value("test pattern") && value("test tone") && value("null")
    });
    replace_text(&mut h, "Name", "Ada Lovelace");
    h.get_by_label("Save").click();
    h.step();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !w
        .bob
        .online_peers()
        .iter()
        .any(|p| p.id == ada && p.name == "Ada Lovelace")
    {
        assert!(Instant::now() < deadline, "bob never saw the new name");
        h.step();
        std::thread::sleep(Duration::from_millis(20));
    }
    let saved = Settings::load(&w.dir.path().join("app").join("config.toml")).unwrap();
    assert_eq!(saved.name.as_deref(), Some("Ada Lovelace"));
    let bob = w.bob.clone();
    w.rt.spawn(async move { bob.call(ada, CallOptions::default()).await.unwrap() });
    until(&mut h, "the incoming call", |h| has(h, "bob is calling"));
    h.get_by_label("Accept").click();
    until(&mut h, "both pictures and the controls", |h| {
        h.state().shows_video() == (true, true) && has(h, "Hang up") && has(h, "Mute")
    });
    assert!(has_part(&h, "In a call with bob"));
    // The statistics arrive every second and name the path.
    until(&mut h, "call statistics", |h| {
        h.state()
            .model
            .call
            .as_ref()
            .is_some_and(|c| c.history.len() >= 2)
    });
    // The window goes to the background: the mini window shows the call; hang up there.
    assert!(!has(&h, "Hang up (mini window)"));
    h.input_mut().focused = false;
    until(&mut h, "the mini window", |h| {
        has(h, "Hang up (mini window)")
    });
    h.get_by_label("Hang up (mini window)").click();
    h.step();
    let ended = w.rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(EngineEvent::Call(CallEvent::Ended { reason, .. })) =
                    w.bob_events.recv().await
                {
                    return reason;
                }
            }
        })
        .await
        .unwrap()
    });
    let (code, _) = p2pcall_core::call::describe_end(&ended);
    assert_eq!(code, "hung_up_by_peer");
    until(&mut h, "the call gone from the window", |h| {
        h.state().model.call.is_none() && !has_part(h, "Hang up")
    });
}

/// Answers every call `engine` gets with `opts` (a participant that is always there).
fn auto_answer(
    w: &World,
    engine: EngineHandle,
    mut events: mpsc::Receiver<EngineEvent>,
    opts: CallOptions,
) {
    w.rt.spawn(async move {
        while let Some(e) = events.recv().await {
            if let EngineEvent::Call(CallEvent::Incoming { call, .. }) = e {
                let _ = engine.answer(call, opts.clone()).await;
            }
        }
    });
}

#[test]
fn a_call_grows_into_a_group_call_with_a_grid_and_the_active_speaker_large() {
    let mut w = world();
    let (carol, carol_events) =
        w.rt.block_on(p2pcall_demo::local_peer("carol", w.relay))
            .unwrap();
    // Bob sends a tone, carol nothing to hear: bob is the one speaking.
    let bob_events = std::mem::replace(&mut w.bob_events, mpsc::channel(1).1);
    auto_answer(&w, w.bob.clone(), bob_events, CallOptions::default());
    let silent = CallOptions {
        audio: p2pcall_core::call::AudioSource::None,
        ..CallOptions::default()
    };
    auto_answer(&w, carol.clone(), carol_events, silent);
    let mut h = app_with(&w, set_up_for_calls(&w));
    until(&mut h, "bob and carol listed", |h| {
        h.query_by_role_and_label(Role::Button, "bob").is_some()
            && h.query_by_role_and_label(Role::Button, "carol").is_some()
    });
    h.get_by_role_and_label(Role::Button, "bob").click();
    until(&mut h, "the Call button", |h| has(h, "Call"));
    h.get_by_label("Call").click();
    until(&mut h, "the call with bob", |h| {
        h.state().shows_video() == (true, true) && has(h, "Hang up")
    });
    // One more, from the call's own menu.
    h.get_by_label("Add to call").click();
    until(&mut h, "carol in the menu", |h| has(h, "Add carol"));
    h.get_by_label("Add carol").click();
    until(&mut h, "a grid of two with bob speaking", |h| {
        let c = h.state().model.call.as_ref();
        c.is_some_and(|c| c.participants.len() == 2 && c.speaker == Some(w.bob.id()))
            && has_part(h, "bob (speaking)")
            && has_part(h, "carol, muted")
    });
    assert!(has_part(&h, "In a call with bob, carol"));
    // Both pictures arrive (each participant's own texture).
    until(&mut h, "both pictures", |h| {
        let c = h.state().model.call.as_ref().unwrap();
        c.participants.iter().all(|p| p.camera) && h.state().shows_video() == (true, true)
    });
    h.get_by_label("Hang up").click();
    until(&mut h, "the call gone from the window", |h| {
        h.state().model.call.is_none() && !has_part(h, "Hang up")
    });
}

#[test]
fn without_a_camera_or_microphone_a_call_receives_and_one_that_cannot_start_leaves_no_trace() {
    let d = p2pcall_core::devices::list_devices();
    if !d.cameras.devices.is_empty() || !d.microphones.devices.is_empty() {
        eprintln!("skipping: this machine has a camera or a microphone");
        return;
    }
    let mut w = world();
    let bob_events = std::mem::replace(&mut w.bob_events, mpsc::channel(1).1);
    auto_answer(&w, w.bob.clone(), bob_events, CallOptions::default());
    // What a new user gets: the camera and the microphone, which this machine lacks.
    let defaults = Settings {
        video: Some("camera".into()),
        audio: Some("mic".into()),
        speaker: Some("off".into()),
        ..set_up(&w)
    };
    let mut h = app_with(&w, defaults.clone());
    until(&mut h, "bob listed", |h| {
        h.query_by_role_and_label(Role::Button, "bob").is_some()
    });
    h.get_by_role_and_label(Role::Button, "bob").click();
    until(&mut h, "the Call button", |h| has(h, "Call"));
    h.get_by_label("Call").click();
    until(
        &mut h,
        "a call that shows bob and says what is missing",
        |h| {
            let said =
                |what: &str| (h.state().model.toasts.iter()).any(|t| t.text.starts_with(what));
            h.state().shows_video() == (true, false)
                && has(h, "Hang up")
                && said("no camera, so your camera is off")
                && said("no microphone, so you are muted")
        },
    );
    // The controls say what is sent, and what is missing stays in the call's view once the
    // toasts are gone.
    h.state_mut().model.toasts.clear();
    until(&mut h, "Unmute, Camera on and both notes", |h| {
        has(h, "Unmute")
            && has(h, "Camera on")
            && has_part(h, "no camera, so your camera is off")
            && has_part(h, "no microphone, so you are muted")
    });
    // Unmuting without a microphone is refused, with the reason; the call stays muted.
    h.get_by_label("Unmute").click();
    until(&mut h, "the refusal, and still muted", |h| {
        has_part(h, "no audio to unmute") && has(h, "Unmute")
    });
    h.get_by_label("Hang up").click();
    until(&mut h, "the call over", |h| h.state().model.call.is_none());
    drop(h);
    // A camera the settings name that is not there: no call, and no "Calling" left behind.
    let named = Settings {
        video: Some("camera:/dev/video-missing".into()),
        ..defaults
    };
    let mut h = app_with(&w, named);
    until(&mut h, "bob listed", |h| {
        h.query_by_role_and_label(Role::Button, "bob").is_some()
    });
    h.get_by_role_and_label(Role::Button, "bob").click();
    until(&mut h, "the Call button", |h| has(h, "Call"));
    h.get_by_label("Call").click();
    until(&mut h, "the refusal, and no call view", |h| {
        let m = &h.state().model;
        m.call.is_none()
            && !has_part(h, "Calling")
            && (m.toasts.iter()).any(|t| t.error && t.text.contains("/dev/video-missing"))
    });
}

#[test]
fn first_run_can_host_the_relay_others_then_use() {
    let w = world();
    let mut h = app(&w);
    until(&mut h, "the first-run form", |h| {
        has(h, "Welcome to p2pcall")
    });
    replace_text(&mut h, "Your name", "Ada");
    h.get_by_label("A relay hosted on this machine").click();
    h.step();
    // A port that is taken (the test relay's): the form comes back saying so.
    replace_text(&mut h, "Listen on", &w.relay.to_string());
    h.get_by_label("Start").click();
    until(&mut h, "the refusal on the form", |h| {
        has_part(h, "cannot host a relay on") && has(h, "Welcome to p2pcall")
    });
    // Loopback and any free port here (a real user keeps 0.0.0.0:7700).
    replace_text(&mut h, "Listen on", "127.0.0.1:0");
    h.get_by_label("Start").click();
    until(&mut h, "online on our own relay", |h| {
        has(h, "online") && h.state().model.hosting.is_some()
    });
    let hosted = h.state().model.hosting.unwrap();
    assert!(has(
        &h,
        &format!("hosting a relay on port {}", hosted.port())
    ));
    // Someone else registers with it and shows up in our list.
    let (carol, _events) =
        w.rt.block_on(p2pcall_demo::local_peer("carol", hosted))
            .unwrap();
    until(&mut h, "carol in the list", |h| {
        h.query_by_role_and_label(Role::Button, "carol").is_some()
    });
    let saved = Settings::load(&w.dir.path().join("app").join("config.toml")).unwrap();
    assert_eq!(saved.host_relay, Some(true));
    assert_eq!(saved.relay_listen.as_deref(), Some("127.0.0.1:0"));
    drop(carol);
}

#[test]
fn a_long_history_loads_older_pages_on_demand() {
    let w = world();
    let mut h = app_with(&w, set_up(&w));
    until(&mut h, "bob listed", |h| {
        h.query_by_role_and_label(Role::Button, "bob").is_some()
    });
    let ada = h.state().model.me.as_ref().unwrap().0;
    // Bob is Ada's contact (not a message request).
    p2pcall_core::Store::open(&w.dir.path().join("app").join("p2pcall.db"))
        .unwrap()
        .choose_contact(&w.bob.id(), None, "bob", 1)
        .unwrap();
    // More than a page (50) arrives while the conversation is closed.
    let bob = w.bob.clone();
    w.rt.block_on(async {
        for i in 0..60 {
            bob.send_message(ada, &format!("note {i}")).await.unwrap();
        }
    });
    until(&mut h, "the unread count", |h| has(h, " 60 "));
    h.get_by_role_and_label(Role::Button, "bob").click();
    until(&mut h, "the newest page", |h| {
        has(h, "note 59") && has(h, "Load older")
    });
    assert!(!has(&h, "note 9"), "only the newest 50 at first");
    // It is at the top of the scrolled history: scroll there, then click.
    h.get_by_label("Load older").scroll_to_me();
    h.run_steps(3);
    h.get_by_label("Load older").click();
    let bob_id = w.bob.id();
    until(&mut h, "the older page", |h| {
        h.state().model.conversations[&bob_id].messages.len() == 60
            && has(h, "note 0")
            && has(h, "note 9")
    });
    assert!(!has(&h, "Load older"), "nothing older is left");
    // Opening the conversation read it: the badge is gone.
    assert!(!has(&h, " 60 "));
    // The file chooser needs the desktop portal; without one (here) the window says what to
    // do instead of nothing happening.
    h.get_by_label("Files…").click();
    until(&mut h, "the no-chooser notice", |h| {
        h.state()
            .model
            .toasts
            .iter()
            .any(|t| t.text.contains("no file chooser portal"))
    });
}

#[test]
fn first_run_lan_only_finds_a_peer_without_any_relay() {
    // mDNS multicasts: this runs again inside a private network namespace (loopback only).
    if !p2pcall_netlab::rerun_in_private_netns("first_run_lan_only_finds_a_peer_without_any_relay")
    {
        return;
    }
    let w = world();
    let (dave, mut dave_events) = w.rt.block_on(p2pcall_demo::local_lan_peer("dave")).unwrap();
    // The namespace has only loopback; a real network needs no interface setting.
    let mut h = app_with(
        &w,
        Settings {
            port_mapping: Some(false),
            lan_interfaces: Some(vec!["lo".into()]),
            ..Settings::default()
        },
    );
    until(&mut h, "the first-run form", |h| {
        has(h, "Welcome to p2pcall")
    });
    replace_text(&mut h, "Your name", "Ada");
    h.get_by_label("LAN only").click();
    h.step();
    // No address to type: Start is ready.
    h.get_by_label("Start").click();
    until(&mut h, "dave found on the LAN", |h| {
        h.query_by_role_and_label(Role::Button, "dave").is_some()
    });
    assert!(has(&h, "on the LAN (no relay)"));
    // Bob is on the test world's relay, which a LAN-only app never contacts.
    assert!(h.query_by_role_and_label(Role::Button, "bob").is_none());
    let saved = Settings::load(&w.dir.path().join("app").join("config.toml")).unwrap();
    assert_eq!(saved.lan_only, Some(true));

    let got = write_to(
        &mut h,
        &w.rt,
        "dave",
        "hello over the LAN",
        &mut dave_events,
    );
    assert_eq!(got.text, "hello over the LAN");
    until(&mut h, "our message delivered", |h| {
        has_part(h, "delivered")
    });
    drop(dave);
    drop(w.bob_events);
}

#[test]
fn a_message_sent_from_the_command_line_appears_in_the_open_conversation() {
    let w = world();
    let mut h = app_with(&w, set_up(&w));
    until(&mut h, "bob listed", |h| {
        h.query_by_role_and_label(Role::Button, "bob").is_some()
    });
    h.get_by_role_and_label(Role::Button, "bob").click();
    until(&mut h, "the conversation", |h| {
        h.query_by_role_and_label(Role::TextInput, "Message")
            .is_some()
    });
    // `p2pcall chat bob ...` on the app's data dir: a client of the app's engine.
    let data = w.dir.path().join("app");
    let sent = w.rt.block_on(async {
        let mut cli = p2pcall_daemon::Client::connect(&data, "cli")
            .await
            .unwrap()
            .expect("the app serves its engine to the command line");
        cli.call(p2pcall_api::Request::SendMessage {
            // Not yet a contact of the app's: reached by its key.
            peer: w.bob.id().to_hex(),
            text: "from the command line".into(),
        })
        .await
        .unwrap()
    });
    assert!(matches!(sent, p2pcall_api::Answer::Sent { .. }), "{sent:?}");
    until(&mut h, "the command line's message, delivered", |h| {
        has(h, "from the command line") && has_part(h, "delivered")
    });
    // A second engine on the app's data dir is refused while the window is open.
    let err = p2pcall_core::lock::EngineLock::acquire(&data, "a test").unwrap_err();
    assert!(err.to_string().contains("the desktop app"), "{err}");
}

/// `p2pcall daemon` on a data dir, in this process: its engine (on the data dir's
/// database), the hub its events feed, and its socket.
struct Daemon {
    engine: EngineHandle,
    server: Option<p2pcall_daemon::ApiServer>,
}

fn daemon(w: &World, data: &std::path::Path) -> Daemon {
    use std::sync::Arc;
    std::fs::create_dir_all(data).unwrap();
    w.rt.block_on(async {
        let identity = p2pcall_transport::Identity::generate().unwrap();
        let relay = p2pcall_net::RelayConfig::new(w.relay);
        let mut cfg = p2pcall_core::engine::EngineConfig::new(identity, "Ada".into(), Some(relay));
        cfg.port_mapping = false;
        cfg.bind = SocketAddr::from(([127, 0, 0, 1], 0));
        let store = p2pcall_core::Store::open(&data.join("p2pcall.db")).unwrap();
        cfg.store = Some(Arc::new(store));
        let (engine, mut events) = p2pcall_core::engine::Engine::start(cfg).await.unwrap();
        engine.wait_relay(Duration::from_secs(10)).await.unwrap();
        let hub = Arc::new(p2pcall_daemon::Hub::default());
        let feed = hub.clone();
        tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                feed.publish(&e);
            }
        });
        let served = p2pcall_daemon::Served {
            engine: engine.clone(),
            hub,
            data_dir: data.to_path_buf(),
            downloads: data.join("downloads"),
        };
        let server =
            p2pcall_daemon::ApiServer::start(p2pcall_daemon::socket_path(data), served).unwrap();
        Daemon {
            engine,
            server: Some(server),
        }
    })
}

#[test]
fn the_app_shows_a_running_daemon_and_offers_to_restart_it_when_it_stops() {
    let mut w = world();
    let data = w.dir.path().join("app");
    let mut d = daemon(&w, &data);
    let ada = d.engine.id();
    let mut h = app_with(&w, set_up_for_calls(&w));
    until(&mut h, "bob listed, through the daemon", |h| {
        h.query_by_role_and_label(Role::Button, "bob").is_some() && has(h, "via the daemon")
    });
    assert_eq!(h.state().model.me.as_ref().unwrap().0, ada);
    assert_eq!(h.state().model.daemon, Some(std::process::id()));

    // Chat both ways through the daemon's engine.
    let got = write_to(
        &mut h,
        &w.rt,
        "bob",
        "hello through the daemon",
        &mut w.bob_events,
    );
    assert_eq!(
        (got.text.as_str(), got.peer),
        ("hello through the daemon", ada)
    );
    w.rt.block_on(w.bob.send_message(ada, "seen in the window"))
        .unwrap();
    until(&mut h, "bob's answer", |h| has(h, "seen in the window"));

    // A message the command line sends through the daemon appears in the open conversation.
    w.rt.block_on(async {
        let mut cli = p2pcall_daemon::Client::connect(&data, "cli")
            .await
            .unwrap()
            .unwrap();
        cli.call(p2pcall_api::Request::SendMessage {
            peer: "bob".into(),
            text: "typed in a terminal".into(),
        })
        .await
        .unwrap()
    });
    until(&mut h, "the terminal's message, delivered", |h| {
        has(h, "typed in a terminal") && has_part(h, "delivered")
    });

    // A transfer the command line starts shows its progress and end in the window.
    let bob = w.bob.clone();
    let inbox = w.dir.path().join("bob-inbox");
    let mut bob_events = std::mem::replace(&mut w.bob_events, mpsc::channel(1).1);
    w.rt.spawn(async move {
        while let Some(e) = bob_events.recv().await {
            if let EngineEvent::Transfer(TransferEvent::Offered(o)) = e {
                bob.accept_offer(o.peer, o.id, inbox.clone()).unwrap();
            }
        }
    });
    let file = w.dir.path().join("big.bin");
    std::fs::write(&file, vec![7u8; 3 << 20]).unwrap();
    let sent = w.rt.block_on(async {
        let mut cli = p2pcall_daemon::Client::connect(&data, "cli")
            .await
            .unwrap()
            .unwrap();
        cli.call(p2pcall_api::Request::SendFiles {
            peer: "bob".into(),
            paths: vec![file.display().to_string()],
        })
        .await
        .unwrap()
    });
    assert!(
        matches!(sent, p2pcall_api::Answer::Transferred(_)),
        "{sent:?}"
    );
    until(
        &mut h,
        "the command line's transfer, done, in the window",
        |h| {
            h.state().model.transfers.iter().any(|t| {
                t.progress.as_ref().is_some_and(|p| {
                    p.outgoing && p.total_bytes == 3 << 20 && p.done_bytes == p.total_bytes
                }) && t.label == "big.bin"
                    && matches!(t.outcome, Some(Ok(_)))
            }) && has_part(h, "big.bin")
        },
    );

    // With a `listen` attached to the daemon, bob's call rings in the window; answered
    // there, both pictures show (the daemon runs the media and feeds the window).
    let listen = w.rt.block_on(async {
        let mut c = p2pcall_daemon::Client::connect(&data, "cli")
            .await
            .unwrap()
            .unwrap();
        c.call(p2pcall_api::Request::Subscribe).await.unwrap();
        c
    });
    let bob = w.bob.clone();
    w.rt.spawn(async move { bob.call(ada, CallOptions::default()).await.unwrap() });
    until(&mut h, "the incoming call", |h| has(h, "bob is calling"));
    h.get_by_label("Accept").click();
    until(&mut h, "both pictures", |h| {
        h.state().shows_video() == (true, true) && has(h, "Hang up")
    });
    h.get_by_label("Hang up").click();
    until(&mut h, "the call gone from the window", |h| {
        h.state().model.call.is_none()
    });
    let mut listen = listen;
    let incoming = w.rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let p2pcall_api::Event::Call(p2pcall_api::CallNote::Incoming { peer, .. }) =
                    listen.next_event().await.unwrap()
                {
                    return peer;
                }
            }
        })
        .await
        .unwrap()
    });
    assert_eq!(
        incoming,
        w.bob.id().to_hex(),
        "the listener saw the call too"
    );

    // The daemon dies: the window says so and offers to restart it (without a program to
    // start here, the restart runs the app's own engine).
    drop(d.server.take());
    w.rt.block_on(d.engine.shutdown());
    until(&mut h, "the daemon stopped", |h| {
        has(h, "Restart the daemon")
    });
    h.get_by_label("Restart the daemon").click();
    until(&mut h, "online again on the app's own engine", |h| {
        h.state().model.daemon.is_none() && has(h, "online")
    });
}

#[test]
fn an_invitation_is_shown_as_a_ticket_and_a_pasted_one_adds_a_contact() {
    let w = world();
    let mut h = app_with(&w, set_up(&w));
    until(&mut h, "online", |h| has(h, "online"));
    h.get_by_label("Invite / add").click();
    until(&mut h, "our ticket", |h| {
        matches!(h.state().model.ticket, Some(Ok(_)))
    });
    // Our ticket: our key and name, the relay with the key it presented.
    let Some(Ok(ours)) = h.state().model.ticket.clone() else {
        unreachable!()
    };
    let t: p2pcall_core::invite::Ticket = ours.parse().unwrap();
    assert_eq!(Some(t.peer), h.state().model.me.as_ref().map(|m| m.0));
    assert_eq!(t.name, "Ada");
    let relay = t.relay.unwrap();
    assert_eq!(relay.addr, w.relay.to_string());
    assert_eq!(relay.key, w._relay.id);
    assert!(has(&h, &ours));
    assert!(h.query_by_label("QR code of your ticket").is_some() || has(&h, "Copy the ticket"));

    // Bob's ticket, pasted, makes him a contact under the name we give.
    let bobs = p2pcall_core::invite::Ticket {
        peer: w.bob.id(),
        name: "bob".into(),
        relay: Some(p2pcall_core::invite::TicketRelay {
            addr: w.relay.to_string(),
            key: w._relay.id,
        }),
    };
    type_into(&mut h, "Their ticket", &bobs.encode());
    type_into(&mut h, "Your name for them (optional)", "Bobby");
    h.get_by_label("Add contact").click();
    until(&mut h, "bob as our contact Bobby", |h| {
        has(h, "Bobby is your contact")
    });
    until(&mut h, "Bobby in the list", |h| {
        h.query_by_role_and_label(Role::Button, "Bobby").is_some()
    });
    let store = p2pcall_core::Store::open(&w.dir.path().join("app").join("p2pcall.db")).unwrap();
    assert_eq!(
        store.trust(&w.bob.id()).unwrap(),
        p2pcall_core::Trust::Contact
    );

    // A ticket naming our relay with another key: added, and the user is warned.
    let forged = p2pcall_core::invite::Ticket {
        peer: p2pcall_core::PeerId::from_bytes([5; 32]),
        name: "mallory".into(),
        relay: Some(p2pcall_core::invite::TicketRelay {
            addr: w.relay.to_string(),
            key: p2pcall_core::PeerId::from_bytes([6; 32]),
        }),
    };
    type_into(&mut h, "Their ticket", &forged.encode());
    h.get_by_label("Add contact").click();
    until(&mut h, "the warning", |h| {
        has_part(h, "may have been changed on its way")
    });
    assert_eq!(
        store.relay_key(&w.relay.to_string()).unwrap(),
        Some(w._relay.id)
    );
}

#[test]
fn a_strangers_message_is_a_request_until_accepted() {
    let w = world();
    let mut h = app_with(&w, set_up(&w));
    until(&mut h, "bob listed", |h| {
        h.query_by_role_and_label(Role::Button, "bob").is_some()
    });
    let ada = h.state().model.me.as_ref().unwrap().0;
    // Bob is not Ada's contact: what he writes is a message request, shown apart.
    w.rt.block_on(w.bob.send_message(ada, "hi, it's bob"))
        .unwrap();
    until(&mut h, "the request badge", |h| has(h, "REQUEST"));
    assert_eq!(h.state().model.requests.get(&w.bob.id()), Some(&1));
    h.get_by_role_and_label(Role::Button, "bob").click();
    until(&mut h, "the request banner", |h| {
        has(h, "Accept request") && has(h, "hi, it's bob")
    });
    h.get_by_label("Accept request").click();
    until(&mut h, "bob accepted", |h| {
        !has(h, "REQUEST") && !has(h, "Accept request")
    });
    let store = p2pcall_core::Store::open(&w.dir.path().join("app").join("p2pcall.db")).unwrap();
    assert_eq!(
        store.trust(&w.bob.id()).unwrap(),
        p2pcall_core::Trust::Contact
    );
    assert!(store.message_requests().unwrap().is_empty());
}
