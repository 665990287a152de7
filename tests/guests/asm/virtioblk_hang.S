/* virtioblk.S, stopping after the flush: the host kills Tsubame with
 * SIGKILL there and checks that the flushed write is in the image. */
#define HANG_AFTER_FLUSH
#include "virtioblk.S"
