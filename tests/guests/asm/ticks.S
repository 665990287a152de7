/* Counts LAPIC timer interrupts: a periodic timer (10 ms at KVM's 1 GHz
 * APIC bus) and an IDT handler that counts and EOIs; the main loop sleeps
 * in `sti; hlt` and prints the count every 10 ticks, then "done" and the
 * count after TICKS ticks, and powers off. Used to show that a paused
 * machine makes no progress and a resumed one finishes. */
#include "common.h"
#define VECTOR      0x40
#define TICKS       100
#define APIC_EOI    0xb0
#define APIC_SVR    0xf0
#define APIC_LVTT   0x320
#define APIC_TICR   0x380
#define APIC_TDCR   0x3e0
#define PERIODIC    (1 << 17)

    .code64
    .text
    .globl _start
_start:
    lea stack_top(%rip), %rsp
    idt_gate VECTOR, tick, idt
    lidt idtr(%rip)

    mov $LAPIC_BASE, %rdi
    movl $0x1ff, APIC_SVR(%rdi)             /* software enable */
    movl $0xb, APIC_TDCR(%rdi)              /* divide by 1 */
    movl $(PERIODIC | VECTOR), APIC_LVTT(%rdi)
    movl $10000000, APIC_TICR(%rdi)
    lea start_msg(%rip), %rsi
    call puts

    xor %r12, %r12                          /* last count printed */
1:  sti
    hlt
    cli
    mov count(%rip), %rax
    cmp $TICKS, %rax
    jae 2f
    mov %rax, %rbx
    sub %r12, %rbx
    cmp $10, %rbx
    jb 1b
    mov %rax, %r12
    lea tick_msg(%rip), %rsi
    call puts
    mov %r12, %rax
    call puthex_nl
    jmp 1b
2:  mov $LAPIC_BASE, %rdi
    movl $0x10000, APIC_LVTT(%rdi)          /* masked */
    lea done_msg(%rip), %rsi
    call puts
    mov count(%rip), %rax
    call puthex_nl
    call poweroff

tick:
    push %rax
    incq count(%rip)
    mov $LAPIC_BASE, %rax
    movl $0, APIC_EOI(%rax)
    pop %rax
    iretq

#include "lib64.S"

    .data
start_msg: .asciz "ticking\n"
tick_msg:  .asciz "ticks "
done_msg:  .asciz "done "
    .balign 16
count:  .quad 0
idt:    .skip 256*16
idtr:   .word 256*16-1
        .quad idt
    .bss
    .balign 16
    .skip 4096
stack_top:
