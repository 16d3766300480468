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
    uint32_t target_off, target_len, flags, pad;
};

struct lfs_dent {
    uint32_t name_off, name_len, ino;
};

struct lfs_index {
    void *map;
    size_t map_len;
    const struct lfs_header *h;
    const struct lfs_node *nodes;
    const struct lfs_dent *dents;
    const char *blob;
    uint32_t n_nodes;
    const char *why; /* after a failed lfs_index_open with -EINVAL: what is malformed */
};

/* Open and validate an index file (see above).  Returns 0, or -errno (EINVAL for a malformed
 * file, ix->why then says how). */
int lfs_index_open(struct lfs_index *ix, const char *path);
void lfs_index_close(struct lfs_index *ix);

static inline const struct lfs_node *lfs_node(const struct lfs_index *ix, uint64_t ino)
{
    return (ino >= 1 && ino < ix->n_nodes) ? &ix->nodes[ino] : NULL;
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
