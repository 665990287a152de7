/* 64-bit helpers: serial output with LSR polling, hex, power-off.
 * Included by the 64-bit guests. Clobbers: rax, rdx, rcx, rsi as noted. */

/* putc: write %al to COM1 once the transmitter is empty. */
putc:
    push %rax
    mov $COM1_LSR, %dx
1:  inb %dx, %al
    test $LSR_THRE, %al
    jz 1b
    pop %rax
    mov $COM1, %dx
    outb %al, %dx
    ret

/* puts: write the NUL-terminated string at %rsi. */
puts:
    lodsb
    test %al, %al
    jz 2f
    call putc
    jmp puts
2:  ret

/* puthex: write %rax as 16 hex digits. */
puthex:
    mov %rax, %rbx
    mov $16, %ecx
3:  rol $4, %rbx
    mov %bl, %al
    and $0xf, %al
    add $'0', %al
    cmp $'9', %al
    jbe 4f
    add $('a' - '9' - 1), %al
4:  call putc
    dec %ecx
    jnz 3b
    ret

/* puthex_sp, puthex_nl: puthex, then a space or a newline. */
puthex_sp:
    call puthex
    mov $' ', %al
    jmp putc
puthex_nl:
    call puthex
    mov $'\n', %al
    jmp putc

/* poweroff: ACPI S5 through the sleep control register. */
poweroff:
    mov $ACPI_SLEEP, %dx
    mov $S5_SLEEP, %al
    outb %al, %dx
5:  hlt
    jmp 5b

/* pic_init: both 8259As as a PC's BIOS leaves them (edge, cascade on IRQ2,
 * 8086 mode, vectors 0x20 and 0x28), then OCW1: %bl masks the master, %bh
 * the slave. Clobbers rax. */
pic_init:
    mov $0x11, %al
    out %al, $0x20
    out %al, $0xa0
    mov $0x20, %al
    out %al, $0x21
    mov $0x28, %al
    out %al, $0xa1
    mov $0x04, %al
    out %al, $0x21
    mov $0x02, %al
    out %al, $0xa1
    mov $0x01, %al
    out %al, $0x21
    out %al, $0xa1
    mov %bl, %al
    out %al, $0x21
    mov %bh, %al
    out %al, $0xa1
    ret
