/* cli.h: the verbs of the dsocr command line. Each takes the arguments after the verb (argv[0] = verb name)
 * and returns the process exit status: 0 success, 1 failure of the job, 2 bad usage. */
#ifndef DSOCR_CLI_H
#define DSOCR_CLI_H

#include <stdint.h>

int cli_check_model(int argc, char **argv);
int cli_tokenize(int argc, char **argv);
int cli_ocr(int argc, char **argv);
int cli_serve(int argc, char **argv);
int cli_pull(int argc, char **argv);
int cli_check(int argc, char **argv);
int cli_quantize(int argc, char **argv);
int cli_bench(int argc, char **argv);

/* Default model folder: $DSOCR_MODEL, else ./models/deepseek-ocr when it holds a model, else the cache folder
 * `dsocr pull` fills (pull_cache_dir). When none holds a model it prints, on stderr, the command that fetches
 * one, and returns ./models/deepseek-ocr (whose loading then fails with the missing file named). */
const char *cli_default_model_dir(void);

/* A --gpu-mem value ("2G", "1.5GiB", "512M"; not 0) into *out: 0, or -1 after printing "dsocr VERB: --gpu-mem
 * wants a size ..." on stderr. */
int cli_gpu_mem(const char *verb, const char *v, uint64_t *out);

#endif
