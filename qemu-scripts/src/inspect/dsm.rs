//! The DSM section of `shmos inspect`: the directory tree and, per range,
//! its responsible node and its pages' owners and copysets, put together
//! from the DSM reports the nodes publish on the device (format and
//! checks: `shm_ext::dsm::report`).
//!
//! The device is untrusted input: a report that does not decode is named
//! and skipped; a directory page no node published, or one that does not
//! fit its parent entry, is named and not followed; a walk never loops
//! (levels strictly decrease, and a page is visited once).

use serde::Serialize;
use shm_ext::dsm::report::{self, NodeReport, PageRecord, Published, REPORT_POOL};
use shm_ext::dsm::{DirEntry, GlobalAddr, GlobalRange, NO_NODE, PAGE_SIZE, ROOT_DIRECTORY, Rights};
use shm_ext::{NodeState, Shm, ShmError, Snapshot};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};

/// Reads of a report that is being rewritten before it is given up.
const BUSY_TRIES: usize = 50;
/// Page records listed per range in the text form (JSON lists all).
const TEXT_PAGES_PER_RANGE: usize = 64;

/// A global address as JSON and text show it.
fn hex(a: GlobalAddr) -> String {
    format!("{:#x}", a.0)
}

fn nodes(set: shm_ext::NodeSet) -> Vec<u16> {
    set.iter().collect()
}

fn page_count(first: GlobalAddr, last: GlobalAddr) -> u64 {
    let pages = last.0.saturating_sub(first.0) / PAGE_SIZE + 1;
    u64::try_from(pages).unwrap_or(u64::MAX)
}

/// One node's report as listed.
#[derive(Debug, Serialize)]
pub struct ReportRow {
    /// The publishing node.
    pub node: u16,
    /// Its incarnation.
    pub generation: u32,
    /// Reports it published before this one.
    pub sequence: u64,
    /// Its clock when it gathered the report (ns since its boot).
    pub time_ns: u64,
    /// The region's handle.
    pub region: String,
    /// `current`; `superseded` (the node has a newer report); `stale`
    /// (the node table shows another incarnation of the node).
    pub status: &'static str,
    /// Pages in its cache.
    pub cached_pages: u32,
    /// Of those, pages it owns.
    pub owned_pages: u32,
    /// Of those, dirty pages.
    pub dirty_pages: u32,
    /// Ranges it is responsible for (listed).
    pub ranges: usize,
    /// Ranges left out of its report.
    pub ranges_omitted: u32,
    /// Directory page copies (listed).
    pub directory_copies: usize,
    /// Copies left out.
    pub directory_omitted: u32,
    /// Page records (listed).
    pub page_records: usize,
    /// Records left out.
    pub pages_omitted: u32,
}

/// A report region whose report was refused.
#[derive(Debug, Serialize)]
pub struct Refused {
    /// The region's handle.
    pub region: String,
    /// The region's owners (the node whose report it should be).
    pub owners: Vec<u16>,
    /// Why, in words.
    pub error: String,
    /// The error's name.
    pub name: &'static str,
}

/// A page's record, as the responsible node published it.
#[derive(Debug, Serialize)]
pub struct PageRow {
    /// The page.
    pub page: String,
    /// Its owner (`null`: never touched).
    pub owner: Option<u16>,
    /// Nodes holding read copies besides the owner.
    pub copyset: Vec<u16>,
    /// Version tag.
    pub version: u64,
    /// A transaction runs or requests wait.
    pub busy: bool,
}

impl From<&PageRecord> for PageRow {
    fn from(p: &PageRecord) -> Self {
        Self {
            page: hex(p.page),
            owner: p.owner,
            copyset: nodes(p.copyset),
            version: p.version,
            busy: p.busy,
        }
    }
}

/// One entry of a directory page.
#[derive(Debug, Serialize)]
pub struct EntryRow {
    /// First address of the range (leaf) or child span (interior).
    pub first: String,
    /// Last address, inclusive.
    pub last: String,
    /// Pages it covers.
    pub pages: u64,
    /// The range's responsible node (leaf) or the child page's (interior);
    /// `null`: none.
    pub responsible: Option<u16>,
    /// The child page (interior entries), when some node published it
    /// and it fits this entry.
    pub child: Option<Box<DirNode>>,
    /// The child page's address (interior entries).
    pub child_addr: Option<String>,
}

/// A directory page in the tree, from the freshest copy any node published.
#[derive(Debug, Serialize)]
pub struct DirNode {
    /// The page's global address.
    pub addr: String,
    /// 0 for a leaf.
    pub level: u16,
    /// First address of its span.
    pub first: String,
    /// Last address of its span.
    pub last: String,
    /// The shown copy's version tag.
    pub version: u64,
    /// The node whose copy is shown.
    pub from_node: u16,
    /// Every node that published a copy of it.
    pub holders: Vec<u16>,
    /// Its entries, in address order.
    pub entries: Vec<EntryRow>,
}

/// One range and its pages.
#[derive(Debug, Serialize)]
pub struct RangeRow {
    /// First address.
    pub first: String,
    /// Last address, inclusive.
    pub last: String,
    /// Pages in the range.
    pub page_count: u64,
    /// Its responsible node (from the directory, else from the node that
    /// lists it as its own); `null`: none.
    pub responsible: Option<u16>,
    /// The nodes its policy controller chose for its disk copies besides
    /// the responsible node's (from its directory entry; empty: ring order).
    pub replicas: Vec<u16>,
    /// True if the published directory tree names it.
    pub in_tree: bool,
    /// The node whose report gave the page records (the responsible node).
    pub records_from: Option<u16>,
    /// Its touched pages (untouched pages have no record).
    pub pages: Vec<PageRow>,
    /// What is missing or does not agree.
    pub notes: Vec<String>,
}

/// A directory page's record at its responsible node.
#[derive(Debug, Serialize)]
pub struct DirectoryPageRow {
    /// The responsible node (that of the page's directory slice).
    pub responsible: u16,
    /// The record.
    #[serde(flatten)]
    pub record: PageRow,
}

/// The DSM section.
#[derive(Debug, Serialize, Default)]
pub struct DsmView {
    /// The pool the reports are in.
    pub pool: &'static str,
    /// Why no report could be read at all (`null` when they could).
    pub error: Option<String>,
    /// Every report read.
    pub reports: Vec<ReportRow>,
    /// Regions whose report was refused.
    pub refused: Vec<Refused>,
    /// The directory tree from the root (`null`: no node published it).
    pub directory: Option<DirNode>,
    /// Every range, with its pages.
    pub ranges: Vec<RangeRow>,
    /// The directory pages' records at their responsible nodes.
    pub directory_pages: Vec<DirectoryPageRow>,
    /// Directory pages missing or not fitting their parents.
    pub problems: Vec<String>,
}

/// Reads every report, reading again those being rewritten.
fn read_all(shm: &Shm<'_>) -> Result<Vec<Published>, ShmError> {
    let mut all = report::read_published(shm)?;
    for p in &mut all {
        for _ in 0..BUSY_TRIES {
            if p.report != Err(ShmError::Busy) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
            p.report = report::read_region(shm.region(), p.region.offset, p.region.len);
        }
    }
    Ok(all)
}

/// The DSM section of the device `shm` whose node table `snapshot` shows.
pub fn view(shm: &Shm<'_>, snapshot: &Snapshot) -> DsmView {
    let mut v = DsmView {
        pool: REPORT_POOL,
        ..DsmView::default()
    };
    let published = match read_all(shm) {
        Ok(p) => p,
        Err(ShmError::NoSuchPool) => return v,
        Err(e) => {
            v.error = Some(format!("{e} ({})", e.name()));
            return v;
        }
    };
    // The newest report of each node is used; older ones are listed.
    let mut best: BTreeMap<u16, (NodeReport, String)> = BTreeMap::new();
    let mut rows = Vec::new();
    for p in published {
        let region = p.region.handle.to_string();
        match p.report {
            Ok(r) => {
                let newer = best
                    .get(&r.node)
                    .is_none_or(|(b, _)| (r.generation, r.sequence) > (b.generation, b.sequence));
                if newer && let Some((old, old_region)) = best.remove(&r.node) {
                    rows.push(row(&old, old_region, "superseded"));
                }
                if newer {
                    best.insert(r.node, (r, region));
                } else {
                    rows.push(row(&r, region, "superseded"));
                }
            }
            Err(e) => v.refused.push(Refused {
                region,
                owners: nodes(p.region.owners),
                error: match e {
                    ShmError::NotInitialized => "nothing written yet".into(),
                    ShmError::Busy => "still being rewritten".into(),
                    e => e.to_string(),
                },
                name: e.name(),
            }),
        }
    }
    for (node, (r, region)) in &best {
        let info = snapshot
            .nodes
            .as_slice()
            .get(usize::from(*node))
            .and_then(|n| n.info);
        let stale =
            info.is_none_or(|i| i.state == NodeState::Unused || i.generation.0 != r.generation);
        rows.push(row(
            r,
            region.clone(),
            if stale { "stale" } else { "current" },
        ));
    }
    rows.sort_by_key(|r| (r.node, r.generation, r.sequence));
    v.reports = rows;
    let reports: BTreeMap<u16, NodeReport> = best.into_iter().map(|(n, (r, _))| (n, r)).collect();
    let mut walk = Walk::new(&reports);
    v.directory = walk.page(ROOT_DIRECTORY, None);
    if v.directory.is_none() && !reports.is_empty() {
        walk.problems
            .push("no node published the root directory page".into());
    }
    v.problems = walk.problems;
    v.ranges = ranges(&reports, &walk.leaf_ranges);
    for r in reports.values() {
        for p in r.pages.iter().filter(|p| p.page.in_directory_space()) {
            v.directory_pages.push(DirectoryPageRow {
                responsible: r.node,
                record: p.into(),
            });
        }
    }
    v
}

fn row(r: &NodeReport, region: String, status: &'static str) -> ReportRow {
    ReportRow {
        node: r.node,
        generation: r.generation,
        sequence: r.sequence,
        time_ns: r.time_ns,
        region,
        status,
        cached_pages: r.cached_pages,
        owned_pages: r.owned_pages,
        dirty_pages: r.dirty_pages,
        ranges: r.ranges.len(),
        ranges_omitted: r.ranges_omitted,
        directory_copies: r.directory.len(),
        directory_omitted: r.directory_omitted,
        page_records: r.pages.len(),
        pages_omitted: r.pages_omitted,
    }
}

/// The walk down the directory tree over the freshest published copies.
struct Walk<'r> {
    /// Per directory page: the freshest copy (its node) and every holder.
    copies: BTreeMap<GlobalAddr, (&'r shm_ext::dsm::report::DirectoryCopy, u16, Vec<u16>)>,
    visited: BTreeSet<GlobalAddr>,
    /// Leaf entries met, in address order of the walk.
    leaf_ranges: Vec<DirEntry>,
    problems: Vec<String>,
}

impl<'r> Walk<'r> {
    fn new(reports: &'r BTreeMap<u16, NodeReport>) -> Self {
        let mut copies: BTreeMap<
            GlobalAddr,
            (&shm_ext::dsm::report::DirectoryCopy, u16, Vec<u16>),
        > = BTreeMap::new();
        // Fresher: a higher version; at the same version, the writer's copy
        // (it may have written since); then the lower node id.
        let key = |c: &shm_ext::dsm::report::DirectoryCopy| (c.version, c.rights == Rights::Write);
        for (&node, r) in reports {
            for c in &r.directory {
                match copies.get_mut(&c.page.addr) {
                    Some((best, from, holders)) => {
                        holders.push(node);
                        if key(c) > key(best) {
                            *best = c;
                            *from = node;
                        }
                    }
                    None => {
                        copies.insert(c.page.addr, (c, node, vec![node]));
                    }
                }
            }
        }
        Self {
            copies,
            visited: BTreeSet::new(),
            leaf_ranges: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// The tree under page `addr`; `parent` is the entry that names it.
    fn page(&mut self, addr: GlobalAddr, parent: Option<(&DirEntry, u16)>) -> Option<DirNode> {
        let Some(&(copy, from, ref holders)) = self.copies.get(&addr) else {
            if let Some((_, level)) = parent {
                self.problems.push(format!(
                    "directory page {} (level {}) was published by no node",
                    addr,
                    level.saturating_sub(1)
                ));
            }
            return None;
        };
        let holders = holders.clone();
        if !self.visited.insert(addr) {
            self.problems
                .push(format!("directory page {addr} is named twice in the tree"));
            return None;
        }
        let p = &copy.page;
        if let Some((e, level)) = parent
            && (p.level.checked_add(1) != Some(level) || p.first != e.first || p.last != e.last)
        {
            self.problems.push(format!(
                "directory page {addr} (level {}, span {}..{}) does not fit its parent entry (level {}, {}..{})",
                p.level, p.first, p.last, level, e.first, e.last
            ));
            return None;
        }
        let mut entries = Vec::new();
        for e in &p.entries {
            let responsible = (e.responsible != NO_NODE).then_some(e.responsible);
            let (child, child_addr) = if p.is_leaf() {
                self.leaf_ranges.push(*e);
                (None, None)
            } else {
                (
                    self.page(e.child, Some((e, p.level))).map(Box::new),
                    Some(hex(e.child)),
                )
            };
            entries.push(EntryRow {
                first: hex(e.first),
                last: hex(e.last),
                pages: page_count(e.first, e.last),
                responsible,
                child,
                child_addr,
            });
        }
        Some(DirNode {
            addr: hex(addr),
            level: p.level,
            first: hex(p.first),
            last: hex(p.last),
            version: copy.version,
            from_node: from,
            holders,
            entries,
        })
    }
}

/// Every range of the tree's leaves, then every range a node lists as its
/// own that the tree does not name, each with its responsible node's
/// records of its pages.
fn ranges(reports: &BTreeMap<u16, NodeReport>, leaves: &[DirEntry]) -> Vec<RangeRow> {
    let mut out = Vec::new();
    let mut named = BTreeSet::new();
    for e in leaves {
        named.insert((e.first, e.last));
        let responsible = (e.responsible != NO_NODE).then_some(e.responsible);
        let mut row = range_row(reports, e.first, e.last, responsible, true);
        row.replicas = e.replicas.iter().collect();
        out.push(row);
    }
    for r in reports.values() {
        for g in &r.ranges {
            if !named.contains(&(g.start(), g.last())) {
                out.push(range_row(reports, g.start(), g.last(), Some(r.node), false));
            }
        }
    }
    out
}

fn range_row(
    reports: &BTreeMap<u16, NodeReport>,
    first: GlobalAddr,
    last: GlobalAddr,
    responsible: Option<u16>,
    in_tree: bool,
) -> RangeRow {
    let mut row = RangeRow {
        first: hex(first),
        last: hex(last),
        page_count: page_count(first, last),
        responsible,
        replicas: Vec::new(),
        in_tree,
        records_from: None,
        pages: Vec::new(),
        notes: Vec::new(),
    };
    if !in_tree {
        row.notes.push("not in the published directory tree".into());
    }
    let Some(node) = responsible else {
        row.notes.push("no responsible node".into());
        return row;
    };
    let Some(r) = reports.get(&node) else {
        row.notes.push(format!("node {node} published no report"));
        return row;
    };
    row.records_from = Some(node);
    let own = GlobalRange::from_bounds(first, last).is_ok_and(|g| r.ranges.contains(&g));
    if !own && r.ranges_omitted == 0 {
        row.notes.push(format!(
            "node {node} does not list the range as its own (freed, or the tree is stale)"
        ));
    }
    row.pages = r
        .pages
        .iter()
        .filter(|p| first <= p.page && p.page <= last)
        .map(PageRow::from)
        .collect();
    if r.pages_omitted > 0 {
        row.notes.push(format!(
            "{} page records of node {node} did not fit its report",
            r.pages_omitted
        ));
    }
    row
}

fn opt(n: Option<u16>) -> String {
    n.map_or("-".into(), |n| n.to_string())
}

fn set(s: &[u16]) -> String {
    let items: Vec<String> = s.iter().map(u16::to_string).collect();
    format!("{{{}}}", items.join(","))
}

impl DirNode {
    fn fmt_tree(&self, f: &mut String, depth: usize) {
        let pad = "  ".repeat(depth + 1);
        let kind = if self.level == 0 { "leaf" } else { "interior" };
        let _ = writeln!(
            f,
            "{pad}page {} level {} ({kind}), span {}..{}, version {} (copy of node {}; copies on {})",
            self.addr,
            self.level,
            self.first,
            self.last,
            self.version,
            self.from_node,
            set(&self.holders)
        );
        if self.entries.is_empty() {
            let _ = writeln!(f, "{pad}  (no ranges)");
        }
        for e in &self.entries {
            if self.level == 0 {
                let _ = writeln!(
                    f,
                    "{pad}  range {}..{} ({} pages), responsible node {}",
                    e.first,
                    e.last,
                    e.pages,
                    opt(e.responsible)
                );
            } else {
                let _ = writeln!(
                    f,
                    "{pad}  child {} for {}..{}, responsible node {}{}",
                    e.child_addr.as_deref().unwrap_or("?"),
                    e.first,
                    e.last,
                    opt(e.responsible),
                    if e.child.is_none() {
                        " (not shown)"
                    } else {
                        ""
                    }
                );
                if let Some(c) = &e.child {
                    c.fmt_tree(f, depth + 2);
                }
            }
        }
    }
}

impl fmt::Display for DsmView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(e) = &self.error {
            return writeln!(f, "DSM: reports unreadable: {e}");
        }
        if self.reports.is_empty() && self.refused.is_empty() {
            return writeln!(
                f,
                "DSM: no node has published a report (pool \"{}\")",
                self.pool
            );
        }
        writeln!(
            f,
            "DSM: {} report(s) in pool \"{}\"",
            self.reports.len(),
            self.pool
        )?;
        writeln!(
            f,
            "  {:>4}  {:>4}  {:>6}  {:<10}  {:>6}  {:>6}  {:>6}  {:>6}  {:>9}  {:>7}  omitted",
            "node",
            "gen",
            "seq",
            "status",
            "cached",
            "owned",
            "dirty",
            "ranges",
            "dir pages",
            "records"
        )?;
        for r in &self.reports {
            let omitted =
                r.ranges_omitted as u64 + r.directory_omitted as u64 + r.pages_omitted as u64;
            writeln!(
                f,
                "  {:>4}  {:>4}  {:>6}  {:<10}  {:>6}  {:>6}  {:>6}  {:>6}  {:>9}  {:>7}  {}",
                r.node,
                r.generation,
                r.sequence,
                r.status,
                r.cached_pages,
                r.owned_pages,
                r.dirty_pages,
                r.ranges,
                r.directory_copies,
                r.page_records,
                if omitted == 0 {
                    "-".to_string()
                } else {
                    format!(
                        "{} ranges, {} dir pages, {} records",
                        r.ranges_omitted, r.directory_omitted, r.pages_omitted
                    )
                }
            )?;
        }
        for r in &self.refused {
            writeln!(
                f,
                "  region {} (owners {}): skipped: {} ({})",
                r.region,
                set(&r.owners),
                r.error,
                r.name
            )?;
        }
        let mut tree = String::new();
        match &self.directory {
            Some(root) => root.fmt_tree(&mut tree, 0),
            None => tree.push_str("  (the root was not published)\n"),
        }
        write!(
            f,
            "directory tree (freshest published copy of each page):\n{tree}"
        )?;
        for p in &self.problems {
            writeln!(f, "  problem: {p}")?;
        }
        if !self.ranges.is_empty() {
            writeln!(f, "pages by range (records of the responsible node):")?;
        }
        for r in &self.ranges {
            writeln!(
                f,
                "  range {}..{} ({} pages), responsible node {}{}: {} touched page(s)",
                r.first,
                r.last,
                r.page_count,
                opt(r.responsible),
                if r.replicas.is_empty() {
                    String::new()
                } else {
                    format!(", copies also on {:?}", r.replicas)
                },
                r.pages.len()
            )?;
            for n in &r.notes {
                writeln!(f, "    note: {n}")?;
            }
            if !r.pages.is_empty() {
                writeln!(
                    f,
                    "    {:<36}  {:>5}  {:<16}  {:>8}",
                    "page", "owner", "copyset", "version"
                )?;
            }
            for p in r.pages.iter().take(TEXT_PAGES_PER_RANGE) {
                writeln!(
                    f,
                    "    {:<36}  {:>5}  {:<16}  {:>8}{}",
                    p.page,
                    opt(p.owner),
                    set(&p.copyset),
                    p.version,
                    if p.busy { "  busy" } else { "" }
                )?;
            }
            if r.pages.len() > TEXT_PAGES_PER_RANGE {
                writeln!(
                    f,
                    "    ... {} more (see --json)",
                    r.pages.len() - TEXT_PAGES_PER_RANGE
                )?;
            }
        }
        if !self.directory_pages.is_empty() {
            writeln!(
                f,
                "directory-space pages (directory pages, the directory lock page; records of their responsible nodes):"
            )?;
            writeln!(
                f,
                "    {:<36}  {:>11}  {:>5}  {:<16}  {:>8}",
                "page", "responsible", "owner", "copyset", "version"
            )?;
        }
        for d in &self.directory_pages {
            writeln!(
                f,
                "    {:<36}  {:>11}  {:>5}  {:<16}  {:>8}",
                d.record.page,
                d.responsible,
                opt(d.record.owner),
                set(&d.record.copyset),
                d.record.version
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shm_ext::dsm::report::{DirectoryCopy, MAX_REPORT_LEN, claim_region, write_region};
    use shm_ext::dsm::{Access, AddressGenerator, DirectoryPage, Engine, Event, Space};
    use shm_ext::host::HeapRegion;
    use shm_ext::{InitParams, NodeFacts, Pools};

    fn fault(e: &mut Engine, addr: GlobalAddr, access: Access) {
        let mut out = Vec::new();
        e.handle(Event::Fault { addr, access }, &mut out).unwrap();
    }

    /// Node `node` of 3, responsible for a 3-page range it wrote two pages
    /// of, with the root naming it (node 0 also holds the root).
    fn engine(node: u16) -> (Engine, GlobalRange) {
        let mut e = Engine::new(node, 3).unwrap();
        let r = AddressGenerator::new(node, Space::Data)
            .unwrap()
            .allocate(3 * PAGE_SIZE)
            .unwrap();
        e.create_range(r).unwrap();
        fault(&mut e, r.start(), Access::Write);
        fault(&mut e, r.page(1).unwrap(), Access::Write);
        (e, r)
    }

    fn root_naming(ranges: &[(GlobalRange, u16)]) -> DirectoryPage {
        let mut root = DirectoryPage::empty_root();
        for (r, n) in ranges {
            root.entries.push(DirEntry {
                first: r.start(),
                last: r.last(),
                child: GlobalAddr(0),
                responsible: *n,
                // Copies placed on the node two after the responsible one.
                replicas: shm_ext::NodeSet(1 << ((n + 2) % 3)),
            });
        }
        root
    }

    /// A device where nodes 0 and 1 published reports and node 2's
    /// report is damaged.
    fn device(mem: &HeapRegion) -> (Shm<'_>, GlobalRange, GlobalRange) {
        let shm = Shm::attach(mem.region(), &InitParams::default(), || 0, 1).unwrap();
        let facts = NodeFacts {
            doorbell_peer: None,
            memory_mib: 128,
            app_count: 1,
            label: "test",
        };
        let (mut e0, r0) = engine(0);
        let (e1, r1) = engine(1);
        // Node 0 holds the root and writes it: it names both ranges.
        fault(&mut e0, ROOT_DIRECTORY, Access::Write);
        let root = root_naming(&[(r0, 0), (r1, 1)]);
        e0.page_mut(ROOT_DIRECTORY)
            .unwrap()
            .0
            .copy_from_slice(&root.encode().0);
        for n in 0..3u16 {
            let g = shm.join(n, &facts).unwrap();
            let pools = Pools::attach(&shm, n, g).unwrap();
            let info = claim_region(&pools, &shm).unwrap();
            let mut bytes = match n {
                0 => NodeReport::gather(&e0, g.0, MAX_REPORT_LEN),
                1 => {
                    let mut r = NodeReport::gather(&e1, g.0, MAX_REPORT_LEN);
                    // An older read copy of the root, naming only node 1's range.
                    r.directory.push(DirectoryCopy {
                        version: 0,
                        rights: Rights::Read,
                        owner: false,
                        dirty: false,
                        page: root_naming(&[(r1, 1)]),
                    });
                    r
                }
                _ => NodeReport::new(2, g.0),
            }
            .encode()
            .unwrap();
            if n == 2 {
                let last = bytes.len() - 1;
                bytes[last] ^= 0xff;
            }
            write_region(shm.region(), info.offset, info.len, &bytes).unwrap();
        }
        (shm, r0, r1)
    }

    #[test]
    fn the_tree_and_the_pages_come_from_the_reports() {
        let mem = HeapRegion::new(8 << 20);
        let (shm, r0, r1) = device(&mem);
        let v = view(&shm, &shm.snapshot());
        assert_eq!(v.error, None);
        assert_eq!(v.reports.len(), 2, "{v:#?}");
        assert!(v.reports.iter().all(|r| r.status == "current"));
        assert_eq!(v.refused.len(), 1);
        assert_eq!(v.refused[0].owners, vec![2]);
        assert_eq!(v.refused[0].name, "Corrupt");
        let root = v.directory.as_ref().expect("root");
        assert_eq!(root.addr, "0x0");
        assert_eq!(root.from_node, 0, "the writer's copy is the freshest");
        assert_eq!(root.holders, vec![0, 1]);
        assert_eq!(root.entries.len(), 2);
        assert_eq!(v.ranges.len(), 2);
        for (row, (g, n)) in v.ranges.iter().zip([(r0, 0u16), (r1, 1)]) {
            assert_eq!(row.first, hex(g.start()));
            assert_eq!(row.responsible, Some(n));
            assert!(row.in_tree);
            assert_eq!(row.page_count, 3);
            assert_eq!(row.replicas, vec![(n + 2) % 3]);
            assert_eq!(row.pages.len(), 2);
            assert!(row.pages.iter().all(|p| p.owner == Some(n)));
            assert!(row.notes.is_empty(), "{:?}", row.notes);
        }
        assert_eq!(v.directory_pages.len(), 1, "node 0's record of the root");
        let text = v.to_string();
        assert!(text.contains("DSM: 2 report(s)"), "{text}");
        assert!(
            text.contains("responsible node 1, copies also on [0]"),
            "{text}"
        );
        assert!(text.contains("skipped: "), "{text}");
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["directory"]["entries"][1]["responsible"], 1);
        assert_eq!(json["ranges"][0]["pages"][0]["owner"], 0);
    }

    #[test]
    fn missing_children_and_unlisted_ranges_are_named() {
        let mem = HeapRegion::new(8 << 20);
        let shm = Shm::attach(mem.region(), &InitParams::default(), || 0, 1).unwrap();
        let facts = NodeFacts {
            doorbell_peer: None,
            memory_mib: 128,
            app_count: 1,
            label: "test",
        };
        let g = shm.join(1, &facts).unwrap();
        let pools = Pools::attach(&shm, 1, g).unwrap();
        let info = claim_region(&pools, &shm).unwrap();
        let (e, r) = engine(1);
        let mut report = NodeReport::gather(&e, g.0, MAX_REPORT_LEN);
        // A root of level 1 whose one child nobody published.
        let child = GlobalAddr(shm_ext::dsm::addr::DIRECTORY_SLICE);
        let mut root = DirectoryPage::empty_root();
        root.level = 1;
        root.entries.push(DirEntry {
            first: root.first,
            last: root.last,
            child,
            responsible: 1,
            replicas: Default::default(),
        });
        report.directory.push(DirectoryCopy {
            version: 1,
            rights: Rights::Read,
            owner: false,
            dirty: false,
            page: root,
        });
        write_region(
            shm.region(),
            info.offset,
            info.len,
            &report.encode().unwrap(),
        )
        .unwrap();
        let v = view(&shm, &shm.snapshot());
        let root = v.directory.as_ref().unwrap();
        assert!(root.entries[0].child.is_none());
        assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
        assert!(v.problems[0].contains("published by no node"));
        assert_eq!(v.ranges.len(), 1);
        assert!(!v.ranges[0].in_tree);
        assert_eq!(v.ranges[0].first, hex(r.start()));
        assert_eq!(v.ranges[0].responsible, Some(1));
        assert_eq!(v.ranges[0].pages.len(), 2);
        assert!(v.to_string().contains("not shown"));
    }

    #[test]
    fn a_device_without_reports_says_so() {
        let mem = HeapRegion::new(4 << 20);
        let shm = Shm::attach(mem.region(), &InitParams::default(), || 0, 1).unwrap();
        let v = view(&shm, &shm.snapshot());
        assert!(v.reports.is_empty() && v.directory.is_none() && v.error.is_none());
        assert!(v.to_string().contains("no node has published"));
    }
}
