//! Says hello: this node's id, the live nodes, the clock and its arguments.
#![no_std]
#![no_main]

use shmos_rt::{println, sys};

shmos_rt::entry!(main);

fn main() -> i32 {
    let mut buf = [0u8; shmos_rt::abi::MAX_ARGS];
    let args = shmos_rt::args(&mut buf);
    let node = sys::node_id().unwrap_or(u16::MAX);
    let nodes = sys::nodes().unwrap_or(0);
    let clock = sys::clock_ns().unwrap_or(0);
    println!("hello from node {node} (live nodes {nodes:#x}) at {clock} ns, args \"{args}\"");
    0
}
