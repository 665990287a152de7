/* Linux x86-64 system call numbers and helpers for the user-space test
 * programs (static, no libc). */
#define SYS_write          1
#define SYS_sched_yield    24
#define SYS_getpid         39
#define SYS_exit           60
#define SYS_getppid        110
#define SYS_clock_gettime  228
#define CLOCK_MONOTONIC    1

/* write(1, msg, len) */
.macro print msg, len
    mov $SYS_write, %eax
    mov $1, %edi
    lea \msg(%rip), %rsi
    mov $\len, %edx
    syscall
.endm

.macro exit code
    mov $SYS_exit, %eax
    mov $\code, %edi
    syscall
.endm
