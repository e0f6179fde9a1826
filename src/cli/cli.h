/* cli.h: the verbs of the dsocr command line. Each takes the arguments after the verb (argv[0] = verb name)
 * and returns the process exit status: 0 success, 1 failure of the job, 2 bad usage. */
#ifndef DSOCR_CLI_H
#define DSOCR_CLI_H

int cli_check_model(int argc, char **argv);
int cli_tokenize(int argc, char **argv);
int cli_ocr(int argc, char **argv);

/* Default model folder: $DSOCR_MODEL, else ./models/deepseek-ocr. */
const char *cli_default_model_dir(void);

#endif
