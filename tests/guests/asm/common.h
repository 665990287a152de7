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
