/* status.c: names of the public status codes. */
#include "dsocr.h"

const char *dsocr_status_string(DsocrStatus s) {
    switch (s) {
    case DSOCR_OK: return "ok";
    case DSOCR_E_INVALID_ARG: return "invalid argument";
    case DSOCR_E_IO: return "input/output error";
    case DSOCR_E_FORMAT: return "malformed input";
    case DSOCR_E_MODEL: return "invalid checkpoint";
    case DSOCR_E_IMAGE: return "bad image";
    case DSOCR_E_NOMEM: return "out of memory";
    case DSOCR_E_UNSUPPORTED: return "unsupported";
    case DSOCR_E_CANCELLED: return "cancelled";
    case DSOCR_E_TOO_LONG: return "too long for the context";
    case DSOCR_E_DEVICE: return "GPU error";
    case DSOCR_E_INTERNAL: return "internal error";
    }
    return "unknown status";
}
