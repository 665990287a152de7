/* virtioblk.S, posting its flush without waiting for it: the host's
 * file system holds the flush, and the guest shows that its vCPU can
 * still read the transport's InterruptStatus meanwhile. */
#define STALL_AT_FLUSH
#include "virtioblk.S"
