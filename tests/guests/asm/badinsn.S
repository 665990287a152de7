/* An instruction KVM's emulator cannot run (popcnt). On an emulation-only
 * host the guest dies with KVM_EXIT_INTERNAL_ERROR; with VT-x/AMD-V it runs
 * natively and the guest says so and powers off. */
#include "common.h"
    .code64
    .text
    .globl _start
_start:
    lea stack_top(%rip), %rsp
    lea msg(%rip), %rsi
    call puts
    mov $0xff, %rbx
    popcnt %rbx, %r12
    lea native(%rip), %rsi
    call puts
    mov %r12, %rax
    call puthex
    mov $'\n', %al
    call putc
    call poweroff

#include "lib64.S"

    .data
msg:    .asciz "about to run popcnt\n"
native: .asciz "popcnt ran natively: "
    .bss
    .balign 16
    .skip 4096
stack_top:
