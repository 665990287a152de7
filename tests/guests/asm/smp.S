/* SMP: the BSP wakes every AP with INIT-SIPI-SIPI. Each AP starts in real
 * mode at the trampoline (copied to 0x8000), prints "cpu <APIC ID> up" under
 * a spinlock, counts itself in and halts. The BSP waits for all of them
 * (the count comes from CPUID.1:EBX[23:16]) and powers off. */
#include "common.h"
#define TRAMPOLINE  0x8000
#define LOCK        0x8f00
#define COUNT       0x8f04
#define ICR_LOW     0x300
#define ICR_HIGH    0x310
#define INIT_ALL_BUT_SELF  0x000c4500
#define SIPI_ALL_BUT_SELF  (0x000c4600 | (TRAMPOLINE >> 12))

    .code64
    .text
    .globl _start
_start:
    lea stack_top(%rip), %rsp
    lea ap_start(%rip), %rsi
    mov $TRAMPOLINE, %rdi
    mov $(ap_end - ap_start), %rcx
    rep movsb
    movl $0, LOCK
    movl $0, COUNT
    mov $1, %eax
    cpuid
    shr $16, %ebx
    and $0xff, %ebx
    mov %ebx, %r13d                 /* vCPUs in the package */

    call lock
    lea bsp_msg(%rip), %rsi
    call puts
    mov %r13, %rax
    call puthex
    mov $'\n', %al
    call putc
    movb $0, LOCK

    cmp $1, %r13d
    je all_up
    mov $LAPIC_BASE, %rdi
    movl $0, ICR_HIGH(%rdi)
    movl $INIT_ALL_BUT_SELF, ICR_LOW(%rdi)
    movl $SIPI_ALL_BUT_SELF, ICR_LOW(%rdi)
    movl $SIPI_ALL_BUT_SELF, ICR_LOW(%rdi)

    mov $5000000, %r14              /* bounded wait */
wait:
    mov COUNT, %eax
    inc %eax
    cmp %r13d, %eax
    je all_up
    pause
    dec %r14
    jnz wait
    lea timeout_msg(%rip), %rsi
    call puts
    call poweroff
all_up:
    call lock
    lea all_msg(%rip), %rsi
    call puts
    call poweroff

/* lock: spin on the byte at LOCK. */
lock:
    mov $1, %al
    xchg %al, LOCK
    test %al, %al
    jnz lock
    ret

#include "lib64.S"

/* The AP trampoline: real mode, CS = TRAMPOLINE >> 4, no stack used. */
    .code16
ap_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov $1, %eax
    cpuid
    shr $24, %ebx                   /* initial APIC ID */
1:  mov $1, %al
    xchg %al, LOCK
    test %al, %al
    jnz 1b
    mov $(TRAMPOLINE + ap_msg - ap_start), %si
2:  lodsb
    test %al, %al
    jz 4f
    mov %al, %cl
    mov $COM1_LSR, %dx
3:  inb %dx, %al
    test $LSR_THRE, %al
    jz 3b
    mov %cl, %al
    mov $COM1, %dx
    outb %al, %dx
    jmp 2b
4:  /* the APIC ID as two hex digits, then " up\n" */
    mov %bl, %cl
    shr $4, %cl
    mov $2, %di
5:  and $0xf, %cl
    add $'0', %cl
    cmp $'9', %cl
    jbe 6f
    add $('a' - '9' - 1), %cl
6:  mov $COM1_LSR, %dx
7:  inb %dx, %al
    test $LSR_THRE, %al
    jz 7b
    mov %cl, %al
    mov $COM1, %dx
    outb %al, %dx
    mov %bl, %cl
    dec %di
    jnz 5b
    mov $(TRAMPOLINE + ap_up - ap_start), %si
8:  lodsb
    test %al, %al
    jz 10f
    mov %al, %cl
    mov $COM1_LSR, %dx
9:  inb %dx, %al
    test $LSR_THRE, %al
    jz 9b
    mov %cl, %al
    mov $COM1, %dx
    outb %al, %dx
    jmp 8b
10: movb $0, LOCK
    lock incl COUNT
11: cli
    hlt
    jmp 11b
ap_msg: .asciz "cpu "
ap_up:  .asciz " up\n"
ap_end:

    .data
bsp_msg:     .asciz "cpu 00 up (BSP), vCPUs: "
all_msg:     .asciz "all cpus up\n"
timeout_msg: .asciz "timeout waiting for APs\n"
    .bss
    .balign 16
    .skip 4096
stack_top:
