/* Bare-metal start-up for Kiln's Cortex-M tests on QEMU's mps2 boards: a vector table,
 * .data/.bss set-up, the FPU switched on, and semihosting for console output and the exit
 * status (so a test needs no UART model). Faults print and exit with status 125. */
#include <stdint.h>

extern uint32_t __data_load[], __data_start[], __data_end[], __bss_start[], __bss_end[];
extern uint32_t __stack_top[];
int main(void);

static int semihost(int op, const void *arg) {
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void kiln_puts(const char *s) { semihost(0x04, s); /* SYS_WRITE0 */ }

void kiln_exit(int code) {
    uint32_t block[2] = {0x20026u /* ADP_Stopped_ApplicationExit */, (uint32_t)code};
    semihost(0x20, block); /* SYS_EXIT_EXTENDED */
    for (;;) {}
}

void Reset_Handler(void) {
    uint32_t *src = __data_load, *dst = __data_start;
    while (dst < __data_end) *dst++ = *src++;
    for (dst = __bss_start; dst < __bss_end; ++dst) *dst = 0;
#if defined(__ARM_FP)
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20; /* CPACR: CP10, CP11 full access */
    __asm__ volatile("dsb\n\tisb");
#endif
    kiln_exit(main());
}

void Fault_Handler(void) {
    kiln_puts("fault\n");
    kiln_exit(125);
}

typedef void (*handler)(void);
__attribute__((section(".vectors"), used)) static const handler vectors[16] = {
    (handler)(uintptr_t)__stack_top, Reset_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, Fault_Handler, Fault_Handler, 0, 0, 0, 0, Fault_Handler, Fault_Handler,
    0, Fault_Handler, Fault_Handler,
};
