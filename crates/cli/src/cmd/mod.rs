//! One module per command.

pub(crate) mod call;
pub(crate) mod chat;
pub(crate) mod contacts;
pub(crate) mod daemon;
pub(crate) mod demo;
pub(crate) mod history;
pub(crate) mod id;
pub(crate) mod invite;
pub(crate) mod listen;
pub(crate) mod name;
pub(crate) mod netcheck;
pub(crate) mod offers;
pub(crate) mod peers;
pub(crate) mod ping;
pub(crate) mod relay;
pub(crate) mod requests;
pub(crate) mod ring;
pub(crate) mod send;
pub(crate) mod speedtest;
pub(crate) mod transfers;
