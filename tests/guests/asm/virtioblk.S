/* A minimal virtio-mmio driver for the first virtio device (a disk):
 * negotiate VERSION_1 and FLUSH, set up queue 0, then read sector 0,
 * write sector 1, flush, and read sector 1 back, polling the used ring.
 * Prints each request's status; the host test checks the image. */
#include "common.h"
#define VIRTIO      0xd0000000
#define RING        0x200000
#define HDR         0x203000
#define DATA        0x204000
#define STATUS      0x205000
#define T_IN        0
#define T_OUT       1
#define T_FLUSH     4
#define F_FLUSH     0x200
#define PATTERN     0x21454d4142555354  /* "TSUBAME!" */

    .code64
    .text
    .globl _start
_start:
    lea stack_top(%rip), %rsp
    mov $VIRTIO, %r15
    mov $2, %edi                        /* block device */
    mov $F_FLUSH, %esi
    mov $RING, %edx
    xor %ecx, %ecx
    call vio_start
    lea found(%rip), %rsi
    call puts

    mov $T_IN, %edi
    xor %esi, %esi
    call request
    lea rd0(%rip), %rsi
    call report
    mov $DATA, %rax
    mov (%rax), %rax
    call puthex_nl

    mov $DATA, %rdi
    mov $64, %ecx
    mov $PATTERN, %rax
    rep stosq
    mov $T_OUT, %edi
    mov $1, %esi
    call request
    lea wr1(%rip), %rsi
    call report
    mov $'\n', %al
    call putc

    mov $T_FLUSH, %edi
    xor %esi, %esi
    call request
#ifdef STALL_AT_FLUSH
    /* The flush is posted, not waited for. Once the host says its file
     * system holds the flush, read InterruptStatus, as a driver's
     * interrupt handler does, and say what it was. */
    lea posted(%rip), %rsi
    call puts
    mov $COM1_LSR, %dx
6:  in %dx, %al
    test $LSR_DR, %al
    jz 6b
    mov 0x60(%r15), %eax
    lea irqst(%rip), %rsi
    call report
    mov $'\n', %al
    call putc
7:  hlt
    jmp 7b
#endif
    lea fl(%rip), %rsi
    call report
    mov $'\n', %al
    call putc
#ifdef HANG_AFTER_FLUSH
    /* Wait here (interrupts off) for the host to kill the VMM. */
5:  hlt
    jmp 5b
#endif

    mov $DATA, %rdi
    mov $64, %ecx
    xor %eax, %eax
    rep stosq
    mov $T_IN, %edi
    mov $1, %esi
    call request
    lea rd1(%rip), %rsi
    call report
    mov $DATA, %rax
    mov 504(%rax), %rax
    call puthex_nl
    call poweroff

fail:
    call puts
    call poweroff

/* report: puts(%rsi), then the status in %eax as hex and a space. */
report:
    push %rax
    call puts
    pop %rax
    call puthex_sp
    ret

/* request: type %edi, sector %rsi; returns the status byte in %eax.
 * Header, data (none for a flush) and status in three descriptors. */
request:
    mov $HDR, %rbx
    movl %edi, (%rbx)
    movl $0, 4(%rbx)
    mov %rsi, 8(%rbx)
    mov $STATUS, %rax
    movb $0xff, (%rax)
    mov %edi, %r12d
    mov $RING, %edx
    xor %ecx, %ecx
    mov $HDR, %edi
    mov $16, %esi
    mov $VIO_F_NEXT, %ax
    call vio_desc
    cmp $T_FLUSH, %r12d
    je 1f
    inc %ecx
    mov $DATA, %edi
    mov $512, %esi
    mov $VIO_F_NEXT, %ax
    cmp $T_IN, %r12d
    jne 2f
    or $VIO_F_WRITE, %ax
2:  call vio_desc
1:  inc %ecx
    mov $STATUS, %edi
    mov $1, %esi
    mov $VIO_F_WRITE, %ax
    call vio_desc
    movzwl VIO_USED+2(%rdx), %r8d
    xor %ecx, %ecx
    xor %edi, %edi
    call vio_post
#ifdef STALL_AT_FLUSH
    cmp $T_FLUSH, %r12d
    je 3f
#endif
    call vio_wait
3:
    mov $STATUS, %rax
    movzbl (%rax), %eax
    ret

#include "lib64.S"
#include "libvirtio.S"

    .data
found:   .asciz "virtio-blk found, queue ready\n"
rd0:     .asciz "read0 "
wr1:     .asciz "write1 "
fl:      .asciz "flush "
rd1:     .asciz "read1 "
#ifdef STALL_AT_FLUSH
posted:  .asciz "flush posted\n"
irqst:   .asciz "interrupt status "
#endif
    .bss
    .balign 16
    .skip 4096
stack_top:
