/* Prints, then halts with interrupts off: the vCPU sleeps in the kernel
 * for ever, and only a kick can bring its thread back. */
#include "common.h"
    .code64
    .text
    .globl _start
_start:
    lea stack_top(%rip), %rsp
    lea msg(%rip), %rsi
    call puts
    cli
1:  hlt
    jmp 1b

#include "lib64.S"

    .data
msg:    .asciz "halting for ever\n"
    .bss
    .balign 16
    .skip 4096
stack_top:
