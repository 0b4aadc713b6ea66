/* A minimal ATmega simulator driver for Kiln's AVR tests, on libsimavr: runs an ELF to
 * completion (the program ends with `cli(); sleep_cpu();`), copies every byte the program
  * writes to GPIOR0 to stdout, and prints the cycle count last. Writing 1 to GPIOR1 starts
 * a timed region and 2 ends it; the region's cycles are printed as `region: N`. Exit status: 0 done,
 * 1 crashed, 2 usage or load error, 3 cycle cap reached. Writing k + 1 to GPIOR2 starts
 * the region of kernel k and 0 ends it; each kernel's cycles are printed as `layer K: N`. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <simavr/sim_avr.h>
#include <simavr/sim_elf.h>
#include <simavr/sim_io.h>

static avr_cycle_count_t region_start, region_cycles;
static avr_cycle_count_t layer_start, layer_cycles[256];
static int layer = -1, layers;

/* GPIOR2: k + 1 starts kernel k's region, 0 ends it (summed over calls). */
static void layer_mark(struct avr_t *avr, avr_io_addr_t addr, uint8_t v, void *param) {
    (void)addr; (void)param;
    if (v != 0) {
        layer = v - 1;
        layer_start = avr->cycle;
        if (layer + 1 > layers) layers = layer + 1;
    } else if (layer >= 0) {
        layer_cycles[layer] += avr->cycle - layer_start;
        layer = -1;
    }
}

static void region(struct avr_t *avr, avr_io_addr_t addr, uint8_t v, void *param) {
    (void)addr; (void)param;
    if (v == 1) region_start = avr->cycle;
    else if (v == 2) region_cycles = avr->cycle - region_start;
}

static void console(struct avr_t *avr, avr_io_addr_t addr, uint8_t v, void *param) {
    (void)avr; (void)addr; (void)param;
    putchar(v);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MCU MAX_CYCLES PROG.elf\n", argv[0]);
        return 2;
    }
    elf_firmware_t fw;
    memset(&fw, 0, sizeof fw);
    if (elf_read_firmware(argv[3], &fw) != 0) {
        fprintf(stderr, "cannot load %s\n", argv[3]);
        return 2;
    }
    avr_t *avr = avr_make_mcu_by_name(argv[1]);
    if (!avr) {
        fprintf(stderr, "unknown MCU %s\n", argv[1]);
        return 2;
    }
    avr_init(avr);
    avr->log = LOG_NONE;
    avr->frequency = 16000000;
    avr_load_firmware(avr, &fw);
    avr_register_io_write(avr, 0x3e, console, NULL); /* GPIOR0 */
    avr_register_io_write(avr, 0x4a, region, NULL);  /* GPIOR1 */
    avr_register_io_write(avr, 0x4b, layer_mark, NULL); /* GPIOR2 */
    unsigned long long cap = strtoull(argv[2], NULL, 10);
    int st = cpu_Running;
    while (st != cpu_Done && st != cpu_Crashed && avr->cycle < cap)
        st = avr_run(avr);
    fflush(stdout);
    for (int k = 0; k < layers; ++k)
        if (layer_cycles[k]) printf("\nlayer %d: %llu", k, (unsigned long long)layer_cycles[k]);
    printf("\nregion: %llu\ncycles: %llu\n", (unsigned long long)region_cycles,
           (unsigned long long)avr->cycle);
    if (st == cpu_Crashed) return 1;
    return st == cpu_Done ? 0 : 3;
}
