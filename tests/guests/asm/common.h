/* Shared definitions for the tiny test guests (GNU as, preprocessed by gcc).
 * Each guest is a few hundred instructions: on an emulation-only host every
 * kernel-mode instruction is emulated. */
#define COM1        0x3f8
#define COM1_LSR    (COM1 + 5)
#define LSR_DR      0x01
#define LSR_THRE    0x20
#define ACPI_SLEEP  0x600            /* Tsubame's sleep control register */
#define S5_SLEEP    ((5 << 2) | 0x20) /* SLP_TYP=5 (S5), SLP_EN */
#define I8042_CMD   0x64
#define LAPIC_BASE  0xfee00000
#define PVH_MAGIC   0x336ec578
/* libvirtio.S: ring offsets from a queue's base, descriptor flags. */
#define VIO_AVAIL   0x1000
#define VIO_USED    0x2000
#define VIO_F_NEXT  1
#define VIO_F_WRITE 2
/* idt_gate: point gate \vec of the 16-byte-entry table at \idt to
 * \handler: present, DPL0, 64-bit interrupt gate, selector 0x10.
 * Clobbers rax, rdi. */
.macro idt_gate vec, handler, idt
    lea \handler(%rip), %rax
    lea \idt(%rip), %rdi
    mov %ax, \vec*16(%rdi)
    movw $0x10, \vec*16+2(%rdi)
    movw $0x8e00, \vec*16+4(%rdi)
    shr $16, %rax
    mov %ax, \vec*16+6(%rdi)
    shr $16, %rax
    mov %eax, \vec*16+8(%rdi)
.endm
