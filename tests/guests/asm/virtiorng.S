/* virtio-rng from inside: negotiate, hand the device two 32-byte buffers
 * (one chain of two descriptors), and print what came back: the used
 * length and the buffers' first and last 8 bytes. The host test checks
 * the length and that the bytes are not all zero. */
#include "common.h"
#define VIRTIO      0xd0000000
#define RING        0x200000
#define BUF         0x210000

    .code64
    .text
    .globl _start
_start:
    lea stack_top(%rip), %rsp
    mov $VIRTIO, %r15
    mov $4, %edi                        /* entropy device */
    xor %esi, %esi
    mov $RING, %edx
    xor %ecx, %ecx
    call vio_start
    lea found(%rip), %rsi
    call puts

    mov $RING, %edx
    xor %ecx, %ecx
    mov $BUF, %edi
    mov $32, %esi
    mov $(VIO_F_WRITE | VIO_F_NEXT), %ax
    call vio_desc
    inc %ecx
    mov $(BUF + 0x1000), %edi           /* a second page, not adjacent */
    mov $32, %esi
    mov $VIO_F_WRITE, %ax
    call vio_desc
    xor %r8d, %r8d
    xor %ecx, %ecx
    xor %edi, %edi
    call vio_post
    call vio_wait
    mov %ecx, %r12d
    lea got(%rip), %rsi
    call puts
    mov %r12, %rax
    call puthex_sp
    mov $BUF, %rax
    mov (%rax), %rax
    call puthex_sp
    mov $(BUF + 0x1000 + 24), %rax
    mov (%rax), %rax
    call puthex_nl
    call poweroff

fail:
    call puts
    call poweroff

#include "lib64.S"
#include "libvirtio.S"

    .data
found:   .asciz "virtio-rng found, queue ready\n"
got:     .asciz "entropy "
    .bss
    .balign 16
    .skip 4096
stack_top:
