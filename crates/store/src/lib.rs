//! Local storage of a p2pcall installation: contacts, chat history with delivery states, and
//! the resume state of file transfers, in one SQLite database (bundled SQLite, WAL journal,
//! `synchronous=FULL`: a message reported as sent or received is on disk and survives the
//! process being killed at any moment).
//!
//! The schema is versioned with `PRAGMA user_version`; [`Store::open`] applies every
//! migration the file has not seen yet, in one transaction each.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use parking_lot::{Mutex, MutexGuard};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use p2pcall_proto::PeerId;
use p2pcall_proto::chat::MessageId;
use p2pcall_proto::transfer::TransferId;
use rusqlite::{Connection, OptionalExtension, params};

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed (disk full, permissions, corruption …).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database folder could not be created.
    #[error("cannot create {path}: {source}")]
    Dir {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database was written by a newer p2pcall.
    #[error(
        "the database {path} has schema version {found}, this build knows up to {known}; upgrade p2pcall"
    )]
    TooNew {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// Ours.
        known: i64,
    },
    /// A stored value is not one this build wrote.
    #[error("corrupt value in column {0}")]
    Corrupt(&'static str),
}

type Result<T> = std::result::Result<T, StoreError>;

/// Migrations, applied in order; `user_version` counts how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: contacts, messages, transfers.
    "CREATE TABLE contacts(
        peer BLOB PRIMARY KEY,
        name TEXT NOT NULL,
        first_seen_ms INTEGER NOT NULL,
        last_seen_ms INTEGER NOT NULL
    );
    CREATE TABLE messages(
        rowid INTEGER PRIMARY KEY,
        peer BLOB NOT NULL,
        outgoing INTEGER NOT NULL,
        id BLOB NOT NULL,
        seq INTEGER NOT NULL,
        sent_ms INTEGER NOT NULL,
        received_ms INTEGER,
        text TEXT NOT NULL,
        state INTEGER NOT NULL,
        receipt_pending INTEGER NOT NULL DEFAULT 0,
        UNIQUE(peer, outgoing, id)
    );
    CREATE INDEX messages_by_state ON messages(peer, outgoing, state);
    CREATE TABLE transfers(
        rowid INTEGER PRIMARY KEY,
        peer BLOB NOT NULL,
        outgoing INTEGER NOT NULL,
        id BLOB NOT NULL,
        state INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        total_bytes INTEGER NOT NULL,
        files INTEGER NOT NULL,
        sources TEXT NOT NULL DEFAULT '',
        dest TEXT,
        error TEXT,
        UNIQUE(peer, outgoing, id)
    );
    CREATE TABLE transfer_names(
        transfer INTEGER NOT NULL REFERENCES transfers(rowid) ON DELETE CASCADE,
        top TEXT NOT NULL,
        name TEXT NOT NULL,
        PRIMARY KEY(transfer, top)
    ) WITHOUT ROWID;
    CREATE TABLE transfer_chunks(
        transfer INTEGER NOT NULL REFERENCES transfers(rowid) ON DELETE CASCADE,
        entry INTEGER NOT NULL,
        idx INTEGER NOT NULL,
        cv BLOB NOT NULL,
        PRIMARY KEY(transfer, entry, idx)
    ) WITHOUT ROWID;
    CREATE TABLE transfer_files_done(
        transfer INTEGER NOT NULL REFERENCES transfers(rowid) ON DELETE CASCADE,
        entry INTEGER NOT NULL,
        PRIMARY KEY(transfer, entry)
    ) WITHOUT ROWID;",
    // 2: the user compared safety numbers with this peer (when).
    "ALTER TABLE contacts ADD COLUMN verified_ms INTEGER;",
    // 3: what the receiver's user was asked about (a resume must offer the same).
    "ALTER TABLE transfers ADD COLUMN manifest BLOB;",
    // 4: the key each relay (as the user names it) presented first, or was given.
    "CREATE TABLE relay_keys(
        relay TEXT PRIMARY KEY,
        key BLOB NOT NULL,
        pinned_ms INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // 5: contacts the user chose (when), and the user's own name for each (nothing from the
    // network changes it). People the user wrote to or verified before were chosen.
    "ALTER TABLE contacts ADD COLUMN chosen_ms INTEGER;
    ALTER TABLE contacts ADD COLUMN petname TEXT;
    UPDATE contacts SET chosen_ms = first_seen_ms, petname = name
        WHERE verified_ms IS NOT NULL
           OR peer IN (SELECT peer FROM messages WHERE outgoing = 1);",
    // 6: messages from people who are not contacts, kept apart until the user accepts them.
    "ALTER TABLE messages ADD COLUMN request INTEGER NOT NULL DEFAULT 0;",
    // 7: the other relays of a relay's cluster, as it last listed them (with their keys):
    // where to go when it cannot be reached.
    "CREATE TABLE cluster_relays(
        relay TEXT NOT NULL,
        addr TEXT NOT NULL,
        key BLOB NOT NULL,
        region TEXT NOT NULL,
        listed_ms INTEGER NOT NULL,
        PRIMARY KEY(relay, addr)
    ) WITHOUT ROWID;",
];

/// Most relays of a cluster remembered for one configured relay.
pub const MAX_CLUSTER_RELAYS: usize = 64;

/// Another relay of a configured relay's cluster, as that relay listed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRelay {
    /// Where it is, `host:port`.
    pub addr: String,
    /// Its key.
    pub key: PeerId,
    /// Its region.
    pub region: String,
}

/// Most messages kept from one sender who is not a contact (a message request) until the user
/// accepts or deletes them; more wait on the sender's side.
pub const MAX_REQUEST_MESSAGES_PER_PEER: i64 = 20;
/// Most senders with a message request at once.
pub const MAX_REQUEST_PEERS: i64 = 50;

/// Where a message stands. Outgoing: queued → sent → delivered → read. Incoming: received,
/// then read once our user has seen it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MessageState {
    /// Stored here, not yet handed to the peer.
    Queued,
    /// Written to the peer's connection, not yet confirmed stored.
    Sent,
    /// The peer stored it.
    Delivered,
    /// The reader has seen it.
    Read,
    /// Incoming, not yet seen by our user.
    Received,
}

impl MessageState {
    fn code(self) -> i64 {
        match self {
            Self::Queued => 0,
            Self::Sent => 1,
            Self::Delivered => 2,
            Self::Read => 3,
            Self::Received => 4,
        }
    }

    fn from_code(c: i64) -> Result<Self> {
        Ok(match c {
            0 => Self::Queued,
            1 => Self::Sent,
            2 => Self::Delivered,
            3 => Self::Read,
            4 => Self::Received,
            _ => return Err(StoreError::Corrupt("messages.state")),
        })
    }

    /// The state named `s` (as [`MessageState::as_str`] writes it).
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::Sent,
            Self::Delivered,
            Self::Read,
            Self::Received,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
    }

    /// Lower-case name for output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Read => "read",
            Self::Received => "received",
        }
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Local row (pagination cursor; larger is newer).
    pub rowid: i64,
    /// The other side of the conversation.
    pub peer: PeerId,
    /// We wrote it.
    pub outgoing: bool,
    /// Sender-chosen id.
    pub id: MessageId,
    /// Sender's sequence number in the conversation.
    pub seq: u64,
    /// Sender's clock at writing, ms since the epoch.
    pub sent_ms: u64,
    /// Our clock when it arrived (incoming only).
    pub received_ms: Option<u64>,
    /// The text.
    pub text: String,
    /// Where it stands.
    pub state: MessageState,
    /// From someone who is not a contact: kept apart until the user accepts (or deletes) it.
    pub request: bool,
}

/// What became of an incoming message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Stored now.
    New(Message),
    /// Stored before (the sender retried).
    Again,
    /// Not stored: the sender is not a contact and message requests are full (from this
    /// sender, or from too many). The sender keeps it and tries again later.
    RequestsFull,
}

/// Someone who is not a contact wrote: their messages, kept apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRequest {
    /// The sender.
    pub peer: PeerId,
    /// The name it announced last (its fingerprint if none).
    pub name: String,
    /// How many messages wait.
    pub messages: u64,
    /// When the first arrived, ms since the epoch.
    pub first_ms: u64,
    /// The newest message's text.
    pub last_text: String,
}

/// A known peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// Its key.
    pub peer: PeerId,
    /// Last display name seen.
    pub name: String,
    /// First seen, ms since the epoch.
    pub first_seen_ms: u64,
    /// Last seen, ms since the epoch.
    pub last_seen_ms: u64,
    /// When our user verified this key (compared safety numbers), if they did.
    pub verified_ms: Option<u64>,
    /// When our user made it a contact (`None`: only seen on the network).
    pub chosen_ms: Option<u64>,
    /// Our user's name for it (set when it was chosen; the network never changes it).
    pub petname: Option<String>,
}

impl Contact {
    /// The name to show and to type: the user's own for a contact, else the announced one.
    pub fn shown_name(&self) -> &str {
        self.petname.as_deref().unwrap_or(&self.name)
    }
}

/// How far the user trusts a peer (ordered: each level includes the ones below).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Trust {
    /// Not a contact (at most seen on the network).
    Stranger,
    /// A contact the user chose.
    Contact,
    /// A contact whose safety number the user compared.
    Verified,
}

impl std::str::FromStr for Trust {
    type Err = String;
    /// `anyone`, `contacts` or `verified` (who a policy accepts at least).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "anyone" => Ok(Self::Stranger),
            "contacts" => Ok(Self::Contact),
            "verified" => Ok(Self::Verified),
            other => Err(format!("{other:?}: use contacts, verified or anyone")),
        }
    }
}

impl Trust {
    /// The word a policy names it by (`anyone`, `contacts`, `verified`).
    pub fn as_policy(self) -> &'static str {
        match self {
            Self::Stranger => "anyone",
            Self::Contact => "contacts",
            Self::Verified => "verified",
        }
    }
}

/// Where a transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferState {
    /// Offered, no answer yet (or interrupted before one).
    Offered,
    /// Accepted, data flowing or interrupted (resumable).
    Active,
    /// Every file verified and in place.
    Done,
    /// The receiver said no.
    Rejected,
    /// A user cancelled.
    Cancelled,
    /// Failed for good.
    Failed,
}

impl TransferState {
    fn code(self) -> i64 {
        match self {
            Self::Offered => 0,
            Self::Active => 1,
            Self::Done => 2,
            Self::Rejected => 3,
            Self::Cancelled => 4,
            Self::Failed => 5,
        }
    }

    fn from_code(c: i64) -> Result<Self> {
        Ok(match c {
            0 => Self::Offered,
            1 => Self::Active,
            2 => Self::Done,
            3 => Self::Rejected,
            4 => Self::Cancelled,
            5 => Self::Failed,
            _ => return Err(StoreError::Corrupt("transfers.state")),
        })
    }

    /// Whether a retry may resume it.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Offered | Self::Active)
    }

    /// Lower-case name for output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Offered => "offered",
            Self::Active => "active",
            Self::Done => "done",
            Self::Rejected => "rejected",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
        }
    }
}

/// A transfer as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferRecord {
    /// Local row.
    pub rowid: i64,
    /// The other side.
    pub peer: PeerId,
    /// We send.
    pub outgoing: bool,
    /// Sender-chosen id.
    pub id: TransferId,
    /// Where it stands.
    pub state: TransferState,
    /// Created, ms since the epoch.
    pub created_ms: u64,
    /// Last change of state (an attempt started or stopped), ms since the epoch.
    pub updated_ms: u64,
    /// Sum of file sizes.
    pub total_bytes: u64,
    /// Number of files.
    pub files: u64,
    /// Sender: the paths the user gave.
    pub sources: Vec<PathBuf>,
    /// Receiver: the folder it lands in.
    pub dest: Option<PathBuf>,
    /// Last error.
    pub error: Option<String>,
}

/// A verified chunk of a received file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRecord {
    /// Manifest entry.
    pub entry: u32,
    /// Chunk index.
    pub index: u64,
    /// Its chaining value.
    pub cv: [u8; 32],
}

/// The database. Cheap operations, safe to share between threads.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
}

fn blob16(b: Vec<u8>, col: &'static str) -> Result<[u8; 16]> {
    b.try_into().map_err(|_| StoreError::Corrupt(col))
}

fn blob32(b: Vec<u8>, col: &'static str) -> Result<[u8; 32]> {
    b.try_into().map_err(|_| StoreError::Corrupt(col))
}

const MESSAGE_COLS: &str =
    "rowid, peer, outgoing, id, seq, sent_ms, received_ms, text, state, request";

type RawMessage = (
    i64,
    Vec<u8>,
    bool,
    Vec<u8>,
    i64,
    i64,
    Option<i64>,
    String,
    i64,
    bool,
);

fn raw_message(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawMessage> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
    ))
}

fn message(m: RawMessage) -> Result<Message> {
    let (rowid, peer, outgoing, id, seq, sent_ms, received_ms, text, state, request) = m;
    Ok(Message {
        rowid,
        peer: PeerId::from_bytes(blob32(peer, "messages.peer")?),
        outgoing,
        id: MessageId::from_bytes(blob16(id, "messages.id")?),
        seq: seq as u64,
        sent_ms: sent_ms as u64,
        received_ms: received_ms.map(|v| v as u64),
        text,
        state: MessageState::from_code(state)?,
        request,
    })
}

const TRANSFER_COLS: &str = "rowid, peer, outgoing, id, state, created_ms, total_bytes, files, sources, dest, error, updated_ms";

type RawTransfer = (
    i64,
    Vec<u8>,
    bool,
    Vec<u8>,
    i64,
    i64,
    i64,
    i64,
    String,
    Option<String>,
    Option<String>,
    i64,
);

fn raw_transfer(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawTransfer> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
    ))
}

fn transfer(t: RawTransfer) -> Result<TransferRecord> {
    let (rowid, peer, outgoing, id, state, created_ms, total, files, sources, dest, error, updated) =
        t;
    Ok(TransferRecord {
        rowid,
        peer: PeerId::from_bytes(blob32(peer, "transfers.peer")?),
        outgoing,
        id: TransferId::from_bytes(blob16(id, "transfers.id")?),
        state: TransferState::from_code(state)?,
        created_ms: created_ms as u64,
        updated_ms: updated as u64,
        total_bytes: total as u64,
        files: files as u64,
        sources: sources
            .split('\n')
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect(),
        dest: dest.map(PathBuf::from),
        error,
    })
}

fn join_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Milliseconds since the Unix epoch (the store's timestamps).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Store {
    /// Opens (or creates) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let conn = Connection::open(path)?;
        Self::init(conn, path)
    }

    /// A database in memory (tests, demos).
    pub fn open_in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory()?, Path::new(":memory:"))
    }

    fn init(mut conn: Connection, path: &Path) -> Result<Self> {
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew {
                path: path.to_path_buf(),
                found: version,
                known,
            });
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(m)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn db(&self) -> Result<MutexGuard<'_, Connection>> {
        Ok(self.conn.lock())
    }

    /// Schema version of the open database.
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .db()?
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// Runs SQLite's integrity check; `Ok(true)` if the file is sound.
    pub fn integrity_ok(&self) -> Result<bool> {
        let s: String = self
            .db()?
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        Ok(s == "ok")
    }

    // ---- contacts ----

    /// Records that `peer` was seen with `name`.
    pub fn touch_contact(&self, peer: &PeerId, name: &str, now_ms: u64) -> Result<()> {
        self.touch_contacts(&[(*peer, name)], now_ms)
    }

    /// Records that each peer was seen with its name, in one transaction (one disk sync for
    /// a whole presence snapshot instead of one per peer).
    pub fn touch_contacts(&self, seen: &[(PeerId, &str)], now_ms: u64) -> Result<()> {
        let mut db = self.db()?;
        let tx = db.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO contacts(peer, name, first_seen_ms, last_seen_ms) VALUES (?1, ?2, ?3, ?3)
                 ON CONFLICT(peer) DO UPDATE SET name = excluded.name, last_seen_ms = excluded.last_seen_ms",
            )?;
            for (peer, name) in seen {
                stmt.execute(params![peer.as_bytes().as_slice(), name, now_ms as i64])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Marks `peer` (seen as `name`) verified by our user at `now_ms`, or not verified.
    pub fn set_verified(
        &self,
        peer: &PeerId,
        name: &str,
        verified: bool,
        now_ms: u64,
    ) -> Result<()> {
        let at = verified.then_some(now_ms as i64);
        self.db()?.execute(
            "INSERT INTO contacts(peer, name, first_seen_ms, last_seen_ms, verified_ms)
             VALUES (?1, ?2, ?3, ?3, ?4)
             ON CONFLICT(peer) DO UPDATE SET verified_ms = excluded.verified_ms",
            params![peer.as_bytes().as_slice(), name, now_ms as i64, at],
        )?;
        Ok(())
    }

    /// The name `peer` was last seen under, if it is a contact.
    pub fn contact_name(&self, peer: &PeerId) -> Result<Option<String>> {
        Ok(self
            .db()?
            .query_row(
                "SELECT name FROM contacts WHERE peer = ?1",
                params![peer.as_bytes().as_slice()],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// How far the user trusts `peer`: chosen as a contact, and verified.
    pub fn trust(&self, peer: &PeerId) -> Result<Trust> {
        let row: Option<(Option<i64>, Option<i64>)> = self
            .db()?
            .query_row(
                "SELECT chosen_ms, verified_ms FROM contacts WHERE peer = ?1",
                params![peer.as_bytes().as_slice()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(match row {
            Some((_, Some(_))) => Trust::Verified,
            Some((Some(_), None)) => Trust::Contact,
            _ => Trust::Stranger,
        })
    }

    /// Every known peer, most recently seen first.
    pub fn contacts(&self) -> Result<Vec<Contact>> {
        let db = self.db()?;
        let mut st = db.prepare(
            "SELECT peer, name, first_seen_ms, last_seen_ms, verified_ms, chosen_ms, petname
             FROM contacts ORDER BY last_seen_ms DESC",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                (
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ),
                (
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                    r.get::<_, Option<String>>(6)?,
                ),
            ))
        })?;
        rows.map(|r| {
            let ((peer, name, first, last), (verified, chosen, petname)) = r?;
            Ok(Contact {
                peer: PeerId::from_bytes(blob32(peer, "contacts.peer")?),
                name,
                first_seen_ms: first as u64,
                last_seen_ms: last as u64,
                verified_ms: verified.map(|v| v as u64),
                chosen_ms: chosen.map(|v| v as u64),
                petname,
            })
        })
        .collect()
    }

    /// Makes `peer` a contact (if it is not one yet) under `petname`, or under the name it
    /// announces (`announced`) when none is given; a contact's petname changes only when a
    /// new one is given.
    pub fn choose_contact(
        &self,
        peer: &PeerId,
        petname: Option<&str>,
        announced: &str,
        now_ms: u64,
    ) -> Result<()> {
        self.db()?.execute(
            "INSERT INTO contacts(peer, name, first_seen_ms, last_seen_ms, chosen_ms, petname)
             VALUES (?1, ?2, ?3, ?3, ?3, COALESCE(?4, ?2))
             ON CONFLICT(peer) DO UPDATE SET
                chosen_ms = COALESCE(chosen_ms, excluded.chosen_ms),
                petname = COALESCE(?4, petname, excluded.petname)",
            params![
                peer.as_bytes().as_slice(),
                announced,
                now_ms as i64,
                petname
            ],
        )?;
        Ok(())
    }

    // ---- chat ----

    /// Stores a new outgoing message as queued, with a fresh id and the next sequence number.
    pub fn queue_message(&self, peer: &PeerId, text: &str, now_ms: u64) -> Result<Message> {
        let mut db = self.db()?;
        let tx = db.transaction()?;
        let seq: i64 = tx.query_row(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM messages WHERE peer = ?1 AND outgoing = 1",
            params![peer.as_bytes().as_slice()],
            |r| r.get(0),
        )?;
        let id = MessageId::from_bytes(rand::random());
        tx.execute(
            "INSERT INTO messages(peer, outgoing, id, seq, sent_ms, text, state) VALUES (?1, 1, ?2, ?3, ?4, ?5, ?6)",
            params![peer.as_bytes().as_slice(), id.as_bytes().as_slice(), seq, now_ms as i64, text, MessageState::Queued.code()],
        )?;
        let rowid = tx.last_insert_rowid();
        tx.commit()?;
        Ok(Message {
            rowid,
            peer: *peer,
            outgoing: true,
            id,
            seq: seq as u64,
            sent_ms: now_ms,
            received_ms: None,
            text: text.to_string(),
            state: MessageState::Queued,
            request: false,
        })
    }

    /// Outgoing messages to `peer` not yet confirmed stored there, in sequence order.
    pub fn undelivered(&self, peer: &PeerId) -> Result<Vec<Message>> {
        let db = self.db()?;
        let mut st = db.prepare(&format!(
            "SELECT {MESSAGE_COLS} FROM messages WHERE peer = ?1 AND outgoing = 1 AND state < ?2 ORDER BY seq"
        ))?;
        let rows = st.query_map(
            params![peer.as_bytes().as_slice(), MessageState::Delivered.code()],
            raw_message,
        )?;
        rows.map(|r| message(r?)).collect()
    }

    /// Moves an outgoing message forward to `state` (never backwards). Returns whether it
    /// changed.
    pub fn advance(&self, peer: &PeerId, id: &MessageId, state: MessageState) -> Result<bool> {
        let n = self.db()?.execute(
            "UPDATE messages SET state = ?3 WHERE peer = ?1 AND outgoing = 1 AND id = ?2 AND state < ?3",
            params![peer.as_bytes().as_slice(), id.as_bytes().as_slice(), state.code()],
        )?;
        Ok(n > 0)
    }

    /// Stores an incoming message: in the conversation when the sender is a contact, else as
    /// a message request, within [`MAX_REQUEST_MESSAGES_PER_PEER`] and [`MAX_REQUEST_PEERS`].
    pub fn receive_message(
        &self,
        peer: &PeerId,
        id: &MessageId,
        seq: u64,
        sent_ms: u64,
        text: &str,
        now_ms: u64,
    ) -> Result<Received> {
        let mut db = self.db()?;
        let tx = db.transaction()?;
        let key = peer.as_bytes().as_slice();
        let contact: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM contacts WHERE peer = ?1 AND chosen_ms IS NOT NULL)",
            params![key],
            |r| r.get(0),
        )?;
        let request = !contact;
        if request {
            let again: bool = tx.query_row(
                "SELECT EXISTS(SELECT 1 FROM messages WHERE peer = ?1 AND outgoing = 0 AND id = ?2)",
                params![key, id.as_bytes().as_slice()],
                |r| r.get(0),
            )?;
            if again {
                return Ok(Received::Again);
            }
            let (mine, others): (i64, i64) = tx.query_row(
                "SELECT COUNT(*) FILTER (WHERE peer = ?1),
                        COUNT(DISTINCT peer) FILTER (WHERE peer != ?1)
                 FROM messages WHERE outgoing = 0 AND request = 1",
                params![key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if mine >= MAX_REQUEST_MESSAGES_PER_PEER || (mine == 0 && others >= MAX_REQUEST_PEERS) {
                return Ok(Received::RequestsFull);
            }
        }
        let n = tx.execute(
            "INSERT OR IGNORE INTO messages(peer, outgoing, id, seq, sent_ms, received_ms, text, state, request)
             VALUES (?1, 0, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                key,
                id.as_bytes().as_slice(),
                seq.min(i64::MAX as u64) as i64,
                sent_ms.min(i64::MAX as u64) as i64,
                now_ms as i64,
                text,
                MessageState::Received.code(),
                request
            ],
        )?;
        if n == 0 {
            return Ok(Received::Again);
        }
        let rowid = tx.last_insert_rowid();
        tx.commit()?;
        Ok(Received::New(Message {
            rowid,
            peer: *peer,
            outgoing: false,
            id: *id,
            seq,
            sent_ms,
            received_ms: Some(now_ms),
            text: text.to_string(),
            state: MessageState::Received,
            request,
        }))
    }

    /// The message requests waiting, oldest first.
    pub fn message_requests(&self) -> Result<Vec<MessageRequest>> {
        let db = self.db()?;
        let mut st = db.prepare(
            "SELECT m.peer, c.name, COUNT(*), MIN(m.received_ms),
                    (SELECT text FROM messages l WHERE l.peer = m.peer AND l.request = 1
                     ORDER BY l.rowid DESC LIMIT 1)
             FROM messages m LEFT JOIN contacts c ON c.peer = m.peer
             WHERE m.outgoing = 0 AND m.request = 1
             GROUP BY m.peer ORDER BY MIN(m.rowid)",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        rows.map(|r| {
            let (peer, name, n, first, last_text) = r?;
            let peer = PeerId::from_bytes(blob32(peer, "messages.peer")?);
            Ok(MessageRequest {
                peer,
                name: name.unwrap_or_else(|| peer.fingerprint().to_string()),
                messages: n as u64,
                first_ms: first.unwrap_or_default() as u64,
                last_text,
            })
        })
        .collect()
    }

    /// The user accepts `peer`'s message request: `peer` becomes a contact (see
    /// [`Store::choose_contact`]) and its messages join the conversation. Returns how many
    /// messages joined.
    pub fn accept_request(
        &self,
        peer: &PeerId,
        petname: Option<&str>,
        announced: &str,
        now_ms: u64,
    ) -> Result<usize> {
        self.choose_contact(peer, petname, announced, now_ms)?;
        Ok(self.db()?.execute(
            "UPDATE messages SET request = 0 WHERE peer = ?1 AND request = 1",
            params![peer.as_bytes().as_slice()],
        )?)
    }

    /// The user deletes `peer`'s message request (its messages). Returns how many went.
    pub fn delete_request(&self, peer: &PeerId) -> Result<usize> {
        Ok(self.db()?.execute(
            "DELETE FROM messages WHERE peer = ?1 AND outgoing = 0 AND request = 1",
            params![peer.as_bytes().as_slice()],
        )?)
    }

    /// Up to `limit` messages with `peer` older than row `before` (newest page when `None`),
    /// oldest first.
    pub fn history(
        &self,
        peer: &PeerId,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Message>> {
        let db = self.db()?;
        let mut st = db.prepare(&format!(
            "SELECT {MESSAGE_COLS} FROM messages WHERE peer = ?1 AND rowid < ?2 ORDER BY rowid DESC LIMIT ?3"
        ))?;
        let rows = st.query_map(
            params![
                peer.as_bytes().as_slice(),
                before.unwrap_or(i64::MAX),
                limit.min(i64::MAX as usize) as i64
            ],
            raw_message,
        )?;
        let mut v = rows.map(|r| message(r?)).collect::<Result<Vec<_>>>()?;
        v.reverse();
        Ok(v)
    }

    /// Marks every incoming message from `peer` as read by our user and queues the read
    /// receipts. Returns how many changed.
    pub fn mark_read(&self, peer: &PeerId) -> Result<usize> {
        Ok(self.db()?.execute(
            // A request's sender learns nothing (not even that it was read) until accepted.
            "UPDATE messages SET state = ?2, receipt_pending = 1 WHERE peer = ?1 AND outgoing = 0 AND state = ?3 AND request = 0",
            params![
                peer.as_bytes().as_slice(),
                MessageState::Read.code(),
                MessageState::Received.code()
            ],
        )?)
    }

    /// Ids of incoming messages whose read receipt `peer` has not stored yet.
    pub fn pending_receipts(&self, peer: &PeerId) -> Result<Vec<MessageId>> {
        let db = self.db()?;
        let mut st = db.prepare(
            "SELECT id FROM messages WHERE peer = ?1 AND outgoing = 0 AND receipt_pending = 1 ORDER BY rowid",
        )?;
        let rows = st.query_map(params![peer.as_bytes().as_slice()], |r| {
            r.get::<_, Vec<u8>>(0)
        })?;
        rows.map(|r| blob16(r?, "messages.id").map(MessageId::from_bytes))
            .collect()
    }

    /// The peer stored these read receipts.
    pub fn receipts_sent(&self, peer: &PeerId, ids: &[MessageId]) -> Result<()> {
        let mut db = self.db()?;
        let tx = db.transaction()?;
        for id in ids {
            tx.execute(
                "UPDATE messages SET receipt_pending = 0 WHERE peer = ?1 AND outgoing = 0 AND id = ?2",
                params![peer.as_bytes().as_slice(), id.as_bytes().as_slice()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The peer read these of our messages; returns the ids that changed.
    pub fn apply_read(&self, peer: &PeerId, ids: &[MessageId]) -> Result<Vec<MessageId>> {
        let mut db = self.db()?;
        let tx = db.transaction()?;
        let mut changed = Vec::new();
        for id in ids {
            let n = tx.execute(
                "UPDATE messages SET state = ?3 WHERE peer = ?1 AND outgoing = 1 AND id = ?2 AND state < ?3",
                params![peer.as_bytes().as_slice(), id.as_bytes().as_slice(), MessageState::Read.code()],
            )?;
            if n > 0 {
                changed.push(*id);
            }
        }
        tx.commit()?;
        Ok(changed)
    }

    /// Unread incoming messages per peer.
    pub fn unread_counts(&self) -> Result<HashMap<PeerId, u64>> {
        let db = self.db()?;
        let mut st = db.prepare(
            "SELECT peer, COUNT(*) FROM messages WHERE outgoing = 0 AND state = ?1 AND request = 0 GROUP BY peer",
        )?;
        let rows = st.query_map(params![MessageState::Received.code()], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
        })?;
        rows.map(|r| {
            let (p, n) = r?;
            Ok((PeerId::from_bytes(blob32(p, "messages.peer")?), n as u64))
        })
        .collect()
    }

    /// Peers with something to deliver: undelivered messages or pending read receipts.
    pub fn peers_with_outbox(&self) -> Result<Vec<PeerId>> {
        let db = self.db()?;
        let mut st = db.prepare(
            "SELECT DISTINCT peer FROM messages WHERE (outgoing = 1 AND state < ?1) OR receipt_pending = 1",
        )?;
        let rows = st.query_map(params![MessageState::Delivered.code()], |r| {
            r.get::<_, Vec<u8>>(0)
        })?;
        rows.map(|r| Ok(PeerId::from_bytes(blob32(r?, "messages.peer")?)))
            .collect()
    }

    // ---- transfers ----

    /// Creates a transfer record (or returns the existing one with the same peer, direction
    /// and id).
    #[allow(clippy::too_many_arguments)]
    pub fn create_transfer(
        &self,
        peer: &PeerId,
        outgoing: bool,
        id: &TransferId,
        total_bytes: u64,
        files: u64,
        sources: &[PathBuf],
        dest: Option<&Path>,
        now_ms: u64,
    ) -> Result<TransferRecord> {
        let db = self.db()?;
        db.execute(
            "INSERT OR IGNORE INTO transfers(peer, outgoing, id, state, created_ms, updated_ms, total_bytes, files, sources, dest)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, ?8, ?9)",
            params![
                peer.as_bytes().as_slice(),
                outgoing,
                id.as_bytes().as_slice(),
                TransferState::Offered.code(),
                now_ms as i64,
                total_bytes.min(i64::MAX as u64) as i64,
                files.min(i64::MAX as u64) as i64,
                join_paths(sources),
                dest.map(|d| d.to_string_lossy().into_owned()),
            ],
        )?;
        let t = db.query_row(
            &format!("SELECT {TRANSFER_COLS} FROM transfers WHERE peer = ?1 AND outgoing = ?2 AND id = ?3"),
            params![peer.as_bytes().as_slice(), outgoing, id.as_bytes().as_slice()],
            raw_transfer,
        )?;
        transfer(t)
    }

    /// The transfer with this peer, direction and id.
    pub fn transfer(
        &self,
        peer: &PeerId,
        outgoing: bool,
        id: &TransferId,
    ) -> Result<Option<TransferRecord>> {
        let t = self
            .db()?
            .query_row(
                &format!("SELECT {TRANSFER_COLS} FROM transfers WHERE peer = ?1 AND outgoing = ?2 AND id = ?3"),
                params![peer.as_bytes().as_slice(), outgoing, id.as_bytes().as_slice()],
                raw_transfer,
            )
            .optional()?;
        t.map(transfer).transpose()
    }

    /// Unfinished outgoing transfers to `peer` (or to anyone), oldest first.
    pub fn open_outgoing(&self, peer: Option<&PeerId>) -> Result<Vec<TransferRecord>> {
        let db = self.db()?;
        let mut st = db.prepare(&format!(
            "SELECT {TRANSFER_COLS} FROM transfers WHERE outgoing = 1 AND state IN (0, 1)
             AND (?1 IS NULL OR peer = ?1) ORDER BY rowid"
        ))?;
        let rows = st.query_map(params![peer.map(|p| p.as_bytes().to_vec())], raw_transfer)?;
        rows.map(|r| transfer(r?)).collect()
    }

    /// Unfinished incoming transfers (offered or interrupted): their partial files wait
    /// for the sender to come back, or for `transfers clean`.
    pub fn open_incoming(&self) -> Result<Vec<TransferRecord>> {
        let db = self.db()?;
        let mut st = db.prepare(&format!(
            "SELECT {TRANSFER_COLS} FROM transfers WHERE outgoing = 0 AND state IN (0, 1) ORDER BY rowid"
        ))?;
        let rows = st.query_map([], raw_transfer)?;
        rows.map(|r| transfer(r?)).collect()
    }

    /// The newest transfers, any direction.
    pub fn recent_transfers(&self, limit: usize) -> Result<Vec<TransferRecord>> {
        let db = self.db()?;
        let mut st = db.prepare(&format!(
            "SELECT {TRANSFER_COLS} FROM transfers ORDER BY rowid DESC LIMIT ?1"
        ))?;
        let rows = st.query_map(params![limit.min(i64::MAX as usize) as i64], raw_transfer)?;
        rows.map(|r| transfer(r?)).collect()
    }

    /// Sets a transfer's state (and error text). Finished transfers drop their chunk records.
    pub fn set_transfer_state(
        &self,
        rowid: i64,
        state: TransferState,
        error: Option<&str>,
        now_ms: u64,
    ) -> Result<()> {
        let mut db = self.db()?;
        let tx = db.transaction()?;
        tx.execute(
            "UPDATE transfers SET state = ?2, error = ?3, updated_ms = ?4 WHERE rowid = ?1",
            params![rowid, state.code(), error, now_ms as i64],
        )?;
        if !state.is_open() {
            tx.execute(
                "DELETE FROM transfer_chunks WHERE transfer = ?1",
                params![rowid],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The key pinned for the relay the user calls `relay` (`HOST:PORT` as configured).
    pub fn relay_key(&self, relay: &str) -> Result<Option<PeerId>> {
        let v: Option<Vec<u8>> = self
            .db()?
            .query_row(
                "SELECT key FROM relay_keys WHERE relay = ?1",
                params![relay],
                |r| r.get(0),
            )
            .optional()?;
        v.map(|b| blob32(b, "relay_keys.key").map(PeerId::from_bytes))
            .transpose()
    }

    /// Pins `key` for `relay` (replacing an earlier pin: the user accepted the new key).
    pub fn pin_relay_key(&self, relay: &str, key: &PeerId, now_ms: u64) -> Result<()> {
        self.db()?.execute(
            "INSERT INTO relay_keys(relay, key, pinned_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(relay) DO UPDATE SET key = excluded.key, pinned_ms = excluded.pinned_ms",
            params![relay, key.as_bytes().as_slice(), now_ms as i64],
        )?;
        Ok(())
    }

    /// Replaces what is remembered of `relay`'s cluster (the relays it listed, itself left
    /// out by the caller), keeping at most [`MAX_CLUSTER_RELAYS`].
    pub fn set_cluster_relays(
        &self,
        relay: &str,
        list: &[ClusterRelay],
        now_ms: u64,
    ) -> Result<()> {
        let mut db = self.db()?;
        let tx = db.transaction()?;
        tx.execute(
            "DELETE FROM cluster_relays WHERE relay = ?1",
            params![relay],
        )?;
        for r in list.iter().take(MAX_CLUSTER_RELAYS) {
            tx.execute(
                "INSERT OR REPLACE INTO cluster_relays(relay, addr, key, region, listed_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    relay,
                    r.addr,
                    r.key.as_bytes().as_slice(),
                    r.region,
                    now_ms as i64
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The other relays `relay` last listed.
    pub fn cluster_relays(&self, relay: &str) -> Result<Vec<ClusterRelay>> {
        let db = self.db()?;
        let mut st = db.prepare(
            "SELECT addr, key, region FROM cluster_relays WHERE relay = ?1 ORDER BY addr",
        )?;
        let rows = st.query_map(params![relay], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (addr, key, region) = row?;
            out.push(ClusterRelay {
                addr,
                key: PeerId::from_bytes(blob32(key, "cluster_relays.key")?),
                region,
            });
        }
        Ok(out)
    }

    /// Records the hash of the manifest the user is asked about (see
    /// `p2pcall_transfer::control::manifest_hash`).
    pub fn set_transfer_manifest(&self, rowid: i64, hash: &[u8; 32]) -> Result<()> {
        self.db()?.execute(
            "UPDATE transfers SET manifest = ?2 WHERE rowid = ?1",
            params![rowid, hash.as_slice()],
        )?;
        Ok(())
    }

    /// The manifest hash recorded for a transfer (`None` before one was).
    pub fn transfer_manifest(&self, rowid: i64) -> Result<Option<[u8; 32]>> {
        let v: Option<Vec<u8>> = self.db()?.query_row(
            "SELECT manifest FROM transfers WHERE rowid = ?1",
            params![rowid],
            |r| r.get(0),
        )?;
        v.map(|b| blob32(b, "transfers.manifest")).transpose()
    }

    /// Forgets what an earlier attempt of a transfer left (its folder, names, verified
    /// chunks and files, manifest): it is offered again, as new.
    pub fn restart_transfer(&self, rowid: i64, now_ms: u64) -> Result<()> {
        let mut db = self.db()?;
        let tx = db.transaction()?;
        for table in ["transfer_names", "transfer_chunks", "transfer_files_done"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE transfer = ?1"),
                params![rowid],
            )?;
        }
        tx.execute(
            "UPDATE transfers SET state = ?2, dest = NULL, manifest = NULL, error = NULL, updated_ms = ?3 WHERE rowid = ?1",
            params![rowid, TransferState::Offered.code(), now_ms as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Sets the receiving folder.
    pub fn set_transfer_dest(&self, rowid: i64, dest: &Path) -> Result<()> {
        self.db()?.execute(
            "UPDATE transfers SET dest = ?2 WHERE rowid = ?1",
            params![rowid, dest.to_string_lossy().into_owned()],
        )?;
        Ok(())
    }

    /// The receiver's chosen names for the offer's top-level entries.
    pub fn top_names(&self, rowid: i64) -> Result<HashMap<String, String>> {
        let db = self.db()?;
        let mut st = db.prepare("SELECT top, name FROM transfer_names WHERE transfer = ?1")?;
        let rows = st.query_map(params![rowid], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records the chosen top-level names.
    pub fn set_top_names(&self, rowid: i64, names: &HashMap<String, String>) -> Result<()> {
        let mut db = self.db()?;
        let tx = db.transaction()?;
        for (top, name) in names {
            tx.execute(
                "INSERT OR REPLACE INTO transfer_names(transfer, top, name) VALUES (?1, ?2, ?3)",
                params![rowid, top, name],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records verified chunks, in one transaction.
    pub fn record_chunks(&self, rowid: i64, chunks: &[ChunkRecord]) -> Result<()> {
        let mut db = self.db()?;
        let tx = db.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT OR REPLACE INTO transfer_chunks(transfer, entry, idx, cv) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for c in chunks {
                st.execute(params![rowid, c.entry, c.index as i64, c.cv.as_slice()])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every verified chunk of a transfer.
    pub fn chunks(&self, rowid: i64) -> Result<Vec<ChunkRecord>> {
        let db = self.db()?;
        let mut st = db.prepare(
            "SELECT entry, idx, cv FROM transfer_chunks WHERE transfer = ?1 ORDER BY entry, idx",
        )?;
        let rows = st.query_map(params![rowid], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        rows.map(|r| {
            let (entry, index, cv) = r?;
            Ok(ChunkRecord {
                entry: u32::try_from(entry)
                    .map_err(|_| StoreError::Corrupt("transfer_chunks.entry"))?,
                index: index as u64,
                cv: blob32(cv, "transfer_chunks.cv")?,
            })
        })
        .collect()
    }

    /// Forgets chunks whose data turned out bad, and every chunk of files in `whole`.
    pub fn forget_chunks(&self, rowid: i64, bad: &[(u32, u64)], whole: &[u32]) -> Result<()> {
        let mut db = self.db()?;
        let tx = db.transaction()?;
        for (entry, idx) in bad {
            tx.execute(
                "DELETE FROM transfer_chunks WHERE transfer = ?1 AND entry = ?2 AND idx = ?3",
                params![rowid, entry, *idx as i64],
            )?;
        }
        for entry in whole {
            tx.execute(
                "DELETE FROM transfer_chunks WHERE transfer = ?1 AND entry = ?2",
                params![rowid, entry],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records that received files are verified and in place (and drops their chunks), in
    /// one transaction.
    pub fn files_done(&self, rowid: i64, entries: &[u32]) -> Result<()> {
        let mut db = self.db()?;
        let tx = db.transaction()?;
        for entry in entries {
            tx.execute(
                "INSERT OR IGNORE INTO transfer_files_done(transfer, entry) VALUES (?1, ?2)",
                params![rowid, entry],
            )?;
            tx.execute(
                "DELETE FROM transfer_chunks WHERE transfer = ?1 AND entry = ?2",
                params![rowid, entry],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Received files already in place.
    pub fn done_files(&self, rowid: i64) -> Result<HashSet<u32>> {
        let db = self.db()?;
        let mut st = db.prepare("SELECT entry FROM transfer_files_done WHERE transfer = ?1")?;
        let rows = st.query_map(params![rowid], |r| r.get::<_, u32>(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests;
