/* virtio-vsock from inside: read the CID, post four receive buffers (one
 * descriptor each: header and data together), connect to host port 5000,
 * send "ping from guest" (header and data in two descriptors) and print
 * the first 8 bytes of the answer; accept the host's connection to port
 * 6000 and echo back the data it sends. Powers off when both are done. */
#include "common.h"
#define VIRTIO      0xd0000000
#define RXRING      0x200000
#define TXRING      0x210000
#define RXBUF       0x230000            /* 4 x 4 KiB */
#define TXHDR       0x240000
#define TXDATA      0x241000
#define HDR_LEN     44
#define OP_REQUEST  1
#define OP_RESPONSE 2
#define OP_RW       5
#define MY_PORT     1234
#define OUT_PORT    5000
#define IN_PORT     6000

    .code64
    .text
    .globl _start
_start:
    lea stack_top(%rip), %rsp
    mov $VIRTIO, %r15
    mov $19, %edi                       /* socket device */
    xor %esi, %esi
    mov $RXRING, %edx
    mov $TXRING, %ecx
    call vio_start
    mov 0x100(%r15), %r13               /* config: guest_cid */
    lea found(%rip), %rsi
    call puts
    mov %r13, %rax
    call puthex_nl

    xor %ecx, %ecx                      /* four receive buffers */
1:  mov $RXRING, %edx
    mov %ecx, %edi
    shl $12, %edi
    add $RXBUF, %edi
    mov $0x1000, %esi
    mov $VIO_F_WRITE, %ax
    call vio_desc
    xor %edi, %edi
    call vio_post
    inc %ecx
    cmp $4, %ecx
    jb 1b

    mov $OP_REQUEST, %edi
    mov $OUT_PORT, %esi
    mov $MY_PORT, %edx
    xor %ecx, %ecx
    call send

    xor %r12d, %r12d                    /* receive used index handled */
    xor %r14d, %r14d                    /* bit 0: answer seen, bit 1: echoed */
next:
    mov $RXRING, %edx
    mov %r12d, %r8d
    call vio_wait
    mov %r12d, %eax
    and $7, %eax
    mov VIO_USED+4(%rdx,%rax,8), %ebp   /* buffer id */
    shl $12, %ebp
    add $RXBUF, %ebp
    movzwl 30(%rbp), %eax               /* op */
    cmp $OP_RESPONSE, %eax
    je response
    cmp $OP_REQUEST, %eax
    je request
    cmp $OP_RW, %eax
    je data
    jmp done_packet

response:
    lea connected(%rip), %rsi
    call puts
    lea ping(%rip), %rsi
    mov $TXDATA, %edi
    mov $ping_len, %ecx
    rep movsb
    mov $OP_RW, %edi
    mov $OUT_PORT, %esi
    mov $MY_PORT, %edx
    mov $ping_len, %ecx
    call send
    jmp done_packet

request:                                /* the host connects to IN_PORT */
    cmpl $IN_PORT, 20(%rbp)
    jne done_packet
    mov 16(%rbp), %esi                  /* the host's port */
    mov %esi, host_port(%rip)
    mov $OP_RESPONSE, %edi
    mov $IN_PORT, %edx
    xor %ecx, %ecx
    call send
    jmp done_packet

data:
    cmpl $IN_PORT, 20(%rbp)
    je echo
    lea got(%rip), %rsi
    call puts
    mov HDR_LEN(%rbp), %rax
    call puthex_nl
    or $1, %r14d
    jmp done_packet

echo:
    mov 24(%rbp), %ecx                  /* len */
    lea HDR_LEN(%rbp), %rsi
    mov $TXDATA, %edi
    rep movsb
    mov $OP_RW, %edi
    mov host_port(%rip), %esi
    mov $IN_PORT, %edx
    mov 24(%rbp), %ecx
    call send
    lea echoed(%rip), %rsi
    call puts
    or $2, %r14d

done_packet:                            /* the buffer goes back */
    mov $RXRING, %edx
    mov %r12d, %eax
    and $7, %eax
    mov VIO_USED+4(%rdx,%rax,8), %ecx
    xor %edi, %edi
    call vio_post
    inc %r12d
    cmp $3, %r14d
    jne next
    lea done(%rip), %rsi
    call puts
    call poweroff

/* send: op %edi to host port %esi from our port %edx, %ecx bytes of
 * TXDATA; waits until the device has used it. */
send:
    mov $TXHDR, %rbx
    mov %r13, 0(%rbx)                   /* src_cid */
    movq $2, 8(%rbx)                    /* dst_cid: the host */
    mov %edx, 16(%rbx)
    mov %esi, 20(%rbx)
    mov %ecx, 24(%rbx)
    movw $1, 28(%rbx)                   /* stream */
    mov %di, 30(%rbx)
    movl $0, 32(%rbx)
    movl $65536, 36(%rbx)               /* buf_alloc */
    movl $0, 40(%rbx)                   /* fwd_cnt */
    mov %ecx, %r9d
    mov $TXRING, %edx
    movzwl VIO_USED+2(%rdx), %r8d
    xor %ecx, %ecx
    mov $TXHDR, %edi
    mov $HDR_LEN, %esi
    xor %eax, %eax
    test %r9d, %r9d
    jz 1f
    mov $VIO_F_NEXT, %ax
1:  call vio_desc
    test %r9d, %r9d
    jz 2f
    mov $1, %ecx
    mov $TXDATA, %edi
    mov %r9d, %esi
    xor %eax, %eax
    call vio_desc
2:  xor %ecx, %ecx
    mov $1, %edi
    call vio_post
    call vio_wait
    ret

fail:
    call puts
    call poweroff

#include "lib64.S"
#include "libvirtio.S"

    .data
found:     .asciz "virtio-vsock found, cid "
connected: .asciz "connected to 5000\n"
got:       .asciz "guest got "
echoed:    .asciz "echoed\n"
done:      .asciz "vsock done\n"
ping:      .ascii "ping from guest"
ping_len = . - ping
host_port: .long 0
    .bss
    .balign 16
    .skip 4096
stack_top:
