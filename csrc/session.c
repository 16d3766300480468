/* session.c: the read-only merged mount served entirely in C by a libfuse low-level session.
 *
 * What it does: `FuseSession(index, layer_dirs, mountpoint, options, timeout, threads)` maps the
 * merged index (merge.c), opens one O_PATH fd per layer, creates and mounts a libfuse session;
 * `loop()` serves it until the kernel ends the connection or `exit()` is called.  Every request
 * of a read-only mount is answered here from the index (lookup, getattr, readdir(plus), readlink,
 * getxattr, listxattr, statfs) or from one backing fd (open, read, release).  When the kernel
 * offers FUSE_CAP_NO_OPEN_SUPPORT / NO_OPENDIR_SUPPORT, OPEN and OPENDIR are answered ENOSYS once
 * and never sent again (nor RELEASE / RELEASEDIR); READs then name the inode, and its backing fd
 * comes from a bounded cache (fd_get: at most max_open fds, CLOCK eviction, pinned while a READ
 * uses it), so a tar of 100k files cannot run the daemon out of fds.
 *
 * Why (docs/fuse.rst "Why the C engine exists", measured with scripts/bench-mount): through pyfuse3
 * each request costs ~100 us of interpreter and trio dispatch, and pyfuse3 cannot ask the kernel to
 * cache listings (FOPEN_CACHE_DIR) or symlinks (FUSE_CAP_CACHE_SYMLINKS), nor reply to READ
 * with a splice from the backing fd (fuse_reply_data).  Owning fuse_req_t removes the dispatch
 * and those requests.  The pyfuse3 handlers (layerfs/_mount/handlers.py) stay as the second engine,
 * the base of the writable upper to come (its copy-up logic is Python).
 *
 * Cache policy: the timeouts and flags are the ones layerfs/_mount/cache.py documents (entry, attr and
 * negative timeouts passed in; keep_cache on files; cache_readdir + keep_cache on directories;
 * symlink caching; no OPEN/OPENDIR; readdirplus always) - the one policy, applied here by the
 * C engine; _mount/cache.py says what each setting saved, measured.
 *
 * GIL: released for the whole of loop(); request threads never touch Python objects.  Counters
 * are atomics read by stats().
 * Errors: requests answer an errno (never crash); constructor failures raise OSError (index,
 * layer dirs) or RuntimeError (libfuse could not create or mount the session).
 */
#define FUSE_USE_VERSION 312
#include "native.h"
#include "merge.h"

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <linux/openat2.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

enum lfs_op {
    OP_LOOKUP, OP_FORGET, OP_GETATTR, OP_READLINK, OP_OPEN, OP_READ, OP_RELEASE, OP_OPENDIR,
    OP_READDIR, OP_READDIRPLUS, OP_RELEASEDIR, OP_STATFS, OP_GETXATTR, OP_LISTXATTR, OP_COUNT
};
static const char *const op_names[OP_COUNT] = {
    "lookup", "forget", "getattr", "readlink", "open", "read", "release", "opendir",
    "readdir", "readdirplus", "releasedir", "statfs", "getxattr", "listxattr",
};

struct lfs_fs {
    struct lfs_index ix;
    int *layer_fds;
    int n_layers;
    int open_flags;
    double entry_timeout, attr_timeout, negative_timeout;
    /* no_open mode: READs carry the inode, never a file handle.  Backing fds are kept in a
     * bounded cache (CLOCK eviction): slot_of[ino] is the inode's slot or -1; a slot in use by
     * a READ is pinned (refs), so another thread never closes an fd under it. */
    struct fdslot { uint32_t ino; int fd; int refs; int recent; } *slots;
    int32_t *slot_of;
    uint32_t max_open, hand;
    pthread_mutex_t fd_lock;
    int no_open;     /* the kernel agreed to FUSE_CAP_NO_OPEN_SUPPORT: OPEN/RELEASE are not sent */
    int no_opendir;  /* ... and to FUSE_CAP_NO_OPENDIR_SUPPORT: OPENDIR/RELEASEDIR are not sent */
    unsigned long requests[OP_COUNT];
    unsigned long errors[OP_COUNT];
    long open_files;
};

#define COUNT(fs, op) __atomic_fetch_add(&(fs)->requests[op], 1, __ATOMIC_RELAXED)

static int reply_err(fuse_req_t req, struct lfs_fs *fs, enum lfs_op op, int err)
{
    if (err)
        __atomic_fetch_add(&fs->errors[op], 1, __ATOMIC_RELAXED);
    return fuse_reply_err(req, err);
}

static void fill_stat(fuse_ino_t ino, const struct lfs_node *n, struct stat *st)
{
    memset(st, 0, sizeof *st);
    st->st_ino = ino;
    st->st_mode = n->mode;
    st->st_nlink = n->nlink;
    st->st_uid = n->uid;
    st->st_gid = n->gid;
    st->st_rdev = n->rdev;
    st->st_size = (off_t)n->size;
    st->st_blocks = (blkcnt_t)n->blocks;
    st->st_blksize = 4096;
    st->st_atim.tv_sec = n->atime_ns / 1000000000LL;
    st->st_atim.tv_nsec = n->atime_ns % 1000000000LL;
    st->st_mtim.tv_sec = n->mtime_ns / 1000000000LL;
    st->st_mtim.tv_nsec = n->mtime_ns % 1000000000LL;
    st->st_ctim.tv_sec = n->ctime_ns / 1000000000LL;
    st->st_ctim.tv_nsec = n->ctime_ns % 1000000000LL;
    if (st->st_atim.tv_nsec < 0) { st->st_atim.tv_nsec += 1000000000LL; st->st_atim.tv_sec--; }
    if (st->st_mtim.tv_nsec < 0) { st->st_mtim.tv_nsec += 1000000000LL; st->st_mtim.tv_sec--; }
    if (st->st_ctim.tv_nsec < 0) { st->st_ctim.tv_nsec += 1000000000LL; st->st_ctim.tv_sec--; }
}

static void fill_entry(struct lfs_fs *fs, fuse_ino_t ino, const struct lfs_node *n,
                       struct fuse_entry_param *e)
{
    memset(e, 0, sizeof *e);
    e->ino = ino;
    e->generation = 1;
    e->entry_timeout = fs->entry_timeout;
    e->attr_timeout = fs->attr_timeout;
    fill_stat(ino, n, &e->attr);
}

/* The node's path relative to its layer, into buf (size PATH_MAX).  Returns 0 or -ENAMETOOLONG. */
static int node_path(const struct lfs_index *ix, fuse_ino_t ino, char *buf, size_t size)
{
    size_t len = 0, depth = 0;
    for (uint64_t i = ino; i != LFS_ROOT_INO; i = ix->nodes[i].parent) {
        len += ix->nodes[i].name_len + 1;
        if (++depth > size / 2 || len > size) /* a loaded index is acyclic; this bounds the walk anyway */
            return -ENAMETOOLONG;
    }
    if (len == 0) {
        strcpy(buf, ".");
        return 0;
    }
    if (len > size)
        return -ENAMETOOLONG;
    size_t pos = len - 1;
    buf[pos] = '\0';
    for (uint64_t i = ino; i != LFS_ROOT_INO; i = ix->nodes[i].parent) {
        const struct lfs_node *m = &ix->nodes[i];
        if (pos != len - 1)
            buf[--pos] = '/';
        pos -= m->name_len;
        memcpy(buf + pos, ix->blob + m->name_off, m->name_len);
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------- */

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
    /* Each capability only if the kernel offers it (libfuse passthrough_ll's habit). */
    if (conn->capable & FUSE_CAP_CACHE_SYMLINKS)
        conn->want |= FUSE_CAP_CACHE_SYMLINKS;
    if (conn->capable & FUSE_CAP_SPLICE_WRITE)
        conn->want |= FUSE_CAP_SPLICE_WRITE;
    if (conn->capable & FUSE_CAP_PARALLEL_DIROPS)
        conn->want |= FUSE_CAP_PARALLEL_DIROPS;
    if (conn->capable & FUSE_CAP_READDIRPLUS)
        conn->want |= FUSE_CAP_READDIRPLUS;
    /* Always READDIRPLUS, never READDIRPLUS_AUTO: with AUTO the kernel sends plain READDIR for
     * every chunk after the first unless a lookup happened in the directory meanwhile, so a
     * program that lists a whole directory before it stats the entries (tar, ls -l, rsync)
     * then sends one LOOKUP per entry.  Measured on the 25k-entry bench image, cold: tar 34,082
     * requests (9,434 lookups) -> 24,682 (none); find 2,816 -> 2,755.  Plus listings are cached
     * (FOPEN_CACHE_DIR) like plain ones, so warm runs are unchanged. */
    conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
    /* No OPEN/RELEASE round trips: the first OPEN answers ENOSYS, the kernel stops sending them
     * and READs carry the inode; fds are then kept per inode (open_backing). */
    struct lfs_fs *fs = userdata;
    if (conn->capable & FUSE_CAP_NO_OPEN_SUPPORT) {
        conn->want |= FUSE_CAP_NO_OPEN_SUPPORT;
        fs->no_open = 1;
    }
    /* No OPENDIR/RELEASEDIR round trips either: the first OPENDIR answers ENOSYS.  The kernel
     * then opens directories with FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR by itself (fs/fuse/file.c
     * fuse_file_open, "Default for no-open"), so listings stay cached, and a warm find sends no
     * request at all (checked by tests/test_mount.py and the bench's request counts). */
    if (conn->capable & FUSE_CAP_NO_OPENDIR_SUPPORT) {
        conn->want |= FUSE_CAP_NO_OPENDIR_SUPPORT;
        fs->no_opendir = 1;
    }
    conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
    conn->max_readahead = 1 << 20;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_LOOKUP);
    const struct lfs_node *dir = lfs_node(&fs->ix, parent);
    if (dir == NULL) {
        reply_err(req, fs, OP_LOOKUP, ESTALE);
        return;
    }
    if ((dir->mode & S_IFMT) != S_IFDIR) {
        reply_err(req, fs, OP_LOOKUP, ENOTDIR);
        return;
    }
    size_t len = strlen(name);
    if (len > LFS_NAME_MAX) {
        reply_err(req, fs, OP_LOOKUP, ENAMETOOLONG);
        return;
    }
    uint32_t ino;
    if (strcmp(name, ".") == 0)
        ino = (uint32_t)parent;
    else if (strcmp(name, "..") == 0)
        ino = dir->parent;
    else
        ino = lfs_lookup(&fs->ix, dir, name, len);
    struct fuse_entry_param e;
    if (ino == 0) { /* a negative entry the kernel may cache (_mount/cache.py) */
        memset(&e, 0, sizeof e);
        e.entry_timeout = fs->negative_timeout;
        fuse_reply_entry(req, &e);
        return;
    }
    fill_entry(fs, ino, &fs->ix.nodes[ino], &e);
    fuse_reply_entry(req, &e);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_FORGET);
    fuse_reply_none(req); /* index nodes live as long as the mount */
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_FORGET);
    fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_GETATTR);
    const struct lfs_node *n = lfs_node(&fs->ix, ino);
    if (n == NULL) {
        reply_err(req, fs, OP_GETATTR, ESTALE);
        return;
    }
    struct stat st;
    fill_stat(ino, n, &st);
    fuse_reply_attr(req, &st, fs->attr_timeout);
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_READLINK);
    const struct lfs_node *n = lfs_node(&fs->ix, ino);
    if (n == NULL || (n->mode & S_IFMT) != S_IFLNK) {
        reply_err(req, fs, OP_READLINK, n == NULL ? ESTALE : EINVAL);
        return;
    }
    char *target = malloc(n->target_len + 1);
    if (target == NULL) {
        reply_err(req, fs, OP_READLINK, ENOMEM);
        return;
    }
    memcpy(target, fs->ix.blob + n->target_off, n->target_len);
    target[n->target_len] = '\0';
    fuse_reply_readlink(req, target);
    free(target);
}

/* Open the backing file of a regular-file node read-only.  Returns the fd or -errno. */
static int open_backing(struct lfs_fs *fs, fuse_ino_t ino, const struct lfs_node *n);

/* The backing fd of ino for one READ (no_open mode), from the bounded fd cache; *slot is its
 * pinned slot, or -1 for an fd the caller closes (every slot pinned).  Returns fd or -errno. */
static int fd_get(struct lfs_fs *fs, fuse_ino_t ino, const struct lfs_node *n, int *slot)
{
    pthread_mutex_lock(&fs->fd_lock);
    int s = fs->slot_of[ino];
    if (s >= 0) {
        fs->slots[s].refs++;
        fs->slots[s].recent = 1;
        int cached = fs->slots[s].fd;
        pthread_mutex_unlock(&fs->fd_lock);
        *slot = s;
        return cached;
    }
    pthread_mutex_unlock(&fs->fd_lock);
    int fd = open_backing(fs, ino, n); /* outside the lock: it walks a path */
    if (fd < 0)
        return fd;
    int victim_fd = -1;
    pthread_mutex_lock(&fs->fd_lock);
    s = fs->slot_of[ino];
    if (s >= 0) { /* another thread opened it meanwhile */
        fs->slots[s].refs++;
        fs->slots[s].recent = 1;
        int cached = fs->slots[s].fd;
        pthread_mutex_unlock(&fs->fd_lock);
        close(fd);
        *slot = s;
        return cached;
    }
    *slot = -1;
    for (uint32_t tries = 0; tries < 2 * fs->max_open; tries++) { /* CLOCK: a second chance */
        struct fdslot *v = &fs->slots[fs->hand];
        uint32_t here = fs->hand;
        fs->hand = (fs->hand + 1) % fs->max_open;
        if (v->fd >= 0 && (v->refs > 0 || v->recent)) {
            v->recent = 0;
            continue;
        }
        if (v->fd >= 0) {
            victim_fd = v->fd;
            fs->slot_of[v->ino] = -1;
        } else {
            __atomic_fetch_add(&fs->open_files, 1, __ATOMIC_RELAXED);
        }
        *v = (struct fdslot){(uint32_t)ino, fd, 1, 1};
        fs->slot_of[ino] = (int32_t)here;
        *slot = (int)here;
        break;
    }
    pthread_mutex_unlock(&fs->fd_lock);
    if (victim_fd >= 0)
        close(victim_fd);
    return fd;
}

static void fd_put(struct lfs_fs *fs, int slot, int fd)
{
    if (slot < 0) {
        close(fd);
        return;
    }
    pthread_mutex_lock(&fs->fd_lock);
    fs->slots[slot].refs--;
    pthread_mutex_unlock(&fs->fd_lock);
}

/* openat2(2) confined to the layer: RESOLVE_IN_ROOT keeps "..", absolute names and symlinks inside
 * the layer's root, and RESOLVE_NO_SYMLINKS refuses any symlink on the way.  A layer of the store is
 * immutable, but a `-o lowerdir=` directory belongs to the caller and may change under a mount
 * (a directory swapped for a symlink to elsewhere): the daemon, root with allow_other, must never
 * read outside the layer then.  The index descends only through real directories, so a valid
 * layer never meets a symlink here. */
static int open_in_layer(int layer_fd, const char *path, int flags)
{
    struct open_how how = {
        .flags = (uint64_t)flags,
        .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS,
    };
    return (int)syscall(SYS_openat2, layer_fd, path, &how, sizeof how);
}

static int open_backing(struct lfs_fs *fs, fuse_ino_t ino, const struct lfs_node *n)
{
    char path[PATH_MAX];
    int rc = node_path(&fs->ix, ino, path, sizeof path);
    if (rc < 0)
        return rc;
    int fd = open_in_layer(fs->layer_fds[n->layer], path, fs->open_flags);
    if (fd < 0 && errno == EPERM && (fs->open_flags & O_NOATIME))
        fd = open_in_layer(fs->layer_fds[n->layer], path, fs->open_flags & ~O_NOATIME);
    return fd < 0 ? -errno : fd;
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_OPEN);
    const struct lfs_node *n = lfs_node(&fs->ix, ino);
    if (n == NULL) {
        reply_err(req, fs, OP_OPEN, ESTALE);
        return;
    }
    if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & (O_TRUNC | O_APPEND | O_CREAT))) {
        reply_err(req, fs, OP_OPEN, EROFS);
        return;
    }
    if ((n->mode & S_IFMT) != S_IFREG) {
        reply_err(req, fs, OP_OPEN, (n->mode & S_IFMT) == S_IFDIR ? EISDIR : EINVAL);
        return;
    }
    if (fs->no_open && fs->slots) {
        fuse_reply_err(req, ENOSYS); /* not an error: the kernel now stops sending OPEN */
        return;
    }
    int fd = open_backing(fs, ino, n);
    if (fd < 0) {
        reply_err(req, fs, OP_OPEN, -fd);
        return;
    }
    fi->fh = (uint64_t)fd;
    fi->keep_cache = 1;
    fi->noflush = 1;
    __atomic_fetch_add(&fs->open_files, 1, __ATOMIC_RELAXED);
    if (fuse_reply_open(req, fi) == -ENOENT) { /* the open was interrupted */
        close(fd);
        __atomic_fetch_sub(&fs->open_files, 1, __ATOMIC_RELAXED);
    }
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_READ);
    int fd = (int)fi->fh, slot = -1;
    if (fs->no_open && fi->fh == 0) {
        const struct lfs_node *n = lfs_node(&fs->ix, ino);
        if (n == NULL || (n->mode & S_IFMT) != S_IFREG) {
            reply_err(req, fs, OP_READ, n == NULL ? ESTALE : EINVAL);
            return;
        }
        fd = fd_get(fs, ino, n, &slot);
        if (fd < 0) {
            reply_err(req, fs, OP_READ, -fd);
            return;
        }
    }
    struct fuse_bufvec buf = FUSE_BUFVEC_INIT(size);
    buf.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
    buf.buf[0].fd = fd;
    buf.buf[0].pos = off;
    int rc = fuse_reply_data(req, &buf, 0); /* FUSE_BUF_SPLICE_MOVE needs FUSE_CAP_SPLICE_MOVE: not asked for */
    if (rc < 0)
        __atomic_fetch_add(&fs->errors[OP_READ], 1, __ATOMIC_RELAXED);
    if (fs->no_open && fi->fh == 0)
        fd_put(fs, slot, fd);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_RELEASE);
    close((int)fi->fh);
    __atomic_fetch_sub(&fs->open_files, 1, __ATOMIC_RELAXED);
    fuse_reply_err(req, 0);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_OPENDIR);
    const struct lfs_node *n = lfs_node(&fs->ix, ino);
    if (n == NULL || (n->mode & S_IFMT) != S_IFDIR) {
        reply_err(req, fs, OP_OPENDIR, n == NULL ? ESTALE : ENOTDIR);
        return;
    }
    if (fs->no_opendir) {
        fuse_reply_err(req, ENOSYS); /* not an error: the kernel stops sending OPENDIR */
        return;
    }
    fi->fh = ino;
    fi->cache_readdir = 1; /* the listing never changes: the kernel may keep it */
    fi->keep_cache = 1;
    fuse_reply_open(req, fi);
}

/* Offsets: 0 = ".", 1 = "..", 2 + i = child i (stable across opens and mounts). */
static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, int plus)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    enum lfs_op op = plus ? OP_READDIRPLUS : OP_READDIR;
    COUNT(fs, op);
    const struct lfs_node *dir = lfs_node(&fs->ix, ino);
    if (dir == NULL || (dir->mode & S_IFMT) != S_IFDIR) {
        reply_err(req, fs, op, dir == NULL ? ESTALE : ENOTDIR);
        return;
    }
    char *buf = malloc(size);
    if (buf == NULL) {
        reply_err(req, fs, op, ENOMEM);
        return;
    }
    size_t used = 0;
    uint64_t total = (uint64_t)dir->n_dents + 2;
    for (uint64_t pos = (uint64_t)(off < 0 ? 0 : off); pos < total; pos++) {
        const char *name;
        char small[3];
        fuse_ino_t child;
        if (pos < 2) {
            small[0] = '.';
            small[1] = pos == 1 ? '.' : '\0';
            small[2] = '\0';
            name = small;
            child = pos == 0 ? ino : dir->parent;
        } else {
            const struct lfs_dent *d = &fs->ix.dents[dir->first_dent + pos - 2];
            /* names in the blob are not NUL-terminated: copy (NAME_MAX + 1) */
            static __thread char namebuf[LFS_NAME_MAX + 1];
            memcpy(namebuf, fs->ix.blob + d->name_off, d->name_len);
            namebuf[d->name_len] = '\0';
            name = namebuf;
            child = d->ino;
        }
        const struct lfs_node *cn = &fs->ix.nodes[child];
        size_t n;
        if (plus) {
            struct fuse_entry_param e;
            fill_entry(fs, child, cn, &e);
            n = fuse_add_direntry_plus(req, buf + used, size - used, name, &e, (off_t)pos + 1);
        } else {
            struct stat st = {.st_ino = child, .st_mode = cn->mode};
            n = fuse_add_direntry(req, buf + used, size - used, name, &st, (off_t)pos + 1);
        }
        if (n > size - used)
            break;
        used += n;
    }
    fuse_reply_buf(req, buf, used);
    free(buf);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
    do_readdir(req, ino, size, off, 0);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                           struct fuse_file_info *fi)
{
    do_readdir(req, ino, size, off, 1);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_RELEASEDIR);
    fuse_reply_err(req, 0);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_STATFS);
    struct statvfs sv;
    if (fstatvfs(fs->layer_fds[fs->n_layers - 1], &sv) < 0) {
        reply_err(req, fs, OP_STATFS, errno);
        return;
    }
    sv.f_namemax = LFS_NAME_MAX; /* docs/overlay.rst "Name length": 255, like the kernel overlay */
    fuse_reply_statfs(req, &sv);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_GETXATTR);
    const struct lfs_node *n = lfs_node(&fs->ix, ino);
    if (n == NULL) {
        reply_err(req, fs, OP_GETXATTR, ESTALE);
        return;
    }
    size_t want = strlen(name);
    uint64_t off = n->xattr_off, end = (uint64_t)n->xattr_off + n->xattr_len;
    while (off < end) {
        uint32_t nl, vl;
        memcpy(&nl, fs->ix.blob + off, 4);
        memcpy(&vl, fs->ix.blob + off + 4, 4);
        if (nl == want && memcmp(fs->ix.blob + off + 8, name, nl) == 0) {
            if (size == 0)
                fuse_reply_xattr(req, vl);
            else if (vl > size)
                reply_err(req, fs, OP_GETXATTR, ERANGE);
            else
                fuse_reply_buf(req, fs->ix.blob + off + 8 + nl, vl);
            return;
        }
        off += 8 + (uint64_t)nl + vl;
    }
    reply_err(req, fs, OP_GETXATTR, ENODATA);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_LISTXATTR);
    const struct lfs_node *n = lfs_node(&fs->ix, ino);
    if (n == NULL) {
        reply_err(req, fs, OP_LISTXATTR, ESTALE);
        return;
    }
    size_t total = 0;
    uint64_t off, end = (uint64_t)n->xattr_off + n->xattr_len;
    for (off = n->xattr_off; off < end;) {
        uint32_t nl, vl;
        memcpy(&nl, fs->ix.blob + off, 4);
        memcpy(&vl, fs->ix.blob + off + 4, 4);
        total += nl + 1;
        off += 8 + (uint64_t)nl + vl;
    }
    if (size == 0) {
        fuse_reply_xattr(req, total);
        return;
    }
    if (total > size) {
        reply_err(req, fs, OP_LISTXATTR, ERANGE);
        return;
    }
    char *buf = malloc(total ? total : 1);
    if (buf == NULL) {
        reply_err(req, fs, OP_LISTXATTR, ENOMEM);
        return;
    }
    size_t pos = 0;
    for (off = n->xattr_off; off < end;) {
        uint32_t nl, vl;
        memcpy(&nl, fs->ix.blob + off, 4);
        memcpy(&vl, fs->ix.blob + off + 4, 4);
        memcpy(buf + pos, fs->ix.blob + off + 8, nl);
        buf[pos + nl] = '\0';
        pos += nl + 1;
        off += 8 + (uint64_t)nl + vl;
    }
    fuse_reply_buf(req, buf, total);
    free(buf);
}

static const struct fuse_lowlevel_ops lfs_ops = {
    .init = op_init,
    .lookup = op_lookup,
    .forget = op_forget,
    .forget_multi = op_forget_multi,
    .getattr = op_getattr,
    .readlink = op_readlink,
    .open = op_open,
    .read = op_read,
    .release = op_release,
    .opendir = op_opendir,
    .readdir = op_readdir,
    .readdirplus = op_readdirplus,
    .releasedir = op_releasedir,
    .statfs = op_statfs,
    .getxattr = op_getxattr,
    .listxattr = op_listxattr,
};

/* ------------------------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    struct lfs_fs fs;
    struct fuse_session *se;
    int mounted;
    int looping;            /* loop() runs (in loop_thread); set and cleared with the GIL held */
    pthread_t loop_thread;
    unsigned threads;
} SessionObject;

/* The signal exit() sends to the loop's thread: its handler does nothing, and it is installed
 * without SA_RESTART, so the read(2) of the single-threaded loop, or the sem_wait(3) of the
 * multi-threaded loop's main thread, returns EINTR and the loop sees fuse_session_exited(). */
#define LFS_WAKE_SIGNAL SIGUSR2

static void wake_handler(int sig) { (void)sig; }

static int install_wake_handler(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = wake_handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: interrupt the blocking call */
    return sigaction(LFS_WAKE_SIGNAL, &sa, NULL);
}

static void session_free(SessionObject *self)
{
    if (self->se) {
        if (self->mounted)
            fuse_session_unmount(self->se);
        fuse_session_destroy(self->se);
        self->se = NULL;
        self->mounted = 0;
    }
    if (self->fs.layer_fds) {
        for (int i = 0; i < self->fs.n_layers; i++)
            if (self->fs.layer_fds[i] >= 0)
                close(self->fs.layer_fds[i]);
        free(self->fs.layer_fds);
        self->fs.layer_fds = NULL;
    }
    if (self->fs.slots) {
        for (uint32_t i = 0; i < self->fs.max_open; i++)
            if (self->fs.slots[i].fd >= 0)
                close(self->fs.slots[i].fd);
        free(self->fs.slots);
        self->fs.slots = NULL;
        pthread_mutex_destroy(&self->fs.fd_lock);
    }
    free(self->fs.slot_of);
    self->fs.slot_of = NULL;
    lfs_index_close(&self->fs.ix);
}

static int Session_init(SessionObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"index", "layer_dirs", "mountpoint", "options", "entry_timeout",
                             "attr_timeout", "negative_timeout", "threads", "debug", "max_open", NULL};
    PyObject *index_path = NULL, *layers, *mnt = NULL;
    const char *options;
    double et, at, nt;
    unsigned threads = 1, max_open = 4096;
    int debug = 0;
    if (self->se != NULL || self->looping) { /* never free a session that may be serving */
        PyErr_SetString(PyExc_RuntimeError, "FuseSession is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&OO&sddd|IpI", kwlist, PyUnicode_FSConverter, &index_path,
                                     &layers, PyUnicode_FSConverter, &mnt, &options, &et, &at, &nt,
                                     &threads, &debug, &max_open))
        return -1;
    session_free(self);
    memset(&self->fs, 0, sizeof self->fs);
    self->threads = threads ? threads : 1;
    self->fs.entry_timeout = et;
    self->fs.attr_timeout = at;
    self->fs.negative_timeout = nt;
    self->fs.open_flags = O_RDONLY | O_NOFOLLOW | O_CLOEXEC | (geteuid() == 0 ? O_NOATIME : 0);
    int rc = lfs_index_open(&self->fs.ix, PyBytes_AS_STRING(index_path));
    if (rc < 0) {
        if (rc == -EINVAL)
            PyErr_Format(PyExc_ValueError, "%s: not a layerfs merged index", PyBytes_AS_STRING(index_path));
        else {
            errno = -rc;
            PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, index_path);
        }
        goto fail;
    }
    {   /* the fd cache holds at most max_open fds, and never more than half the fd limit */
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
            rl.rlim_cur = rl.rlim_max;
            setrlimit(RLIMIT_NOFILE, &rl);
        }
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && max_open > rl.rlim_cur / 2)
            max_open = (unsigned)(rl.rlim_cur / 2);
        if (max_open < 1)
            max_open = 1;
    }
    self->fs.max_open = max_open;
    self->fs.slot_of = malloc(sizeof(int32_t) * self->fs.ix.n_nodes);
    self->fs.slots = malloc(sizeof(struct fdslot) * max_open);
    pthread_mutex_init(&self->fs.fd_lock, NULL);
    if (self->fs.slot_of == NULL || self->fs.slots == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    for (uint32_t i = 0; i < self->fs.ix.n_nodes; i++)
        self->fs.slot_of[i] = -1;
    for (uint32_t i = 0; i < max_open; i++)
        self->fs.slots[i] = (struct fdslot){0, -1, 0, 0};
    PyObject *seq = PySequence_Fast(layers, "layer_dirs must be a sequence");
    if (seq == NULL)
        goto fail;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n != (Py_ssize_t)self->fs.ix.h->n_layers || n == 0) {
        PyErr_Format(PyExc_ValueError, "index has %u layers, %zd given", self->fs.ix.h->n_layers, n);
        Py_DECREF(seq);
        goto fail;
    }
    self->fs.layer_fds = malloc(sizeof(int) * n);
    if (self->fs.layer_fds == NULL) {
        PyErr_NoMemory();
        Py_DECREF(seq);
        goto fail;
    }
    self->fs.n_layers = (int)n;
    for (Py_ssize_t i = 0; i < n; i++)
        self->fs.layer_fds[i] = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *p = NULL;
        if (!PyUnicode_FSConverter(PySequence_Fast_GET_ITEM(seq, i), &p)) {
            Py_DECREF(seq);
            goto fail;
        }
        self->fs.layer_fds[i] = open(PyBytes_AS_STRING(p), O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (self->fs.layer_fds[i] < 0) {
            PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, p);
            Py_DECREF(p);
            Py_DECREF(seq);
            goto fail;
        }
        Py_DECREF(p);
    }
    Py_DECREF(seq);

    char *argv[5] = {"layerfs", "-o", (char *)options, debug ? "-d" : NULL, NULL};
    struct fuse_args fargs = FUSE_ARGS_INIT(debug ? 4 : 3, argv);
    self->se = fuse_session_new(&fargs, &lfs_ops, sizeof lfs_ops, &self->fs);
    fuse_opt_free_args(&fargs);
    if (self->se == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "fuse_session_new failed (bad mount options?)");
        goto fail;
    }
    Py_BEGIN_ALLOW_THREADS
    rc = fuse_session_mount(self->se, PyBytes_AS_STRING(mnt));
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        PyErr_SetString(PyExc_RuntimeError, "fuse_session_mount failed");
        goto fail;
    }
    self->mounted = 1;
    Py_DECREF(index_path);
    Py_DECREF(mnt);
    return 0;
fail:
    session_free(self);
    Py_XDECREF(index_path);
    Py_XDECREF(mnt);
    return -1;
}

static void Session_dealloc(SessionObject *self)
{
    if (!self->looping)
        session_free(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Session_loop(SessionObject *self, PyObject *unused)
{
    if (self->se == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "session closed");
        return NULL;
    }
    if (self->looping) {
        PyErr_SetString(PyExc_RuntimeError, "the session loop already runs");
        return NULL;
    }
    int rc;
    self->looping = 1;
    self->loop_thread = pthread_self();
    Py_BEGIN_ALLOW_THREADS
    if (self->threads > 1) {
        struct fuse_loop_config *cfg = fuse_loop_cfg_create();
        if (cfg == NULL) {
            rc = -ENOMEM;
        } else {
            fuse_loop_cfg_set_max_threads(cfg, self->threads);
            fuse_loop_cfg_set_idle_threads(cfg, self->threads);
            rc = fuse_session_loop_mt(self->se, cfg);
            fuse_loop_cfg_destroy(cfg);
        }
    } else {
        rc = fuse_session_loop(self->se);
    }
    Py_END_ALLOW_THREADS
    self->looping = 0;
    return PyLong_FromLong(rc);
}

/* libfuse's order (passthrough_hp.cc): exit() only asks the loop to end; loop() returns once the
 * request threads are joined; then unmount(); then close().  Unmounting while requests are served
 * would close the session fd under the workers, and the number could be reused by a backing file. */
static PyObject *Session_exit(SessionObject *self, PyObject *unused)
{
    if (self->se) {
        fuse_session_exit(self->se);
        if (self->looping) {
            int err = pthread_kill(self->loop_thread, LFS_WAKE_SIGNAL);
            if (err != 0) {
                errno = err;
                return PyErr_SetFromErrno(PyExc_OSError);
            }
        }
    }
    Py_RETURN_NONE;
}

static PyObject *Session_unmount(SessionObject *self, PyObject *unused)
{
    if (self->looping) {
        PyErr_SetString(PyExc_RuntimeError, "unmount() while the loop runs: call exit() and wait for loop()");
        return NULL;
    }
    if (self->se && self->mounted) {
        Py_BEGIN_ALLOW_THREADS
        fuse_session_unmount(self->se);
        Py_END_ALLOW_THREADS
        self->mounted = 0;
    }
    Py_RETURN_NONE;
}

static PyObject *Session_close(SessionObject *self, PyObject *unused)
{
    if (self->looping) {
        PyErr_SetString(PyExc_RuntimeError, "the session loop still runs");
        return NULL;
    }
    session_free(self);
    Py_RETURN_NONE;
}

static PyObject *Session_stats(SessionObject *self, PyObject *unused)
{
    PyObject *req = PyDict_New(), *err = PyDict_New();
    if (req == NULL || err == NULL)
        goto fail;
    for (int i = 0; i < OP_COUNT; i++) {
        unsigned long r = __atomic_load_n(&self->fs.requests[i], __ATOMIC_RELAXED);
        unsigned long e = __atomic_load_n(&self->fs.errors[i], __ATOMIC_RELAXED);
        PyObject *v;
        if (r) {
            v = PyLong_FromUnsignedLong(r);
            if (v == NULL || PyDict_SetItemString(req, op_names[i], v) < 0) { Py_XDECREF(v); goto fail; }
            Py_DECREF(v);
        }
        if (e) {
            v = PyLong_FromUnsignedLong(e);
            if (v == NULL || PyDict_SetItemString(err, op_names[i], v) < 0) { Py_XDECREF(v); goto fail; }
            Py_DECREF(v);
        }
    }
    return Py_BuildValue("(NNl)", req, err, __atomic_load_n(&self->fs.open_files, __ATOMIC_RELAXED));
fail:
    Py_XDECREF(req);
    Py_XDECREF(err);
    return NULL;
}

static PyMethodDef Session_methods[] = {
    {"loop", (PyCFunction)Session_loop, METH_NOARGS,
     "loop() -> status: serve requests (GIL released) until the connection ends or exit()"},
    {"exit", (PyCFunction)Session_exit, METH_NOARGS,
     "ask the loop to end: it returns once the requests in progress are answered (thread-safe)"},
    {"unmount", (PyCFunction)Session_unmount, METH_NOARGS,
     "unmount (lazily, as libfuse does); only once loop() has returned"},
    {"close", (PyCFunction)Session_close, METH_NOARGS, "unmount if needed and free the session"},
    {"stats", (PyCFunction)Session_stats, METH_NOARGS,
     "stats() -> (requests per opcode, errors per opcode, open files)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SessionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "layerfs._native.FuseSession",
    .tp_basicsize = sizeof(SessionObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "FuseSession(index, layer_dirs, mountpoint, options, entry_timeout, attr_timeout, "
              "negative_timeout, threads=1, debug=False): a mounted read-only merged session",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Session_init,
    .tp_dealloc = (destructor)Session_dealloc,
    .tp_methods = Session_methods,
};

int layerfs_init_session(PyObject *module)
{
    if (install_wake_handler() < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    if (PyType_Ready(&SessionType) < 0)
        return -1;
    Py_INCREF(&SessionType);
    if (PyModule_AddObject(module, "FuseSession", (PyObject *)&SessionType) < 0) {
        Py_DECREF(&SessionType);
        return -1;
    }
    return 0;
}
