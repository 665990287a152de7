/* A minimal virtio-mmio driver for the first virtio device (a disk):
 * probe, negotiate VERSION_1 and FLUSH, set up queue 0 in low memory,
 * then read sector 0, write sector 1, flush, and read sector 1 back,
 * polling the used ring. Prints each request's status; the host test
 * checks the image. */
#include "common.h"
#define VIRTIO      0xd0000000
#define DESC        0x200000
#define AVAIL       0x201000
#define USED        0x202000
#define HDR         0x203000
#define DATA        0x204000
#define STATUS      0x205000
#define F_NEXT      1
#define F_WRITE     2
#define T_IN        0
#define T_OUT       1
#define T_FLUSH     4
#define PATTERN     0x21454d4142555354  /* "TSUBAME!" */

    .code64
    .text
    .globl _start
_start:
    lea stack_top(%rip), %rsp
    mov $VIRTIO, %r15
    lea nodev(%rip), %rsi
    cmpl $0x74726976, 0x00(%r15)        /* magic */
    jne fail
    cmpl $2, 0x04(%r15)                 /* version 2 (modern) */
    jne fail
    cmpl $2, 0x08(%r15)                 /* block device */
    jne fail
    movl $0, 0x70(%r15)                 /* reset */
    movl $1, 0x70(%r15)                 /* ACKNOWLEDGE */
    movl $3, 0x70(%r15)                 /* DRIVER */
    lea nofeat(%rip), %rsi
    movl $1, 0x14(%r15)
    testl $1, 0x10(%r15)                /* VERSION_1 offered */
    jz fail
    movl $1, 0x24(%r15)
    movl $1, 0x20(%r15)
    movl $0, 0x24(%r15)
    movl $0x200, 0x20(%r15)             /* FLUSH */
    movl $0xb, 0x70(%r15)               /* FEATURES_OK */
    testl $8, 0x70(%r15)
    jz fail
    lea noqueue(%rip), %rsi
    movl $0, 0x30(%r15)
    cmpl $8, 0x34(%r15)
    jb fail
    movl $8, 0x38(%r15)
    movl $DESC, 0x80(%r15)
    movl $0, 0x84(%r15)
    movl $AVAIL, 0x90(%r15)
    movl $0, 0x94(%r15)
    movl $USED, 0xa0(%r15)
    movl $0, 0xa4(%r15)
    movl $1, 0x44(%r15)
    movl $0xf, 0x70(%r15)               /* DRIVER_OK */
    testl $0x40, 0x70(%r15)             /* DEVICE_NEEDS_RESET */
    jnz fail
    lea found(%rip), %rsi
    call puts

    mov $T_IN, %edi
    xor %esi, %esi
    call request
    lea rd0(%rip), %rsi
    call report
    mov $DATA, %rax
    mov (%rax), %rax
    call puthex
    mov $'\n', %al
    call putc

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
    call puthex
    mov $'\n', %al
    call putc
    call poweroff

fail:
    call puts
    call poweroff

/* report: puts(%rsi), then the status in %eax as hex and a space. */
report:
    push %rax
    call puts
    pop %rax
    call puthex
    mov $' ', %al
    call putc
    ret

/* request: type %edi, sector %rsi; returns the status byte in %eax. */
request:
    mov $HDR, %rbx
    movl %edi, (%rbx)
    movl $0, 4(%rbx)
    mov %rsi, 8(%rbx)
    mov $STATUS, %rax
    movb $0xff, (%rax)
    mov $DESC, %rbx
    movq $HDR, 0(%rbx)                  /* d0: header */
    movl $16, 8(%rbx)
    movw $F_NEXT, 12(%rbx)
    movw $1, 14(%rbx)
    cmp $T_FLUSH, %edi
    je 1f
    movq $DATA, 16(%rbx)                /* d1: data */
    movl $512, 24(%rbx)
    mov $F_NEXT, %ax
    cmp $T_IN, %edi
    jne 2f
    or $F_WRITE, %ax
2:  movw %ax, 28(%rbx)
    movw $2, 30(%rbx)
    movq $STATUS, 32(%rbx)              /* d2: status */
    movl $1, 40(%rbx)
    movw $F_WRITE, 44(%rbx)
    movw $0, 46(%rbx)
    jmp 3f
1:  movq $STATUS, 16(%rbx)              /* flush: d1 is the status */
    movl $1, 24(%rbx)
    movw $F_WRITE, 28(%rbx)
    movw $0, 30(%rbx)
3:  mov $AVAIL, %rbx
    mov $USED, %rdx
    movzwl 2(%rdx), %r8d                /* used idx before */
    movzwl 2(%rbx), %eax
    mov %eax, %ecx
    and $7, %ecx
    movw $0, 4(%rbx,%rcx,2)             /* ring[idx % 8] = head 0 */
    inc %eax
    movw %ax, 2(%rbx)                   /* publish */
    movl $0, 0x50(%r15)                 /* notify queue 0 */
4:  pause
    movzwl 2(%rdx), %eax
    cmp %r8d, %eax
    je 4b
    mov $STATUS, %rax
    movzbl (%rax), %eax
    ret

#include "lib64.S"

    .data
found:   .asciz "virtio-blk found, queue ready\n"
nodev:   .asciz "no virtio-blk at 0xd0000000\n"
nofeat:  .asciz "feature negotiation failed\n"
noqueue: .asciz "queue setup failed\n"
rd0:     .asciz "read0 "
wr1:     .asciz "write1 "
fl:      .asciz "flush "
rd1:     .asciz "read1 "
    .bss
    .balign 16
    .skip 4096
stack_top:
