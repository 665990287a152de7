/* String port I/O: `rep outsb` of a whole line to COM1, then, once input
 * has arrived, `rep insb` of 7 bytes from COM1's receive buffer, echoed
 * back as "in: <bytes>". KVM hands each string instruction to the VMM as
 * one exit of size x count bytes. */
#include "common.h"
    .code64
    .text
    .globl _start
_start:
    lea stack_top(%rip), %rsp
    lea out_msg(%rip), %rsi
    mov $(out_end - out_msg), %ecx
    mov $COM1, %dx
    cld
    rep outsb
    /* Wait for input; it arrives in one piece, so all 7 bytes are there. */
    mov $COM1_LSR, %dx
1:  in %dx, %al
    test $LSR_DR, %al
    jz 1b
    lea buf(%rip), %rdi
    mov $7, %ecx
    mov $COM1, %dx
    rep insb
    movb $0, (%rdi)
    lea in_msg(%rip), %rsi
    call puts
    lea buf(%rip), %rsi
    call puts
    lea nl(%rip), %rsi
    call puts
    call poweroff

#include "lib64.S"

    .data
out_msg: .ascii "string out ok\n"
out_end:
in_msg:  .asciz "in: "
nl:      .asciz "\n"
buf:     .skip 16
    .bss
    .balign 16
    .skip 4096
stack_top:
