/*
 * PVH boot entry of the shmos kernel (AT&T syntax, assembled by rustc through
 * `global_asm!` in kernel/src/boot/mod.rs, so no external assembler is needed).
 *
 * QEMU's `-kernel` loads the ELF and, because of the Xen note below, enters
 * `pvh_start32` in 32-bit protected mode with paging off and
 * %ebx = physical address of `struct hvm_start_info`.
 *
 * bootloader/multiboot2.S enters the same trampoline at `boot_start32` with
 * the multiboot2 information instead. Through the trampoline %esi holds the
 * boot information's address and %ebp the protocol word: 0 for PVH, GRUB's
 * %eax (0x36d76289) for multiboot2.
 *
 * The trampoline: zero .bss, identity-map the first 4 GiB with 2 MiB pages,
 * enable PAE + long mode + NX + write protection, load a 64-bit GDT, far-jump
 * to 64-bit code, and call `kernel_entry(info, protocol)` on the boot stack. The
 * kernel replaces these page tables with its own as soon as it runs.
 */

    .section .note.Xen, "a", @note
    .balign 4
    .long 4                     /* name size: "Xen\0" */
    .long 8                     /* descriptor size */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad pvh_start32
    .balign 4

    .section .text.boot, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    mov %ebx, %esi                      /* keep hvm_start_info across the set-up */
    xor %ebp, %ebp                      /* protocol word: PVH */

    .global boot_start32
boot_start32:

    /* Zero .bss: the page tables and the boot stack live there. */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb

    mov $boot_stack_top, %esp

    /* 2048 page-directory entries of 2 MiB: present | writable | huge. */
    mov $boot_pd, %edi
    xor %ecx, %ecx
1:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, (%edi,%ecx,8)
    movl $0, 4(%edi,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jne 1b

    /* Four PDPT entries, one per GiB. */
    mov $boot_pdpt, %edi
    mov $boot_pd, %eax
    or $0x3, %eax
    xor %ecx, %ecx
2:  mov %eax, (%edi,%ecx,8)
    add $4096, %eax
    inc %ecx
    cmp $4, %ecx
    jne 2b

    mov $boot_pml4, %edi
    mov $boot_pdpt, %eax
    or $0x3, %eax
    mov %eax, (%edi)

    /* CR4.PAE */
    mov %cr4, %eax
    or $(1 << 5), %eax
    mov %eax, %cr4

    mov $boot_pml4, %eax
    mov %eax, %cr3

    /* EFER.LME | EFER.NXE */
    mov $0xC0000080, %ecx
    rdmsr
    or $((1 << 8) | (1 << 11)), %eax
    wrmsr

    /* CR0.PG | CR0.WP | CR0.PE */
    mov %cr0, %eax
    or $0x80010001, %eax
    mov %eax, %cr0

    lgdt boot_gdt_ptr
    ljmp $0x08, $pvh_start64

    .code64
pvh_start64:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %ax, %ax
    mov %ax, %fs
    mov %ax, %gs
    movabs $boot_stack_top, %rsp
    mov %esi, %edi                      /* kernel_entry(info_phys, protocol) */
    mov %ebp, %esi
    xor %ebp, %ebp
    call kernel_entry
3:  cli
    hlt
    jmp 3b

    .section .rodata
    .balign 8
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF            /* 0x08: 64-bit code */
    .quad 0x00CF92000000FFFF            /* 0x10: data */
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

    .section .bss
    .balign 4096
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4096 * 4
    .global boot_stack_bottom
boot_stack_bottom:
    .skip 128 * 1024
    .global boot_stack_top
boot_stack_top:
