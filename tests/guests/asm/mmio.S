/* MMIO to an address no device owns: the write is dropped, the read
 * returns all ones. Prints what it read, then powers off. */
#include "common.h"
    .code64
    .text
    .globl _start
_start:
    lea stack_top(%rip), %rsp
    mov $0xd0000000, %rdi
    movl $0x12345678, (%rdi)
    movl (%rdi), %eax
    mov %rax, %r12
    lea msg(%rip), %rsi
    call puts
    mov %r12, %rax
    call puthex
    mov $'\n', %al
    call putc
    call poweroff

#include "lib64.S"

    .data
msg:    .asciz "mmio read "
    .bss
    .balign 16
    .skip 4096
stack_top:
