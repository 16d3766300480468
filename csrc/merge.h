/* merge.h: the merged-tree index file (written by csrc/mergebuild.c), as C reads it.
 *
 * The one definition of the format: magic, version, the three structs (little-endian, packed
 * as declared; the static asserts in merge.c check the sizes).  The native module exports
 * these constants (layerfs/_mount/index.py reads them); layerfs/_mount/merge.py documents
 * the rules and the layout in prose.
 *
 * A loaded index is an mmap of the file, validated once at load (lfs_index_open), so every
 * accessor below is a bounds-check-free array access and every walk over it terminates.  What
 * the validation guarantees, beyond "every offset and range lies inside its table":
 *   - node 1 is the root: a directory, its own parent, with an empty name;
 *   - every other node's parent is a directory numbered before it (so parent chains are
 *     acyclic and end at the root), and its name is a valid component (1..255 bytes, no '/'
 *     or NUL, not "." or "..");
 *   - directories' entry ranges follow each other in node order and cover every entry once;
 *     non-directories list nothing; each directory's entries are valid names, sorted by
 *     bytes with no repeat, and never name the root;
 *   - an entry naming a directory is that directory's name in its parent (so each directory is
 *     listed exactly once and the directory tree is the tree of parent links), and every node
 *     is listed by its parent under its own name (so a path built from parents leads to it);
 *   - only symlinks have targets (1..4095 bytes, no NUL); xattr records tile their range,
 *     with names of 1..255 bytes without NUL and values of at most 64 KiB.
 */
#ifndef LAYERFS_MERGE_H
#define LAYERFS_MERGE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define LFS_MAGIC "LFSMERGE"
#define LFS_VERSION 2 /* 2: user.containers.override_stat is applied (override.h) */
#define LFS_ROOT_INO 1
#define LFS_FLAG_MERGED 1
#define LFS_FLAG_OPAQUE 2
/* A directory the build could not list in one of its layers (EACCES: the mounter may not read
 * it): its entries are unknown and none are recorded; a mount answers EACCES to listing it and
 * to looking a name up in it, as the kernel overlay does when the mounter's rights fail. */
#define LFS_FLAG_DENIED 4
#define LFS_NAME_MAX 255         /* a name component (NAME_MAX) */
#define LFS_TARGET_MAX 4096      /* a symlink target is shorter (PATH_MAX) */
#define LFS_XATTR_NAME_MAX 255   /* XATTR_NAME_MAX */
#define LFS_XATTR_SIZE_MAX 65536 /* XATTR_SIZE_MAX */
#define LFS_BLOB_MAX 0xffffffffu /* blob offsets are 32-bit: at most 4 GiB - 1 of names etc. */

struct lfs_header {
    char magic[8];
    uint32_t version, n_layers, n_nodes, n_dents;
    uint64_t off_nodes, off_dents, off_blob, blob_size;
    uint32_t key_off, key_len;
};

struct lfs_node {
    uint32_t mode, uid, gid, nlink;
    uint64_t size, blocks, rdev;
    int64_t atime_ns, mtime_ns, ctime_ns;
    uint32_t layer, parent, name_off, name_len;
    uint32_t first_dent, n_dents, xattr_off, xattr_len;
    uint32_t target_off, target_len, flags, pending; /* pending: 0 in a file (see lfs_ready) */
};

struct lfs_dent {
    uint32_t name_off, name_len, ino;
};

struct lfs_lazy; /* mergebuild.c */

/* An index: a mapped file (lfs_index_open), or a lazily merged tree (lfs_lazy_open) that grows
 * while a mount serves it.  Readers use nodes [1, n_nodes) and entries [0, n_dents) through the
 * accessors below: the counts only grow, and the memory behind them never moves (region.h). */
struct lfs_index {
    void *map;
    size_t map_len;
    const struct lfs_header *h; /* a file's header; a lazy index's own (n_layers is right) */
    const struct lfs_node *nodes;
    const struct lfs_dent *dents;
    const char *blob;
    uint32_t n_nodes, n_dents;     /* read them with lfs_n_nodes / lfs_n_dents */
    uint32_t max_nodes, max_dents; /* what the counts can grow to (a file: the counts) */
    struct lfs_lazy *lazy;         /* NULL: a file, complete */
    const char *why; /* after a failed lfs_index_open with -EINVAL: what is malformed */
};

/* Open and validate an index file (see above).  Returns 0, or -errno (EINVAL for a malformed
 * file, ix->why then says how). */
int lfs_index_open(struct lfs_index *ix, const char *path);
/* Close either kind of index. */
void lfs_index_close(struct lfs_index *ix);

/* A lazily merged tree (mergebuild.c).  lfs_lazy_open opens the layer dirs (base first), reads
 * their roots and makes the root node, whose entries are pending: no directory is listed yet.
 * lfs_ready(ix, ino) merges a pending directory's entries from its layers, by the rules and in
 * the form of a built index (one directory of csrc/mergebuild.c's walk), giving each entry a node
 * numbered after every node there is; its subdirectories are pending in turn.  Threads may call
 * it together and read the index meanwhile: one merges at a time, and the nodes and entries it
 * adds are published (release) only once complete, its `grow` callback (the engine's own per-node
 * tables) called before.  A failed merge adds nothing and leaves the directory pending, so a later
 * request tries again.  Returns 0 or -errno (ENOMEM, also past the lazy limits LFS_LAZY_MAX_*;
 * EFBIG past the blob's; the errno of a failed system call, whose path lfs_lazy_error_path
 * gives). */
#define LFS_LAZY_MAX_NODES (1u << 24)  /* 16 Mi nodes (1.75 GiB of address space, reserved, not */
#define LFS_LAZY_MAX_DENTS (1u << 25)  /* used: region.h); entries 384 MiB; names, targets and  */
#define LFS_LAZY_BLOB_MAX ((1u << 30) - 1) /* xattrs 1 GiB (a 25k-entry image needs ~2 MiB)  */
typedef int (*lfs_grow_fn)(void *ctx, uint32_t dir, uint32_t n_nodes, uint32_t n_dents);
/* On failure err_path (size bytes) names the path a failed system call was about, or is "". */
int lfs_lazy_open(struct lfs_index *ix, const char *const *layer_dirs, int n_layers, char *err_path, size_t size);
void lfs_lazy_set_grow(struct lfs_index *ix, lfs_grow_fn grow, void *ctx);
int lfs_lazy_load(struct lfs_index *ix, uint32_t ino);
const char *lfs_lazy_error_path(const struct lfs_index *ix);
void lfs_lazy_free(struct lfs_index *ix); /* lfs_index_close's part for a lazy index */
/* How many directories a lazy index has merged (0 for a file). */
unsigned long lfs_lazy_loads(const struct lfs_index *ix);

static inline uint32_t lfs_n_nodes(const struct lfs_index *ix)
{
    return __atomic_load_n(&ix->n_nodes, __ATOMIC_ACQUIRE);
}

static inline uint32_t lfs_n_dents(const struct lfs_index *ix)
{
    return __atomic_load_n(&ix->n_dents, __ATOMIC_ACQUIRE);
}

static inline const struct lfs_node *lfs_node(const struct lfs_index *ix, uint64_t ino)
{
    return (ino >= 1 && ino < lfs_n_nodes(ix)) ? &ix->nodes[ino] : NULL;
}

/* Make sure node `ino`, if it is a directory of a lazy index, has its entries (first_dent,
 * n_dents, flags, nlink): every reader of those calls this first.  0 or -errno. */
static inline int lfs_ready(struct lfs_index *ix, uint64_t ino)
{
    if (ix->lazy == NULL || ino < 1 || ino >= lfs_n_nodes(ix) ||
        __atomic_load_n(&ix->nodes[ino].pending, __ATOMIC_ACQUIRE) == 0)
        return 0;
    return lfs_lazy_load(ix, (uint32_t)ino);
}

/* Binary search of a directory's sorted entries.  Returns the child inode, or 0. */
static inline uint32_t lfs_lookup(const struct lfs_index *ix, const struct lfs_node *dir,
                                  const char *name, size_t len)
{
    size_t lo = dir->first_dent, hi = (size_t)dir->first_dent + dir->n_dents;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const struct lfs_dent *d = &ix->dents[mid];
        size_t n = d->name_len < len ? d->name_len : len;
        int c = memcmp(ix->blob + d->name_off, name, n);
        if (c == 0)
            c = d->name_len < len ? -1 : d->name_len > len ? 1 : 0;
        if (c == 0)
            return d->ino;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

#endif
