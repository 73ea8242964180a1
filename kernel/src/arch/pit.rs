//! The legacy 8254 PIT and 8259 PICs: used once at boot, the PIT as a known
//! time base for calibrating the APIC timer and the TSC, the PICs only to be
//! moved out of the exception vectors and masked.

use x86_64::instructions::port::Port;

/// PIT input clock in Hz.
pub const PIT_HZ: u64 = 1_193_182;

/// Runs `during` while the PIT's channel 2 counts down `ms` milliseconds
/// (gate on port 0x61; no interrupt needed). `start` runs just before the
/// count starts; both closures sample the clocks being calibrated.
pub fn measure<S, E>(ms: u64, start: S, end: E)
where
    S: FnOnce(),
    E: FnOnce(),
{
    let count = (PIT_HZ * ms / 1000).min(0xffff) as u16;
    let mut gate = Port::<u8>::new(0x61);
    let mut command = Port::<u8>::new(0x43);
    let mut channel2 = Port::<u8>::new(0x42);
    // SAFETY: ports 0x42/0x43/0x61 belong to the PIT and the speaker gate,
    // which nothing else in the kernel uses.
    unsafe {
        // Gate low, speaker off; channel 2, lobyte/hibyte, mode 0 (one-shot).
        let g = gate.read() & !0x03;
        gate.write(g);
        command.write(0b1011_0000);
        channel2.write((count & 0xff) as u8);
        channel2.write((count >> 8) as u8);
        start();
        gate.write(g | 0x01);
        // OUT2 (bit 5) goes high when the count reaches zero.
        while gate.read() & 0x20 == 0 {
            core::hint::spin_loop();
        }
        end();
        gate.write(g);
    }
}

/// Moves the 8259 PICs' vectors to `base..base+16` and masks every line; the
/// local APIC takes over.
pub fn disable_legacy_pics(base: u8) {
    let mut m_cmd = Port::<u8>::new(0x20);
    let mut m_data = Port::<u8>::new(0x21);
    let mut s_cmd = Port::<u8>::new(0xa0);
    let mut s_data = Port::<u8>::new(0xa1);
    // SAFETY: the standard ICW1-ICW4 initialisation of both PICs, then OCW1
    // masking all lines; no other code programs them.
    unsafe {
        m_cmd.write(0x11);
        s_cmd.write(0x11);
        m_data.write(base);
        s_data.write(base + 8);
        m_data.write(4);
        s_data.write(2);
        m_data.write(1);
        s_data.write(1);
        m_data.write(0xff);
        s_data.write(0xff);
    }
}
