/* mergebuild.c: the merged-tree index of a layer stack, computed in C (layerfs/_mount/merge.py:build),
 * whole into an index file, or lazily, one directory when a mount first needs it (lfs_lazy_*,
 * merge.h; at the end of this file).
 *
 * What it does: `merge_build(layer_dirs, key) -> (index bytes, nodes, dents, hidden)` walks the
 * layer dirs (base first) breadth-first with getdents (fdopendir/readdir), fstatat, readlinkat
 * and listxattrat/getxattrat, applies the overlay rules and returns the same bytes as the
 * Python oracle tests/_merge_oracle.py (tests/test_merge.py checks byte equality on every
 * rule case).  Owners, modes and device numbers kept in `user.containers.override_stat` are
 * those recorded, in the layers whose overrides are believed (override.h, apply_override).  The
 * rules, the numbering and the file format are documented once, in layerfs/_mount/merge.py; the
 * format is defined in merge.h, the marker forms below.
 *
 * Paths: each layer root is opened once; every directory below it is opened with openat2
 * (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) relative to that fd, and every entry is read
 * relative to its directory's fd.  A -o lowerdir= tree belongs to the caller and may change
 * while it is walked: a directory swapped for a symlink fails the build (ELOOP) instead of
 * leading the walk, and the mount, elsewhere.
 *
 * Why C: the Python walk costs ~8 us per entry (~200 ms for 25k entries), most of it interpreter
 * work around the system calls.  Measured: see the _merge docstring.  Why lazily for `-o lowerdir=`
 * stacks: plain dirs are not content-addressed, so nothing built can be kept for the next mount,
 * and even in C the whole walk of a 25k-entry stack took 100-160 ms, where the peers mount in a
 * few ms (they look names up in the layers when asked).
 *
 * Memory: every allocation goes through mb_malloc & co., which count live blocks and can be made
 * to fail (tests/test_merge.py fails each allocation of a build in turn and checks that nothing
 * stays allocated).
 *
 * GIL: released for the whole walk.  Errors: OSError (with the path) when a layer dir, an entry's
 * lstat or a symlink target cannot be read; unreadable xattrs count as none (as in Python).  A
 * directory below a layer's root that the caller may not list (EACCES on its open or on an
 * entry's lstat) is no error: it is recorded with no entries and LFS_FLAG_DENIED (merge.h).
 */
#include "native.h"
#include "merge.h"
#include "override.h"
#include "region.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

/* The whiteout and opaque marker forms the walk reads.  Their one definition for Python is
 * layerfs/_layer/whiteout.py (what each means is documented there); these are exported by the
 * module under the same names, and tests/test_whiteout.py checks that they are equal. */
#define WH_PREFIX ".wh."                /* WHITEOUT_PREFIX */
#define WH_META_PREFIX ".wh..wh."       /* META_PREFIX */
#define WH_OPAQUE ".wh..wh..opq"        /* OPAQUE_MARKER */
#define OPAQUE_VALUE "y"                /* OPAQUE_VALUE */
#define XATTR_WHITEOUTS_VALUE "x"       /* XATTR_WHITEOUTS_VALUE */
static const char *const opaque_xattrs[] = {"trusted.overlay.opaque", "user.overlay.opaque",
                                            "user.fuseoverlayfs.opaque"};       /* OPAQUE_XATTRS */
static const char *const kernel_opaque_xattrs[] = {"trusted.overlay.opaque",
                                                   "user.overlay.opaque"};      /* KERNEL_OPAQUE_XATTRS */
static const char *const whiteout_xattrs[] = {"trusted.overlay.whiteout",
                                              "user.overlay.whiteout"};         /* WHITEOUT_XATTRS */
static const char *const private_prefixes[] = {"trusted.overlay.", "user.overlay.", "user.fuseoverlayfs.",
                                               LFS_OVERRIDE_PREFIX};            /* PRIVATE_XATTR_PREFIXES */
#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

/* ---- allocations ---------------------------------------------------------------------------- */

/* Every allocation of a build goes through these, so that a test can make the nth one fail and
 * check that the failed build freed all it had (merge_build_faults below).  Both counters are
 * shared by threads that run builds without the GIL: relaxed atomics. */
static long live_blocks;    /* blocks allocated and not yet freed */
static long fail_countdown; /* 0: never fail; n: the nth allocation from now fails */
/* Set while a thread works on a lazy index (lfs_lazy_*), whose blocks live as long as its mount:
 * they are neither counted nor made to fail, so that the counters speak of builds only. */
static __thread int in_lazy;
/* The most bytes of names, targets and xattrs an index may hold: LFS_BLOB_MAX, lowered by tests. */
static uint64_t blob_limit = LFS_BLOB_MAX;

static int injected_failure(void)
{
    if (in_lazy)
        return 0;
    long n = __atomic_load_n(&fail_countdown, __ATOMIC_RELAXED);
    while (n > 0)
        if (__atomic_compare_exchange_n(&fail_countdown, &n, n - 1, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            return n == 1;
    return 0;
}

static void *counted(void *p)
{
    if (p != NULL && !in_lazy)
        __atomic_add_fetch(&live_blocks, 1, __ATOMIC_RELAXED);
    return p;
}

static void *mb_malloc(size_t size)
{
    return injected_failure() ? NULL : counted(malloc(size));
}

static void *mb_calloc(size_t n, size_t size)
{
    return injected_failure() ? NULL : counted(calloc(n, size));
}

static char *mb_strdup(const char *s)
{
    return injected_failure() ? NULL : counted(strdup(s));
}

/* realloc: p == NULL allocates a block; on failure p stays allocated (and counted). */
static void *mb_realloc(void *p, size_t size)
{
    if (injected_failure())
        return NULL;
    void *q = realloc(p, size);
    return p == NULL ? counted(q) : q;
}

static void mb_free(void *p)
{
    if (p != NULL && !in_lazy)
        __atomic_sub_fetch(&live_blocks, 1, __ATOMIC_RELAXED);
    free(p);
}

/* ---- growable buffers ---------------------------------------------------------------------- */

/* A buffer on the heap (realloc), or, for a lazy index, in a region (region.h) whose data never
 * moves while readers use it. */
struct buf {
    char *data;
    size_t len, cap;
    struct lfs_region *reg; /* NULL: on the heap */
};

static int buf_reserve(struct buf *b, size_t more)
{
    if (b->len + more <= b->cap)
        return 0;
    if (b->reg != NULL) {
        if (more > SIZE_MAX - b->len || lfs_region_grow(b->reg, b->len + more) < 0)
            return -ENOMEM;
        b->cap = b->reg->len;
        return 0;
    }
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more)
        cap *= 2;
    char *p = mb_realloc(b->data, cap);
    if (p == NULL)
        return -ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

static void buf_free(struct buf *b)
{
    if (b->reg == NULL)
        mb_free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

static int buf_add(struct buf *b, const void *data, size_t len, uint64_t *off)
{
    if (buf_reserve(b, len) < 0)
        return -ENOMEM;
    if (off)
        *off = b->len;
    if (len)
        memcpy(b->data + b->len, data, len);
    b->len += len;
    return 0;
}

/* ---- xattrs -------------------------------------------------------------------------------- */

struct xattrs {
    int opaque;       /* an opaque marker = "y" */
    int holds_x;      /* trusted/user.overlay.opaque = "x" */
    int whiteout;     /* one of the whiteout xattrs present */
    int override_len; /* the LFS_OVERRIDE_XATTR value's length, or -1 (none, or too long: malformed) */
    char override[LFS_OVERRIDE_MAX];
    char *visible;    /* packed (u32 nl, u32 vl, name, value), names sorted, private ones dropped */
    uint32_t visible_len;
};

struct xname {
    const char *name;
    size_t len;
};

static int xname_cmp(const void *a, const void *b)
{
    const struct xname *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->name, y->name, n);
    return c ? c : (x->len < y->len ? -1 : x->len > y->len);
}

static int is_value(const char *val, ssize_t len, const char *want)
{
    return len >= 0 && (size_t)len == strlen(want) && memcmp(val, want, (size_t)len) == 0;
}

static int in_list(const char *name, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(name, list[i]) == 0)
            return 1;
    return 0;
}

/* Where xattrs are read from: a directory of the walk (its fd), or the entry `name` of one,
 * not following a final symlink.  Entries go through listxattrat(2) / getxattrat(2) (Linux
 * 6.13), else through the path "/proc/self/fd/N/name" and the l*xattr calls: either way the
 * directory is the fd, so no component on the way can be swapped for a symlink. */
struct xsrc {
    int fd;
    const char *name; /* NULL: the fd itself */
};

#ifndef __NR_getxattrat
#define __NR_getxattrat 464
#endif
#ifndef __NR_listxattrat
#define __NR_listxattrat 465
#endif

/* struct xattr_args of <linux/xattr.h> (6.13); bookworm's headers predate it. */
struct mb_xattr_args {
    uint64_t value __attribute__((aligned(8)));
    uint32_t size;
    uint32_t flags;
};

/* Whether the *xattrat calls exist: 0 unknown, 1 yes, -1 no (ENOSYS seen).  Shared by threads
 * without the GIL: a relaxed atomic (a hint; both paths give the same answer). */
static int have_xattrat;

/* "/proc/self/fd/N/" + a name of at most NAME_MAX bytes + NUL */
#define ENTRY_PATH_MAX (sizeof "/proc/self/fd/" + 10 + 1 + LFS_NAME_MAX + 1)

static int entry_path(char *buf, size_t size, int dfd, const char *name)
{
    int n = snprintf(buf, size, "/proc/self/fd/%d/%s", dfd, name);
    if (n < 0 || (size_t)n >= size) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return 0;
}

static int use_xattrat(long r)
{
    if (r >= 0 || errno != ENOSYS) {
        if (__atomic_load_n(&have_xattrat, __ATOMIC_RELAXED) != 1)
            __atomic_store_n(&have_xattrat, 1, __ATOMIC_RELAXED);
        return 1;
    }
    __atomic_store_n(&have_xattrat, -1, __ATOMIC_RELAXED);
    return 0;
}

static ssize_t xsrc_list(const struct xsrc *s, char *buf, size_t size)
{
    if (s->name == NULL)
        return flistxattr(s->fd, buf, size);
    if (__atomic_load_n(&have_xattrat, __ATOMIC_RELAXED) >= 0) {
        long r = syscall(__NR_listxattrat, s->fd, s->name, AT_SYMLINK_NOFOLLOW, buf, size);
        if (use_xattrat(r))
            return r;
    }
    char path[ENTRY_PATH_MAX];
    return entry_path(path, sizeof path, s->fd, s->name) < 0 ? -1 : llistxattr(path, buf, size);
}

static ssize_t xsrc_get(const struct xsrc *s, const char *name, void *buf, size_t size)
{
    if (s->name == NULL)
        return fgetxattr(s->fd, name, buf, size);
    if (__atomic_load_n(&have_xattrat, __ATOMIC_RELAXED) >= 0) {
        struct mb_xattr_args args = {.value = (uint64_t)(uintptr_t)buf, .size = (uint32_t)size};
        long r = syscall(__NR_getxattrat, s->fd, s->name, AT_SYMLINK_NOFOLLOW, name, &args, sizeof args);
        if (use_xattrat(r))
            return r;
    }
    char path[ENTRY_PATH_MAX];
    return entry_path(path, sizeof path, s->fd, s->name) < 0 ? -1 : lgetxattr(path, name, buf, size);
}

/* Read every xattr of src.  Failures count as "no xattrs" (as in Python). */
static int read_xattrs(const struct xsrc *src, struct xattrs *out)
{
    memset(out, 0, sizeof *out);
    out->override_len = -1;
    char stackbuf[1024], *names = stackbuf;
    ssize_t n = xsrc_list(src, stackbuf, sizeof stackbuf);
    if (n < 0 && errno == ERANGE) {
        ssize_t want = xsrc_list(src, NULL, 0);
        if (want <= 0)
            return 0;
        names = mb_malloc(want);
        if (names == NULL)
            return -ENOMEM;
        n = xsrc_list(src, names, want);
    }
    if (n <= 0) {
        if (names != stackbuf)
            mb_free(names);
        return 0;
    }
    struct xname list[256], *xl = list;
    size_t count = 0, cap = NELEM(list);
    for (ssize_t i = 0; i < n;) {
        size_t len = strnlen(names + i, n - i);
        if (count == cap) {
            struct xname *bigger = mb_malloc(sizeof *bigger * cap * 2);
            if (bigger == NULL)
                goto nomem;
            memcpy(bigger, xl, sizeof *xl * count);
            if (xl != list)
                mb_free(xl);
            xl = bigger;
            cap *= 2;
        }
        xl[count].name = names + i;
        xl[count].len = len;
        count++;
        i += len + 1;
    }
    qsort(xl, count, sizeof *xl, xname_cmp);
    struct buf vis = {0};
    char valbuf[4096];
    for (size_t i = 0; i < count; i++) {
        const char *name = xl[i].name;
        char *val = valbuf;
        ssize_t vl = xsrc_get(src, name, valbuf, sizeof valbuf);
        if (vl < 0 && errno == ERANGE) {
            ssize_t want = xsrc_get(src, name, NULL, 0);
            if (want < 0)
                continue;
            val = mb_malloc(want ? want : 1);
            if (val == NULL)
                goto nomem_vis;
            vl = xsrc_get(src, name, val, want);
        }
        if (vl < 0) {
            if (val != valbuf)
                mb_free(val);
            continue;
        }
        if (is_value(val, vl, OPAQUE_VALUE) && in_list(name, opaque_xattrs, NELEM(opaque_xattrs)))
            out->opaque = 1;
        if (is_value(val, vl, XATTR_WHITEOUTS_VALUE) &&
            in_list(name, kernel_opaque_xattrs, NELEM(kernel_opaque_xattrs)))
            out->holds_x = 1;
        if (in_list(name, whiteout_xattrs, NELEM(whiteout_xattrs)))
            out->whiteout = 1;
        if (strcmp(name, LFS_OVERRIDE_XATTR) == 0 && (size_t)vl < sizeof out->override) {
            memcpy(out->override, val, (size_t)vl);
            out->override_len = (int)vl;
        }
        int private = 0;
        for (size_t p = 0; p < NELEM(private_prefixes); p++)
            if (strncmp(name, private_prefixes[p], strlen(private_prefixes[p])) == 0)
                private = 1;
        if (!private) {
            uint32_t head[2] = {(uint32_t)xl[i].len, (uint32_t)vl};
            if (buf_add(&vis, head, 8, NULL) < 0 || buf_add(&vis, name, xl[i].len, NULL) < 0 ||
                buf_add(&vis, val, vl, NULL) < 0) {
                if (val != valbuf)
                    mb_free(val);
                goto nomem_vis;
            }
        }
        if (val != valbuf)
            mb_free(val);
    }
    if (vis.len > UINT32_MAX) { /* 2^16 names of 64 KiB values: the format cannot say it */
        mb_free(vis.data);
        if (xl != list)
            mb_free(xl);
        if (names != stackbuf)
            mb_free(names);
        return -EFBIG;
    }
    out->visible = vis.data;
    out->visible_len = (uint32_t)vis.len;
    if (xl != list)
        mb_free(xl);
    if (names != stackbuf)
        mb_free(names);
    return 0;
nomem_vis:
    mb_free(vis.data);
nomem:
    if (xl != list)
        mb_free(xl);
    if (names != stackbuf)
        mb_free(names);
    return -ENOMEM;
}

/* ---- the walk ------------------------------------------------------------------------------ */

struct lay {
    int li, holds_x;
};

struct layers {
    struct lay *v;
    int n, cap;
};

static int layers_add(struct layers *l, int li, int holds_x)
{
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 4;
        struct lay *p = mb_realloc(l->v, sizeof *p * cap);
        if (p == NULL)
            return -ENOMEM;
        l->v = p;
        l->cap = cap;
    }
    l->v[l->n].li = li;
    l->v[l->n].holds_x = holds_x;
    l->n++;
    return 0;
}

struct child {
    char *name;
    size_t name_len;
    int layer;
    int hidden;           /* a whiteout: the name exists in no layer below */
    int open;             /* a directory still merging with lower layers */
    struct stat st;
    struct xattrs xa;
    char *target;         /* symlinks: the target, read while the directory was open */
    uint32_t target_len;
    struct layers layers; /* dirs: (layer, holds xattr whiteouts), top first */
};

struct dirjob {
    uint32_t ino;
    char *rel; /* "" or "a/b/" */
    struct layers layers;
    int is_root;
};

struct builder {
    char **roots;
    int *root_fds; /* each layer's root dir, opened once; every other open is relative to one */
    int *trusted;  /* each layer's user.containers.override_stat values are believed (override.h) */
    int n_roots;
    struct buf nodes, dents, blob;
    uint32_t n_nodes, n_dents, hidden;
    struct dirjob *q;
    size_t q_head, q_len, q_cap;
    /* hard links: (layer, dev, ino) -> node, open addressing */
    struct link { uint64_t dev, ino; uint32_t layer, node; } *links;
    size_t links_cap, links_len;
    /* children of the directory being merged */
    struct child *ch;
    size_t ch_len, ch_cap;
    uint32_t *ch_hash; /* index + 1, 0 = empty */
    size_t ch_hash_cap;
    uint64_t blob_max; /* the blob may not grow beyond this (LFS_BLOB_MAX but in tests) */
    int lazy;          /* a lazy index: subdirectories are left pending (node.pending = job + 1) */
    char err_path[PATH_MAX];
    int err;
};

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h;
}

static int ch_rehash(struct builder *b, size_t cap)
{
    uint32_t *t = mb_calloc(cap, sizeof *t);
    if (t == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < b->ch_len; i++) {
        size_t h = hash_bytes(b->ch[i].name, b->ch[i].name_len) & (cap - 1);
        while (t[h])
            h = (h + 1) & (cap - 1);
        t[h] = (uint32_t)i + 1;
    }
    mb_free(b->ch_hash);
    b->ch_hash = t;
    b->ch_hash_cap = cap;
    return 0;
}

static struct child *ch_find(struct builder *b, const char *name, size_t len)
{
    if (b->ch_hash_cap == 0)
        return NULL;
    size_t h = hash_bytes(name, len) & (b->ch_hash_cap - 1);
    while (b->ch_hash[h]) {
        struct child *c = &b->ch[b->ch_hash[h] - 1];
        if (c->name_len == len && memcmp(c->name, name, len) == 0)
            return c;
        h = (h + 1) & (b->ch_hash_cap - 1);
    }
    return NULL;
}

static struct child *ch_add(struct builder *b, const char *name, size_t len)
{
    if (b->ch_len == b->ch_cap) {
        size_t cap = b->ch_cap ? b->ch_cap * 2 : 64;
        struct child *p = mb_realloc(b->ch, sizeof *p * cap);
        if (p == NULL)
            return NULL;
        b->ch = p;
        b->ch_cap = cap;
    }
    if ((b->ch_len + 1) * 2 > b->ch_hash_cap &&
        ch_rehash(b, b->ch_hash_cap ? b->ch_hash_cap * 2 : 128) < 0)
        return NULL;
    struct child *c = &b->ch[b->ch_len];
    memset(c, 0, sizeof *c);
    c->name = mb_malloc(len + 1);
    if (c->name == NULL)
        return NULL;
    memcpy(c->name, name, len + 1);
    c->name_len = len;
    size_t h = hash_bytes(name, len) & (b->ch_hash_cap - 1);
    while (b->ch_hash[h])
        h = (h + 1) & (b->ch_hash_cap - 1);
    b->ch_hash[h] = (uint32_t)b->ch_len + 1;
    b->ch_len++;
    return c;
}

static void ch_clear(struct builder *b)
{
    for (size_t i = 0; i < b->ch_len; i++) {
        mb_free(b->ch[i].name);
        mb_free(b->ch[i].xa.visible);
        mb_free(b->ch[i].target);
        mb_free(b->ch[i].layers.v);
    }
    b->ch_len = 0;
    if (b->ch_hash)
        memset(b->ch_hash, 0, sizeof *b->ch_hash * b->ch_hash_cap);
}

static int link_find(struct builder *b, uint32_t layer, const struct stat *st, uint32_t **node)
{
    if (b->links_len * 2 >= b->links_cap) {
        size_t cap = b->links_cap ? b->links_cap * 2 : 256;
        struct link *t = mb_calloc(cap, sizeof *t);
        if (t == NULL)
            return -ENOMEM;
        for (size_t i = 0; i < b->links_cap; i++) {
            if (b->links[i].node == 0)
                continue;
            size_t h = (b->links[i].ino * 31 + b->links[i].dev * 7 + b->links[i].layer) & (cap - 1);
            while (t[h].node)
                h = (h + 1) & (cap - 1);
            t[h] = b->links[i];
        }
        mb_free(b->links);
        b->links = t;
        b->links_cap = cap;
    }
    size_t h = ((uint64_t)st->st_ino * 31 + (uint64_t)st->st_dev * 7 + layer) & (b->links_cap - 1);
    while (b->links[h].node) {
        struct link *l = &b->links[h];
        if (l->ino == (uint64_t)st->st_ino && l->dev == (uint64_t)st->st_dev && l->layer == layer) {
            *node = &l->node;
            return 1;
        }
        h = (h + 1) & (b->links_cap - 1);
    }
    b->links[h].ino = st->st_ino;
    b->links[h].dev = st->st_dev;
    b->links[h].layer = layer;
    b->links_len++;
    *node = &b->links[h].node; /* the caller fills it in (0 = empty slot until then) */
    return 0;
}

static int fail(struct builder *b, int err, const char *a, const char *c, const char *d)
{
    b->err = err;
    snprintf(b->err_path, sizeof b->err_path, "%s/%s%s", a, c, d ? d : "");
    return -err;
}

/* The format's offsets into the blob are 32-bit, its counts too: refuse what would not fit
 * (the Python oracle raises struct.error there; casts would cut offsets silently).
 * -EFBIG with b->err unset means this, not a system call's EFBIG. */
static int too_big(struct builder *b)
{
    return -EFBIG;
}

static int blob_add(struct builder *b, const void *data, size_t len, uint32_t *off)
{
    if (len > b->blob_max || b->blob.len > b->blob_max - len)
        return too_big(b);
    uint64_t at;
    if (buf_add(&b->blob, data, len, &at) < 0)
        return -ENOMEM;
    *off = (uint32_t)at;
    return 0;
}

static int add_node(struct builder *b, const struct stat *st, int layer, uint32_t parent,
                    uint32_t name_off, uint32_t name_len, const struct xattrs *xa, const char *target,
                    uint32_t target_len)
{
    struct lfs_node n;
    memset(&n, 0, sizeof n);
    n.mode = st->st_mode;
    n.uid = st->st_uid;
    n.gid = st->st_gid;
    n.nlink = (uint32_t)st->st_nlink;
    n.size = (uint64_t)st->st_size;
    n.blocks = (uint64_t)st->st_blocks;
    n.rdev = st->st_rdev;
    n.atime_ns = (int64_t)st->st_atim.tv_sec * 1000000000LL + st->st_atim.tv_nsec;
    n.mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000LL + st->st_mtim.tv_nsec;
    n.ctime_ns = (int64_t)st->st_ctim.tv_sec * 1000000000LL + st->st_ctim.tv_nsec;
    n.layer = layer;
    n.parent = parent;
    n.name_off = name_off;
    n.name_len = name_len;
    int rc;
    if (b->n_nodes == UINT32_MAX)
        return too_big(b);
    if (xa->visible_len && (rc = blob_add(b, xa->visible, xa->visible_len, &n.xattr_off)) < 0)
        return rc;
    n.xattr_len = xa->visible_len;
    if (target_len && (rc = blob_add(b, target, target_len, &n.target_off)) < 0)
        return rc;
    n.target_len = target_len;
    if (buf_add(&b->nodes, &n, sizeof n, NULL) < 0)
        return -ENOMEM;
    b->n_nodes++;
    return 0;
}

static int q_push(struct builder *b, uint32_t ino, char *rel, struct layers layers, int is_root)
{
    if (b->q_len == b->q_cap) {
        size_t cap = b->q_cap ? b->q_cap * 2 : 256;
        struct dirjob *p = mb_realloc(b->q, sizeof *p * cap);
        if (p == NULL)
            return -ENOMEM;
        b->q = p;
        b->q_cap = cap;
    }
    b->q[b->q_len++] = (struct dirjob){ino, rel, layers, is_root};
    return 0;
}

static int child_cmp(const void *a, const void *c)
{
    const struct child *x = a, *y = c;
    size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int r = memcmp(x->name, y->name, n);
    return r ? r : (x->name_len < y->name_len ? -1 : x->name_len > y->name_len);
}

/* Give *st the owner, mode and device number that the override in xa records, if layer li's
 * overrides are believed: its root carries one and belongs to root, or to this (unprivileged)
 * process (layerfs/_layer/override.py).  A malformed override is ignored. */
static void apply_override(const struct builder *b, int li, const struct xattrs *xa, struct stat *st)
{
    struct lfs_override o;
    if (!b->trusted[li] || xa->override_len < 0 ||
        lfs_override_parse(xa->override, (size_t)xa->override_len, (uint32_t)st->st_mode, &o) < 0)
        return;
    st->st_uid = o.uid;
    st->st_gid = o.gid;
    st->st_mode = o.mode;
    st->st_rdev = (dev_t)o.rdev;
}

/* Whether layer li's overrides are believed (see apply_override); xa: its root's xattrs. */
static int layer_trusted(const struct xattrs *xa, const struct stat *root)
{
    struct lfs_override o;
    uid_t me = geteuid();
    if (root->st_uid != 0 && (me == 0 || root->st_uid != me))
        return 0;
    return xa->override_len >= 0 &&
           lfs_override_parse(xa->override, (size_t)xa->override_len, (uint32_t)root->st_mode, &o) == 0;
}

static int is_whiteout(const struct stat *st, const struct xattrs *xa, int parent_holds_x)
{
    if (S_ISCHR(st->st_mode) && st->st_rdev == 0)
        return 1;
    return parent_holds_x && S_ISREG(st->st_mode) && st->st_size == 0 && xa != NULL && xa->whiteout;
}

/* Open directory `rel` ("" or "a/b/") of layer li: beneath the layer's root, through real
 * directories only.  The layer may be changing under us (-o lowerdir= trees are the caller's):
 * a directory swapped for a symlink fails with ELOOP instead of leading elsewhere. */
static int open_layer_dir(const struct builder *b, int li, const char *rel)
{
    struct open_how how = {.flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC,
                           .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS};
    for (int tries = 0;; tries++) {
        long fd = syscall(SYS_openat2, b->root_fds[li], rel[0] ? rel : ".", &how, sizeof how);
        if (fd >= 0 || errno != EAGAIN || tries == 8) /* EAGAIN: a rename raced the lookup */
            return (int)fd;
    }
}

static int has_prefix(const char *name, size_t len, const char *prefix)
{
    size_t n = strlen(prefix);
    return len >= n && memcmp(name, prefix, n) == 0;
}

/* Read the target of symlink c (in directory dfd) into c->target. */
static int read_target(struct builder *b, struct child *c, int dfd, const char *root, const char *rel)
{
    char buf[LFS_TARGET_MAX];
    ssize_t n = readlinkat(dfd, c->name, buf, sizeof buf);
    if (n < 0)
        return fail(b, errno, root, rel, c->name);
    if ((size_t)n == sizeof buf) /* longer than a symlink can be: it was cut */
        return fail(b, ENAMETOOLONG, root, rel, c->name);
    if ((c->target = mb_malloc(n ? (size_t)n : 1)) == NULL)
        return -ENOMEM;
    memcpy(c->target, buf, (size_t)n);
    c->target_len = (uint32_t)n;
    return 0;
}

/* list_layer's answer for a directory the caller may not list (EACCES). */
#define LISTING_DENIED 1

/* Read one layer's listing of a directory into b->ch (a name first seen here is the topmost
 * object of that name), its .wh.X names into *whiteouts (NUL-separated), and set *cut if it
 * holds the OCI opaque marker.  Returns 0, LISTING_DENIED, or a negative errno. */
static int list_layer(struct builder *b, const struct dirjob *job, int li, int holds_x,
                      struct buf *whiteouts, int *cut)
{
    const char *root = b->roots[li];
    int dfd = open_layer_dir(b, li, job->rel);
    if (dfd < 0)
        return errno == EACCES && !job->is_root ? LISTING_DENIED : fail(b, errno, root, job->rel, NULL);
    DIR *d = fdopendir(dfd);
    if (d == NULL) {
        int e = errno;
        close(dfd);
        return fail(b, e, root, job->rel, NULL);
    }
    int rc = 0;
    for (;;) {
        errno = 0; /* the end of a listing and a failed read differ only by errno */
        struct dirent *de = readdir(d);
        if (de == NULL) {
            if (errno != 0)
                rc = fail(b, errno, root, job->rel, NULL);
            break;
        }
        const char *name = de->d_name;
        if (name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0')))
            continue;
        size_t len = strlen(name);
        if (has_prefix(name, len, WH_PREFIX)) {
            size_t plen = strlen(WH_PREFIX);
            if (strcmp(name, WH_OPAQUE) == 0)
                *cut = 1;
            else if (!has_prefix(name, len, WH_META_PREFIX) && len > plen &&
                     buf_add(whiteouts, name + plen, len - plen + 1, NULL) < 0) {
                rc = -ENOMEM;
                break;
            }
            continue;
        }
        struct child *c = ch_find(b, name, len);
        if (c != NULL && !c->open)
            continue;
        struct stat st;
        if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
            /* EACCES: the directory may be read but not searched (r without x) */
            rc = errno == EACCES && !job->is_root ? LISTING_DENIED : fail(b, errno, root, job->rel, name);
            break;
        }
        int is_dir = S_ISDIR(st.st_mode);
        struct xattrs xa = {0};
        int have_xa = is_dir || holds_x || c == NULL;
        if (have_xa) {
            struct xsrc src = {dfd, name};
            if ((rc = read_xattrs(&src, &xa)) < 0)
                break;
        }
        if (c == NULL) {
            if ((c = ch_add(b, name, len)) == NULL) {
                mb_free(xa.visible);
                rc = -ENOMEM;
                break;
            }
            c->layer = li;
            if (is_whiteout(&st, &xa, holds_x)) {
                c->hidden = 1;
                mb_free(xa.visible);
                continue;
            }
            c->st = st;
            apply_override(b, li, &xa, &c->st);
            c->xa = xa;
            c->open = is_dir && !xa.opaque;
            if (S_ISLNK(st.st_mode) && (rc = read_target(b, c, dfd, root, job->rel)) < 0)
                break;
            if (is_dir && layers_add(&c->layers, li, xa.holds_x) < 0) {
                rc = -ENOMEM;
                break;
            }
        } else if (is_dir && !is_whiteout(&st, &xa, holds_x)) {
            int add = layers_add(&c->layers, li, xa.holds_x);
            if (xa.opaque)
                c->open = 0;
            mb_free(xa.visible);
            if (add < 0) {
                rc = -ENOMEM;
                break;
            }
        } else {
            if (have_xa)
                mb_free(xa.visible);
            c->open = 0; /* a whiteout or a non-directory ends the merge */
        }
    }
    closedir(d); /* a directory read only: its close has nothing to report */
    return rc;
}

/* Merge one directory (all its layers), append its entries and queue its subdirectories. */
static int merge_dir(struct builder *b, struct dirjob *job)
{
    int used = 0, opaque_below = 0, denied = 0, rc;
    ch_clear(b);
    struct buf whiteouts = {0}; /* NUL-separated names */
    for (int k = 0; k < job->layers.n; k++) {
        int li = job->layers.v[k].li, cut = 0;
        used++;
        whiteouts.len = 0;
        if ((rc = list_layer(b, job, li, job->layers.v[k].holds_x, &whiteouts, &cut)) < 0) {
            mb_free(whiteouts.data);
            return rc;
        }
        if (rc == LISTING_DENIED) { /* its entries are unknown: none is recorded */
            denied = 1;
            used = job->layers.n;
            ch_clear(b);
            break;
        }
        for (size_t off = 0; off < whiteouts.len;) { /* .wh.X hides X in the layers below only */
            const char *name = whiteouts.data + off;
            size_t len = strlen(name);
            struct child *c = ch_find(b, name, len);
            if (c == NULL) {
                if ((c = ch_add(b, name, len)) == NULL) {
                    mb_free(whiteouts.data);
                    return -ENOMEM;
                }
                c->layer = li;
                c->hidden = 1;
            } else {
                c->open = 0;
            }
            off += len + 1;
        }
        if (cut && !job->is_root) {
            opaque_below = 1;
            break;
        }
    }
    mb_free(whiteouts.data);
    /* the hash refers to positions: sorting invalidates it, so it is cleared by ch_clear next */
    qsort(b->ch, b->ch_len, sizeof *b->ch, child_cmp);
    uint32_t first = b->n_dents;
    for (size_t i = 0; i < b->ch_len; i++) {
        struct child *c = &b->ch[i];
        if (c->hidden) {
            b->hidden++;
            continue;
        }
        uint32_t name_off;
        if ((rc = blob_add(b, c->name, c->name_len, &name_off)) < 0)
            return rc;
        uint32_t child_ino = 0, *slot = NULL;
        int is_dir = S_ISDIR(c->st.st_mode);
        if (!is_dir && c->st.st_nlink > 1) {
            rc = link_find(b, (uint32_t)c->layer, &c->st, &slot);
            if (rc < 0)
                return rc;
            if (rc == 1)
                child_ino = *slot;
        }
        if (child_ino == 0) {
            child_ino = b->n_nodes;
            rc = add_node(b, &c->st, c->layer, job->ino, name_off, (uint32_t)c->name_len, &c->xa, c->target,
                          c->target_len);
            if (rc < 0)
                return rc;
            if (is_dir) {
                size_t rl = strlen(job->rel);
                char *rel = mb_malloc(rl + c->name_len + 2);
                if (rel == NULL)
                    return -ENOMEM;
                memcpy(rel, job->rel, rl);
                memcpy(rel + rl, c->name, c->name_len);
                rel[rl + c->name_len] = '/';
                rel[rl + c->name_len + 1] = '\0';
                if (b->lazy && b->q_len >= UINT32_MAX - 1) {
                    mb_free(rel);
                    return too_big(b);
                }
                rc = q_push(b, child_ino, rel, c->layers, 0);
                if (rc < 0) {
                    mb_free(rel);
                    return rc;
                }
                c->layers = (struct layers){0}; /* moved into the queue */
                if (b->lazy)
                    ((struct lfs_node *)b->nodes.data)[child_ino].pending = (uint32_t)b->q_len;
            } else if (slot != NULL) {
                *slot = child_ino;
            }
        }
        struct lfs_dent dent = {name_off, (uint32_t)c->name_len, child_ino};
        if (b->n_dents == UINT32_MAX)
            return too_big(b);
        if (buf_add(&b->dents, &dent, sizeof dent, NULL) < 0)
            return -ENOMEM;
        b->n_dents++;
    }
    struct lfs_node *dir = &((struct lfs_node *)b->nodes.data)[job->ino];
    dir->first_dent = first;
    dir->n_dents = b->n_dents - first;
    dir->flags = (used > 1 ? LFS_FLAG_MERGED : 0) | (opaque_below ? LFS_FLAG_OPAQUE : 0) |
                 (denied ? LFS_FLAG_DENIED : 0);
    if (used > 1)
        dir->nlink = 1;
    return 0;
}

/* Open the layers, make the root node and queue the root's listing. */
static int build_start(struct builder *b, const char *key, size_t key_len)
{
    uint32_t off;
    int rc;
    if ((rc = blob_add(b, key, key_len, &off)) < 0)
        return rc;
    struct lfs_node zero;
    memset(&zero, 0, sizeof zero);
    if (buf_add(&b->nodes, &zero, sizeof zero, NULL) < 0)
        return -ENOMEM;
    b->n_nodes = 1;
    /* The roots are the caller's paths (followed like any path it gives); below them the walk
     * opens nothing but relative to these fds. */
    for (int li = 0; li < b->n_roots; li++)
        if ((b->root_fds[li] = open(b->roots[li], O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
            return fail(b, errno, b->roots[li], "", NULL);
    int top = b->n_roots - 1;
    struct layers root_layers = {0};
    struct xattrs top_xa = {0};
    struct stat st, top_st;
    for (int li = top; li >= 0; li--) {
        struct xattrs xa;
        struct xsrc src = {b->root_fds[li], NULL};
        if ((rc = read_xattrs(&src, &xa)) < 0)
            goto out;
        if (fstat(b->root_fds[li], &st) < 0) {
            mb_free(xa.visible);
            rc = fail(b, errno, b->roots[li], "", NULL);
            goto out;
        }
        b->trusted[li] = layer_trusted(&xa, &st);
        if (li == top) {
            top_xa = xa;
            top_st = st;
        } else
            mb_free(xa.visible);
        if ((rc = layers_add(&root_layers, li, xa.holds_x)) < 0)
            goto out;
    }
    apply_override(b, top, &top_xa, &top_st);
    if ((rc = add_node(b, &top_st, top, LFS_ROOT_INO, 0, 0, &top_xa, NULL, 0)) < 0)
        goto out;
    char *rel = mb_strdup("");
    if (rel == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    if ((rc = q_push(b, LFS_ROOT_INO, rel, root_layers, 1)) < 0) {
        mb_free(rel);
        goto out;
    }
    root_layers = (struct layers){0}; /* moved into the queue */
out:
    mb_free(root_layers.v);
    mb_free(top_xa.visible);
    return rc;
}

static int build(struct builder *b, const char *key, size_t key_len)
{
    int rc = build_start(b, key, key_len);
    while (rc == 0 && b->q_head < b->q_len) {
        struct dirjob job = b->q[b->q_head++];
        rc = merge_dir(b, &job);
        mb_free(job.rel);
        mb_free(job.layers.v);
        b->q[b->q_head - 1].rel = NULL;
        b->q[b->q_head - 1].layers.v = NULL;
    }
    return rc;
}

static void builder_free(struct builder *b)
{
    ch_clear(b);
    mb_free(b->ch);
    mb_free(b->ch_hash);
    for (size_t i = b->q_head; i < b->q_len; i++) {
        mb_free(b->q[i].rel);
        mb_free(b->q[i].layers.v);
    }
    mb_free(b->q);
    mb_free(b->links);
    buf_free(&b->nodes);
    buf_free(&b->dents);
    buf_free(&b->blob);
    if (b->roots) {
        for (int i = 0; i < b->n_roots; i++)
            mb_free(b->roots[i]);
        mb_free(b->roots);
    }
    if (b->root_fds) {
        for (int i = 0; i < b->n_roots; i++)
            if (b->root_fds[i] >= 0)
                close(b->root_fds[i]);
        mb_free(b->root_fds);
    }
    mb_free(b->trusted);
}

/* ---- lazily merged trees (merge.h: lfs_lazy_*) ----------------------------------------------
 *
 * The builder above, kept for the life of a mount: build_start makes the root, and each pending
 * directory's job (its path and layers, queued when its parent was merged; node.pending = job + 1)
 * runs merge_dir when lfs_ready first needs it.  The nodes, entries and blob live in regions, so
 * what readers hold never moves; one mutex orders the merges. */

struct lfs_lazy {
    struct builder b;
    struct lfs_region regs[3]; /* nodes, dents, blob */
    struct lfs_header h;
    pthread_mutex_t lock;
    lfs_grow_fn grow;
    void *grow_ctx;
    unsigned long loads;
};

static void lazy_free(struct lfs_lazy *z)
{
    in_lazy = 1;
    builder_free(&z->b);
    in_lazy = 0;
    for (int i = 0; i < 3; i++)
        lfs_region_free(&z->regs[i]);
    free(z);
}

int lfs_lazy_open(struct lfs_index *ix, const char *const *layer_dirs, int n_layers, char *err_path, size_t size)
{
    memset(ix, 0, sizeof *ix);
    if (n_layers < 1)
        return -EINVAL;
    struct lfs_lazy *z = calloc(1, sizeof *z);
    if (z == NULL)
        return -ENOMEM;
    struct builder *b = &z->b;
    uint64_t blob_max = __atomic_load_n(&blob_limit, __ATOMIC_RELAXED);
    if (blob_max > LFS_LAZY_BLOB_MAX)
        blob_max = LFS_LAZY_BLOB_MAX;
    int rc = lfs_region_init(&z->regs[0], (size_t)LFS_LAZY_MAX_NODES * sizeof(struct lfs_node));
    if (rc == 0)
        rc = lfs_region_init(&z->regs[1], (size_t)LFS_LAZY_MAX_DENTS * sizeof(struct lfs_dent));
    if (rc == 0)
        rc = lfs_region_init(&z->regs[2], (size_t)blob_max + 1);
    if (rc < 0) {
        lazy_free(z);
        return rc;
    }
    b->nodes.reg = &z->regs[0];
    b->dents.reg = &z->regs[1];
    b->blob.reg = &z->regs[2];
    b->nodes.data = z->regs[0].base;
    b->dents.data = z->regs[1].base;
    b->blob.data = z->regs[2].base;
    b->blob_max = blob_max;
    b->lazy = 1;
    in_lazy = 1;
    b->roots = mb_calloc((size_t)n_layers, sizeof *b->roots);
    b->root_fds = mb_malloc(sizeof *b->root_fds * (size_t)n_layers);
    b->trusted = mb_calloc((size_t)n_layers, sizeof *b->trusted);
    rc = b->roots && b->root_fds && b->trusted ? 0 : -ENOMEM;
    b->n_roots = rc == 0 ? n_layers : 0;
    for (int i = 0; rc == 0 && i < n_layers; i++)
        b->root_fds[i] = -1;
    for (int i = 0; rc == 0 && i < n_layers; i++)
        if ((b->roots[i] = mb_strdup(layer_dirs[i])) == NULL)
            rc = -ENOMEM;
    if (rc == 0)
        rc = build_start(b, "", 0);
    in_lazy = 0;
    int err = rc == 0 ? pthread_mutex_init(&z->lock, NULL) : 0;
    if (rc < 0 || err) {
        if (size)
            snprintf(err_path, size, "%s", rc < 0 && b->err ? b->err_path : "");
        lazy_free(z);
        return rc < 0 ? rc : -err;
    }
    ((struct lfs_node *)b->nodes.data)[LFS_ROOT_INO].pending = 1; /* the root's job: q[0] */
    memcpy(z->h.magic, LFS_MAGIC, 8);
    z->h.version = LFS_VERSION;
    z->h.n_layers = (uint32_t)n_layers;
    ix->lazy = z;
    ix->h = &z->h;
    ix->nodes = (const struct lfs_node *)b->nodes.data;
    ix->dents = (const struct lfs_dent *)b->dents.data;
    ix->blob = b->blob.data;
    ix->n_nodes = b->n_nodes;
    ix->n_dents = b->n_dents;
    ix->max_nodes = LFS_LAZY_MAX_NODES;
    ix->max_dents = LFS_LAZY_MAX_DENTS;
    return 0;
}

void lfs_lazy_set_grow(struct lfs_index *ix, lfs_grow_fn grow, void *ctx)
{
    ix->lazy->grow = grow;
    ix->lazy->grow_ctx = ctx;
}

/* What a merge may have added or changed, to take back if it fails. */
struct lazy_mark {
    uint32_t n_nodes, n_dents, hidden;
    size_t nodes_len, dents_len, blob_len, q_len;
    uint32_t first_dent, n_dents_dir, flags, nlink; /* the directory's own, which merge_dir sets */
};

/* Forget the hard links a failed merge recorded (nodes it made, or slots it left unfilled):
 * rebuild the table without them; without memory for that, forget them all (a later name of a
 * hard link then gets a node of its own: never a wrong node). */
static void lazy_drop_links(struct builder *b, uint32_t n_nodes)
{
    size_t cap = b->links_cap;
    struct link *t = cap ? mb_calloc(cap, sizeof *t) : NULL;
    size_t len = 0;
    for (size_t i = 0; t != NULL && i < cap; i++) {
        struct link l = b->links[i];
        if (l.node == 0 || l.node >= n_nodes)
            continue;
        size_t h = (l.ino * 31 + l.dev * 7 + l.layer) & (cap - 1);
        while (t[h].node)
            h = (h + 1) & (cap - 1);
        t[h] = l;
        len++;
    }
    if (t == NULL && cap)
        memset(b->links, 0, sizeof *b->links * cap);
    if (t != NULL) {
        mb_free(b->links);
        b->links = t;
    }
    b->links_len = len;
}

static void lazy_rollback(struct builder *b, struct lfs_node *dir, const struct lazy_mark *m)
{
    dir->first_dent = m->first_dent; /* unread while pending; as they were for the retry */
    dir->n_dents = m->n_dents_dir;
    dir->flags = m->flags;
    dir->nlink = m->nlink;
    for (size_t i = m->q_len; i < b->q_len; i++) {
        mb_free(b->q[i].rel);
        mb_free(b->q[i].layers.v);
    }
    b->q_len = m->q_len;
    if (b->n_nodes != m->n_nodes)
        lazy_drop_links(b, m->n_nodes);
    b->n_nodes = m->n_nodes;
    b->n_dents = m->n_dents;
    b->hidden = m->hidden;
    b->nodes.len = m->nodes_len;
    b->dents.len = m->dents_len;
    b->blob.len = m->blob_len;
}

int lfs_lazy_load(struct lfs_index *ix, uint32_t ino)
{
    struct lfs_lazy *z = ix->lazy;
    if (z == NULL)
        return 0;
    int rc = pthread_mutex_lock(&z->lock);
    if (rc)
        return -rc;
    struct builder *b = &z->b;
    struct lfs_node *dir = &((struct lfs_node *)b->nodes.data)[ino];
    uint32_t job = ino < b->n_nodes ? dir->pending : 0; /* only merges change it: we hold the lock */
    if (job == 0 || job > b->q_len) {
        pthread_mutex_unlock(&z->lock);
        return 0; /* merged meanwhile (or not pending at all) */
    }
    struct lazy_mark m = {b->n_nodes, b->n_dents, b->hidden, b->nodes.len, b->dents.len, b->blob.len, b->q_len,
                          dir->first_dent, dir->n_dents, dir->flags, dir->nlink};
    struct dirjob j = b->q[job - 1]; /* a copy: merge_dir may move the queue */
    in_lazy = 1;
    b->err = 0;
    rc = merge_dir(b, &j);
    if (rc == 0 && z->grow != NULL)
        rc = z->grow(z->grow_ctx, ino, b->n_nodes, b->n_dents);
    if (rc < 0) {
        lazy_rollback(b, dir, &m);
        in_lazy = 0;
        pthread_mutex_unlock(&z->lock);
        return rc;
    }
    mb_free(j.rel);
    mb_free(j.layers.v);
    b->q[job - 1].rel = NULL;
    b->q[job - 1].layers.v = NULL;
    in_lazy = 0;
    __atomic_fetch_add(&z->loads, 1, __ATOMIC_RELAXED);
    /* entries and nodes first, then the directory that names them */
    __atomic_store_n(&ix->n_dents, b->n_dents, __ATOMIC_RELEASE);
    __atomic_store_n(&ix->n_nodes, b->n_nodes, __ATOMIC_RELEASE);
    __atomic_store_n(&dir->pending, 0, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&z->lock);
    return 0;
}

const char *lfs_lazy_error_path(const struct lfs_index *ix)
{
    return ix->lazy && ix->lazy->b.err ? ix->lazy->b.err_path : NULL;
}

unsigned long lfs_lazy_loads(const struct lfs_index *ix)
{
    /* no lock: the caller may hold the GIL, and a merge may be slow */
    return ix->lazy ? __atomic_load_n(&ix->lazy->loads, __ATOMIC_RELAXED) : 0;
}

void lfs_lazy_free(struct lfs_index *ix)
{
    pthread_mutex_destroy(&ix->lazy->lock);
    lazy_free(ix->lazy);
    ix->lazy = NULL;
}

static PyObject *merge_build(PyObject *self, PyObject *args)
{
    PyObject *dirs;
    const char *key;
    Py_ssize_t key_len;
    if (!PyArg_ParseTuple(args, "Os#", &dirs, &key, &key_len))
        return NULL;
    PyObject *seq = PySequence_Fast(dirs, "layer_dirs must be a sequence");
    if (seq == NULL)
        return NULL;
    struct builder b;
    memset(&b, 0, sizeof b);
    b.blob_max = __atomic_load_n(&blob_limit, __ATOMIC_RELAXED);
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n == 0) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "a merged tree needs at least one layer");
        return NULL;
    }
    if (n > INT32_MAX) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "too many layers");
        return NULL;
    }
    b.roots = mb_calloc(n, sizeof *b.roots);
    b.root_fds = mb_malloc(sizeof *b.root_fds * n);
    b.trusted = mb_calloc(n, sizeof *b.trusted);
    b.n_roots = (int)n;
    for (Py_ssize_t i = 0; b.root_fds != NULL && i < n; i++)
        b.root_fds[i] = -1; /* none open yet */
    if (b.roots == NULL || b.root_fds == NULL || b.trusted == NULL) {
        Py_DECREF(seq);
        builder_free(&b);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *p = NULL;
        if (!PyUnicode_FSConverter(PySequence_Fast_GET_ITEM(seq, i), &p)) {
            Py_DECREF(seq);
            builder_free(&b);
            return NULL;
        }
        b.roots[i] = mb_strdup(PyBytes_AS_STRING(p));
        Py_DECREF(p);
        if (b.roots[i] == NULL) {
            Py_DECREF(seq);
            builder_free(&b);
            return PyErr_NoMemory();
        }
    }
    Py_DECREF(seq);
    char *keycopy = mb_malloc(key_len + 1);
    if (keycopy == NULL) {
        builder_free(&b);
        return PyErr_NoMemory();
    }
    memcpy(keycopy, key, key_len);
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = build(&b, keycopy, (size_t)key_len);
    Py_END_ALLOW_THREADS
    mb_free(keycopy);
    if (rc < 0) {
        if (rc == -ENOMEM)
            PyErr_NoMemory();
        else if (rc == -EFBIG && b.err == 0) {
            PyObject *msg = PyUnicode_FromFormat(
                "the merged index would exceed its format's limits (%llu bytes of names, symlink "
                "targets and xattrs; 2^32 - 1 nodes and entries)", (unsigned long long)b.blob_max);
            PyObject *exc_args = msg ? Py_BuildValue("(iN)", EFBIG, msg) : NULL;
            if (exc_args != NULL) {
                PyErr_SetObject(PyExc_OSError, exc_args);
                Py_DECREF(exc_args);
            }
        }
        else {
            errno = b.err;
            PyErr_SetFromErrnoWithFilename(PyExc_OSError, b.err_path);
        }
        builder_free(&b);
        return NULL;
    }
    struct lfs_header h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, LFS_MAGIC, 8);
    h.version = LFS_VERSION;
    h.n_layers = (uint32_t)n;
    h.n_nodes = b.n_nodes;
    h.n_dents = b.n_dents;
    h.off_nodes = sizeof h;
    h.off_dents = h.off_nodes + b.nodes.len;
    h.off_blob = h.off_dents + b.dents.len;
    h.blob_size = b.blob.len;
    h.key_off = 0;
    h.key_len = (uint32_t)key_len;
    size_t total = sizeof h + b.nodes.len + b.dents.len + b.blob.len;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (out == NULL) {
        builder_free(&b);
        return NULL;
    }
    char *p = PyBytes_AS_STRING(out);
    memcpy(p, &h, sizeof h);
    memcpy(p + sizeof h, b.nodes.data, b.nodes.len);
    memcpy(p + sizeof h + b.nodes.len, b.dents.data, b.dents.len);
    if (b.blob.len)
        memcpy(p + sizeof h + b.nodes.len + b.dents.len, b.blob.data, b.blob.len);
    PyObject *res = Py_BuildValue("(NIII)", out, b.n_nodes - 1, b.n_dents, b.hidden);
    builder_free(&b);
    return res;
}

/* For the tests: arm the nth allocation from now to fail (0 disarms); returns the blocks live now. */
static PyObject *merge_build_faults(PyObject *self, PyObject *arg)
{
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    __atomic_store_n(&fail_countdown, n < 0 ? 0 : n, __ATOMIC_RELAXED);
    return PyLong_FromLong(__atomic_load_n(&live_blocks, __ATOMIC_RELAXED));
}

/* For the tests: the most bytes of names, targets and xattrs an index may hold (0: the format's
 * own, LFS_BLOB_MAX); returns the limit that was in force. */
static PyObject *merge_build_blob_limit(PyObject *self, PyObject *arg)
{
    unsigned long long n = PyLong_AsUnsignedLongLong(arg);
    if (n == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (n == 0 || n > LFS_BLOB_MAX)
        n = LFS_BLOB_MAX;
    return PyLong_FromUnsignedLongLong(__atomic_exchange_n(&blob_limit, (uint64_t)n, __ATOMIC_RELAXED));
}

/* For the tests: take the /proc path of kernels without listxattrat/getxattrat (true) or not. */
static PyObject *merge_build_xattrat_fallback(PyObject *self, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
    __atomic_store_n(&have_xattrat, on ? -1 : 0, __ATOMIC_RELAXED);
    Py_RETURN_NONE;
}

static PyMethodDef mergebuild_methods[] = {
    {"_merge_build_xattrat_fallback", merge_build_xattrat_fallback, METH_O,
     "_merge_build_xattrat_fallback(on): read entry xattrs through /proc as before Linux 6.13; tests only"},
    {"_merge_build_blob_limit", merge_build_blob_limit, METH_O,
     "_merge_build_blob_limit(n) -> previous: lower the blob size limit of merge_build (0: the "
     "format's); tests only"},
    {"_merge_build_faults", merge_build_faults, METH_O,
     "_merge_build_faults(n) -> blocks live: the nth allocation of merge_build from now fails "
     "(0: none); tests only"},
    {"merge_build", merge_build, METH_VARARGS,
     "merge_build(layer_dirs, key) -> (index bytes, nodes, dents, hidden): the merged index of a "
     "stack (base layer first), as layerfs/_mount/merge.py documents it"},
    {NULL, NULL, 0, NULL},
};

static int add_strings(PyObject *module, const char *name, const char *const *items, size_t n)
{
    PyObject *t = PyTuple_New((Py_ssize_t)n);
    if (t == NULL)
        return -1;
    for (size_t i = 0; i < n; i++) {
        PyObject *item = PyUnicode_FromString(items[i]);
        if (item == NULL) {
            Py_DECREF(t);
            return -1;
        }
        PyTuple_SET_ITEM(t, (Py_ssize_t)i, item);
    }
    int rc = PyModule_AddObjectRef(module, name, t);
    Py_DECREF(t);
    return rc;
}

static int add_bytes(PyObject *module, const char *name, const char *value)
{
    PyObject *b = PyBytes_FromString(value);
    if (b == NULL)
        return -1;
    int rc = PyModule_AddObjectRef(module, name, b);
    Py_DECREF(b);
    return rc;
}

int layerfs_init_mergebuild(PyObject *module)
{
    if (PyModule_AddFunctions(module, mergebuild_methods) < 0 ||
        PyModule_AddStringConstant(module, "WHITEOUT_PREFIX", WH_PREFIX) < 0 ||
        PyModule_AddStringConstant(module, "META_PREFIX", WH_META_PREFIX) < 0 ||
        PyModule_AddStringConstant(module, "OPAQUE_MARKER", WH_OPAQUE) < 0 ||
        add_bytes(module, "OPAQUE_VALUE", OPAQUE_VALUE) < 0 ||
        add_bytes(module, "XATTR_WHITEOUTS_VALUE", XATTR_WHITEOUTS_VALUE) < 0 ||
        add_strings(module, "OPAQUE_XATTRS", opaque_xattrs, NELEM(opaque_xattrs)) < 0 ||
        add_strings(module, "KERNEL_OPAQUE_XATTRS", kernel_opaque_xattrs, NELEM(kernel_opaque_xattrs)) < 0 ||
        add_strings(module, "WHITEOUT_XATTRS", whiteout_xattrs, NELEM(whiteout_xattrs)) < 0 ||
        add_strings(module, "PRIVATE_XATTR_PREFIXES", private_prefixes, NELEM(private_prefixes)) < 0)
        return -1;
    return 0;
}
