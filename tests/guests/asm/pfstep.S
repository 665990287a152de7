/* The page-fault breakpoint of the `syscall` repair, seen from a kernel:
 * loads an IDT whose #PF handler starts with a nop (as Linux's does),
 * writes LSTAR (which arms the breakpoint on emulation-only hosts), then
 * takes kernel page faults and checks each is handled exactly once, with
 * per-CPU data read through GS in the handler, as Linux does. */
#include "common.h"
#define MSR_GS_BASE 0xc0000101
#define MSR_LSTAR   0xc0000082
#define FAULTS      5

    .code64
    .text
    .globl _start
_start:
    lea stack_top(%rip), %rsp
    idt_gate 14, pf_handler, idt
    lidt idtr(%rip)
    /* GS base: per-CPU data, read by the handler. */
    lea percpu(%rip), %rax
    mov %rax, %rdx
    shr $32, %rdx
    mov $MSR_GS_BASE, %ecx
    wrmsr
    /* LSTAR: arms the breakpoint. */
    lea syscall_entry(%rip), %rax
    xor %edx, %edx
    mov $MSR_LSTAR, %ecx
    wrmsr

    mov $FAULTS, %r12d
1:  mov $0x100000000, %rax          /* above the identity map: not present */
    mov (%rax), %rbx                /* 3 bytes: 48 8b 18 */
    dec %r12d
    jnz 1b

    lea msg(%rip), %rsi
    call puts
    mov %gs:0, %rax                 /* the handler's count */
    call puthex
    mov $'\n', %al
    call putc
    call poweroff

pf_handler:
    nop
    cld
    incq %gs:0                      /* per-CPU fault count */
    addq $3, 8(%rsp)                /* skip the faulting load */
    add $8, %rsp                    /* error code */
    iretq

syscall_entry:
    hlt

#include "lib64.S"

    .data
    .balign 16
idt:    .skip 256*16
idtr:   .word 256*16-1
        .quad idt
msg:    .asciz "page faults handled: "
    .balign 64
percpu: .quad 0
    .bss
    .balign 16
    .skip 4096
stack_top:
