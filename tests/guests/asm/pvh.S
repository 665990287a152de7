/* PVH entry: 32-bit protected mode, paging off, EBX = hvm_start_info.
 * Checks the magic, prints the command line from start info, powers off. */
#include "common.h"
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                 /* namesz */
    .long 4                 /* descsz */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start

    .code32
    .text
    .globl _start
_start:
pvh_start:
    mov $stack_top, %esp
    mov %ebx, %edi
    mov $hello, %esi
    call puts32
    cmpl $PVH_MAGIC, (%edi)
    jne bad
    mov $ok, %esi
    call puts32
    mov 24(%edi), %esi      /* cmdline_paddr (low half) */
    call puts32
    mov $'\n', %al
    call putc32
    mov $ACPI_SLEEP, %dx
    mov $S5_SLEEP, %al
    outb %al, %dx
1:  hlt
    jmp 1b
bad:
    mov $badmsg, %esi
    call puts32
    mov $ACPI_SLEEP, %dx
    mov $S5_SLEEP, %al
    outb %al, %dx
    jmp 1b

putc32:
    push %eax
    mov $COM1_LSR, %dx
2:  inb %dx, %al
    test $LSR_THRE, %al
    jz 2b
    pop %eax
    mov $COM1, %dx
    outb %al, %dx
    ret

puts32:
    lodsb
    test %al, %al
    jz 3f
    call putc32
    jmp puts32
3:  ret

    .data
hello:  .asciz "Hello from a PVH guest\n"
ok:     .asciz "start info ok, cmdline: "
badmsg: .asciz "start info BAD\n"
    .bss
    .balign 16
    .skip 4096
stack_top:
