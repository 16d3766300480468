/* sys.c: the system calls the unpacker needs that Python's os module lacks.
 *
 * - openat2(2) with RESOLVE_IN_ROOT resolves a path as if the given directory were "/": "..",
 *   absolute paths and symlinks can never leave it (docs/oci.rst "Resolving inside the root").
 * - setxattrat / getxattrat: set or read an xattr of a name relative to a dirfd without following
 *   a final symlink, or of the fd itself (empty path).  Python only has path- or fd-based calls,
 *   and an fd cannot be opened on a fifo or device without side effects.  Uses setxattrat(2) /
 *   getxattrat(2) (Linux 6.13) and falls back to an O_PATH fd and "/proc/self/fd/N" (the magic
 *   link names the inode itself, even a symlink) when the kernel lacks them.
 * - create_file: the unpacker's hot path for small regular files: openat(O_CREAT|O_EXCL|
 *   O_NOFOLLOW), write the whole buffer, fchown, fchmod, futimens, close in one call (profiling
 *   showed ~7 Python-level calls per file).  A file it fails to finish is unlinked again.
 *
 * GIL: released around every system call; buffers are held with the buffer protocol meanwhile.
 * The one state shared by calls (whether the *xattrat syscalls exist) is a relaxed atomic, so
 * threads running without the GIL do not race on it (tests/test_sys.py runs ThreadSanitizer).
 * Errors: OSError with errno and the path (PyErr_SetFromErrnoWithFilenameObject); TypeError /
 * OverflowError from argument parsing.
 */
#include "native.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#ifndef __NR_setxattrat
#define __NR_setxattrat 463
#endif
#ifndef __NR_getxattrat
#define __NR_getxattrat 464
#endif

/* struct xattr_args of <linux/xattr.h> (6.13); bookworm's headers predate it. */
struct layerfs_xattr_args {
    uint64_t value __attribute__((aligned(8)));
    uint32_t size;
    uint32_t flags;
};

/* 0 until a call tells: 1 = the *xattrat syscalls exist, -1 = ENOSYS seen.  Threads read and
 * write it without the GIL, so only through these two (relaxed atomics: it is a hint, and every
 * value gives a correct result). */
static int have_xattrat = 0;

static int xattrat_known(void)
{
    return __atomic_load_n(&have_xattrat, __ATOMIC_RELAXED);
}

static void xattrat_learn(int value)
{
    if (xattrat_known() != value)
        __atomic_store_n(&have_xattrat, value, __ATOMIC_RELAXED);
}

static PyObject *py_openat2(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"dirfd", "path", "flags", "mode", "resolve", NULL};
    int dirfd;
    PyObject *path_obj;
    unsigned long long flags, mode = 0, resolve = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iO&K|KK", kwlist, &dirfd, PyUnicode_FSConverter,
                                     &path_obj, &flags, &mode, &resolve))
        return NULL;
    struct open_how how = {.flags = flags, .mode = mode, .resolve = resolve};
    const char *path = PyBytes_AS_STRING(path_obj);
    long fd;
    Py_BEGIN_ALLOW_THREADS
    fd = syscall(SYS_openat2, dirfd, path, &how, sizeof how);
    Py_END_ALLOW_THREADS
    if (fd < 0) {
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path_obj);
        Py_DECREF(path_obj);
        return NULL;
    }
    Py_DECREF(path_obj);
    PyObject *result = PyLong_FromLong(fd);
    if (result == NULL)
        close((int)fd); /* nobody else can own it */
    return result;
}

/* Open `path` (relative to dirfd; "" = dirfd itself, returned as is) as O_PATH for the /proc
 * fallback. */
static int open_path_fd(int dirfd, const char *path, int follow)
{
    if (path[0] == '\0')
        return dirfd;
    return openat(dirfd, path, O_PATH | O_CLOEXEC | (follow ? 0 : O_NOFOLLOW));
}

static void close_path_fd(int fd, int dirfd)
{
    int saved = errno;
    if (fd != dirfd)
        close(fd);
    errno = saved;
}

static long do_setxattrat(int dirfd, const char *path, const char *name, const void *value,
                          size_t size, int follow, int xflags)
{
    int at = (follow ? 0 : AT_SYMLINK_NOFOLLOW) | (path[0] == '\0' ? AT_EMPTY_PATH : 0);
    if (xattrat_known() >= 0) {
        struct layerfs_xattr_args xa = {.value = (uint64_t)(uintptr_t)value, .size = size,
                                        .flags = xflags};
        long r = syscall(__NR_setxattrat, dirfd, path, at, name, &xa, sizeof xa);
        if (r == 0 || errno != ENOSYS) {
            xattrat_learn(1);
            if (r == 0 || errno != EBADF || path[0] != '\0')
                return r;   /* EBADF with an empty path: an O_PATH fd, use /proc */
        } else {
            xattrat_learn(-1);
        }
    }
    if (path[0] == '\0') {
        /* the fd itself: a real fd takes fsetxattr; an O_PATH fd goes through /proc. */
        long r = fsetxattr(dirfd, name, value, size, xflags);
        if (r == 0 || errno != EBADF)
            return r;
    }
    int fd = open_path_fd(dirfd, path, follow);
    if (fd < 0)
        return -1;
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    long r = setxattr(proc, name, value, size, xflags);
    close_path_fd(fd, dirfd);
    return r;
}

static long do_getxattrat(int dirfd, const char *path, const char *name, void *value, size_t size,
                          int follow)
{
    int at = (follow ? 0 : AT_SYMLINK_NOFOLLOW) | (path[0] == '\0' ? AT_EMPTY_PATH : 0);
    if (xattrat_known() >= 0) {
        struct layerfs_xattr_args xa = {.value = (uint64_t)(uintptr_t)value, .size = size,
                                        .flags = 0};
        long r = syscall(__NR_getxattrat, dirfd, path, at, name, &xa, sizeof xa);
        if (r >= 0 || errno != ENOSYS) {
            xattrat_learn(1);
            if (r >= 0 || errno != EBADF || path[0] != '\0')
                return r;   /* EBADF with an empty path: an O_PATH fd, use /proc */
        } else {
            xattrat_learn(-1);
        }
    }
    if (path[0] == '\0') {
        long r = fgetxattr(dirfd, name, value, size);
        if (r >= 0 || errno != EBADF)
            return r;
    }
    int fd = open_path_fd(dirfd, path, follow);
    if (fd < 0)
        return -1;
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    long r = getxattr(proc, name, value, size);
    close_path_fd(fd, dirfd);
    return r;
}

static PyObject *py_setxattrat(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"dirfd", "path", "name", "value", "follow_symlinks", "flags", NULL};
    int dirfd, follow = 0, xflags = 0;
    PyObject *path_obj, *name_obj;
    Py_buffer value;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iO&O&y*|pi", kwlist, &dirfd, PyUnicode_FSConverter,
                                     &path_obj, PyUnicode_FSConverter, &name_obj, &value, &follow,
                                     &xflags))
        return NULL;
    const char *path = PyBytes_AS_STRING(path_obj), *name = PyBytes_AS_STRING(name_obj);
    long r;
    Py_BEGIN_ALLOW_THREADS
    r = do_setxattrat(dirfd, path, name, value.buf, value.len, follow, xflags);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&value);
    PyObject *result = NULL;
    if (r < 0)
        PyErr_SetFromErrnoWithFilenameObjects(PyExc_OSError, path_obj, name_obj);
    else
        result = Py_NewRef(Py_None);
    Py_DECREF(path_obj);
    Py_DECREF(name_obj);
    return result;
}

static PyObject *py_getxattrat(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"dirfd", "path", "name", "follow_symlinks", NULL};
    int dirfd, follow = 0;
    PyObject *path_obj, *name_obj, *result = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iO&O&|p", kwlist, &dirfd, PyUnicode_FSConverter,
                                     &path_obj, PyUnicode_FSConverter, &name_obj, &follow))
        return NULL;
    const char *path = PyBytes_AS_STRING(path_obj), *name = PyBytes_AS_STRING(name_obj);
    char small[256];
    long r;
    Py_BEGIN_ALLOW_THREADS
    r = do_getxattrat(dirfd, path, name, small, sizeof small, follow);
    Py_END_ALLOW_THREADS
    if (r >= 0) {
        result = PyBytes_FromStringAndSize(small, r);
    } else if (errno == ERANGE) {
        /* larger than 256 bytes: xattr values are at most 64 KiB */
        char *big = PyMem_Malloc(65536);
        if (big == NULL) {
            PyErr_NoMemory();
        } else {
            Py_BEGIN_ALLOW_THREADS
            r = do_getxattrat(dirfd, path, name, big, 65536, follow);
            Py_END_ALLOW_THREADS
            if (r >= 0)
                result = PyBytes_FromStringAndSize(big, r);
            else
                PyErr_SetFromErrnoWithFilenameObjects(PyExc_OSError, path_obj, name_obj);
            PyMem_Free(big);
        }
    } else {
        PyErr_SetFromErrnoWithFilenameObjects(PyExc_OSError, path_obj, name_obj);
    }
    Py_DECREF(path_obj);
    Py_DECREF(name_obj);
    return result;
}

static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0) {
            errno = EIO;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static PyObject *py_create_file(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"dirfd", "name", "data", "mode", "uid", "gid", "atime_ns", "mtime_ns",
                             "chown", "keep_open", NULL};
    int dirfd, chown_it = 0, keep_open = 0;
    unsigned int mode;
    long long uid, gid, atime_ns, mtime_ns;
    PyObject *name_obj;
    Py_buffer data;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iO&y*ILLLL|pp", kwlist, &dirfd,
                                     PyUnicode_FSConverter, &name_obj, &data, &mode, &uid, &gid,
                                     &atime_ns, &mtime_ns, &chown_it, &keep_open))
        return NULL;
    const char *name = PyBytes_AS_STRING(name_obj);
    int fd, failed = 0, saved = 0;
    Py_BEGIN_ALLOW_THREADS
    fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        failed = 1;
    } else {
        struct timespec ts[2] = {
            {.tv_sec = atime_ns / 1000000000LL, .tv_nsec = atime_ns % 1000000000LL},
            {.tv_sec = mtime_ns / 1000000000LL, .tv_nsec = mtime_ns % 1000000000LL},
        };
        for (int i = 0; i < 2; i++)
            if (ts[i].tv_nsec < 0) {
                ts[i].tv_nsec += 1000000000LL;
                ts[i].tv_sec -= 1;
            }
        if (write_all(fd, data.buf, (size_t)data.len) < 0 ||
            (chown_it && fchown(fd, (uid_t)uid, (gid_t)gid) < 0) ||
            (!keep_open && (fchmod(fd, mode) < 0 || futimens(fd, ts) < 0))) {
            failed = 2;
            saved = errno;
            close(fd);
            unlinkat(dirfd, name, 0);
            errno = saved;
        } else if (!keep_open && close(fd) < 0) {
            /* the data may not have reached the file (close(2) releases the fd even so) */
            failed = 2;
            saved = errno;
            unlinkat(dirfd, name, 0);
            errno = saved;
        }
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    if (failed) {
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, name_obj);
        Py_DECREF(name_obj);
        return NULL;
    }
    Py_DECREF(name_obj);
    if (keep_open) {
        PyObject *result = PyLong_FromLong(fd);
        if (result == NULL)
            close(fd); /* nobody else can own it; the file stays, as after a failed close */
        return result;
    }
    return Py_NewRef(Py_None);
}

/* For the tests: make the *xattrat wrappers take the O_PATH + /proc path of older kernels. */
static PyObject *py_xattrat_fallback(PyObject *self, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
    __atomic_store_n(&have_xattrat, on ? -1 : 0, __ATOMIC_RELAXED);
    return Py_NewRef(Py_None);
}

static PyMethodDef sys_methods[] = {
    {"_xattrat_fallback", py_xattrat_fallback, METH_O,
     "_xattrat_fallback(on): use the pre-6.13 path of setxattrat/getxattrat (tests only)"},
    {"openat2", (PyCFunction)(void (*)(void))py_openat2, METH_VARARGS | METH_KEYWORDS,
     "openat2(dirfd, path, flags, mode=0, resolve=0) -> fd"},
    {"setxattrat", (PyCFunction)(void (*)(void))py_setxattrat, METH_VARARGS | METH_KEYWORDS,
     "setxattrat(dirfd, path, name, value, follow_symlinks=False, flags=0) -> None; path '' = dirfd"},
    {"getxattrat", (PyCFunction)(void (*)(void))py_getxattrat, METH_VARARGS | METH_KEYWORDS,
     "getxattrat(dirfd, path, name, follow_symlinks=False) -> bytes; path '' = dirfd"},
    {"create_file", (PyCFunction)(void (*)(void))py_create_file, METH_VARARGS | METH_KEYWORDS,
     "create_file(dirfd, name, data, mode, uid, gid, atime_ns, mtime_ns, chown=False,"
     " keep_open=False) -> fd or None"},
    {NULL, NULL, 0, NULL},
};

int layerfs_init_sys(PyObject *module)
{
    if (PyModule_AddFunctions(module, sys_methods) < 0)
        return -1;
    if (PyModule_AddIntConstant(module, "RESOLVE_IN_ROOT", RESOLVE_IN_ROOT) < 0 ||
        PyModule_AddIntConstant(module, "RESOLVE_NO_MAGICLINKS", RESOLVE_NO_MAGICLINKS) < 0 ||
        PyModule_AddIntConstant(module, "RESOLVE_NO_SYMLINKS", RESOLVE_NO_SYMLINKS) < 0 ||
        PyModule_AddIntConstant(module, "RESOLVE_BENEATH", RESOLVE_BENEATH) < 0 ||
        PyModule_AddIntConstant(module, "RESOLVE_NO_XDEV", RESOLVE_NO_XDEV) < 0)
        return -1;
    return 0;
}
