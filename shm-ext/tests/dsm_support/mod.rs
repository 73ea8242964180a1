//! Helpers for the DSM tests: an in-memory directory store, a seeded RNG,
//! and a simulated cluster whose network delivers messages in random order.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};

use shm_ext::dsm::protocol::Policy;
use shm_ext::dsm::{
    Access, Action, AddressGenerator, DirectoryPages, DsmError, Engine, Event, GlobalAddr,
    GlobalRange, MAX_MESSAGE_LEN, MemDisk, Message, PAGE_BYTES, PAGE_SIZE, PageBuf, Rights, Space,
};
use shm_ext::shm::NodeSet;

/// Directory pages in a map; blank (all-zero) where never written.
pub struct MemStore {
    pub pages: BTreeMap<GlobalAddr, Box<PageBuf>>,
    pub generator: AddressGenerator,
    pub node: u16,
    pub released: usize,
}

impl MemStore {
    /// A store whose new pages come from `node`'s directory slice.
    pub fn new(node: u16) -> Self {
        Self {
            pages: BTreeMap::new(),
            generator: AddressGenerator::new(node, Space::Directory).unwrap(),
            node,
            released: 0,
        }
    }
}

impl DirectoryPages for MemStore {
    fn load(&mut self, addr: GlobalAddr, out: &mut PageBuf) -> Result<(), DsmError> {
        match self.pages.get(&addr) {
            Some(p) => out.0.copy_from_slice(&p.0),
            None => out.0.fill(0),
        }
        Ok(())
    }
    fn store(&mut self, addr: GlobalAddr, page: &PageBuf) -> Result<(), DsmError> {
        self.pages.insert(addr, Box::new(page.clone()));
        Ok(())
    }
    fn allocate(&mut self) -> Result<(GlobalAddr, u16), DsmError> {
        Ok((self.generator.allocate(PAGE_SIZE)?.start(), self.node))
    }
    fn release(&mut self, addr: GlobalAddr) -> Result<(), DsmError> {
        self.pages.remove(&addr);
        self.released += 1;
        Ok(())
    }
}

/// xorshift64*: small, seeded, good enough to pick schedules.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A node's read or write of one 8-byte word, blocked on its fault.
#[derive(Clone, Copy, Debug)]
pub struct Op {
    pub page: GlobalAddr,
    pub word: usize,
    pub write: Option<u64>,
}

/// A message in flight, as bytes (so every delivery goes through decode).
pub struct InFlight {
    pub from: u16,
    pub to: u16,
    pub bytes: Vec<u8>,
}

/// N engines, a network that delivers any in-flight message next, and the
/// model: the value of every word in one global order of completed ops.
pub struct Sim {
    pub engines: Vec<Engine>,
    pub net: Vec<InFlight>,
    pub model: HashMap<GlobalAddr, Box<[u8; PAGE_BYTES]>>,
    pub pages: Vec<GlobalAddr>,
    pub blocked: Vec<Option<Op>>,
    resumed: Vec<bool>,
    /// What each node's "kernel" has mapped, from the actions in order.
    mapped: Vec<HashMap<GlobalAddr, Rights>>,
    pub completed: usize,
    pub delivered: usize,
    next_value: u64,
    /// Syncs reported finished: (node, id, result).
    pub synced: Vec<(u16, u64, Result<(), DsmError>)>,
    /// Nodes taken out of the cluster (their messages are dropped).
    pub lost: Vec<bool>,
    /// The ranges and their responsible nodes, as the directory has them.
    pub ranges: Vec<(GlobalRange, u16)>,
    /// The nodes chosen for a range's copies, as its directory entry has
    /// them (ranges not listed: ring order).
    pub placed: Vec<(GlobalRange, NodeSet)>,
}

fn word(bytes: &[u8], w: usize) -> u64 {
    u64::from_le_bytes(bytes[w * 8..w * 8 + 8].try_into().unwrap())
}

impl Sim {
    /// `nodes` engines; every range of `ranges` (start, pages, responsible)
    /// is created on its responsible node and mapped on all; `extra` pages
    /// (e.g. directory pages) are used as they are.
    pub fn new(nodes: u16, ranges: &[(GlobalRange, u16)], extra: &[GlobalAddr]) -> Self {
        let mut engines: Vec<Engine> = (0..nodes).map(|n| Engine::new(n, nodes).unwrap()).collect();
        let mut pages = Vec::new();
        for &(r, resp) in ranges {
            engines[usize::from(resp)].create_range(r).unwrap();
            for e in engines.iter_mut() {
                e.map_range(r, resp).unwrap();
            }
            for i in 0..r.pages() {
                pages.push(r.page(i).unwrap());
            }
        }
        pages.extend_from_slice(extra);
        let model = pages
            .iter()
            .map(|&p| (p, Box::new([0u8; PAGE_BYTES])))
            .collect();
        Self {
            blocked: vec![None; usize::from(nodes)],
            resumed: vec![false; usize::from(nodes)],
            mapped: vec![HashMap::new(); usize::from(nodes)],
            engines,
            net: Vec::new(),
            model,
            pages,
            completed: 0,
            delivered: 0,
            next_value: 1,
            synced: Vec::new(),
            lost: vec![false; usize::from(nodes)],
            ranges: ranges.to_vec(),
            placed: Vec::new(),
        }
    }

    /// Records on every node that `range`'s copies besides its responsible
    /// node's go to `replicas` (as `dsm_alloc` writes the directory entry).
    pub fn place(&mut self, range: GlobalRange, replicas: NodeSet) {
        for e in &mut self.engines {
            e.place_range(range, replicas).unwrap();
        }
        self.placed.push((range, replicas));
    }

    /// Gives every node a RAM disk and the policy: `copies` per page, at
    /// most `ram_pages` pages in RAM.
    pub fn with_disks(mut self, copies: u16, ram_pages: usize) -> Self {
        for e in &mut self.engines {
            e.set_disk(Box::new(MemDisk::new(u64::MAX)), true);
            e.set_policy(Policy {
                copies,
                ram_pages,
                ..Policy::default()
            });
        }
        self
    }

    /// Starts a sync of `range` on `node`; returns its id.
    pub fn sync(&mut self, node: u16, range: GlobalRange) -> u64 {
        let mut out = Vec::new();
        let id = self.engines[usize::from(node)]
            .sync(range, &mut out)
            .unwrap();
        self.apply(node, out);
        id
    }

    /// Every engine stops (RAM lost) and a new one starts on the same
    /// disk, learning the ranges from the directory; nodes in `without`
    /// are gone with their disks. Returns the new live set.
    pub fn restart(&mut self, without: &[u16]) -> NodeSet {
        let nodes = self.engines.len() as u16;
        let mut live = NodeSet::default();
        for n in 0..nodes {
            if !without.contains(&n) {
                live.insert(n);
            }
        }
        self.net.clear();
        for n in 0..nodes {
            let old = &mut self.engines[usize::from(n)];
            let disk = old.take_disk();
            let policy = old.policy().clone();
            let mut e = Engine::new(n, nodes).unwrap();
            e.set_policy(policy);
            if let Some(d) = disk
                && !without.contains(&n)
            {
                e.set_disk(d, true);
            }
            for &(r, resp) in &self.ranges {
                e.map_range(r, resp).unwrap();
            }
            for &(r, replicas) in &self.placed {
                e.place_range(r, replicas).unwrap();
            }
            let mut out = Vec::new();
            e.set_live(live, &mut out).unwrap();
            assert!(out.is_empty(), "a fresh engine has nothing to do");
            self.engines[usize::from(n)] = e;
            self.mapped[usize::from(n)].clear();
            self.blocked[usize::from(n)] = None;
            self.resumed[usize::from(n)] = false;
            self.lost[usize::from(n)] = without.contains(&n);
        }
        live
    }

    /// Every live node sends the pages on its disk to their other holders.
    pub fn rereplicate(&mut self) {
        for n in 0..self.engines.len() as u16 {
            if self.lost[usize::from(n)] {
                continue;
            }
            let mut after = None;
            loop {
                let mut out = Vec::new();
                after = self.engines[usize::from(n)].rereplicate(after, 16, &mut out);
                self.apply(n, out);
                if after.is_none() {
                    break;
                }
            }
        }
    }

    /// A random live node that is not blocked.
    pub fn idle_live(&self, rng: &mut Rng) -> Option<u16> {
        let idle: Vec<u16> = (0..self.engines.len() as u16)
            .filter(|&n| self.blocked[usize::from(n)].is_none() && !self.lost[usize::from(n)])
            .collect();
        (!idle.is_empty()).then(|| idle[rng.below(idle.len())])
    }

    fn apply(&mut self, node: u16, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Send { to, msg } => {
                    assert_ne!(to, node, "the engine handles its own messages");
                    let mut buf = vec![0u8; MAX_MESSAGE_LEN];
                    let len = msg.encode(&mut buf).unwrap();
                    buf.truncate(len);
                    self.net.push(InFlight {
                        from: node,
                        to,
                        bytes: buf,
                    });
                }
                Action::Map { page, rights } => {
                    self.mapped[usize::from(node)].insert(page, rights);
                }
                Action::Unmap { page } => {
                    self.mapped[usize::from(node)].remove(&page);
                }
                Action::Resume { page, result } => {
                    if let Some(op) = self.blocked[usize::from(node)]
                        && op.page == page
                    {
                        result.unwrap();
                        self.resumed[usize::from(node)] = true;
                    }
                }
                Action::Synced { id, result } => self.synced.push((node, id, result)),
            }
        }
        // Applied in order, the actions leave the mappings as the cache is
        // (a mapping never grants more than the engine holds).
        let e = &self.engines[usize::from(node)];
        for (page, rights) in &self.mapped[usize::from(node)] {
            assert!(
                *rights <= e.cache().rights(*page),
                "node {node} maps {page} {rights:?}"
            );
        }
        for (page, c) in e.cache().iter() {
            let m = self.mapped[usize::from(node)]
                .get(page)
                .copied()
                .unwrap_or(Rights::None);
            assert!(m <= c.rights, "node {node} maps {page} beyond its rights");
        }
    }

    fn handle(&mut self, node: u16, ev: Event) -> Result<(), DsmError> {
        let mut out = Vec::new();
        let r = self.engines[usize::from(node)].handle(ev, &mut out);
        self.apply(node, out);
        r
    }

    /// Does `node`'s blocked op if it now has the rights; faults again if
    /// it was resumed but the rights moved on meanwhile.
    fn try_complete(&mut self, node: u16) {
        let n = usize::from(node);
        let Some(op) = self.blocked[n] else { return };
        let need = if op.write.is_some() {
            Rights::Write
        } else {
            Rights::Read
        };
        if self.engines[n].cache().rights(op.page) >= need {
            let model = self.model.get_mut(&op.page).unwrap();
            match op.write {
                Some(v) => {
                    let p = self.engines[n].page_mut(op.page).unwrap();
                    p.0[op.word * 8..op.word * 8 + 8].copy_from_slice(&v.to_le_bytes());
                    model[op.word * 8..op.word * 8 + 8].copy_from_slice(&v.to_le_bytes());
                }
                None => {
                    let got = word(&self.engines[n].page(op.page).unwrap().0, op.word);
                    assert_eq!(
                        got,
                        word(&model[..], op.word),
                        "node {node} read a stale word of {}",
                        op.page
                    );
                }
            }
            self.blocked[n] = None;
            self.resumed[n] = false;
            self.completed += 1;
        } else if self.resumed[n] {
            self.resumed[n] = false;
            let access = if op.write.is_some() {
                Access::Write
            } else {
                Access::Read
            };
            self.handle(
                node,
                Event::Fault {
                    addr: op.page,
                    access,
                },
            )
            .unwrap();
        }
    }

    /// Node `node` starts `op` (it must not be blocked).
    pub fn start(&mut self, node: u16, op: Op) {
        let n = usize::from(node);
        assert!(self.blocked[n].is_none());
        self.blocked[n] = Some(op);
        let need = if op.write.is_some() {
            Rights::Write
        } else {
            Rights::Read
        };
        if self.engines[n].cache().rights(op.page) < need {
            let access = if op.write.is_some() {
                Access::Write
            } else {
                Access::Read
            };
            self.handle(
                node,
                Event::Fault {
                    addr: op.page,
                    access,
                },
            )
            .unwrap();
        }
        self.try_complete(node);
    }

    /// Node `node` drops its copy of the page holding `addr` (unmap).
    pub fn evict(&mut self, node: u16, addr: GlobalAddr) -> Vec<Action> {
        let mut out = Vec::new();
        self.engines[usize::from(node)]
            .handle(Event::Evict { addr }, &mut out)
            .unwrap();
        let kinds = out
            .iter()
            .map(|a| match a {
                Action::Unmap { page } => Action::Unmap { page: *page },
                _ => panic!("evict only unmaps: {a:?}"),
            })
            .collect();
        self.apply(node, out);
        kinds
    }

    /// Delivers in-flight message `i`; every node's op may then complete.
    pub fn deliver(&mut self, i: usize) {
        let m = self.net.swap_remove(i);
        let nodes = self.engines.len() as u16;
        if self.lost[usize::from(m.to)] || self.lost[usize::from(m.from)] {
            return;
        }
        let msg = Message::decode(&m.bytes, nodes).unwrap();
        self.delivered += 1;
        if std::env::var_os("DSM_TRACE").is_some() {
            eprintln!(
                "{} -> {}: {:?} req {} txn {} {} v{} s{} r{} clean {}",
                m.from,
                m.to,
                msg.kind,
                msg.requester,
                msg.txn,
                msg.page,
                msg.version,
                msg.seq,
                msg.reason,
                msg.clean
            );
        }
        self.handle(m.to, Event::Message { from: m.from, msg })
            .unwrap();
        for node in 0..nodes {
            self.try_complete(node);
        }
    }

    /// One random step: deliver a random message or start a random op.
    pub fn step(&mut self, rng: &mut Rng, write_percent: u64) {
        let idle: Vec<u16> = (0..self.engines.len() as u16)
            .filter(|&n| self.blocked[usize::from(n)].is_none() && !self.lost[usize::from(n)])
            .collect();
        if !self.net.is_empty() && (idle.is_empty() || rng.below(2) == 0) {
            let i = rng.below(self.net.len());
            self.deliver(i);
        } else if !idle.is_empty() {
            let node = idle[rng.below(idle.len())];
            let page = self.pages[rng.below(self.pages.len())];
            let write = (rng.next() % 100 < write_percent).then(|| {
                self.next_value += 1;
                self.next_value
            });
            self.start(
                node,
                Op {
                    page,
                    word: rng.below(4),
                    write,
                },
            );
        }
        self.check();
    }

    /// Delivers until nothing is in flight and nobody waits.
    pub fn settle(&mut self, rng: &mut Rng) {
        for _ in 0..100_000 {
            if self.net.is_empty() {
                break;
            }
            let i = rng.below(self.net.len());
            self.deliver(i);
            self.check();
        }
        assert!(self.net.is_empty(), "messages still in flight");
        assert!(
            self.blocked.iter().all(Option::is_none),
            "ops still blocked: {:?}",
            self.blocked
        );
        assert!(
            self.engines
                .iter()
                .zip(&self.lost)
                .all(|(e, &lost)| lost || e.is_idle())
        );
    }

    /// Single writer / many readers: at most one node may write a page and
    /// then nobody else reads it; every node that may read holds the
    /// model's bytes and the same version tag.
    pub fn check(&self) {
        for page in &self.pages {
            let model = &self.model[page];
            let mut writers = 0;
            let mut readers = 0;
            let mut owners = 0;
            let mut version = None;
            for (e, _) in self.engines.iter().zip(&self.lost).filter(|(_, l)| !**l) {
                let Some(c) = e.cache().get(*page) else {
                    continue;
                };
                owners += usize::from(c.owner);
                match c.rights {
                    Rights::Write => writers += 1,
                    Rights::Read => readers += 1,
                    Rights::None => continue,
                }
                assert!(
                    c.data.0[..] == model[..],
                    "node {} holds stale bytes of {page}",
                    e.node()
                );
                assert!(
                    *version.get_or_insert(c.version) == c.version,
                    "versions differ on {page}"
                );
            }
            assert!(writers <= 1, "{writers} writers of {page}");
            assert!(
                writers == 0 || readers == 0,
                "a writer and {readers} readers of {page}"
            );
            assert!(owners <= 1, "{owners} owners of {page}");
        }
    }
}
