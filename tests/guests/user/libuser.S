/* putdec: write %rax in decimal to stdout (clobbers rax, rcx, rdx, rsi, rdi, r8). */
putdec:
    lea decbuf_end(%rip), %rsi
    mov $10, %r8
    xor %ecx, %ecx
1:  xor %edx, %edx
    div %r8
    add $'0', %dl
    dec %rsi
    mov %dl, (%rsi)
    inc %ecx
    test %rax, %rax
    jnz 1b
    mov %ecx, %edx
    mov $SYS_write, %eax
    mov $1, %edi
    syscall
    ret

    .bss
decbuf: .skip 24
decbuf_end:
    .text
