/* tokenize.c: the `dsocr tokenize` verb (placeholder until the tokenizer lands). */
#include <stdio.h>

#include "cli/cli.h"

int cli_tokenize(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "dsocr: 'tokenize' is not built yet\n");
    return 2;
}
