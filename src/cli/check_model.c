/* check_model.c: the `dsocr check-model` verb (placeholder). */
#include <stdio.h>

#include "cli/cli.h"

int cli_check_model(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "dsocr: 'check-model' is not built yet\n");
    return 2;
}
