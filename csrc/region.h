/* region.h: arrays that grow in place, their addresses never moving (region.c).
 *
 * A region reserves address space for its largest size up front (PROT_NONE: no memory is
 * committed) and makes more of it usable as it grows (mprotect), zero-filled.  Pointers into it
 * stay valid while it grows, so one thread may grow it while others read what was there before:
 * what a lazily merged index (merge.h, lfs_lazy_*) and the engine's per-node tables (fs.h) need.
 */
#ifndef LAYERFS_REGION_H
#define LAYERFS_REGION_H

#include <stddef.h>

struct lfs_region {
    char *base;      /* the reservation (NULL: none) */
    size_t len, max; /* bytes usable now, bytes reserved */
};

/* Reserve max bytes (rounded up to pages).  Returns 0 or -errno. */
int lfs_region_init(struct lfs_region *r, size_t max);
/* Make at least `bytes` usable.  Returns 0, -EFBIG beyond the reservation, or -ENOMEM. */
int lfs_region_grow(struct lfs_region *r, size_t bytes);
void lfs_region_free(struct lfs_region *r);

#endif
