/* A vsock echo server for the Linux tests: listens on port 5000 (any
 * CID), and for each connection reads once, answers "echo: " and what it
 * read, and closes. Prints "vsockecho listening" once it listens. */
#include "sys.h"
#define SYS_read     0
#define SYS_close    3
#define SYS_socket   41
#define SYS_accept   43
#define SYS_bind     49
#define SYS_listen   50
#define AF_VSOCK     40
#define SOCK_STREAM  1
#define PORT         5000

    .text
    .globl _start
_start:
    mov $SYS_socket, %eax
    mov $AF_VSOCK, %edi
    mov $SOCK_STREAM, %esi
    xor %edx, %edx
    syscall
    test %rax, %rax
    js fail
    mov %rax, %r12
    mov $SYS_bind, %eax
    mov %r12, %rdi
    lea addr(%rip), %rsi
    mov $16, %edx
    syscall
    test %rax, %rax
    js fail
    mov $SYS_listen, %eax
    mov %r12, %rdi
    mov $4, %esi
    syscall
    test %rax, %rax
    js fail
    print listening, listening_len

serve:
    mov $SYS_accept, %eax
    mov %r12, %rdi
    xor %esi, %esi
    xor %edx, %edx
    syscall
    test %rax, %rax
    js serve
    mov %rax, %r13
    mov $SYS_read, %eax
    mov %r13, %rdi
    lea buf(%rip), %rsi
    mov $256, %edx
    syscall
    test %rax, %rax
    jle 1f
    mov %rax, %r14
    mov $SYS_write, %eax
    mov %r13, %rdi
    lea prefix(%rip), %rsi
    mov $6, %edx
    syscall
    mov $SYS_write, %eax
    mov %r13, %rdi
    lea buf(%rip), %rsi
    mov %r14, %rdx
    syscall
1:  mov $SYS_close, %eax
    mov %r13, %rdi
    syscall
    jmp serve

fail:
    print failed, failed_len
    exit 1

    .data
addr:       .word AF_VSOCK, 0
            .long PORT, 0xffffffff
            .long 0
listening:  .ascii "vsockecho listening\n"
listening_len = . - listening
failed:     .ascii "vsockecho failed\n"
failed_len = . - failed
prefix:     .ascii "echo: "
    .bss
buf:        .skip 256
