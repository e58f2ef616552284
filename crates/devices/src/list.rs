//! Media devices: V4L2 cameras (`/sys/class/video4linux`), ALSA capture and playback PCMs
//! (`/proc/asound/pcm`), X11 screens (`$DISPLAY`). Each list says why it is empty.

use std::path::Path;

use serde::Serialize;

use crate::DeviceError;

/// One device.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Device {
    /// What to pass on the command line (`camera:/dev/video0`, `mic:hw:0,0` …).
    pub id: String,
    /// Its name.
    pub name: String,
}

/// Devices of one kind, or why there are none.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeviceList {
    /// The devices found.
    pub devices: Vec<Device>,
    /// Why the list is empty (`None` when it is not).
    pub why_none: Option<String>,
}

/// Everything a call could use.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Devices {
    /// Video capture devices.
    pub cameras: DeviceList,
    /// Audio capture devices.
    pub microphones: DeviceList,
    /// Audio playback devices.
    pub speakers: DeviceList,
    /// Screens that can be shared.
    pub screens: DeviceList,
}

fn list(devices: Vec<Device>, why: impl FnOnce() -> String) -> DeviceList {
    let why_none = devices.is_empty().then(why);
    DeviceList { devices, why_none }
}

/// V4L2 devices with their names.
pub fn cameras_in(sys: &Path) -> Vec<Device> {
    let mut v: Vec<Device> = std::fs::read_dir(sys)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let node = e.file_name().to_string_lossy().into_owned();
            node.starts_with("video").then(|| Device {
                id: format!("camera:/dev/{node}"),
                name: std::fs::read_to_string(e.path().join("name"))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| node.clone()),
            })
        })
        .collect();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

/// ALSA PCMs from `/proc/asound/pcm` (`CC-DD: id : name : playback 1 : capture 1`).
pub fn alsa_pcms(text: &str, capture: bool) -> Vec<Device> {
    let want = if capture { "capture" } else { "playback" };
    text.lines()
        .filter_map(|l| {
            let (cd, rest) = l.split_once(':')?;
            let mut parts = rest.split(" : ");
            let name = parts.nth(1)?;
            let (card, dev) = cd.split_once('-')?;
            let (card, dev) = (
                card.trim().parse::<u32>().ok()?,
                dev.trim().parse::<u32>().ok()?,
            );
            parts
                .any(|p| p.trim_start().starts_with(want))
                .then(|| Device {
                    id: format!(
                        "{}:hw:{card},{dev}",
                        if capture { "mic" } else { "speaker" }
                    ),
                    name: name.trim().to_string(),
                })
        })
        .collect()
}

/// Lists what this machine has.
pub fn list_devices() -> Devices {
    let cams = cameras_in(Path::new("/sys/class/video4linux"));
    let pcm = std::fs::read_to_string("/proc/asound/pcm").unwrap_or_default();
    let no_sound = || {
        if Path::new("/proc/asound").exists() {
            "ALSA reports no sound card (/proc/asound/pcm is empty)".to_string()
        } else {
            "no ALSA sound support on this system (/proc/asound is missing)".to_string()
        }
    };
    Devices {
        cameras: list(cams, || {
            "/sys/class/video4linux lists no V4L2 video device (plug one in)".into()
        }),
        microphones: list(alsa_pcms(&pcm, true), no_sound),
        speakers: list(alsa_pcms(&pcm, false), no_sound),
        screens: screens(None),
    }
}

/// The monitors and top-level windows of `display` (`None`: `$DISPLAY`) with the source
/// names `--video` takes (`screen:N`, `window:0xID`), or why there are none.
pub fn screens(display: Option<&str>) -> DeviceList {
    match p2pcall_screen::list(display) {
        Ok(found) => {
            let devices = found.iter().map(screen_device).collect();
            list(devices, || {
                "the X server shows no monitor and no window".into()
            })
        }
        Err(e) => DeviceList {
            devices: Vec::new(),
            why_none: Some(e.to_string()),
        },
    }
}

fn screen_device(s: &p2pcall_screen::ScreenInfo) -> Device {
    use p2pcall_screen::ScreenInfo;
    match s {
        ScreenInfo::Monitor(m) => Device {
            id: format!("screen:{}", m.index),
            name: format!(
                "monitor {} {}x{}+{}+{}{}",
                m.name,
                m.width,
                m.height,
                m.x,
                m.y,
                if m.primary { " (primary)" } else { "" }
            ),
        },
        ScreenInfo::Window(w) => Device {
            id: format!("window:0x{:x}", w.id),
            name: format!(
                "window {:?} {}x{}+{}+{}",
                w.name, w.width, w.height, w.x, w.y
            ),
        },
    }
}

/// A device that failed to open, said with what the listing knows: why there are none, or
/// which ones there are; `fallback` names what to use instead.
pub fn explain(e: &DeviceError, list: &DeviceList, fallback: &str) -> String {
    match &list.why_none {
        Some(why) => format!("{e} ({why}); use {fallback}"),
        None => format!(
            "{e}; found: {}; or use {fallback}",
            list.devices
                .iter()
                .map(|c| c.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alsa_pcm_lines_are_parsed_by_direction() {
        let text = "00-00: ALC892 Analog : ALC892 Analog : playback 1 : capture 1\n\
                    00-01: ALC892 Digital : ALC892 Digital : playback 1\n\
                    01-03: HDMI 0 : HDMI 0 : playback 1\n\
                    garbage line\n";
        let mics = alsa_pcms(text, true);
        assert_eq!(
            mics,
            vec![Device {
                id: "mic:hw:0,0".into(),
                name: "ALC892 Analog".into()
            }]
        );
        let spk = alsa_pcms(text, false);
        assert_eq!(spk.len(), 3);
        assert_eq!(spk[2].id, "speaker:hw:1,3");
    }

    #[test]
    fn cameras_come_from_sysfs_with_names() {
        let d = tempfile::tempdir().unwrap();
        for (n, name) in [("video2", "USB Cam"), ("video0", "Integrated")] {
            std::fs::create_dir(d.path().join(n)).unwrap();
            std::fs::write(d.path().join(n).join("name"), format!("{name}\n")).unwrap();
        }
        std::fs::create_dir(d.path().join("v4l-subdev0")).unwrap();
        let c = cameras_in(d.path());
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].id, "camera:/dev/video0");
        assert_eq!(c[0].name, "Integrated");
        assert!(cameras_in(&d.path().join("missing")).is_empty());
    }

    #[test]
    fn screens_are_listed_with_the_names_video_takes() {
        let none = screens(Some(":4711"));
        assert!(none.devices.is_empty());
        let why = none.why_none.unwrap();
        assert!(why.contains(":4711"), "{why}");
        let Some(x) = p2pcall_screen::xvfb::Xvfb::start(1280, 800).unwrap() else {
            eprintln!("skipping the Xvfb part: Xvfb is not installed (scripts/setup.sh)");
            return;
        };
        let l = screens(Some(x.display()));
        assert_eq!(l.why_none, None);
        assert_eq!(l.devices[0].id, "screen:0");
        assert!(
            l.devices[0].name.contains("1280x800+0+0"),
            "{:?}",
            l.devices[0]
        );
    }

    #[test]
    fn missing_devices_say_why() {
        // This machine class has no camera or sound card; wherever it runs, an empty list
        // carries a reason and a full list carries none.
        let d = list_devices();
        for l in [&d.cameras, &d.microphones, &d.speakers, &d.screens] {
            assert_eq!(l.devices.is_empty(), l.why_none.is_some());
        }
        let e = DeviceError::NotFound {
            kind: "camera",
            why: "x".into(),
        };
        let empty = list(Vec::new(), || "none plugged in".into());
        assert!(
            explain(&e, &empty, "--video testsrc")
                .ends_with("(none plugged in); use --video testsrc")
        );
        let one = list(
            vec![Device {
                id: "camera:/dev/video0".into(),
                name: "Cam".into(),
            }],
            String::new,
        );
        assert!(explain(&e, &one, "testsrc").contains("found: camera:/dev/video0"));
    }
}
