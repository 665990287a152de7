/* Prints the same line for ever: console output faster than anyone may
 * read it. */
#include "common.h"
    .code64
    .text
    .globl _start
_start:
    lea stack_top(%rip), %rsp
1:  lea msg(%rip), %rsi
    call puts
    jmp 1b

#include "lib64.S"

    .data
msg:    .asciz "spew spew spew spew spew spew spew spew spew spew spew spew\n"
    .bss
    .balign 16
    .skip 4096
stack_top:
