/* override.c: reading and writing `user.containers.override_stat` (see override.h).
 *
 * The value is "UID:GID:MODE[:TYPE]", UID and GID decimal, MODE octal (at most 07777), TYPE one
 * of file, dir, symlink, pipe, socket, char-MAJOR-MINOR, block-MAJOR-MINOR (containers-storage's
 * words; a device's further "-" parts are ignored as containers-storage ignores them).  Everything
 * else is malformed and ignored by the readers.  Errors: -errno; no allocation.  The engine and
 * the index walk call these without the GIL; the two Python hooks (tests only) hold it and do no
 * I/O.  Cost: one getxattr per regular file or directory of an unprivileged upper at each stat
 * (the index walk reads every entry's xattrs anyway).
 */
#include "native.h"
#include "override.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

/* A number of 1..11 digits of `base` (8 or 10) in s[0..n), at most `limit`. */
static int number(const char *s, size_t n, unsigned base, uint64_t limit, uint64_t *out)
{
    if (n == 0 || n > 11)
        return -EINVAL;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned d = (unsigned)(s[i] - '0');
        if (s[i] < '0' || d >= base)
            return -EINVAL;
        v = v * base + d;
    }
    if (v > limit)
        return -EINVAL;
    *out = v;
    return 0;
}

static const struct { const char *word; uint32_t type; } types[] = {
    {"file", S_IFREG}, {"dir", S_IFDIR}, {"symlink", S_IFLNK}, {"pipe", S_IFIFO}, {"socket", S_IFSOCK},
    {"char", S_IFCHR}, {"block", S_IFBLK},
};

int lfs_override_parse(const char *value, size_t len, uint32_t disk_mode, struct lfs_override *out)
{
    const char *field[4];
    size_t flen[4], n = 0;
    if (len >= LFS_OVERRIDE_MAX || memchr(value, '\0', len) != NULL)
        return -EINVAL;
    for (size_t start = 0, i = 0; i <= len; i++) {
        if (i < len && value[i] != ':')
            continue;
        if (n == 4)
            return -EINVAL; /* a fifth field */
        field[n] = value + start;
        flen[n++] = i - start;
        start = i + 1;
    }
    if (n < 3)
        return -EINVAL;
    uint64_t uid, gid, perm, major = 0, minor = 0;
    if (number(field[0], flen[0], 10, UINT32_MAX, &uid) < 0 || number(field[1], flen[1], 10, UINT32_MAX, &gid) < 0 ||
        number(field[2], flen[2], 8, 07777, &perm) < 0)
        return -EINVAL;
    uint32_t disk = disk_mode & S_IFMT, type = disk;
    if (n == 4) {
        const char *w = field[3], *dash = memchr(w, '-', flen[3]);
        size_t wl = dash ? (size_t)(dash - w) : flen[3];
        size_t k = 0;
        while (k < sizeof types / sizeof *types && !(strlen(types[k].word) == wl && memcmp(types[k].word, w, wl) == 0))
            k++;
        if (k == sizeof types / sizeof *types)
            return -EINVAL;
        type = types[k].type;
        if (type == S_IFCHR || type == S_IFBLK) {
            /* "-MAJOR-MINOR", then anything */
            if (dash == NULL)
                return -EINVAL;
            const char *p = dash + 1, *end = w + flen[3];
            const char *d2 = memchr(p, '-', (size_t)(end - p));
            if (d2 == NULL || number(p, (size_t)(d2 - p), 10, UINT32_MAX, &major) < 0)
                return -EINVAL;
            const char *q = d2 + 1, *d3 = memchr(q, '-', (size_t)(end - q));
            if (number(q, (size_t)((d3 ? d3 : end) - q), 10, UINT32_MAX, &minor) < 0)
                return -EINVAL;
        } else if (dash != NULL) {
            return -EINVAL;
        }
    }
    if (type != disk && !(disk == S_IFREG && (type == S_IFCHR || type == S_IFBLK || type == S_IFIFO || type == S_IFSOCK)))
        return -EINVAL;
    if (type == S_IFCHR && major == 0 && minor == 0)
        return -EINVAL; /* a 0/0 char device is a whiteout: made as one, never kept in an override */
    out->uid = (uint32_t)uid;
    out->gid = (uint32_t)gid;
    out->mode = type | (uint32_t)perm;
    out->rdev = (type == S_IFCHR || type == S_IFBLK) ? (uint64_t)makedev((unsigned)major, (unsigned)minor) : 0;
    return 0;
}

int lfs_override_format(const struct lfs_override *o, char *buf, size_t size)
{
    const char *word = NULL;
    uint32_t type = o->mode & S_IFMT;
    for (size_t k = 0; k < sizeof types / sizeof *types; k++)
        if (types[k].type == type)
            word = types[k].word;
    if (word == NULL)
        return -EINVAL;
    int n;
    if (type == S_IFCHR || type == S_IFBLK)
        n = snprintf(buf, size, "%u:%u:%04o:%s-%u-%u", o->uid, o->gid, o->mode & 07777, word,
                     major((dev_t)o->rdev), minor((dev_t)o->rdev));
    else
        n = snprintf(buf, size, "%u:%u:%04o:%s", o->uid, o->gid, o->mode & 07777, word);
    if (n < 0 || (size_t)n >= size)
        return -EINVAL;
    return n;
}

uint32_t lfs_override_disk_mode(uint32_t mode)
{
    return (mode & 0755) | ((mode & S_IFMT) == S_IFDIR ? 0700 : 0600);
}

int lfs_override_get(const char *path, int follow, uint32_t *uid, uint32_t *gid, uint32_t *mode, uint64_t *rdev)
{
    uint32_t type = *mode & S_IFMT;
    if (type != S_IFREG && type != S_IFDIR)
        return 0; /* user.* xattrs exist on regular files and directories only */
    char buf[LFS_OVERRIDE_MAX];
    ssize_t n = follow ? getxattr(path, LFS_OVERRIDE_XATTR, buf, sizeof buf)
                       : lgetxattr(path, LFS_OVERRIDE_XATTR, buf, sizeof buf);
    if (n < 0)
        return errno == ENODATA || errno == ENOTSUP || errno == ERANGE ? 0 : -errno;
    struct lfs_override o;
    if (lfs_override_parse(buf, (size_t)n, *mode, &o) < 0)
        return 0;
    *uid = o.uid;
    *gid = o.gid;
    *mode = o.mode;
    *rdev = o.rdev;
    return 1;
}

int lfs_override_set(const char *path, int follow, const struct lfs_override *o)
{
    char buf[LFS_OVERRIDE_MAX];
    int n = lfs_override_format(o, buf, sizeof buf);
    if (n < 0)
        return n;
    int r = follow ? setxattr(path, LFS_OVERRIDE_XATTR, buf, (size_t)n, 0)
                   : lsetxattr(path, LFS_OVERRIDE_XATTR, buf, (size_t)n, 0);
    return r < 0 ? -errno : 0;
}

/* For the tests: _override_parse(value, disk_mode) -> (uid, gid, mode, rdev) or None. */
static PyObject *py_override_parse(PyObject *self, PyObject *args)
{
    const char *value;
    Py_ssize_t len;
    unsigned int disk_mode;
    if (!PyArg_ParseTuple(args, "y#I", &value, &len, &disk_mode))
        return NULL;
    struct lfs_override o;
    if (lfs_override_parse(value, (size_t)len, disk_mode, &o) < 0)
        Py_RETURN_NONE;
    return Py_BuildValue("(IIIK)", o.uid, o.gid, o.mode, (unsigned long long)o.rdev);
}

/* For the tests: _override_format(uid, gid, mode, rdev) -> bytes. */
static PyObject *py_override_format(PyObject *self, PyObject *args)
{
    struct lfs_override o;
    unsigned long long rdev;
    if (!PyArg_ParseTuple(args, "IIIK", &o.uid, &o.gid, &o.mode, &rdev))
        return NULL;
    o.rdev = rdev;
    char buf[LFS_OVERRIDE_MAX];
    int n = lfs_override_format(&o, buf, sizeof buf);
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "mode without a file type");
        return NULL;
    }
    return PyBytes_FromStringAndSize(buf, n);
}

static PyMethodDef override_methods[] = {
    {"_override_parse", py_override_parse, METH_VARARGS,
     "_override_parse(value, disk_mode) -> (uid, gid, mode, rdev) or None; tests only"},
    {"_override_format", py_override_format, METH_VARARGS,
     "_override_format(uid, gid, mode, rdev) -> bytes; tests only"},
    {NULL, NULL, 0, NULL},
};

int layerfs_init_override(PyObject *module)
{
    if (PyModule_AddFunctions(module, override_methods) < 0 ||
        PyModule_AddStringConstant(module, "OVERRIDE_XATTR", LFS_OVERRIDE_XATTR) < 0)
        return -1;
    return 0;
}
