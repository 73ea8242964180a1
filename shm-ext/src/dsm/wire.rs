//! Protocol messages and their byte encoding (see the table in
//! [`dsm`](super)). Decoding is the trust boundary: every field of a
//! received message is checked and a bad one is a named error.

use alloc::boxed::Box;

use super::addr::{GlobalAddr, PAGE_BYTES};
use super::cache::PageBuf;
use super::error::DsmError;

/// Magic at the start of every DSM message.
pub const MESSAGE_MAGIC: [u8; 4] = *b"DSM1";
/// Bytes of the message header.
pub const MESSAGE_HEADER_LEN: usize = 56;
/// Bytes of the largest message (header and one page); the transport's
/// queues must take messages this long (the extension layer's default
/// queues take 8,032 bytes).
pub const MAX_MESSAGE_LEN: usize = MESSAGE_HEADER_LEN + PAGE_BYTES;
/// Flags bit of a `WriteCopy` whose page equals its durable copy.
pub const FLAG_CLEAN: u8 = 1;
/// The extension-layer port DSM messages travel on.
pub const DSM_PORT: u32 = 15;

/// Byte offsets of the header fields.
pub mod field {
    /// Magic, 4 bytes.
    pub const MAGIC: usize = 0;
    /// Kind, u8.
    pub const KIND: usize = 4;
    /// Flags, u8 (0).
    pub const FLAGS: usize = 5;
    /// Requester node, u16.
    pub const REQUESTER: usize = 6;
    /// Transaction id, u64.
    pub const TXN: usize = 8;
    /// Page global address, u128.
    pub const PAGE: usize = 16;
    /// Version tag, u64.
    pub const VERSION: usize = 32;
    /// Refusal code (Nack), u32.
    pub const REASON: usize = 40;
    /// Payload length, u32.
    pub const PAYLOAD_LEN: usize = 44;
    /// Write-back sequence within the version (stamps), u64.
    pub const SEQ: usize = 48;
}

/// What a message asks or tells.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Kind {
    /// Requester -> responsible: I need a read copy.
    ReadRequest = 1,
    /// Requester -> responsible: I need the page writable (ownership).
    WriteRequest = 2,
    /// Responsible -> owner: send a read copy to the requester, keep read.
    ForwardRead = 3,
    /// Responsible -> owner: send the page and ownership to the requester.
    ForwardWrite = 4,
    /// Responsible -> copy holder: drop your read copy, then ack.
    Invalidate = 5,
    /// Copy holder -> responsible: dropped.
    InvalidateAck = 6,
    /// Owner -> requester: a read-only copy (payload: the page).
    ReadCopy = 7,
    /// Owner (or responsible, for a never-touched page) -> requester: the
    /// page with ownership and write rights (payload: the page).
    WriteCopy = 8,
    /// Requester -> responsible: installed; the transaction is over.
    Confirm = 9,
    /// Responsible -> requester: refused (reason: a `DsmError` code).
    Nack = 10,
    /// Responsible -> holder: the range was freed; drop the page (from RAM
    /// and disk).
    Drop = 11,
    /// Owner -> responsible: store this copy durably (payload; stamp in
    /// version and seq).
    WriteBack = 12,
    /// Responsible -> owner: stored on every disk that should hold it
    /// (reason: 0, or the error code).
    WriteBackAck = 13,
    /// Responsible (or any holder, restoring copies) -> holder: store this
    /// copy (payload, stamp).
    Replicate = 14,
    /// Holder -> sender of a Replicate: stored (reason: 0 or the error).
    ReplicaAck = 15,
    /// Owner -> responsible: my clean page may leave RAM; the disks have it.
    Release = 16,
    /// Responsible -> owner: drop it (reason 0) or keep it (reason Busy).
    ReleaseAck = 17,
    /// Responsible -> holder: send me your stored copy of the page.
    Fetch = 18,
    /// Holder -> responsible: the stored copy (payload, stamp), or none
    /// (no payload).
    Fetched = 19,
    /// Initiator -> every node: make your writes in the range durable
    /// (reason 1: write back dirty pages; reason 2: flush your disk). The
    /// page field is the range start, version its length in pages, txn the
    /// sync id.
    SyncRequest = 20,
    /// Node -> initiator: done (reason: the phase; version: 0 or an error
    /// code).
    SyncDone = 21,
}

impl Kind {
    /// The kind with wire value `v`.
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::ReadRequest,
            2 => Self::WriteRequest,
            3 => Self::ForwardRead,
            4 => Self::ForwardWrite,
            5 => Self::Invalidate,
            6 => Self::InvalidateAck,
            7 => Self::ReadCopy,
            8 => Self::WriteCopy,
            9 => Self::Confirm,
            10 => Self::Nack,
            11 => Self::Drop,
            12 => Self::WriteBack,
            13 => Self::WriteBackAck,
            14 => Self::Replicate,
            15 => Self::ReplicaAck,
            16 => Self::Release,
            17 => Self::ReleaseAck,
            18 => Self::Fetch,
            19 => Self::Fetched,
            20 => Self::SyncRequest,
            21 => Self::SyncDone,
            _ => return None,
        })
    }

    /// True for the kinds that carry a page.
    pub const fn carries_page(self) -> bool {
        matches!(
            self,
            Self::ReadCopy | Self::WriteCopy | Self::WriteBack | Self::Replicate
        )
    }

    /// True for the kinds that may carry a page or not (`Fetched`).
    pub const fn may_carry_page(self) -> bool {
        matches!(self, Self::Fetched)
    }
}

/// One protocol message. A transaction is named by (requester, txn).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Message {
    /// What it is.
    pub kind: Kind,
    /// The node whose fault the transaction serves.
    pub requester: u16,
    /// The requester's transaction id (unique per requester).
    pub txn: u64,
    /// The page concerned.
    pub page: GlobalAddr,
    /// Version tag of the page (copies, ForwardWrite), else 0.
    pub version: u64,
    /// Refusal code for a Nack, error code of an acknowledgement, phase of
    /// a sync message, else 0.
    pub reason: u32,
    /// Write-back sequence within the version (messages carrying a stamp).
    pub seq: u64,
    /// Flag bit 0 of a copy: the page equals its durable copy on disk.
    pub clean: bool,
    /// The page bytes, for ReadCopy and WriteCopy only.
    pub data: Option<Box<PageBuf>>,
}

impl Message {
    /// A message without page bytes.
    pub fn new(kind: Kind, requester: u16, txn: u64, page: GlobalAddr) -> Self {
        Self {
            kind,
            requester,
            txn,
            page,
            version: 0,
            reason: 0,
            seq: 0,
            clean: false,
            data: None,
        }
    }

    /// The stamp a copy-carrying message names (version, seq).
    pub fn stamp(&self) -> super::durable::Stamp {
        super::durable::Stamp {
            version: self.version,
            seq: self.seq,
        }
    }

    /// Sets the message's version and seq from `stamp`.
    pub fn set_stamp(&mut self, stamp: super::durable::Stamp) {
        self.version = stamp.version;
        self.seq = stamp.seq;
    }

    /// Bytes `encode` writes.
    pub fn encoded_len(&self) -> usize {
        MESSAGE_HEADER_LEN + if self.data.is_some() { PAGE_BYTES } else { 0 }
    }

    /// Writes the message into `out`; returns the bytes written, or
    /// `BadMessage` if `out` is too short or page bytes are missing or
    /// present against the kind.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, DsmError> {
        if !self.kind.may_carry_page() && self.kind.carries_page() != self.data.is_some() {
            return Err(DsmError::BadMessage {
                what: "page bytes do not match the kind",
            });
        }
        let len = self.encoded_len();
        let out = out.get_mut(..len).ok_or(DsmError::BadMessage {
            what: "buffer too short",
        })?;
        out[..MESSAGE_HEADER_LEN].fill(0);
        out[field::MAGIC..field::MAGIC + 4].copy_from_slice(&MESSAGE_MAGIC);
        out[field::KIND] = self.kind as u8;
        out[field::FLAGS] = u8::from(self.clean);
        out[field::REQUESTER..field::REQUESTER + 2].copy_from_slice(&self.requester.to_le_bytes());
        out[field::TXN..field::TXN + 8].copy_from_slice(&self.txn.to_le_bytes());
        out[field::PAGE..field::PAGE + 16].copy_from_slice(&self.page.0.to_le_bytes());
        out[field::VERSION..field::VERSION + 8].copy_from_slice(&self.version.to_le_bytes());
        out[field::REASON..field::REASON + 4].copy_from_slice(&self.reason.to_le_bytes());
        out[field::SEQ..field::SEQ + 8].copy_from_slice(&self.seq.to_le_bytes());
        let payload = (len - MESSAGE_HEADER_LEN) as u32;
        out[field::PAYLOAD_LEN..field::PAYLOAD_LEN + 4].copy_from_slice(&payload.to_le_bytes());
        if let Some(d) = &self.data {
            out[MESSAGE_HEADER_LEN..].copy_from_slice(&d.0);
        }
        Ok(len)
    }

    /// Decodes a received message, from a cluster of `nodes` nodes.
    ///
    /// Checks magic, kind, flags, that the requester is a node of the
    /// cluster, that the page is page-aligned, the payload length against
    /// the kind and the buffer, and the Nack reason.
    pub fn decode(bytes: &[u8], nodes: u16) -> Result<Self, DsmError> {
        let bad = |what| DsmError::BadMessage { what };
        let h = bytes
            .get(..MESSAGE_HEADER_LEN)
            .ok_or(bad("shorter than a header"))?;
        if h[field::MAGIC..field::MAGIC + 4] != MESSAGE_MAGIC {
            return Err(bad("magic"));
        }
        let kind = Kind::from_u8(h[field::KIND]).ok_or(bad("unknown kind"))?;
        let flags = h[field::FLAGS];
        if flags & !FLAG_CLEAN != 0 || (flags != 0 && !matches!(kind, Kind::WriteCopy)) {
            return Err(bad("flags"));
        }
        let u16_at = |o: usize| u16::from_le_bytes([h[o], h[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let requester = u16_at(field::REQUESTER);
        if requester >= nodes {
            return Err(DsmError::NoSuchNode);
        }
        let mut p = [0u8; 16];
        p.copy_from_slice(&h[field::PAGE..field::PAGE + 16]);
        let page = GlobalAddr(u128::from_le_bytes(p));
        if !page.is_page_aligned() {
            return Err(bad("page address not page-aligned"));
        }
        let reason = u32_at(field::REASON);
        match kind {
            Kind::Nack if DsmError::from_nack_code(reason).is_none() => {
                return Err(bad("nack reason"));
            }
            Kind::Nack => {}
            Kind::WriteBackAck | Kind::ReplicaAck | Kind::ReleaseAck
                if reason != 0 && DsmError::from_ack_code(reason).is_none() =>
            {
                return Err(bad("acknowledgement error code"));
            }
            Kind::WriteBackAck | Kind::ReplicaAck | Kind::ReleaseAck => {}
            Kind::SyncRequest | Kind::SyncDone if !(1..=2).contains(&reason) => {
                return Err(bad("sync phase"));
            }
            Kind::SyncRequest | Kind::SyncDone => {}
            _ if reason != 0 => return Err(bad("reason set on a non-nack")),
            _ => {}
        }
        let payload = u32_at(field::PAYLOAD_LEN) as usize;
        let want = if kind.carries_page() { PAGE_BYTES } else { 0 };
        let optional = kind.may_carry_page() && (payload == 0 || payload == PAGE_BYTES);
        if payload != want && !optional {
            return Err(bad("payload length does not match the kind"));
        }
        if bytes.len() != MESSAGE_HEADER_LEN + payload {
            return Err(bad("message length does not match the payload length"));
        }
        let data = if payload == 0 {
            None
        } else {
            let mut d = PageBuf::zeroed();
            d.0.copy_from_slice(&bytes[MESSAGE_HEADER_LEN..]);
            Some(d)
        };
        Ok(Self {
            kind,
            requester,
            txn: u64_at(field::TXN),
            page,
            version: u64_at(field::VERSION),
            reason,
            seq: u64_at(field::SEQ),
            clean: flags & FLAG_CLEAN != 0,
            data,
        })
    }
}
