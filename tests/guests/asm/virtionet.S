/* virtio-net from inside: negotiate VERSION_1 and MAC, set up the receive
 * and transmit queues, post a receive buffer, send one frame (header and
 * frame in one descriptor) with EtherType 0x88b5 to the broadcast address,
 * then wait for a frame with the same EtherType from the host, skipping
 * any other traffic. Prints the MAC, the received length and the first 8
 * payload bytes. */
#include "common.h"
#define VIRTIO      0xd0000000
#define RXRING      0x200000
#define TXRING      0x210000
#define RXBUF       0x220000
#define TXBUF       0x230000
#define F_MAC       0x20
#define HDR_LEN     12
#define ETHERTYPE   0xb588              /* 0x88b5 in network order */

    .code64
    .text
    .globl _start
_start:
    lea stack_top(%rip), %rsp
    mov $VIRTIO, %r15
    mov $1, %edi                        /* network device */
    mov $F_MAC, %esi
    mov $RXRING, %edx
    mov $TXRING, %ecx
    call vio_start
    lea found(%rip), %rsi
    call puts
    mov 0x100(%r15), %rax               /* config: the MAC */
    mov %rax, %r13
    call puthex_nl

    /* The frame: zero header, broadcast, our MAC, EtherType, payload. */
    mov $TXBUF, %rdi
    xor %eax, %eax
    mov $HDR_LEN, %ecx
    rep stosb
    mov $-1, %rax
    mov %eax, (%rdi)
    mov %ax, 4(%rdi)
    mov %r13d, 6(%rdi)
    mov %r13, %rax
    shr $32, %rax
    mov %ax, 10(%rdi)
    movw $ETHERTYPE, 12(%rdi)
    lea 14(%rdi), %rdi
    lea payload(%rip), %rsi
    mov $payload_len, %ecx
    rep movsb

    call post_rx
    mov $TXRING, %edx
    xor %ecx, %ecx
    mov $TXBUF, %edi
    mov $(HDR_LEN + 14 + payload_len), %esi
    xor %eax, %eax
    call vio_desc
    xor %r8d, %r8d
    mov $1, %edi
    call vio_post
    call vio_wait
    lea sent(%rip), %rsi
    call puts

    /* Receive until our EtherType comes, at most 64 frames. */
    mov $64, %r14d
    xor %r12d, %r12d                    /* used index seen */
1:  mov $RXRING, %edx
    mov %r12d, %r8d
    call vio_wait
    mov %eax, %r12d
    mov %ecx, %r13d                     /* frame length */
    mov $RXBUF, %rax
    cmpw $ETHERTYPE, HDR_LEN+12(%rax)
    je 2f
    dec %r14d
    lea noframe(%rip), %rsi
    jz fail
    call post_rx
    jmp 1b
2:  lea received(%rip), %rsi
    call puts
    mov %r13, %rax
    call puthex_sp
    mov $RXBUF, %rax
    mov HDR_LEN+14(%rax), %rax
    call puthex_nl
    call poweroff

/* post_rx: the receive buffer, 2 KiB, as the next available entry. */
post_rx:
    mov $RXRING, %edx
    xor %ecx, %ecx
    mov $RXBUF, %edi
    mov $2048, %esi
    mov $VIO_F_WRITE, %ax
    call vio_desc
    xor %edi, %edi
    call vio_post
    ret

fail:
    call puts
    call poweroff

#include "lib64.S"
#include "libvirtio.S"

    .data
found:    .asciz "virtio-net found, mac "
sent:     .asciz "frame sent\n"
received: .asciz "frame received "
noframe:  .asciz "no frame from the host\n"
payload:  .ascii "GST2HOST from the guest"
payload_len = . - payload
    .bss
    .balign 16
    .skip 4096
stack_top:
