/* State that a snapshot must carry: LAPIC-timer and PIT interrupts both
 * counted (10 ms each), SSE registers xmm0-xmm15 loaded with known values
 * at the start and checked at the end, and the guest's own page tables
 * (an alias of low memory at 0xffff800000000000, read at the end). It
 * prints "lapic N pit M" every 10 LAPIC ticks, so output is in flight
 * all along; after TICKS ticks it prints the checks, "done", powers off. */
#include "common.h"
#define V_LAPIC     0x40
#define V_PIT       0x41
#define TICKS       60
#define APIC_EOI    0xb0
#define APIC_SVR    0xf0
#define APIC_LVTT   0x320
#define APIC_TICR   0x380
#define APIC_TDCR   0x3e0
#define PERIODIC    (1 << 17)
#define IOAPIC      0xfec00000
#define PT_BASE     0x300000        /* PML4, PDPT, PD0 (0-1 GiB), PD3 (3-4 GiB) */
#define ALIAS       0xffff800000000000

    .code64
    .text
    .globl _start
_start:
    lea stack_top(%rip), %rsp

    /* Own page tables: identity 0-1 GiB and 3-4 GiB in 2 MiB pages, and
     * PML4[256] aliasing the same PDPT. */
    mov $PT_BASE, %rdi
    lea 0x1003(%rdi), %rax          /* PDPT | P | W */
    mov %rax, (%rdi)
    mov %rax, 256*8(%rdi)
    lea 0x2003(%rdi), %rax          /* PD0 */
    mov %rax, 0x1000(%rdi)
    lea 0x3003(%rdi), %rax          /* PD3 */
    mov %rax, 0x1018(%rdi)
    xor %ecx, %ecx
1:  mov %rcx, %rax
    shl $21, %rax
    or $0x83, %rax                  /* P | W | PS */
    mov %rax, 0x2000(%rdi,%rcx,8)
    mov $3, %rdx
    shl $30, %rdx
    add %rdx, %rax
    mov %rax, 0x3000(%rdi,%rcx,8)
    inc %ecx
    cmp $512, %ecx
    jb 1b
    mov %rdi, %cr3

    /* SSE (CR4.OSFXSR, OSXMMEXCPT): known values in every xmm register. */
    mov %cr4, %rax
    or $0x600, %rax
    mov %rax, %cr4
    lea xmm_expect(%rip), %rsi
    movdqu 0x00(%rsi), %xmm0
    movdqu 0x10(%rsi), %xmm1
    movdqu 0x20(%rsi), %xmm2
    movdqu 0x30(%rsi), %xmm3
    movdqu 0x40(%rsi), %xmm4
    movdqu 0x50(%rsi), %xmm5
    movdqu 0x60(%rsi), %xmm6
    movdqu 0x70(%rsi), %xmm7
    movdqu 0x80(%rsi), %xmm8
    movdqu 0x90(%rsi), %xmm9
    movdqu 0xa0(%rsi), %xmm10
    movdqu 0xb0(%rsi), %xmm11
    movdqu 0xc0(%rsi), %xmm12
    movdqu 0xd0(%rsi), %xmm13
    movdqu 0xe0(%rsi), %xmm14
    movdqu 0xf0(%rsi), %xmm15

    idt_gate V_LAPIC, lapic_tick, idt
    idt_gate V_PIT, pit_tick, idt
    lidt idtr(%rip)

    /* PIC masked (PIT interrupts go through the IOAPIC), IOAPIC pins 0
     * and 2 (where a PIT may be wired) to V_PIT on APIC 0. */
    mov $0xff, %al
    out %al, $0x21
    out %al, $0xa1
    mov $IOAPIC, %rdi
    movl $0x10, (%rdi)
    movl $V_PIT, 0x10(%rdi)
    movl $0x11, (%rdi)
    movl $0, 0x10(%rdi)
    movl $0x14, (%rdi)
    movl $V_PIT, 0x10(%rdi)
    movl $0x15, (%rdi)
    movl $0, 0x10(%rdi)
    /* PIT channel 0, mode 2, 100 Hz. */
    mov $0x34, %al
    out %al, $0x43
    mov $(11932 & 0xff), %al
    out %al, $0x40
    mov $(11932 >> 8), %al
    out %al, $0x40

    mov $LAPIC_BASE, %rdi
    movl $0x1ff, APIC_SVR(%rdi)
    movl $0xb, APIC_TDCR(%rdi)
    movl $(PERIODIC | V_LAPIC), APIC_LVTT(%rdi)
    movl $10000000, APIC_TICR(%rdi)
    lea start_msg(%rip), %rsi
    call puts

    xor %r12, %r12
1:  sti
    hlt
    cli
    mov lapic_count(%rip), %rax
    cmp $TICKS, %rax
    jae 2f
    mov %rax, %rbx
    sub %r12, %rbx
    cmp $10, %rbx
    jb 1b
    mov %rax, %r12
    call report
    jmp 1b

2:  mov $LAPIC_BASE, %rdi
    movl $0x10000, APIC_LVTT(%rdi)
    call report
    /* The xmm registers, as loaded at the start? */
    lea xmm_seen(%rip), %rdi
    movdqu %xmm0, 0x00(%rdi)
    movdqu %xmm1, 0x10(%rdi)
    movdqu %xmm2, 0x20(%rdi)
    movdqu %xmm3, 0x30(%rdi)
    movdqu %xmm4, 0x40(%rdi)
    movdqu %xmm5, 0x50(%rdi)
    movdqu %xmm6, 0x60(%rdi)
    movdqu %xmm7, 0x70(%rdi)
    movdqu %xmm8, 0x80(%rdi)
    movdqu %xmm9, 0x90(%rdi)
    movdqu %xmm10, 0xa0(%rdi)
    movdqu %xmm11, 0xb0(%rdi)
    movdqu %xmm12, 0xc0(%rdi)
    movdqu %xmm13, 0xd0(%rdi)
    movdqu %xmm14, 0xe0(%rdi)
    movdqu %xmm15, 0xf0(%rdi)
    lea xmm_expect(%rip), %rsi
    xor %ecx, %ecx
3:  mov (%rsi,%rcx,8), %rax
    cmp (%rdi,%rcx,8), %rax
    jne 4f
    inc %ecx
    cmp $32, %ecx
    jb 3b
    lea xmm_ok(%rip), %rsi
    jmp 5f
4:  lea xmm_bad(%rip), %rsi
5:  call puts
    /* Through the alias: the guest's own page tables are still in use. */
    lea magic(%rip), %rax
    mov $ALIAS, %rdx
    add %rdx, %rax
    mov (%rax), %rax
    cmp magic(%rip), %rax
    lea paging_ok(%rip), %rsi
    je 6f
    lea paging_bad(%rip), %rsi
6:  call puts
    lea done_msg(%rip), %rsi
    call puts
    call poweroff

/* "lapic N pit M" */
report:
    lea lapic_msg(%rip), %rsi
    call puts
    mov lapic_count(%rip), %rax
    call puthex_nl
    lea pit_msg(%rip), %rsi
    call puts
    mov pit_count(%rip), %rax
    call puthex_nl
    ret

lapic_tick:
    push %rax
    incq lapic_count(%rip)
    mov $LAPIC_BASE, %rax
    movl $0, APIC_EOI(%rax)
    pop %rax
    iretq

pit_tick:
    push %rax
    incq pit_count(%rip)
    mov $LAPIC_BASE, %rax
    movl $0, APIC_EOI(%rax)
    pop %rax
    iretq

#include "lib64.S"

    .data
start_msg:  .asciz "persist\n"
lapic_msg:  .asciz "lapic "
pit_msg:    .asciz "pit "
xmm_ok:     .asciz "xmm ok\n"
xmm_bad:    .asciz "xmm BAD\n"
paging_ok:  .asciz "paging ok\n"
paging_bad: .asciz "paging BAD\n"
done_msg:   .asciz "done\n"
    .balign 16
xmm_expect:
    .quad 0x0123456789abcdef, 0xfedcba9876543210
    .quad 0x1111111111111111, 0x2222222222222222
    .quad 0x3333333333333333, 0x4444444444444444
    .quad 0x5555555555555555, 0x6666666666666666
    .quad 0x7777777777777777, 0x8888888888888888
    .quad 0x9999999999999999, 0xaaaaaaaaaaaaaaaa
    .quad 0xbbbbbbbbbbbbbbbb, 0xcccccccccccccccc
    .quad 0xdddddddddddddddd, 0xeeeeeeeeeeeeeeee
    .quad 0x0f0f0f0f0f0f0f0f, 0xf0f0f0f0f0f0f0f0
    .quad 0x1234123412341234, 0x5678567856785678
    .quad 0x9abc9abc9abc9abc, 0xdef0def0def0def0
    .quad 0x0102030405060708, 0x090a0b0c0d0e0f10
    .quad 0x1112131415161718, 0x191a1b1c1d1e1f20
    .quad 0x2122232425262728, 0x292a2b2c2d2e2f30
    .quad 0x3132333435363738, 0x393a3b3c3d3e3f40
    .quad 0x4142434445464748, 0x494a4b4c4d4e4f50
magic:      .quad 0x5453424d534e4150
lapic_count: .quad 0
pit_count:  .quad 0
    .balign 16
xmm_seen:   .skip 256
idt:    .skip 256*16
idtr:   .word 256*16-1
        .quad idt
    .bss
    .balign 16
    .skip 4096
stack_top:
