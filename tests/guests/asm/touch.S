/* Dirties 1.5 GiB of RAM (one non-zero quadword in every 4 KiB page from
 * 16 MiB up), says so, then halts: a snapshot of it has 1.5 GiB to write.
 * Needs --memory 2048 or more. */
#include "common.h"
#define FROM    0x1000000
#define TO      0x61000000
    .code64
    .text
    .globl _start
_start:
    lea stack_top(%rip), %rsp
    mov $FROM, %rdi
    mov $TO, %rcx
    mov $0x5453554241, %rax             /* "ABUST": anything but zero */
1:  mov %rax, (%rdi)
    add $4096, %rdi
    cmp %rcx, %rdi
    jb 1b
    lea msg(%rip), %rsi
    call puts
    cli
2:  hlt
    jmp 2b

#include "lib64.S"

    .data
msg:    .asciz "touched\n"
    .bss
    .balign 16
    .skip 4096
stack_top:
