//! Property tests: random bytes and mutations thrown at the DSM decoders
//! (directory pages, protocol messages) and at a directory tree in use;
//! every outcome is Ok or a named error, never a panic, and whatever
//! decodes re-encodes to the same bytes.
#![cfg(feature = "std")]

mod dsm_support;

use dsm_support::{MemStore, Rng};
use proptest::prelude::*;
use shm_ext::dsm::directory::{self, DirectoryPage, directory_checksum};
use shm_ext::dsm::{
    AddressGenerator, DsmError, GlobalAddr, Kind, MAX_MESSAGE_LEN, Message, PAGE_BYTES, PAGE_SIZE,
    PageBuf, ROOT_DIRECTORY, Space,
};

fn named(e: &DsmError) -> bool {
    !e.name().is_empty() && e.code() >= 1 && e.code() <= 12
}

/// A store holding a two-level tree of `n` ranges, and the ranges.
fn tree(n: usize) -> (MemStore, Vec<shm_ext::dsm::GlobalRange>) {
    let mut store = MemStore::new(0);
    directory::format_root(&mut store).unwrap();
    let mut g = AddressGenerator::new(1, Space::Data).unwrap();
    let rs: Vec<_> = (0..n).map(|_| g.allocate(PAGE_SIZE).unwrap()).collect();
    for r in &rs {
        directory::insert(&mut store, *r, 1).unwrap();
    }
    (store, rs)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_are_no_directory_page(bytes in prop::collection::vec(any::<u8>(), PAGE_BYTES)) {
        let mut img = [0u8; PAGE_BYTES];
        img.copy_from_slice(&bytes);
        match DirectoryPage::decode(&img, ROOT_DIRECTORY) {
            Ok(p) => prop_assert_eq!(&p.encode().0[..], &img[..]),
            Err(e) => prop_assert!(matches!(e, DsmError::CorruptDirectory { .. }), "{:?}", e),
        }
    }

    #[test]
    fn mutated_pages_with_fixed_checksums_decode_or_are_refused(
        n in 0usize..200,
        page_pick in any::<usize>(),
        edits in prop::collection::vec((0usize..PAGE_BYTES, any::<u8>()), 1..8),
        fix_checksum in any::<bool>(),
    ) {
        let (store, _) = tree(n);
        let addrs: Vec<GlobalAddr> = store.pages.keys().copied().collect();
        let addr = addrs[page_pick % addrs.len()];
        let mut img = store.pages[&addr].0;
        for (at, v) in edits {
            img[at] = v;
        }
        if fix_checksum {
            let sum = directory_checksum(&img);
            img[120..128].copy_from_slice(&sum.to_le_bytes());
        }
        match DirectoryPage::decode(&img, addr) {
            Ok(p) => prop_assert_eq!(&p.encode().0[..], &img[..]),
            Err(e) => prop_assert!(matches!(e, DsmError::CorruptDirectory { .. }), "{:?}", e),
        }
    }

    #[test]
    fn a_damaged_tree_is_never_followed_into_a_panic(
        n in 60usize..300,
        page_pick in any::<usize>(),
        edits in prop::collection::vec((0usize..PAGE_BYTES, any::<u8>()), 1..6),
        seed in any::<u64>(),
    ) {
        let (mut store, rs) = tree(n);
        let addrs: Vec<GlobalAddr> = store.pages.keys().copied().collect();
        let addr = addrs[page_pick % addrs.len()];
        let mut img = store.pages[&addr].0;
        for (at, v) in edits {
            img[at] = v;
        }
        // Keep the checksum right so the structural checks are what stand.
        let sum = directory_checksum(&img);
        img[120..128].copy_from_slice(&sum.to_le_bytes());
        store.pages.insert(addr, Box::new(PageBuf(img)));
        let mut rng = Rng::new(seed);
        let mut g = AddressGenerator::new(2, Space::Data).unwrap();
        for _ in 0..20 {
            let r = rs[rng.below(rs.len())];
            let res = match rng.below(5) {
                0 => directory::lookup(&mut store, r.start()).map(|_| ()),
                1 => directory::remove(&mut store, r).map(|_| ()),
                2 => directory::insert(&mut store, g.allocate(PAGE_SIZE).unwrap(), 1),
                3 => directory::ranges(&mut store).map(|_| ()),
                _ => directory::resolve(&mut store, GlobalAddr(r.last().0)).map(|_| ()),
            };
            if let Err(e) = res {
                prop_assert!(named(&e), "{:?}", e);
            }
        }
    }

    #[test]
    fn random_bytes_are_no_message(
        bytes in prop::collection::vec(any::<u8>(), 0..MAX_MESSAGE_LEN + 64),
        nodes in 1u16..64,
    ) {
        match Message::decode(&bytes, nodes) {
            Ok(m) => {
                let mut out = vec![0u8; MAX_MESSAGE_LEN];
                let len = m.encode(&mut out).unwrap();
                prop_assert_eq!(&out[..len], &bytes[..]);
            }
            Err(e) => prop_assert!(matches!(e, DsmError::BadMessage { .. } | DsmError::NoSuchNode), "{:?}", e),
        }
    }

    #[test]
    fn mutated_messages_decode_or_are_refused(
        kind in 1u8..=11,
        requester in 0u16..8,
        txn in any::<u64>(),
        page in any::<u128>(),
        edits in prop::collection::vec((0usize..64, any::<u8>()), 0..4),
        cut in 0usize..64,
    ) {
        let kind = Kind::from_u8(kind).unwrap();
        let mut m = Message::new(kind, requester, txn, GlobalAddr(page & !(PAGE_SIZE - 1)));
        if kind.carries_page() {
            m.data = Some(PageBuf::zeroed());
        }
        if kind == Kind::Nack {
            m.reason = 1;
        }
        let mut buf = vec![0u8; MAX_MESSAGE_LEN];
        let len = m.encode(&mut buf).unwrap();
        buf.truncate(len);
        prop_assert_eq!(Message::decode(&buf, 8).unwrap(), m.clone());
        for (at, v) in edits {
            if let Some(b) = buf.get_mut(at) {
                *b = v;
            }
        }
        buf.truncate(buf.len().saturating_sub(cut));
        match Message::decode(&buf, 8) {
            Ok(d) => {
                let mut out = vec![0u8; MAX_MESSAGE_LEN];
                let n = d.encode(&mut out).unwrap();
                prop_assert_eq!(&out[..n], &buf[..]);
            }
            Err(e) => prop_assert!(matches!(e, DsmError::BadMessage { .. } | DsmError::NoSuchNode), "{:?}", e),
        }
    }
}

#[test]
fn named_message_refusals() {
    let page = GlobalAddr(1 << 80);
    let mut buf = vec![0u8; MAX_MESSAGE_LEN];
    let len = Message::new(Kind::ReadRequest, 3, 1, page)
        .encode(&mut buf)
        .unwrap();
    let ok = buf[..len].to_vec();
    let bad = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = ok.clone();
        f(&mut b);
        Message::decode(&b, 4)
    };
    let what = |r: Result<Message, DsmError>| match r {
        Err(DsmError::BadMessage { what }) => what,
        other => panic!("{other:?}"),
    };
    assert_eq!(what(bad(&|b| b[4] = 99)), "unknown kind");
    assert_eq!(what(bad(&|b| b[4] = 0)), "unknown kind");
    assert_eq!(what(bad(&|b| b.truncate(20))), "shorter than a header");
    assert_eq!(
        what(bad(&|b| b.push(0))),
        "message length does not match the payload length"
    );
    assert_eq!(
        what(bad(&|b| b[44] = 1)),
        "payload length does not match the kind"
    );
    assert_eq!(what(bad(&|b| b[16] = 1)), "page address not page-aligned");
    assert_eq!(what(bad(&|b| b[0] = b'X')), "magic");
    assert_eq!(bad(&|b| b[6] = 4), Err(DsmError::NoSuchNode));
    assert_eq!(Message::decode(&ok, 3), Err(DsmError::NoSuchNode));
    // A Nack must carry a reason the responsible node may give.
    let mut nack = Message::new(Kind::Nack, 1, 1, page);
    nack.reason = 2;
    let n = nack.encode(&mut buf).unwrap();
    assert_eq!(what(Message::decode(&buf[..n], 4)), "nack reason");
    // A copy without its page does not encode.
    assert!(
        Message::new(Kind::WriteCopy, 1, 1, page)
            .encode(&mut buf)
            .is_err()
    );
}
