/* Linux's last-resort restart (machine_real_restart): leave protected mode
 * and jump to the BIOS reset vector, F000:FFF0. Tsubame has no BIOS; the
 * reset vector it writes must end the machine as a reset (exit 0).
 * Entered via PVH: 32-bit protected mode, paging off. */
#include "common.h"
    .section .note.Xen, "a", @note
    .balign 4
    .long 4, 4, 18          /* namesz, descsz, XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start

    .code32
    .text
    .globl _start
_start:
pvh_start:
    mov $stack_top, %esp
    mov $msg, %esi
1:  lodsb
    test %al, %al
    jz 3f
    mov %al, %ah
    mov $COM1_LSR, %dx
2:  inb %dx, %al
    test $LSR_THRE, %al
    jz 2b
    mov %ah, %al
    mov $COM1, %dx
    outb %al, %dx
    jmp 1b
3:  /* A 16-bit code segment based at rm16, as Linux's trampoline has. */
    mov $rm16, %eax
    mov %ax, gdt + 8 + 2
    shr $16, %eax
    mov %al, gdt + 8 + 4
    mov %ah, gdt + 8 + 7
    lgdt gdt_desc
    ljmp $0x08, $0

    .code16
rm16:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %cr0, %eax
    and $0xfffffffe, %eax
    mov %eax, %cr0
    ljmpw $0xf000, $0xfff0

    .data
    .balign 8
gdt:
    .quad 0
    .word 0xffff, 0
    .byte 0, 0x9b, 0x00, 0  /* 16-bit code, base patched above */
    .word 0xffff, 0
    .byte 0, 0x93, 0x00, 0  /* 16-bit data, base 0 */
gdt_desc:
    .word 23
    .long gdt
msg: .asciz "jumping to the BIOS reset vector\n"
    .bss
    .balign 16
    .skip 1024
stack_top:
