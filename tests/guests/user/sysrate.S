/* Measures system calls per second: N getppid calls between two
 * clock_gettime calls. Prints "syscalls: N in T us". */
#include "sys.h"
#define N 2000

    .text
    .globl _start
_start:
    mov $SYS_clock_gettime, %eax
    mov $CLOCK_MONOTONIC, %edi
    lea t0(%rip), %rsi
    syscall
    mov $N, %r12d
1:  mov $SYS_getppid, %eax
    syscall
    dec %r12d
    jnz 1b
    mov $SYS_clock_gettime, %eax
    mov $CLOCK_MONOTONIC, %edi
    lea t1(%rip), %rsi
    syscall
    /* elapsed us = (t1.s - t0.s) * 1e6 + (t1.ns - t0.ns) / 1000 */
    mov t1(%rip), %rax
    sub t0(%rip), %rax
    imul $1000000, %rax, %rbx
    mov t1+8(%rip), %rax
    sub t0+8(%rip), %rax
    cqo
    mov $1000, %rcx
    idiv %rcx
    add %rax, %rbx
    mov %rbx, %r13
    print msg1, msg1_len
    mov $N, %eax
    call putdec
    print msg2, msg2_len
    mov %r13, %rax
    call putdec
    print msg3, msg3_len
    exit 0

#include "libuser.S"

    .data
msg1:   .ascii "syscalls: "
msg1_len = . - msg1
msg2:   .ascii " in "
msg2_len = . - msg2
msg3:   .ascii " us\n"
msg3_len = . - msg3
    .bss
t0: .skip 16
t1: .skip 16
