//! The MIT-SHM segment the server writes captured pixels into: created by the server
//! (`ShmCreateSegment`, MIT-SHM 1.2) and handed to us as a file descriptor, which is mapped
//! here. This file holds the crate's only `unsafe` code.

use std::fs::File;

use memmap2::MmapMut;
use x11rb::connection::{Connection, RequestConnection as _};
use x11rb::protocol::shm::{self, ConnectionExt as _};
use x11rb::rust_connection::RustConnection;

/// A segment attached on the server and mapped here.
pub(crate) struct Segment {
    pub seg: shm::Seg,
    map: MmapMut,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("seg", &self.seg)
            .field("len", &self.map.len())
            .finish()
    }
}

/// Maps the whole of `file` read-write and shared.
///
/// Safety argument: the mapping is shared with the X server, which writes into it only while
/// it handles a `ShmGetImage` request. This crate reads the bytes (and draws the cursor into
/// them) only after the reply to that request has arrived and before it sends the next
/// request on the segment, so no one else writes while Rust holds a reference into it. The
/// file is the server's memfd and is never truncated while mapped (the server only unlinks
/// it on detach).
#[allow(unsafe_code)]
fn map(file: &File) -> std::io::Result<MmapMut> {
    // SAFETY: see above; the mapping lives in `Segment`, which detaches on drop.
    unsafe { MmapMut::map_mut(file) }
}

impl Segment {
    /// A segment of `size` bytes, or why there is none (the caller falls back to `GetImage`).
    pub fn create(conn: &RustConnection, size: usize) -> Result<Segment, String> {
        if conn
            .extension_information(shm::X11_EXTENSION_NAME)
            .map_err(|e| e.to_string())?
            .is_none()
        {
            return Err("the server has no MIT-SHM".to_owned());
        }
        let version = conn
            .shm_query_version()
            .map_err(|e| e.to_string())?
            .reply()
            .map_err(|e| e.to_string())?;
        if (version.major_version, version.minor_version) < (1, 2) {
            return Err(format!(
                "MIT-SHM {}.{} has no fd passing (need 1.2)",
                version.major_version, version.minor_version
            ));
        }
        let len = u32::try_from(size).map_err(|_| format!("segment of {size} bytes"))?;
        let seg = conn.generate_id().map_err(|e| e.to_string())?;
        let reply = conn
            .shm_create_segment(seg, len, false)
            .map_err(|e| e.to_string())?
            .reply()
            .map_err(|e| format!("ShmCreateSegment: {e}"))?;
        let file = File::from(reply.shm_fd);
        let detach = |why: String| {
            let _ = conn.shm_detach(seg);
            why
        };
        let map = map(&file).map_err(|e| detach(format!("mmap: {e}")))?;
        if map.len() < size {
            return Err(detach(format!(
                "segment of {} bytes, asked for {size}",
                map.len()
            )));
        }
        Ok(Segment { seg, map })
    }

    /// The first `len` bytes, to read what the last `ShmGetImage` wrote.
    pub fn bytes(&mut self, len: usize) -> &mut [u8] {
        &mut self.map[..len]
    }

    /// The segment's size.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Detaches it on the server (the mapping goes when `self` is dropped).
    pub fn detach(&self, conn: &RustConnection) {
        let _ = conn.shm_detach(self.seg);
    }
}
