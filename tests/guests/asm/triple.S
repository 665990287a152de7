/* Triple fault: an empty IDT, then an exception. #UD cannot be delivered
 * (#GP), nor can the #GP (#DF), nor the #DF: the CPU shuts down. */
#include "common.h"
    .code64
    .text
    .globl _start
_start:
    lea stack_top(%rip), %rsp
    lea msg(%rip), %rsi
    call puts
    lidt empty_idt(%rip)
    ud2

#include "lib64.S"

    .data
    .balign 8
empty_idt:
    .word 0
    .quad 0
msg:    .asciz "about to triple fault\n"
    .bss
    .balign 16
    .skip 4096
stack_top:
