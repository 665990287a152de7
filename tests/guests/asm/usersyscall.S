/* A `syscall` from user mode, as Linux makes one: its own GDT (Linux's
 * selectors), a TSS, page tables with a user page at 2 MiB and the kernel
 * (with LSTAR) in a supervisor page below it, STAR/LSTAR/SFMASK and
 * EFER.SCE, then iretq to CPL3, where `syscall` runs. The entry at LSTAR
 * reports the state SYSCALL left. On emulation-only hosts the CPU leaves
 * the entry at CPL3, the fetch faults (#PF, error 0x15) and Tsubame's
 * repair finishes the transition at the #PF handler's breakpoint; without
 * the repair the handler runs and reports the fault. */
#include "common.h"
#define MSR_EFER    0xc0000080
#define MSR_STAR    0xc0000081
#define MSR_LSTAR   0xc0000082
#define MSR_SFMASK  0xc0000084
#define USER_CODE   0x200000
#define USER_STACK  0x3ff000

/* show: the string at \msg, then \reg in hex and a space (or \end). */
.macro show msg, reg, end=puthex_sp
    lea \msg(%rip), %rsi
    call puts
    mov \reg, %rax
    call \end
.endm

    .code64
    .text
    .globl _start
_start:
    lea stack_top(%rip), %rsp
    idt_gate 14, pf_handler, idt
    lidt idtr(%rip)

    /* The TSS descriptor's base, then the GDT, CS, the data segments, TR. */
    lea tss(%rip), %rax
    lea gdt_tss(%rip), %rdi
    mov %ax, 2(%rdi)
    shr $16, %rax
    mov %al, 4(%rdi)
    mov %ah, 7(%rdi)
    shr $16, %rax
    mov %eax, 8(%rdi)
    lea stack_top(%rip), %rax
    mov %rax, tss+4(%rip)               /* RSP0 */
    lgdt gdtr(%rip)
    push $0x10
    lea 1f(%rip), %rax
    push %rax
    lretq
1:  mov $0x18, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $0x38, %ax
    ltr %ax

    /* Page tables: 0-2 MiB supervisor, 2-4 MiB user. */
    lea pml4(%rip), %rax
    mov %rax, %cr3

    /* The user code at USER_CODE. */
    lea user_code(%rip), %rsi
    mov $USER_CODE, %rdi
    mov $(user_end - user_code), %ecx
    rep movsb

    /* SYSCALL: Linux's STAR (kernel CS 0x10, user base 0x23), IF masked. */
    mov $MSR_EFER, %ecx
    rdmsr
    or $0x801, %eax                     /* SCE; NXE, as Linux (a fetch fault says so) */
    wrmsr
    mov $MSR_STAR, %ecx
    xor %eax, %eax
    mov $0x00230010, %edx
    wrmsr
    mov $MSR_SFMASK, %ecx
    mov $0x200, %eax
    xor %edx, %edx
    wrmsr
    /* LSTAR last: on emulation-only hosts it arms the repair, which reads
     * the #PF handler from the IDT. */
    lea syscall_entry(%rip), %rax
    xor %edx, %edx
    mov $MSR_LSTAR, %ecx
    wrmsr

    push $0x2b                          /* SS */
    push $USER_STACK                    /* RSP */
    push $0x2                           /* RFLAGS */
    push $0x33                          /* CS */
    push $USER_CODE                     /* RIP */
    iretq

/* Copied to USER_CODE; runs at CPL3. */
user_code:
    mov $0x2a, %eax
    syscall
user_after:
    jmp user_after
user_end:

syscall_entry:
    mov %cs, %r13
    mov %rsp, %r14
    mov %rax, %r12
    mov %rcx, %r15
    lea stack_top(%rip), %rsp
    show msg_syscall, %r13
    show msg_rax, %r12
    show msg_rcx, %r15
    show msg_rsp, %r14, puthex_nl
    call poweroff

/* A page fault the guest sees: where, why and from which CS. */
pf_handler:
    nop
    mov 0(%rsp), %r12                   /* error code */
    mov 16(%rsp), %r13                  /* CS */
    mov %cr2, %r14
    show msg_pf, %r14
    show msg_error, %r12
    show msg_cs, %r13, puthex_nl
    call poweroff

#include "lib64.S"

    .data
    .balign 16
gdt:    .quad 0
        .quad 0
        .quad 0x00af9a000000ffff        /* 0x10 kernel code, 64-bit */
        .quad 0x00cf92000000ffff        /* 0x18 kernel data */
        .quad 0x00cffa000000ffff        /* 0x20 user code, 32-bit */
        .quad 0x00cff2000000ffff        /* 0x28 user data */
        .quad 0x00affa000000ffff        /* 0x30 user code, 64-bit */
gdt_tss:
        .word 0x67, 0                   /* 0x38 TSS: limit, base 15:0 */
        .byte 0, 0x89, 0, 0             /* base 23:16, present 64-bit TSS */
        .quad 0                         /* base 63:32, reserved */
gdt_end:
gdtr:   .word gdt_end - gdt - 1
        .quad gdt
idtr:   .word 256*16-1
        .quad idt
msg_syscall: .asciz "syscall entered: cs "
msg_rax:     .asciz "rax "
msg_rcx:     .asciz "rcx "
msg_rsp:     .asciz "rsp "
msg_pf:      .asciz "page fault seen by the guest at "
msg_error:   .asciz "error "
msg_cs:      .asciz "cs "
    .balign 4096
pml4:   .quad pdpt + 0x7
        .skip 4088
pdpt:   .quad pd + 0x7
        .skip 4088
pd:     .quad 0x000000 + 0x83           /* supervisor, 2 MiB */
        .quad 0x200000 + 0x87           /* user, 2 MiB */
        .skip 4080
    .balign 16
idt:    .skip 256*16
tss:    .skip 104
    .bss
    .balign 16
    .skip 4096
stack_top:
