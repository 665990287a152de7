/* A minimal virtio-mmio driver core for the device at %r15, shared by the
 * virtio test guests (included after lib64.S). Every queue has 8 entries
 * laid out from a 64 KiB-aligned base R: descriptors at R, the available
 * ring at R+0x1000, the used ring at R+0x2000. On failure these jump to
 * the guest's `fail` with a message in %rsi. Clobbers rax, rcx. The VIO_
 * constants are in common.h. */

/* vio_init: reset, check device ID %edi, accept VERSION_1 and the feature
 * bits %esi (bits 0-31, all of which the device must offer), FEATURES_OK.
 * Clobbers r9. */
vio_init:
    mov %esi, %r9d
    lea vio_nodev(%rip), %rsi
    cmpl $0x74726976, 0x00(%r15)        /* magic "virt" */
    jne fail
    cmpl $2, 0x04(%r15)                 /* version 2: modern */
    jne fail
    cmpl %edi, 0x08(%r15)
    jne fail
    movl $0, 0x70(%r15)                 /* reset */
    movl $1, 0x70(%r15)                 /* ACKNOWLEDGE */
    movl $3, 0x70(%r15)                 /* DRIVER */
    movl $1, 0x14(%r15)
    testl $1, 0x10(%r15)                /* VERSION_1 offered */
    jz 1f
    movl $0, 0x14(%r15)
    mov 0x10(%r15), %eax
    and %r9d, %eax
    cmp %r9d, %eax                      /* every wanted bit offered */
    jne 1f
    movl $1, 0x24(%r15)
    movl $1, 0x20(%r15)
    movl $0, 0x24(%r15)
    mov %r9d, 0x20(%r15)
    movl $0xb, 0x70(%r15)               /* FEATURES_OK */
    testl $8, 0x70(%r15)
    jz 1f
    ret
1:  lea vio_nofeat(%rip), %rsi
    jmp fail

/* vio_start: vio_init (%edi, %esi), queue 0 on rings %rdx, queue 1 on
 * rings %rcx unless it is 0, then DRIVER_OK. */
vio_start:
    push %rcx
    push %rdx
    call vio_init
    pop %rdx
    xor %edi, %edi
    call vio_queue
    pop %rdx
    test %rdx, %rdx
    jz 1f
    mov $1, %edi
    call vio_queue
1:  jmp vio_ready

/* vio_queue: queue %edi, 8 entries, rings from base %rdx; ready. */
vio_queue:
    movl %edi, 0x30(%r15)
    lea vio_noqueue(%rip), %rsi
    cmpl $8, 0x34(%r15)
    jb fail
    movl $8, 0x38(%r15)
    mov %edx, 0x80(%r15)
    movl $0, 0x84(%r15)
    lea VIO_AVAIL(%rdx), %rax
    mov %eax, 0x90(%r15)
    movl $0, 0x94(%r15)
    lea VIO_USED(%rdx), %rax
    mov %eax, 0xa0(%r15)
    movl $0, 0xa4(%r15)
    movl $1, 0x44(%r15)
    ret

/* vio_ready: DRIVER_OK, and check the device took it. */
vio_ready:
    movl $0xf, 0x70(%r15)
    lea vio_reset(%rip), %rsi
    testl $0x40, 0x70(%r15)             /* DEVICE_NEEDS_RESET */
    jnz fail
    ret

/* vio_desc: descriptor %ecx in the table at %rdx := address %rdi,
 * length %esi, flags %ax, next %ecx + 1. */
vio_desc:
    push %rbx
    mov %ecx, %ebx
    shl $4, %rbx
    add %rdx, %rbx
    mov %rdi, 0(%rbx)
    mov %esi, 8(%rbx)
    mov %ax, 12(%rbx)
    lea 1(%ecx), %eax
    mov %ax, 14(%rbx)
    pop %rbx
    ret

/* vio_post: make the chain headed by descriptor %ecx available on queue
 * %edi (rings at %rdx) and notify. */
vio_post:
    push %rbx
    movzwl VIO_AVAIL+2(%rdx), %eax
    mov %eax, %ebx
    and $7, %ebx
    mov %cx, VIO_AVAIL+4(%rdx,%rbx,2)
    inc %eax
    mov %ax, VIO_AVAIL+2(%rdx)          /* publish */
    mov %edi, 0x50(%r15)                /* QueueNotify */
    pop %rbx
    ret

/* vio_wait: wait until the used index of the rings at %rdx is not %r8d;
 * returns it in %eax and the last used element's length in %ecx. */
vio_wait:
1:  pause
    movzwl VIO_USED+2(%rdx), %eax
    cmp %r8d, %eax
    je 1b
    lea -1(%eax), %ecx
    and $7, %ecx
    mov VIO_USED+8(%rdx,%rcx,8), %ecx
    ret

    .data
vio_nodev:   .asciz "no such virtio device at 0xd0000000\n"
vio_nofeat:  .asciz "feature negotiation failed\n"
vio_noqueue: .asciz "queue setup failed\n"
vio_reset:   .asciz "device needs reset\n"
    .text
