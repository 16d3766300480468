/* dir.c: upper directories and merged listings.
 *
 * The entries of an upper directory are read once (getdents, plus an fstatat for character
 * devices, which may be whiteouts) into a struct dirstate, then kept up to date by every change
 * made through the mount.  A lookup in the directory is then a hash probe, and a listing reads
 * no directory at all.
 *
 * Listing offsets are stable, so that a program removing entries while it lists a directory
 * (rm -r, find -delete) neither skips nor repeats one, and so that the kernel may cache listings
 * (FOPEN_CACHE_DIR) as on a read-only mount:
 *   0 ".", 1 "..", then 2 + i for the i-th name of the merged lower directory (index order;
 *   a name the upper hides is skipped, a name the upper replaces is shown there with its upper
 *   object), then 2 + n_lower + seq for the names only the upper has, in the order they were
 *   first seen (seq never reused).
 * The kernel overlay rules (docs/overlay.rst "Readdir", "Whiteouts and opaque directories"): whiteouts are never
 * listed; under an opaque upper directory no lower name is listed.
 *
 * Locking: dirstates change only under fs->tree held exclusively; dir_load runs under fs->tree
 * (any mode) plus node.c's table mutex.
 */
#include "fs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

static size_t hash_name(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return (size_t)h;
}

static int ds_grow(struct dirstate *ds)
{
    size_t nb = ds->nbuckets ? ds->nbuckets * 2 : 16;
    struct uent **b = calloc(nb, sizeof *b);
    if (b == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < ds->nbuckets; i++) {
        struct uent *e = ds->buckets[i];
        while (e) {
            struct uent *next = e->hnext;
            size_t h = hash_name(e->name, e->len) & (nb - 1);
            e->hnext = b[h];
            b[h] = e;
            e = next;
        }
    }
    free(ds->buckets);
    ds->buckets = b;
    ds->nbuckets = nb;
    return 0;
}

struct uent *dir_find(struct dirstate *ds, const char *name, size_t len)
{
    if (ds == NULL || ds->nbuckets == 0)
        return NULL;
    for (struct uent *e = ds->buckets[hash_name(name, len) & (ds->nbuckets - 1)]; e; e = e->hnext)
        if (e->len == len && memcmp(e->name, name, len) == 0)
            return e;
    return NULL;
}

struct uent *dir_add(struct dirstate *ds, const char *name, size_t len, uint8_t dtype, int whiteout, ino_t ino)
{
    struct uent *e = dir_find(ds, name, len);
    if (e != NULL) { /* replaced in place: a whiteout by a new object, or the reverse; keeps its seq */
        e->dtype = dtype;
        e->whiteout = whiteout ? 1 : 0;
        e->ino = ino;
        return e;
    }
    if (ds->count + 1 > ds->nbuckets && ds_grow(ds) < 0)
        return NULL;
    if (ds->norder == ds->cap) {
        size_t cap = ds->cap ? ds->cap * 2 : 16;
        struct uent **o = realloc(ds->order, cap * sizeof *o);
        if (o == NULL)
            return NULL;
        ds->order = o;
        ds->cap = cap;
    }
    e = calloc(1, sizeof *e);
    if (e == NULL)
        return NULL;
    e->name = malloc(len + 1);
    if (e->name == NULL) {
        free(e);
        return NULL;
    }
    memcpy(e->name, name, len);
    e->name[len] = '\0';
    e->len = (uint32_t)len;
    e->dtype = dtype;
    e->whiteout = whiteout ? 1 : 0;
    e->ino = ino;
    e->seq = ds->next_seq++;
    size_t h = hash_name(name, len) & (ds->nbuckets - 1);
    e->hnext = ds->buckets[h];
    ds->buckets[h] = e;
    ds->order[ds->norder++] = e;
    ds->count++;
    return e;
}

void dir_remove(struct dirstate *ds, struct uent *e)
{
    struct uent **p = &ds->buckets[hash_name(e->name, e->len) & (ds->nbuckets - 1)];
    for (; *p; p = &(*p)->hnext)
        if (*p == e) {
            *p = e->hnext;
            break;
        }
    ds->order[e->seq] = NULL; /* order[i] is the entry of seq i (see dir_add) */
    ds->count--;
    free(e->name);
    free(e);
}

void dir_free(struct dirstate *ds)
{
    for (size_t i = 0; i < ds->nbuckets; i++) {
        struct uent *e = ds->buckets[i];
        while (e) {
            struct uent *next = e->hnext;
            free(e->name);
            free(e);
            e = next;
        }
    }
    free(ds->buckets);
    free(ds->order);
    memset(ds, 0, sizeof *ds);
}

/* Whether the directory's own xattrs mark it "holds xattr whiteouts" (overlay.opaque=x). */
static int holds_xattr_whiteouts(struct lfs_fs *fs, int fd)
{
    char path[64], v[4];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    const char *names[2] = {"trusted.overlay.opaque", "user.overlay.opaque"};
    for (int i = 0; i < 2; i++) {
        ssize_t n = getxattr(path, names[i], v, sizeof v);
        if (n == 1 && v[0] == 'x')
            return 1;
    }
    return 0;
}

static int is_xattr_whiteout(int fd, const char *name)
{
    char path[PATH_MAX];
    int n = snprintf(path, sizeof path, "/proc/self/fd/%d/%s", fd, name);
    if (n < 0 || (size_t)n >= sizeof path)
        return 0;
    const char *names[2] = {"trusted.overlay.whiteout", "user.overlay.whiteout"};
    for (int i = 0; i < 2; i++)
        if (lgetxattr(path, names[i], NULL, 0) >= 0)
            return 1;
    return 0;
}

struct linux_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

int dir_load(struct lfs_fs *fs, struct onode *dir)
{
    if (dir->dirfd < 0)
        return -EIO;
    struct dirstate *ds = calloc(1, sizeof *ds);
    if (ds == NULL)
        return -ENOMEM;
    int fd = openat(dir->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        free(ds);
        return -e;
    }
    int xattr_wh = holds_xattr_whiteouts(fs, fd);
    char buf[32768];
    int rc = 0;
    for (;;) {
        long n = syscall(SYS_getdents64, fd, buf, sizeof buf);
        if (n < 0) {
            rc = -errno;
            break;
        }
        if (n == 0)
            break;
        for (long off = 0; off < n;) {
            struct linux_dirent64 *d = (struct linux_dirent64 *)(buf + off);
            off += d->d_reclen;
            const char *name = d->d_name;
            if (name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0')))
                continue;
            uint8_t type = d->d_type;
            int wh = 0;
            if (type == DT_CHR || type == DT_UNKNOWN || (type == DT_REG && xattr_wh)) {
                struct stat st;
                if (fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                    continue; /* gone meanwhile */
                type = IFTODT(st.st_mode);
                if (S_ISCHR(st.st_mode) && st.st_rdev == makedev(0, 0))
                    wh = 1;
                else if (S_ISREG(st.st_mode) && xattr_wh && st.st_size == 0 && is_xattr_whiteout(fd, name))
                    wh = 1;
            }
            if (dir_add(ds, name, strlen(name), type, wh, d->d_ino) == NULL) {
                rc = -ENOMEM;
                break;
            }
        }
        if (rc < 0)
            break;
    }
    close(fd);
    if (rc < 0) {
        dir_free(ds);
        free(ds);
        return rc;
    }
    __atomic_store_n(&dir->ds, ds, __ATOMIC_RELEASE);
    return 0;
}

/* Whether the upper directory holds nothing but whiteouts (*only_whiteouts: it holds some). */
int dir_upper_is_empty(struct lfs_fs *fs, struct onode *dir, int *only_whiteouts)
{
    if (dir->ds == NULL) {
        int rc = dir_load(fs, dir);
        if (rc < 0)
            return rc;
    }
    *only_whiteouts = 0;
    for (size_t i = 0; i < dir->ds->norder; i++) {
        struct uent *e = dir->ds->order[i];
        if (e == NULL)
            continue;
        if (!e->whiteout)
            return 0;
        *only_whiteouts = 1;
    }
    return 1;
}

/* Whether the merged directory shows no name at all, as rmdir and rename need it: 0, or
 * -ENOTEMPTY; -EACCES when its lower part could not be listed (node_denied: as the kernel
 * overlay, which reads a directory with the mounter's rights to tell whether it is empty). */
int dir_check_empty(struct lfs_fs *fs, const struct lfs_obj *dir)
{
    int rc = node_dir_ready(fs, dir);
    if (rc < 0)
        return rc;
    if (node_denied(fs, dir))
        return -EACCES;
    struct onode *on = dir->on;
    const struct lfs_node *ln = NULL;
    if (on == NULL || !on->has_upper)
        ln = lfs_node(&fs->ix, dir->lower);
    else if (on->lower && !on->opaque)
        ln = lfs_node(&fs->ix, on->lower);
    if (on && on->has_upper) {
        if (on->ds == NULL && dir_load(fs, on) < 0)
            return -ENOTEMPTY;
        for (size_t i = 0; i < on->ds->norder; i++) {
            struct uent *e = on->ds->order[i];
            if (e && !e->whiteout)
                return -ENOTEMPTY;
        }
    }
    if (ln && lfs_is_dir(ln->mode)) {
        for (uint32_t i = 0; i < ln->n_dents; i++) {
            const struct lfs_dent *d = &fs->ix.dents[ln->first_dent + i];
            struct uent *e = on && on->ds ? dir_find(on->ds, fs->ix.blob + d->name_off, d->name_len) : NULL;
            if (e == NULL)
                return -ENOTEMPTY; /* a lower name nothing hides */
        }
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------- */

static int add_entry(fuse_req_t req, struct lfs_fs *fs, char *buf, size_t size, size_t *used, const char *name,
                     const struct lfs_obj *obj, const struct stat *st, off_t next, int plus)
{
    size_t n;
    if (plus) {
        struct fuse_entry_param e;
        node_entry(fs, obj->id, st, &e);
        n = fuse_add_direntry_plus(req, buf + *used, size - *used, name, &e, next);
    } else {
        struct stat small = {.st_ino = st->st_ino, .st_mode = st->st_mode};
        n = fuse_add_direntry(req, buf + *used, size - *used, name, &small, next);
    }
    if (n > size - *used)
        return 0;
    *used += n;
    if (plus && strcmp(name, ".") != 0 && strcmp(name, "..") != 0)
        node_count_lookup(fs, obj);
    return 1;
}

/* A listing of a pristine directory: straight from the index (the read-only mount's path).
 * Returns 0, or -errno when a subdirectory's attributes cannot be had (a lazy index could not
 * merge it) before any entry was added; after one, the listing stops there and the next
 * READDIR, which starts at that entry, gets the error. */
static int readdir_index(fuse_req_t req, struct lfs_fs *fs, fuse_ino_t ino, const struct lfs_node *dir,
                         char *buf, size_t size, off_t off, int plus, size_t *used)
{
    uint64_t total = (uint64_t)dir->n_dents + 2;
    for (uint64_t pos = (uint64_t)(off < 0 ? 0 : off); pos < total; pos++) {
        char namebuf[LFS_NAME_MAX + 1];
        struct lfs_obj child;
        const char *name;
        if (pos < 2) {
            name = pos == 0 ? "." : "..";
            uint64_t id = pos == 0 ? ino : dir->parent;
            child = (struct lfs_obj){id, NULL, pos == 0 ? (uint32_t)(ino & 0xffffffffu) : dir->parent};
            if (pos == 0 && fs->writable)
                node_resolve(fs, ino, &child);
        } else {
            const struct lfs_dent *d = &fs->ix.dents[dir->first_dent + pos - 2];
            memcpy(namebuf, fs->ix.blob + d->name_off, d->name_len);
            namebuf[d->name_len] = '\0';
            name = namebuf;
            uint64_t id = node_child_id(fs, d->ino, dir->first_dent + (uint32_t)pos - 2);
            if (node_resolve(fs, id, &child) < 0)
                child = (struct lfs_obj){d->ino, NULL, d->ino};
        }
        struct stat st;
        if (child.on && child.on->has_upper) {
            if (node_stat(fs, &child, &st) < 0)
                continue;
        } else if (!plus) { /* the type is all a listing shows: a pending directory stays so */
            memset(&st, 0, sizeof st);
            st.st_ino = child.lower;
            st.st_mode = fs->ix.nodes[child.lower].mode;
        } else {
            int rc = lfs_ready(&fs->ix, child.lower); /* a directory's nlink */
            if (rc < 0)
                return *used ? 0 : rc;
            node_fill_stat(child.lower, &fs->ix.nodes[child.lower], &st);
        }
        if (!add_entry(req, fs, buf, size, used, name, &child, &st, (off_t)pos + 1, plus))
            break;
    }
    return 0;
}

static void readdir_merged(fuse_req_t req, struct lfs_fs *fs, const struct lfs_obj *dirobj, char *buf, size_t size,
                           off_t off, int plus, size_t *used)
{
    struct onode *dir = dirobj->on;
    const struct lfs_node *ln = (dir->lower && !dir->opaque) ? lfs_node(&fs->ix, dir->lower) : NULL;
    uint64_t nl = ln ? ln->n_dents : 0;
    uint64_t base = 2 + nl;
    uint64_t pos = (uint64_t)(off < 0 ? 0 : off);
    for (; pos < base; pos++) {
        char namebuf[LFS_NAME_MAX + 1];
        const char *name;
        size_t len;
        struct lfs_obj child;
        if (pos < 2) {
            name = pos == 0 ? "." : "..";
            uint64_t id = pos == 0 ? dirobj->id : (dir->parent ? dir->parent->id : LFS_ROOT_INO);
            if (node_resolve(fs, id, &child) < 0)
                continue;
        } else {
            const struct lfs_dent *d = &fs->ix.dents[ln->first_dent + pos - 2];
            len = d->name_len;
            memcpy(namebuf, fs->ix.blob + d->name_off, len);
            namebuf[len] = '\0';
            name = namebuf;
            if (node_lookup(fs, dirobj, name, len, &child) < 0)
                continue; /* hidden by a whiteout */
        }
        struct stat st;
        if (node_stat(fs, &child, &st) < 0)
            continue;
        if (!add_entry(req, fs, buf, size, used, name, &child, &st, (off_t)pos + 1, plus))
            return;
    }
    struct dirstate *ds = dir->ds;
    if (ds == NULL)
        return;
    uint64_t from = pos - base;
    for (size_t i = (size_t)from; i < ds->norder; i++) {
        struct uent *e = ds->order[i];
        if (e == NULL || e->whiteout)
            continue;
        if (ln && lfs_lookup(&fs->ix, ln, e->name, e->len) != 0)
            continue; /* listed at the lower name's place */
        struct lfs_obj child;
        struct stat st;
        if (node_lookup(fs, dirobj, e->name, e->len, &child) < 0 || node_stat(fs, &child, &st) < 0)
            continue;
        if (!add_entry(req, fs, buf, size, used, e->name, &child, &st, (off_t)(base + e->seq + 1), plus))
            return;
    }
}

void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, int plus)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    enum lfs_op op = plus ? OP_READDIRPLUS : OP_READDIR;
    COUNT(fs, op);
    if (fs->writable)
        pthread_rwlock_rdlock(&fs->tree);
    struct lfs_obj dir;
    int rc = node_resolve(fs, ino, &dir);
    if (rc == 0 && !lfs_is_dir(node_type(fs, &dir)))
        rc = -ENOTDIR;
    if (rc == 0)
        rc = node_dir_ready(fs, &dir);
    if (rc == 0 && node_denied(fs, &dir))
        rc = -EACCES;
    char *buf = rc == 0 ? malloc(size) : NULL;
    if (rc == 0 && buf == NULL)
        rc = -ENOMEM;
    if (rc < 0) {
        if (fs->writable)
            pthread_rwlock_unlock(&fs->tree);
        lfs_reply_err(req, fs, op, -rc);
        return;
    }
    size_t used = 0;
    if (dir.on && dir.on->has_upper) {
        if (dir.on->ds == NULL)
            (void)node_load_dir(fs, dir.on);
        readdir_merged(req, fs, &dir, buf, size, off, plus, &used);
    } else {
        rc = readdir_index(req, fs, ino, &fs->ix.nodes[dir.lower], buf, size, off, plus, &used);
    }
    if (fs->writable)
        pthread_rwlock_unlock(&fs->tree);
    if (rc < 0)
        lfs_reply_err(req, fs, op, -rc);
    else
        fuse_reply_buf(req, buf, used);
    free(buf);
}
