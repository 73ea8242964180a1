/*
 * Multiboot2 header and entry of the shmos kernel (AT&T syntax, assembled by
 * rustc through `global_asm!` in kernel/src/boot/mod.rs), so that GRUB can
 * boot the same ELF that QEMU's `-kernel` boots through PVH.
 *
 * GRUB looks for the header in the first 32 KiB of the file, 8-byte aligned:
 * bootloader/linker.ld puts the .multiboot2 section first in .text, whose
 * file offset is one page. The entry address tag makes GRUB jump to
 * `mb2_start32` rather than the ELF entry (the PVH one). GRUB enters it in
 * 32-bit protected mode with paging off, %eax = 0x36d76289 and
 * %ebx = physical address of the boot information, under BIOS and under
 * UEFI alike (no EFI boot-services tag: GRUB exits boot services first).
 */

    .set MB2_MAGIC, 0xE85250D6
    .set MB2_ARCH_I386, 0

    .section .multiboot2, "a"
    .balign 8
mb2_header:
    .long MB2_MAGIC
    .long MB2_ARCH_I386
    .long mb2_header_end - mb2_header
    /* magic + arch + length + checksum == 0 (mod 2^32) */
    .long 0x100000000 - (MB2_MAGIC + MB2_ARCH_I386 + (mb2_header_end - mb2_header))

    /* Entry address tag: type 3, flags 0 (required), size 12. */
    .balign 8
    .short 3
    .short 0
    .long 12
    .long mb2_start32

    /* End tag. */
    .balign 8
    .short 0
    .short 0
    .long 8
mb2_header_end:

    .section .text.boot, "ax"
    .code32
    .global mb2_start32
mb2_start32:
    cli
    cld
    mov %ebx, %esi                      /* the boot information */
    mov %eax, %ebp                      /* the protocol word: kernel_entry checks the magic */
    jmp boot_start32
    .code64
