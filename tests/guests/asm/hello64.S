/* 64-bit boot protocol entry: long mode, identity paging, RSI = zero page.
 * Checks the zero page's "HdrS" magic, prints, powers off. */
#include "common.h"
    .code64
    .text
    .globl _start
_start:
    lea stack_top(%rip), %rsp
    mov %rsi, %r12                 /* zero page */
    lea hello(%rip), %rsi
    call puts
    cmpl $0x53726448, 0x202(%r12)  /* boot_params.hdr.header */
    jne bad
    lea zp_ok(%rip), %rsi
    call puts
    mov 0x228(%r12), %eax          /* hdr.cmd_line_ptr */
    mov %rax, %rsi
    call puts
    mov $'\n', %al
    call putc
    call poweroff
bad:
    lea zp_bad(%rip), %rsi
    call puts
    call poweroff

#include "lib64.S"

    .data
hello:  .asciz "Hello from a 64-bit guest\n"
zp_ok:  .asciz "zero page ok, cmdline: "
zp_bad: .asciz "zero page BAD\n"
    .bss
    .balign 16
    .skip 4096
stack_top:
