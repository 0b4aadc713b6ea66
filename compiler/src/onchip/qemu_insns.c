/* A QEMU TCG plugin that counts executed guest instructions and writes the total to the
 * file named by its `out=` argument when the emulator exits. Each translated block gets
 * one callback that adds its instruction count, so the count is exact for a single vCPU.
 *
 * Per-layer counts: the Thumb hint `dbg #1` opens a layer and `dbg #2` closes it. Layers
 * are numbered in the order they open (the generated code calls its kernels in a fixed
 * order); each closed layer's instructions, markers excluded, are written as `layer N: K`
 * after the total. Only blocks holding a marker get per-instruction callbacks.
 *
 * The few plugin API declarations it needs are written out here, since Debian ships no
 * qemu-plugin.h (QEMU >= 9: `qemu_plugin_insn_data` copies the bytes). */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
struct qemu_info_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS };
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t, void (*)(qemu_plugin_id_t, struct qemu_plugin_tb *));
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *, void (*)(unsigned int, void *),
                                          enum qemu_plugin_cb_flags, void *);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *, void (*)(unsigned int, void *),
                                            enum qemu_plugin_cb_flags, void *);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *, size_t);
size_t qemu_plugin_insn_data(const struct qemu_plugin_insn *, void *, size_t);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t, void (*)(qemu_plugin_id_t, void *), void *);

__attribute__((visibility("default"))) int qemu_plugin_version = 2;

#define MAX_LAYERS 4096
static uint64_t total, layer_start, layer_insns[MAX_LAYERS];
static int layers = 0, open_layer = -1;
static char out[4096];

static void on_exec(unsigned int vcpu, void *n) {
    (void)vcpu;
    total += (uintptr_t)n;
}

/* Marker userdata: bit 0 set for `dbg #2` (close), the rest the instructions after the
 * marker in its block (the block's callback has counted them already). */
static void on_marker(unsigned int vcpu, void *u) {
    uintptr_t v = (uintptr_t)u;
    uint64_t now = total - (v >> 1); /* instructions up to and including the marker */
    (void)vcpu;
    if (!(v & 1)) {
        open_layer = layers < MAX_LAYERS ? layers++ : -1;
        layer_start = now;
    } else if (open_layer >= 0) {
        layer_insns[open_layer] += now - 1 - layer_start;
        open_layer = -1;
    }
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    size_t n = qemu_plugin_tb_n_insns(tb);
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_cb(tb, on_exec, QEMU_PLUGIN_CB_NO_REGS, (void *)(uintptr_t)n);
    for (size_t i = 0; i < n; ++i) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint8_t b[4] = {0, 0, 0, 0};
        /* DBG #k, Thumb-2 encoding T1: halfwords 0xf3af, 0x80f0 | k */
        if (qemu_plugin_insn_data(insn, b, 4) != 4 || b[0] != 0xaf || b[1] != 0xf3 || b[3] != 0x80)
            continue;
        if (b[2] == 0xf1 || b[2] == 0xf2)
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_marker, QEMU_PLUGIN_CB_NO_REGS,
                                                   (void *)(uintptr_t)(((n - i - 1) << 1) | (b[2] == 0xf2)));
    }
}

static void on_exit(qemu_plugin_id_t id, void *p) {
    (void)id; (void)p;
    FILE *f = fopen(out, "w");
    if (f) {
        fprintf(f, "%llu\n", (unsigned long long)total);
        for (int k = 0; k < layers; ++k) fprintf(f, "layer %d: %llu\n", k, (unsigned long long)layer_insns[k]);
        fclose(f);
    }
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const struct qemu_info_t *info,
                                                               int argc, char **argv) {
    (void)info;
    for (int i = 0; i < argc; ++i)
        if (strncmp(argv[i], "out=", 4) == 0) snprintf(out, sizeof out, "%s", argv[i] + 4);
    if (!out[0]) return -1;
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, on_exit, NULL);
    return 0;
}
