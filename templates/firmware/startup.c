/* Bare-metal start for a Cortex-M under QEMU: the vector table at address 0
 * (initial stack pointer, reset handler), the FPU switched on, then newlib's
 * _start (semihosting C runtime), which calls main and exits with its value. */
#include <stdint.h>

extern void _start(void);
extern uint32_t __stack_top;

void reset_handler(void)
{
    /* CPACR: full access to coprocessors 10 and 11 (the FPU) before any float instruction */
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20;
    __asm volatile ("dsb\n\tisb");
    _start();
    for (;;) { }
}

static void fault_handler(void)
{
    for (;;) { }  /* the test runs QEMU under a timeout: a fault shows as one */
}

__attribute__((section(".vectors"), used))
static const void *const vectors[16] = {
    &__stack_top, (const void *)reset_handler, (const void *)fault_handler, (const void *)fault_handler,
    (const void *)fault_handler, (const void *)fault_handler, (const void *)fault_handler,
};
