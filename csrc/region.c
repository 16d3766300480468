/* region.c: arrays that grow in place (region.h). */
#include "region.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define GROW_STEP ((size_t)1 << 20) /* commit in 1 MiB steps: few mprotect calls, little waste */

static size_t round_up(size_t n, size_t to)
{
    return n > SIZE_MAX - (to - 1) ? SIZE_MAX : (n + to - 1) / to * to;
}

int lfs_region_init(struct lfs_region *r, size_t max)
{
    memset(r, 0, sizeof *r);
    long page = sysconf(_SC_PAGESIZE);
    size_t size = round_up(max ? max : 1, page > 0 ? (size_t)page : 4096);
    /* PROT_NONE and MAP_NORESERVE: address space only; lfs_region_grow commits what is used */
    void *p = mmap(NULL, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return -errno;
    r->base = p;
    r->max = size;
    return 0;
}

int lfs_region_grow(struct lfs_region *r, size_t bytes)
{
    if (bytes <= r->len)
        return 0;
    if (bytes > r->max)
        return -EFBIG;
    size_t len = round_up(bytes, GROW_STEP);
    if (len > r->max)
        len = r->max;
    if (mprotect(r->base + r->len, len - r->len, PROT_READ | PROT_WRITE) < 0)
        return -ENOMEM; /* EAGAIN / ENOMEM: the commit limit or the map count */
    r->len = len;
    return 0;
}

void lfs_region_free(struct lfs_region *r)
{
    if (r->base != NULL)
        munmap(r->base, r->max); /* only fails for a range we never mapped */
    memset(r, 0, sizeof *r);
}
