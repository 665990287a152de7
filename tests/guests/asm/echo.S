/* Port input: polls the UART's LSR for received data and echoes each
 * byte upper-cased until a newline, then powers off. */
#include "common.h"
    .code64
    .text
    .globl _start
_start:
    lea stack_top(%rip), %rsp
    lea ready(%rip), %rsi
    call puts
next:
    mov $COM1_LSR, %dx
1:  inb %dx, %al
    test $LSR_DR, %al
    jz 1b
    mov $COM1, %dx
    inb %dx, %al
    cmp $'\n', %al
    je done
    cmp $'a', %al
    jb 2f
    cmp $'z', %al
    ja 2f
    sub $('a' - 'A'), %al
2:  call putc
    jmp next
done:
    lea bye(%rip), %rsi
    call puts
    call poweroff

#include "lib64.S"

    .data
ready:  .asciz "ready\n"
bye:    .asciz "\nbye\n"
    .bss
    .balign 16
    .skip 4096
stack_top:
