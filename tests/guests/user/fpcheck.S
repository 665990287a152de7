/* Fills every XMM register with a pattern unique to this process, then
 * yields the CPU many times (so the kernel saves and restores its FPU
 * state around other processes) and checks the registers after each
 * yield. Exit 0 and "fpcheck ok" if they always came back intact. */
#include "sys.h"
#define ROUNDS 300

    .text
    .globl _start
_start:
    mov $SYS_getpid, %eax
    syscall
    mov %rax, %r12
    mov $0x0101010101010101, %rbx
    imul %rbx, %r12                 /* pattern = pid * 0x0101.. */

    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    lea \n(%r12), %rax
    movq %rax, %xmm\n
    punpcklqdq %xmm\n, %xmm\n
    .endr

    mov $ROUNDS, %r13d
round:
    mov $SYS_sched_yield, %eax
    syscall
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    lea \n(%r12), %rax
    movq %rax, %xmm15
    punpcklqdq %xmm15, %xmm15
    .endr
    /* xmm15 was just rebuilt for n=15: check 0..14 against fresh copies. */
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14
    lea \n(%r12), %rax
    movq %rax, %xmm15
    punpcklqdq %xmm15, %xmm15
    pcmpeqb %xmm\n, %xmm15
    pmovmskb %xmm15, %eax
    cmp $0xffff, %eax
    jne corrupt
    .endr
    lea 15(%r12), %rax
    movq %rax, %xmm15
    punpcklqdq %xmm15, %xmm15
    dec %r13d
    jnz round

    print ok, ok_len
    exit 0
corrupt:
    print bad, bad_len
    exit 1

    .data
ok:     .ascii "fpcheck ok\n"
ok_len = . - ok
bad:    .ascii "fpcheck: XMM state corrupted across a context switch\n"
bad_len = . - bad
