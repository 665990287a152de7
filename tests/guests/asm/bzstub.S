/* The protected-mode code of a test bzImage, entered at its 64-bit entry
 * (load address + 0x200) when the guest decompresses: it says so. */
#include "common.h"
    .code64
    .text
    .globl _start
_start:
    lea stack_top(%rip), %rsp
    lea msg(%rip), %rsi
    call puts
    call poweroff

#include "lib64.S"

    .data
msg:    .asciz "bzImage entered through its own 64-bit entry\n"
    .bss
    .balign 16
    .skip 4096
stack_top:
