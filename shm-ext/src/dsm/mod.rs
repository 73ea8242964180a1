//! Distributed shared virtual memory, part 1: the protocol core (see
//! ../shared/ARCHITECTURE.md, "The DSM", and seed 001, MangoSoft's
//! "Shared memory computer networks").
//!
//! A paged 128-bit global space ([`addr`]) whose ranges are found through a
//! directory of 4 KiB pages ([`directory`]) naming each range's responsible
//! node. The responsible node keeps, per page, the owner and the copyset,
//! so pages migrate without directory changes. Every node caches pages
//! ([`cache`]) and runs a protocol engine ([`protocol`]) that turns local
//! faults and received messages ([`wire`]) into actions for the kernel.
//! A node keeps durable copies of pages on its own disk ([`durable`]: the
//! interface; [`store`]: the on-disk format). Needs the `alloc` feature (the engine's tables are `alloc` collections).
//!
//! # Coherence: single writer, many readers, by invalidation
//!
//! Like Li and Hudak's dynamic distributed manager, but the manager of a
//! page is its range's responsible node. The responsible node runs one
//! transaction per page at a time and queues the other requests; a
//! transaction ends only when the requester confirms, and each of its
//! messages is sent only after the previous one arrived. So when the next
//! transaction on a page starts no message of the last one is in flight,
//! and the protocol needs no ordering from the transport: messages between
//! different pairs of nodes, or on one pair, may be delayed and reordered
//! at will. (The extension layer does keep each (sender, port) stream in
//! order; the protocol does not rely on it.) A transaction is named by
//! (requester, txn); answers that name another are refused as `Unexpected`.
//!
//! | kind | name          | from -> to                  | meaning                                          |
//! |-----:|---------------|-----------------------------|--------------------------------------------------|
//! |    1 | ReadRequest   | requester -> responsible    | read fault: send me a read copy                  |
//! |    2 | WriteRequest  | requester -> responsible    | write fault: make me the owner, read-write       |
//! |    3 | ForwardRead   | responsible -> owner        | send a read copy to the requester; keep read only |
//! |    4 | ForwardWrite  | responsible -> owner        | send page and ownership to the requester, drop yours (owner = requester: upgrade in place) |
//! |    5 | Invalidate    | responsible -> copy holder  | drop your read copy                              |
//! |    6 | InvalidateAck | copy holder -> responsible  | dropped                                          |
//! |    7 | ReadCopy      | owner -> requester          | a read-only copy (4 KiB payload)                 |
//! |    8 | WriteCopy     | owner -> requester          | page and ownership, read-write (4 KiB payload); from the responsible node itself for a never-touched page (zeros) |
//! |    9 | Confirm       | requester -> responsible    | installed: the transaction is over               |
//! |   10 | Nack          | responsible -> requester    | refused: reason `NotAllocated` or `Unowned`      |
//! |   11 | Drop          | responsible -> holders      | the range was freed; drop the page (RAM and disk) |
//! |   12 | WriteBack     | owner -> responsible        | store this copy (4 KiB payload, stamp)           |
//! |   13 | WriteBackAck  | responsible -> owner        | on every holder's disk (reason: 0 or error code) |
//! |   14 | Replicate     | responsible/holder -> holder | store this copy (payload, stamp)                |
//! |   15 | ReplicaAck    | holder -> sender            | stored (reason: 0 or error code)                 |
//! |   16 | Release       | owner -> responsible        | my clean page leaves RAM; serve it from disk     |
//! |   17 | ReleaseAck    | responsible -> owner        | drop it (0) or keep it (`Busy`)                  |
//! |   18 | Fetch         | responsible -> holder       | send me your stored copy                         |
//! |   19 | Fetched       | holder -> responsible       | the stored copy (payload, stamp) or none         |
//! |   20 | SyncRequest   | initiator -> every node     | phase 1: write back your dirty pages of the range; phase 2: flush your disk |
//! |   21 | SyncDone      | node -> initiator           | phase done (version: 0 or error code)            |
//!
//! Read fault: ReadRequest; the responsible node sends ForwardRead to the
//! owner, which downgrades itself to read and sends ReadCopy; the requester
//! installs it read-only and confirms; the responsible node adds it to the
//! copyset. Write fault: WriteRequest; the responsible node invalidates
//! every copy but the owner's and the requester's and collects the acks,
//! then sends ForwardWrite (with the next version tag) to the owner, which
//! sends WriteCopy and drops its page; the requester installs it
//! read-write and confirms; the responsible node records it as owner with
//! an empty copyset. The first touch of a page, read or write, makes the
//! toucher its owner with a page of zeros. A node that is requester,
//! owner and responsible at once sends itself these messages; the engine
//! handles them within the same call. An owner never drops its page except
//! by handing it to the next writer, or on Drop.
//!
//! # Disks: write-back, replication, paging, recovery ([`durable`])
//!
//! Every page of a range has `copies` disk holders: the range's (acting)
//! responsible node, then the next live nodes in id order, those of its
//! group first. An owner writes a dirty page back to the responsible node,
//! which stores it and replicates it to the other holders before it
//! acknowledges; copies are ordered by a [`Stamp`] (version tag, then the
//! owner's write-back count), so a late or repeated copy never replaces a
//! newer one. A page in no node's RAM is loaded by the responsible node
//! from its disk (or fetched from another holder when its own disk was
//! reformatted or it stands in for a lost node) and handed out as a
//! `WriteCopy` flagged clean. The policy controller keeps at most
//! `ram_pages` pages in RAM: read copies are dropped, and clean owned pages
//! are released to the disks (dirty ones written back first). `sync` runs
//! two phases over every live node: write back the range's dirty pages and
//! the directory pages, then flush every disk. A lost node's ranges pass to
//! the next live node, the first holder after it, and `rereplicate`
//! restores the copies. The migration controller moves ownership to a
//! reader whose group sent the last `migrate_after` requests for the page.
//!
//! # Messages on the wire (little-endian; [`wire`])
//!
//! | offset | size | field          | value                                                  |
//! |-------:|-----:|----------------|--------------------------------------------------------|
//! |      0 |    4 | magic          | `b"DSM1"`                                              |
//! |      4 |    1 | kind           | 1..=21, as above                                       |
//! |      5 |    1 | flags          | bit 0 on a WriteCopy: the page equals its disk copy; else 0 |
//! |      6 |    2 | requester      | node whose fault the transaction serves (< nodes)      |
//! |      8 |    8 | txn            | the requester's transaction id                         |
//! |     16 |   16 | page           | global address of the page (page-aligned)              |
//! |     32 |    8 | version        | version tag (copies, ForwardWrite, stamps); sync: range pages; SyncDone: error code |
//! |     40 |    4 | reason         | Nack: the `DsmError` code (1 or 3); acks: 0 or a code; sync: the phase (1, 2); else 0 |
//! |     44 |    4 | payload length | 4096 for ReadCopy, WriteCopy, WriteBack, Replicate; 0 or 4096 for Fetched; else 0 |
//! |     48 |    8 | seq            | the stamp's write-back count (WriteBack, Replicate, Fetched, acks) |
//! |     56 | 4096 | page           | the page bytes                                         |
//!
//! The longest message is [`MAX_MESSAGE_LEN`] = 4,152 bytes: the transport
//! (extension-layer queues, port [`DSM_PORT`]) must take that much; the
//! default queues take 8,032. Decoding checks every field and the exact
//! length; a bad message is `BadMessage` or `NoSuchNode`, never a panic.
//!
//! # Directory pages (4 KiB, little-endian; [`directory`])
//!
//! | offset | size | field        | value                                                      |
//! |-------:|-----:|--------------|------------------------------------------------------------|
//! |      0 |    8 | magic        | `b"SHMDSMD1"`                                              |
//! |      8 |    4 | version      | 1                                                          |
//! |     12 |    2 | level        | 0 for a leaf; a child is one level below its parent (<= 16) |
//! |     14 |    2 | entry count  | 0..=62 (0 only for an empty root leaf)                     |
//! |     16 |   16 | own address  | this page's global address (below 2^64)                    |
//! |     32 |   16 | span first   | first address the page indexes                             |
//! |     48 |   16 | span last    | last address it indexes (inclusive)                        |
//! |     64 |   56 | reserved     | 0                                                          |
//! |    120 |    8 | checksum     | FNV-1a 64 of the 4096 bytes, this field read as 0          |
//! |    128 | 62 x 64 | entries   | sorted by address, disjoint; unused slots 0                |
//!
//! Entry (64 bytes):
//!
//! | offset | size | field             | leaf                                | interior                         |
//! |-------:|-----:|-------------------|-------------------------------------|----------------------------------|
//! |      0 |   16 | range first       | range start (in the page's span)    | child span start                 |
//! |     16 |   16 | range last        | range last byte (inclusive)         | child span last (contiguous cover of the span) |
//! |     32 |   16 | child page        | 0                                   | child's global address (< 2^64, not the root, not itself) |
//! |     48 |    2 | responsible node  | 0..64, or `0xffff`: none (`Unowned`) | the child page's responsible node |
//! |     50 |   14 | reserved          | 0                                   | 0                                |
//!
//! The root sits at global address 0 ([`ROOT_DIRECTORY`]) and spans the
//! whole data space `2^64 ..= 2^128 - 1`; its responsible node is node 0.
//! Directory page addresses come from per-node slices of `0 .. 2^64`, and
//! a directory page's responsible node is the node of its slice, so the
//! protocol can fetch one before any directory lookup.
//!
//! # Durable pages on a node's disk ([`store`])
//!
//! | blocks                        | holds                                                            |
//! |-------------------------------|------------------------------------------------------------------|
//! | 0, 1                          | superblock copies (`b"SHMOSDSK"`, version 1, node, geometry, 16 durable `u128` meta values, FNV-1a 64) |
//! | 2 .. 2 + table blocks         | entry table: 64-byte entries (page, stamp, serial, data FNV-1a 64, entry FNV-1a 64), entry `i` for data block `i` |
//! | data start .. + data blocks   | one page copy per block                                          |
//!
//! A save writes a free data block, then its table block; the previous
//! copy stays until the next flush, and on open the newest valid copy of
//! each page wins. Field offsets are in [`store`]'s documentation.
//!
//! # Driving the engine from a kernel
//!
//! `dsm_alloc(len)`: `AddressGenerator::allocate`, [`directory::insert`]
//! with this node as responsible, [`Engine::create_range`]. `dsm_map(addr)`:
//! [`directory::resolve`] (errors `NotAllocated`, `Unowned`), then
//! [`Engine::map_range`] and map the range's virtual pages with no access.
//! Page fault: [`Event::Fault`]; block the thread until an
//! [`Action::Resume`] for the page, then retry. Message on [`DSM_PORT`]:
//! [`Message::decode`], then [`Event::Message`]. `dsm_free`:
//! [`directory::remove`], then [`Engine::free_range`] on the responsible
//! node. Apply the returned actions in order. While `handle` runs no CPU
//! may write a DSM page the engine may send (uniprocessor: given; SMP:
//! hold the DSM lock and shoot down write mappings first).
//!
//! # Reports for the host ([`report`])
//!
//! The engine's state is in the nodes' RAM. Each kernel publishes a
//! [`report::NodeReport`] (its ranges, their pages' owners and copysets,
//! its directory page copies; versioned and checksummed, byte layout in
//! [`report`]) into its own region of the pool [`report::REPORT_POOL`] on
//! the shared device, where `shmos inspect` reads every node's.

pub mod addr;
pub mod cache;
pub mod directory;
pub mod durable;
pub mod error;
pub mod protocol;
pub mod report;
pub mod store;
pub mod wire;

pub use addr::{
    AddressGenerator, DATA_SPACE_START, GlobalAddr, GlobalRange, NO_NODE, PAGE_BYTES, PAGE_SIZE,
    ROOT_DIRECTORY, Space,
};
pub use cache::{CacheEntry, PageBuf, PageCache, Rights};
pub use directory::{DirEntry, DirectoryPage, DirectoryPages};
pub use durable::{BLOCK_BYTES, BlockDevice, Disk, DiskError, MemDisk, Stamp};
pub use error::DsmError;
pub use protocol::{Access, Action, Engine, Event, PageState, Policy, Stats};
pub use store::{Geometry, META_KEYS, OpenReport, PageStore, StoreRefused};
pub use wire::{DSM_PORT, Kind, MAX_MESSAGE_LEN, Message};
