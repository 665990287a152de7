/* Counts PIT interrupts through the IOAPIC: the PICs masked, the LAPIC
 * enabled, IOAPIC pins 0 and 2 (KVM's in-kernel PIT raises GSI 0, a PC's
 * PIT reaches pin 2 as the MADT's override says) to vector 0x31 on APIC 0,
 * edge-triggered, the PIT at ~1 kHz; each tick ends with a LAPIC EOI.
 * Prints the count after TICKS ticks and powers off. (Level-triggered
 * entries would need KVM_EXIT_IOAPIC_EOI, which the emulation-only host
 * never delivered: see the irqchip tests.) */
#include "common.h"
#define TICKS 50
#define VECTOR 0x31
#define IOAPIC_BASE 0xfec00000
#define APIC_EOI 0xb0
#define APIC_SVR 0xf0

    .code64
    .text
    .globl _start
_start:
    lea stack_top(%rip), %rsp
    idt_gate VECTOR, tick, idt
    lidt idtr(%rip)

    mov $0xffff, %bx                /* both PICs, all masked */
    call pic_init

    mov $LAPIC_BASE, %rdi
    movl $0x1ff, APIC_SVR(%rdi)

    mov $IOAPIC_BASE, %rdi
    mov $0, %ecx                    /* pin 0, then pin 2 */
1:  lea 0x11(,%rcx,2), %eax         /* high half: destination APIC 0 */
    movl %eax, (%rdi)
    movl $0, 0x10(%rdi)
    lea 0x10(,%rcx,2), %eax         /* low half: vector, fixed, edge */
    movl %eax, (%rdi)
    movl $VECTOR, 0x10(%rdi)
    add $2, %ecx
    cmp $2, %ecx
    jbe 1b

    mov $0x34, %al                  /* PIT channel 0, mode 2, ~1 kHz */
    out %al, $0x43
    mov $0xa9, %al
    out %al, $0x40
    mov $0x04, %al
    out %al, $0x40
    lea start_msg(%rip), %rsi
    call puts

2:  sti
    hlt
    cli
    cmpq $TICKS, count(%rip)
    jb 2b

    mov $0x30, %al                  /* PIT: mode 0, no count */
    out %al, $0x43
    lea done_msg(%rip), %rsi
    call puts
    mov count(%rip), %rax
    call puthex_nl
    call poweroff

tick:
    push %rax
    cmpq $TICKS, count(%rip)
    jae 1f
    incq count(%rip)
1:  mov $LAPIC_BASE, %rax
    movl $0, APIC_EOI(%rax)
    pop %rax
    iretq

#include "lib64.S"

    .data
start_msg:  .asciz "ioapic and pit programmed\n"
done_msg:   .asciz "done "
    .balign 16
count:  .quad 0
idt:    .skip 256*16
idtr:   .word 256*16-1
        .quad idt
    .bss
    .balign 16
    .skip 4096
stack_top:
