/* session.c: the mount served entirely in C by a libfuse low-level session: the Python type
 * FuseSession, the set-up of a mount, its loop and its stop.
 *
 * What it does: `FuseSession(index, layer_dirs, mountpoint, options, timeouts, threads, ...,
 * upper=None, work=None, ..., uidmap=None, gidmap=None)` maps the merged index (merge.c), opens one
 * O_PATH fd per layer (and, for a writable mount, the upper directory and the work directory),
 * takes the ID mappings (idmap.h), creates and mounts a libfuse session;
 * `loop()` serves it until the kernel ends the connection or `exit()` is called.  The requests are
 * served by the files named in fs.h: a read-only mount, and every untouched lower object of a
 * writable one, from the index in memory; a writable mount's changes in its upper directory, in the
 * kernel overlay's format.
 *
 * Why (docs/fuse.rst "Why the C engine exists", measured with scripts/bench-mount): through pyfuse3
 * each request costs ~100 us of interpreter and trio dispatch, and pyfuse3 cannot ask the kernel to
 * cache listings (FOPEN_CACHE_DIR) or symlinks (FUSE_CAP_CACHE_SYMLINKS), nor reply to READ
 * with a splice from the backing fd (fuse_reply_data).  Owning fuse_req_t removes the dispatch
 * and those requests.  The pyfuse3 handlers (layerfs/_mount/handlers.py) stay as the read-only
 * reference engine that this one is tested against.
 *
 * Cache policy: the timeouts and flags are the ones layerfs/_mount/cache.py documents (entry, attr and
 * negative timeouts passed in; keep_cache on files; cache_readdir + keep_cache on directories;
 * symlink caching; no OPEN/OPENDIR; readdirplus always; no writeback cache) - the one policy,
 * applied here by the C engine; _mount/cache.py says what each setting saved, measured.
 *
 * GIL: released for the whole of loop(); request threads never touch Python objects.  Counters
 * are atomics read by stats().
 * Errors: requests answer an errno (never crash); constructor failures raise OSError (index,
 * layer dirs, upper, work) or RuntimeError (libfuse could not create or mount the session).
 */
#include "native.h"
#include "fs.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const char *const lfs_op_names[OP_COUNT] = {
    "lookup", "forget", "getattr", "setattr", "readlink", "mknod", "mkdir", "unlink", "rmdir",
    "symlink", "rename", "link", "open", "read", "write", "flush", "release", "fsync",
    "opendir", "readdir", "readdirplus", "releasedir", "fsyncdir", "statfs", "setxattr",
    "getxattr", "listxattr", "removexattr", "create", "fallocate", "copyup",
};

int lfs_reply_err(fuse_req_t req, struct lfs_fs *fs, enum lfs_op op, int err)
{
    if (err)
        __atomic_fetch_add(&fs->errors[op], 1, __ATOMIC_RELAXED);
    return fuse_reply_err(req, err);
}

/* Called from request handlers: unlike an entry invalidation, which takes the directory's lock in
 * the kernel and so may wait for a request we serve, an inode invalidation "will never block" when
 * no page is dirty (fuse_lowlevel.h), and no page is dirty without a writeback cache.  It drops
 * the attributes and the page cache, which holds the cached listing. */
void notify_inval_dir(struct lfs_fs *fs, uint64_t dir)
{
    if (fs->se == NULL)
        return;
    int rc = fuse_lowlevel_notify_inval_inode(fs->se, dir, 0, 0);
    if (rc < 0 && rc != -ENOENT) /* ENOENT: the kernel does not have it, so nothing is cached */
        __atomic_fetch_add(&fs->errors[OP_COPYUP], 1, __ATOMIC_RELAXED);
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
    struct lfs_fs *fs = userdata;
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
     * and READs and WRITEs carry the inode; fds are then kept per inode (fdcache.c). */
    if (conn->capable & FUSE_CAP_NO_OPEN_SUPPORT) {
        conn->want |= FUSE_CAP_NO_OPEN_SUPPORT;
        fs->no_open = 1;
    }
    /* No OPENDIR/RELEASEDIR round trips either: the first OPENDIR answers ENOSYS.  The kernel
     * then opens directories with FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR by itself (fs/fuse/file.c
     * fuse_file_open, "Default for no-open"), so listings stay cached, and a warm find sends no
     * request at all (checked by tests/test_mount.py and the bench's request counts).  On a
     * writable mount a change in a directory goes through the kernel, which drops that listing. */
    if (conn->capable & FUSE_CAP_NO_OPENDIR_SUPPORT) {
        conn->want |= FUSE_CAP_NO_OPENDIR_SUPPORT;
        fs->no_opendir = 1;
    }
    /* No writeback cache: writes and their times reach the upper at once (a kernel overlay mounted
     * on the same upper afterwards must show the same mtimes).  The kernel applies the umask and
     * clears setuid bits itself (no DONT_MASK, no HANDLE_KILLPRIV). */
    conn->want &= ~(FUSE_CAP_WRITEBACK_CACHE | FUSE_CAP_DONT_MASK | FUSE_CAP_HANDLE_KILLPRIV |
                    FUSE_CAP_ATOMIC_O_TRUNC);
    conn->max_readahead = 1 << 20;
    if (fs->writable)
        conn->max_write = 1 << 20; /* 1 MiB WRITEs: libfuse 3.14's buffer holds 256 pages */
}

static const struct fuse_lowlevel_ops lfs_ops_ro = {
    .init = op_init,
    .lookup = op_lookup,
    .forget = op_forget,
    .forget_multi = op_forget_multi,
    .getattr = op_getattr,
    .setattr = op_setattr,
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

static const struct fuse_lowlevel_ops lfs_ops_rw = {
    .init = op_init,
    .lookup = op_lookup,
    .forget = op_forget,
    .forget_multi = op_forget_multi,
    .getattr = op_getattr,
    .setattr = op_setattr,
    .readlink = op_readlink,
    .mknod = op_mknod,
    .mkdir = op_mkdir,
    .unlink = op_unlink,
    .rmdir = op_rmdir,
    .symlink = op_symlink,
    .rename = op_rename,
    .link = op_link,
    .open = op_open,
    .read = op_read,
    .write_buf = op_write_buf,
    /* no .flush: libfuse answers FLUSH with ENOSYS, and the kernel stops sending it (fc->no_flush,
     * fs/fuse/file.c fuse_flush): nothing is buffered here, writes reach the upper file at once,
     * and no lock operations are served (the kernel keeps POSIX locks itself).  With it, every
     * close(2) of a file cost a round trip on a writable mount: a warm tar of the bench image
     * sent 15,902 FLUSHes where the read-only mount sends no request at all. */
    .release = op_release,
    .fsync = op_fsync,
    .opendir = op_opendir,
    .readdir = op_readdir,
    .readdirplus = op_readdirplus,
    .releasedir = op_releasedir,
    .fsyncdir = op_fsyncdir,
    .statfs = op_statfs,
    .setxattr = op_setxattr,
    .getxattr = op_getxattr,
    .listxattr = op_listxattr,
    .removexattr = op_removexattr,
    .create = op_create,
    .fallocate = op_fallocate,
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
    struct lfs_fs *fs = &self->fs;
    if (fs->layer_fds) {
        for (int i = 0; i < fs->n_layers; i++)
            if (fs->layer_fds[i] >= 0)
                close(fs->layer_fds[i]);
        free(fs->layer_fds);
        fs->layer_fds = NULL;
    }
    fd_free(fs);
    node_free_all(fs);
    if (fs->writable) {
        pthread_rwlock_destroy(&fs->tree);
        fs->writable = 0;
    }
    if (fs->upper_fd >= 0)
        close(fs->upper_fd);
    if (fs->work_fd >= 0) {
        if (fs->shared_wo[0] != '\0') /* the whiteout new ones linked to (upper.c): the work dir is left empty */
            (void)unlinkat(fs->work_fd, fs->shared_wo, 0);
        fs->shared_wo[0] = '\0';
        close(fs->work_fd);
    }
    fs->upper_fd = fs->work_fd = -1;
    lfs_index_close(&fs->ix);
}

/* Raise what a lazy index answered (-errno): MemoryError for ENOMEM, else OSError naming `where`
 * (the path a failed system call was about) when there is one. */
static void raise_lazy(int rc, const char *where)
{
    errno = -rc;
    if (rc == -ENOMEM)
        PyErr_NoMemory();
    else if (where != NULL && where[0])
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, where);
    else
        PyErr_SetFromErrno(PyExc_OSError);
}

/* index=None: a lazily merged index of the layer dirs (merge.h, lfs_lazy_open).  Returns 0, or -1
 * with an exception set. */
static int lazy_open(struct lfs_index *ix, PyObject *layers)
{
    PyObject *seq = PySequence_Fast(layers, "layer_dirs must be a sequence");
    if (seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n < 1 || n > INT32_MAX) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, n < 1 ? "a merged tree needs at least one layer" : "too many layers");
        return -1;
    }
    PyObject **paths = calloc((size_t)n, sizeof *paths);
    const char **dirs = calloc((size_t)n, sizeof *dirs);
    int rc = 0;
    if (paths == NULL || dirs == NULL) {
        PyErr_NoMemory();
        rc = -1;
    }
    for (Py_ssize_t i = 0; rc == 0 && i < n; i++) {
        if (!PyUnicode_FSConverter(PySequence_Fast_GET_ITEM(seq, i), &paths[i]))
            rc = -1;
        else
            dirs[i] = PyBytes_AS_STRING(paths[i]);
    }
    char where[PATH_MAX] = "";
    if (rc == 0) {
        Py_BEGIN_ALLOW_THREADS
        rc = lfs_lazy_open(ix, dirs, (int)n, where, sizeof where);
        Py_END_ALLOW_THREADS
        if (rc < 0)
            raise_lazy(rc, where);
        rc = rc < 0 ? -1 : 0;
    }
    for (Py_ssize_t i = 0; paths && i < n; i++)
        Py_XDECREF(paths[i]);
    free(paths);
    free(dirs);
    Py_DECREF(seq);
    return rc;
}

/* One ID of an ID mapping argument: a Python int in [0, 2^32).  Returns 0, or -1 with
 * TypeError, ValueError or OverflowError set naming `what`. */
static int id_arg(PyObject *obj, const char *what, uint32_t *out)
{
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s: an ID must be an int", what);
        return -1;
    }
    unsigned long v = PyLong_AsUnsignedLong(obj); /* OverflowError for a negative int */
    if (v == (unsigned long)-1 && PyErr_Occurred())
        return -1;
    if (v > UINT32_MAX) {
        PyErr_Format(PyExc_ValueError, "%s: ID %lu is past 2^32 - 1", what, v);
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

/* An ID mapping argument into *out: None (the identity), or a tuple (overflow, ranges) where
 * ranges is a sequence of 1 to LFS_IDMAP_MAX tuples (container, host, size) that lfs_idmap_check
 * takes.  Returns 0, or -1 with TypeError or ValueError set naming `what`. */
static int idmap_arg(PyObject *obj, const char *what, struct lfs_idmap *out)
{
    memset(out, 0, sizeof *out);
    if (obj == Py_None)
        return 0;
    if (!PyTuple_Check(obj) || PyTuple_GET_SIZE(obj) != 2) {
        PyErr_Format(PyExc_TypeError, "%s: None or a tuple (overflow, ranges)", what);
        return -1;
    }
    if (id_arg(PyTuple_GET_ITEM(obj, 0), what, &out->overflow) < 0)
        return -1;
    PyObject *seq = PySequence_Fast(PyTuple_GET_ITEM(obj, 1), "an ID mapping's ranges must be a sequence");
    if (seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n < 1 || n > LFS_IDMAP_MAX) {
        PyErr_Format(PyExc_ValueError, "%s: 1 to %d ranges, %zd given", what, LFS_IDMAP_MAX, n);
        Py_DECREF(seq);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PySequence_Fast_GET_ITEM(seq, i); /* borrowed */
        struct lfs_idrange *r = &out->r[i];
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 3) {
            PyErr_Format(PyExc_TypeError, "%s: a range is a tuple (container, host, size)", what);
            Py_DECREF(seq);
            return -1;
        }
        if (id_arg(PyTuple_GET_ITEM(t, 0), what, &r->container) < 0 || id_arg(PyTuple_GET_ITEM(t, 1), what, &r->host) < 0 ||
            id_arg(PyTuple_GET_ITEM(t, 2), what, &r->size) < 0) {
            Py_DECREF(seq);
            return -1;
        }
    }
    Py_DECREF(seq);
    out->n = (uint32_t)n;
    if (lfs_idmap_check(out) < 0) {
        PyErr_Format(PyExc_ValueError, "%s: an empty range, one past 2^32, or ranges that overlap", what);
        memset(out, 0, sizeof *out);
        return -1;
    }
    return 0;
}

/* Open a directory given by the caller (the upper or the work directory) as an O_PATH fd. */
static int open_dir_arg(PyObject *path_obj, int *out)
{
    PyObject *p = NULL;
    if (!PyUnicode_FSConverter(path_obj, &p))
        return -1;
    *out = open(PyBytes_AS_STRING(p), O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (*out < 0) {
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, p);
        Py_DECREF(p);
        return -1;
    }
    Py_DECREF(p);
    return 0;
}

static int Session_init(SessionObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"index", "layer_dirs", "mountpoint", "options", "entry_timeout",
                             "attr_timeout", "negative_timeout", "threads", "debug", "max_open",
                             "upper", "work", "privileged", "metacopy", "redirect_dir", "uidmap", "gidmap", NULL};
    PyObject *index_arg, *index_path = NULL, *layers, *mnt = NULL, *upper = Py_None, *work = Py_None;
    PyObject *uidmap = Py_None, *gidmap = Py_None;
    const char *options;
    double et, at, nt;
    unsigned threads = 1, max_open = 4096;
    int debug = 0, privileged = 1, metacopy = 0, redirect_dir = 0;
    if (self->se != NULL || self->looping) { /* never free a session that may be serving */
        PyErr_SetString(PyExc_RuntimeError, "FuseSession is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO&sddd|IpIOOpppOO", kwlist, &index_arg,
                                     &layers, PyUnicode_FSConverter, &mnt, &options, &et, &at, &nt,
                                     &threads, &debug, &max_open, &upper, &work, &privileged, &metacopy,
                                     &redirect_dir, &uidmap, &gidmap))
        return -1;
    if ((upper == Py_None) != (work == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "upper and work go together");
        Py_DECREF(mnt);
        return -1;
    }
    if (index_arg != Py_None && !PyUnicode_FSConverter(index_arg, &index_path)) {
        Py_DECREF(mnt);
        return -1;
    }
    session_free(self);
    memset(&self->fs, 0, sizeof self->fs);
    struct lfs_fs *fs = &self->fs;
    fs->upper_fd = fs->work_fd = -1;
    self->threads = threads ? threads : 1;
    fs->entry_timeout = et;
    fs->attr_timeout = at;
    fs->negative_timeout = nt;
    fs->privileged = privileged;
    fs->self_uid = geteuid();
    fs->self_gid = getegid();
    fs->metacopy = metacopy && privileged; /* the metacopy xattr is trusted.* only (userxattr: off) */
    fs->redirect_dir = redirect_dir && privileged; /* so is redirect (userxattr: nofollow) */
    if (idmap_arg(uidmap, "uidmap", &fs->uids) < 0 || idmap_arg(gidmap, "gidmap", &fs->gids) < 0)
        goto fail;
    fs->open_flags = O_RDONLY | O_NOFOLLOW | O_CLOEXEC | (geteuid() == 0 ? O_NOATIME : 0);
    int rc = index_path ? lfs_index_open(&fs->ix, PyBytes_AS_STRING(index_path)) : lazy_open(&fs->ix, layers);
    if (rc < 0 && index_path == NULL)
        goto fail; /* lazy_open set the exception */
    if (rc < 0) {
        if (rc == -EINVAL)
            PyErr_Format(PyExc_ValueError, "%s: not a layerfs merged index", PyBytes_AS_STRING(index_path));
        else {
            errno = -rc;
            PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, index_path);
        }
        goto fail;
    }
    if ((rc = fd_init(fs, max_open)) < 0) {
        errno = -rc;
        PyErr_SetFromErrno(PyExc_OSError);
        goto fail;
    }
    if (upper != Py_None) {
        if (open_dir_arg(upper, &fs->upper_fd) < 0 || open_dir_arg(work, &fs->work_fd) < 0)
            goto fail;
        struct stat ust, wst;
        if (fstat(fs->upper_fd, &ust) < 0 || fstat(fs->work_fd, &wst) < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            goto fail;
        }
        if (ust.st_dev != wst.st_dev) {
            PyErr_SetString(PyExc_ValueError, "the upper and work directories must be on one file system");
            goto fail;
        }
        fs->upper_dev = ust.st_dev;
        int err = pthread_rwlock_init(&fs->tree, NULL);
        if (err) {
            errno = err;
            PyErr_SetFromErrno(PyExc_OSError);
            goto fail;
        }
        fs->writable = 1;
    }
    if ((rc = node_init(fs)) < 0) {
        errno = -rc;
        PyErr_SetFromErrno(PyExc_OSError);
        goto fail;
    }
    if (fs->ix.lazy != NULL) { /* the root's entries now: a mount of unreadable layers fails here */
        lfs_lazy_set_grow(&fs->ix, node_grow, fs);
        if ((rc = lfs_ready(&fs->ix, LFS_ROOT_INO)) < 0) {
            raise_lazy(rc, lfs_lazy_error_path(&fs->ix));
            goto fail;
        }
    }
    PyObject *seq = PySequence_Fast(layers, "layer_dirs must be a sequence");
    if (seq == NULL)
        goto fail;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n != (Py_ssize_t)fs->ix.h->n_layers || n == 0) {
        PyErr_Format(PyExc_ValueError, "index has %u layers, %zd given", fs->ix.h->n_layers, n);
        Py_DECREF(seq);
        goto fail;
    }
    fs->layer_fds = malloc(sizeof(int) * n);
    if (fs->layer_fds == NULL) {
        PyErr_NoMemory();
        Py_DECREF(seq);
        goto fail;
    }
    fs->n_layers = (int)n;
    for (Py_ssize_t i = 0; i < n; i++)
        fs->layer_fds[i] = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *p = NULL;
        if (!PyUnicode_FSConverter(PySequence_Fast_GET_ITEM(seq, i), &p)) {
            Py_DECREF(seq);
            goto fail;
        }
        fs->layer_fds[i] = open(PyBytes_AS_STRING(p), O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (fs->layer_fds[i] < 0) {
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
    const struct fuse_lowlevel_ops *ops = fs->writable ? &lfs_ops_rw : &lfs_ops_ro;
    self->se = fuse_session_new(&fargs, ops, sizeof *ops, fs);
    fuse_opt_free_args(&fargs);
    if (self->se == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "fuse_session_new failed (bad mount options?)");
        goto fail;
    }
    fs->se = self->se;
    Py_BEGIN_ALLOW_THREADS
    rc = fuse_session_mount(self->se, PyBytes_AS_STRING(mnt));
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        PyErr_SetString(PyExc_RuntimeError, "fuse_session_mount failed");
        goto fail;
    }
    self->mounted = 1;
    Py_XDECREF(index_path);
    Py_DECREF(mnt);
    return 0;
fail:
    session_free(self);
    Py_XDECREF(index_path);
    Py_XDECREF(mnt);
    return -1;
}

/* A new, uninitialised session owns no descriptor: -1, not the 0 of a zeroed object, so that
 * session_free (which Session_init and a failed init call) never closes the caller's fd 0. */
static PyObject *Session_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    SessionObject *self = (SessionObject *)PyType_GenericNew(type, args, kw);
    if (self != NULL)
        self->fs.upper_fd = self->fs.work_fd = -1;
    return (PyObject *)self;
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
    unsigned long extra[4] = {__atomic_load_n(&self->fs.copyups, __ATOMIC_RELAXED),
                              __atomic_load_n(&self->fs.metacopies, __ATOMIC_RELAXED),
                              __atomic_load_n(&self->fs.whiteouts, __ATOMIC_RELAXED)};
    const char *extra_names[4] = {"copyup", "metacopy", "whiteout", "dir_merge"};
    extra[3] = lfs_lazy_loads(&self->fs.ix);
    for (int i = 0; i < 4; i++) {
        if (!extra[i])
            continue;
        PyObject *v = PyLong_FromUnsignedLong(extra[i]);
        if (v == NULL || PyDict_SetItemString(req, extra_names[i], v) < 0) { Py_XDECREF(v); goto fail; }
        Py_DECREF(v);
    }
    for (int i = 0; i < OP_COUNT; i++) {
        unsigned long r = __atomic_load_n(&self->fs.requests[i], __ATOMIC_RELAXED);
        unsigned long e = __atomic_load_n(&self->fs.errors[i], __ATOMIC_RELAXED);
        PyObject *v;
        if (r) {
            v = PyLong_FromUnsignedLong(r);
            if (v == NULL || PyDict_SetItemString(req, lfs_op_names[i], v) < 0) { Py_XDECREF(v); goto fail; }
            Py_DECREF(v);
        }
        if (e) {
            v = PyLong_FromUnsignedLong(e);
            if (v == NULL || PyDict_SetItemString(err, lfs_op_names[i], v) < 0) { Py_XDECREF(v); goto fail; }
            Py_DECREF(v);
        }
    }
    uint32_t nodes = self->fs.ix.nodes ? lfs_n_nodes(&self->fs.ix) : 0;
    return Py_BuildValue("(NNlI)", req, err, __atomic_load_n(&self->fs.open_files, __ATOMIC_RELAXED),
                         nodes ? nodes - 1 : 0);
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
              "negative_timeout, threads=1, debug=False, max_open=4096, upper=None, work=None, "
              "privileged=True, metacopy=False, redirect_dir=False, uidmap=None, gidmap=None): "
              "a mounted merged session, read-only or writable",
    .tp_new = Session_new,
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
