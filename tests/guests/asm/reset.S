/* Pulses the CPU reset line through the i8042 (what Linux's reboot=k does). */
#include "common.h"
    .code64
    .text
    .globl _start
_start:
    lea stack_top(%rip), %rsp
    lea msg(%rip), %rsi
    call puts
    mov $I8042_CMD, %dx
    mov $0xfe, %al
    outb %al, %dx
1:  hlt
    jmp 1b

#include "lib64.S"

    .data
msg:    .asciz "resetting through the i8042\n"
    .bss
    .balign 16
    .skip 4096
stack_top:
