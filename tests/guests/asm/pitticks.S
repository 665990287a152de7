/* Counts PIT interrupts through the 8259A pair: initialises both PICs
 * (vectors 0x20 and 0x28, only IRQ0 unmasked), programs PIT channel 0 as
 * a ~1 kHz rate generator (mode 2), takes TICKS interrupts in `sti; hlt`
 * with a non-specific EOI each, and prints the count. Once, with IF=0, it
 * waits until the PIC shows IRQ0 requested, then opens the window with
 * `sti` (a user-space irqchip must hold the interrupt for that window).
 * Reads back the counter with a latch command: it must be below the
 * reload value. Then powers off. Runs the same with any irqchip mode. */
#include "common.h"
#define TICKS 50
#define PIC1 0x20
#define PIC2 0xa0
#define PIT_CH0 0x40
#define PIT_CMD 0x43

    .code64
    .text
    .globl _start
_start:
    lea stack_top(%rip), %rsp
    idt_gate 0x20, tick, idt
    idt_gate 0x27, spurious, idt
    lidt idtr(%rip)

    mov $0xfffe, %bx                /* IRQ0 only */
    call pic_init

    mov $0x34, %al                  /* channel 0, LSB+MSB, mode 2 */
    out %al, $PIT_CMD
    mov $0xa9, %al                  /* 1193: ~1 kHz */
    out %al, $PIT_CH0
    mov $0x04, %al
    out %al, $PIT_CH0
    lea start_msg(%rip), %rsi
    call puts

    /* IF=0 until the PIC has IRQ0 requested (OCW3: read IRR). */
    mov $0x0a, %al
    out %al, $PIC1
2:  in $PIC1, %al
    test $1, %al
    jz 2b
    sti                             /* spin until the handler ran */
4:  cmpq $0, count(%rip)
    je 4b
    cli
    lea window_msg(%rip), %rsi
    call puts

1:  sti
    hlt
    cli
    cmpq $TICKS, count(%rip)
    jb 1b

    mov $0x00, %al                  /* latch channel 0 */
    out %al, $PIT_CMD
    in $PIT_CH0, %al
    movzbl %al, %ebx
    in $PIT_CH0, %al
    movzbl %al, %eax
    shl $8, %eax
    or %eax, %ebx
    lea latch_msg(%rip), %rsi
    call puts
    xor %eax, %eax
    cmp $1193, %ebx
    jbe 3f
    mov $1, %eax                    /* above the reload value: wrong */
3:  call puthex_nl

    mov $0x30, %al                  /* mode 0, no count: OUT stays low */
    out %al, $PIT_CMD
    lea done_msg(%rip), %rsi
    call puts
    mov count(%rip), %rax
    call puthex_nl
    mov spurious_count(%rip), %rax
    lea spur_msg(%rip), %rsi
    call puts
    call puthex_nl
    call poweroff

tick:
    push %rax
    cmpq $TICKS, count(%rip)
    jae 1f
    incq count(%rip)
1:  mov $0x20, %al                  /* non-specific EOI */
    out %al, $PIC1
    pop %rax
    iretq

spurious:                           /* IRQ7 with nothing in service: no EOI */
    incq spurious_count(%rip)
    iretq

#include "lib64.S"

    .data
start_msg:  .asciz "pic and pit programmed\n"
window_msg: .asciz "window taken\n"
latch_msg:  .asciz "latch "
done_msg:   .asciz "done "
spur_msg:   .asciz "spurious "
    .balign 16
count:  .quad 0
spurious_count: .quad 0
idt:    .skip 256*16
idtr:   .word 256*16-1
        .quad idt
    .bss
    .balign 16
    .skip 4096
stack_top:
