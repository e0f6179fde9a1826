/* scratch.c: see scratch.h. */
#include "cpu/scratch.h"

#include <pthread.h>
#include <stdlib.h>

typedef struct {
    void *p;
    size_t n;
} Slot;

static pthread_key_t g_key;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static int g_key_ok;

static void slots_free(void *v) {
    Slot *s = v;
    for (int i = 0; i < SCRATCH_SLOTS; i++) free(s[i].p);
    free(s);
}
static void key_init(void) { g_key_ok = pthread_key_create(&g_key, slots_free) == 0; }

void *cpu_scratch(int slot, size_t bytes) {
    pthread_once(&g_once, key_init);
    if (!g_key_ok || slot < 0 || slot >= SCRATCH_SLOTS) return NULL;
    Slot *s = pthread_getspecific(g_key);
    if (!s) {
        if (!(s = calloc(SCRATCH_SLOTS, sizeof *s))) return NULL;
        if (pthread_setspecific(g_key, s)) {
            free(s);
            return NULL;
        }
    }
    if (bytes > s[slot].n) {
        free(s[slot].p);
        s[slot].p = aligned_alloc(64, (bytes + 63) / 64 * 64);
        s[slot].n = s[slot].p ? bytes : 0;
    }
    return s[slot].p;
}
