/* merge.c: the merged-tree index (layerfs/_mount/merge.py writes it) served from an mmap.
 *
 * What it does: `Index(path)` maps an index file read-only and validates every offset once, so
 * that lookup(parent, name) (a binary search of the parent's sorted entries), getattr(ino),
 * readdir(ino, offset, count), readlink(ino), listxattr/getxattr(ino) and path(ino) are array
 * accesses that read no layer directory (docs/fuse.rst "What a request costs": the handler body is
 * the small part of a request; this keeps it at a few hundred ns and allocation-light).
 *
 * GIL: every method holds it; none blocks (the map is of a local file, populated at load).
 * __init__ maps and validates with the GIL released, into a struct of its own: a second
 * __init__ swaps the maps only once it holds the GIL again, so readers never see half of one.
 * Errors: OSError(ENOENT / ENOTDIR / ENAMETOOLONG / ENODATA / EINVAL / ESTALE) with errno set, so
 * the handlers' single translation point (layerfs/_mount/handlers.py) turns them into FUSE replies;
 * ValueError for a malformed index file at load.
 */
#include "native.h"
#include "merge.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

_Static_assert(sizeof(struct lfs_header) == 64, "header layout");
_Static_assert(sizeof(struct lfs_node) == 112, "node layout");
_Static_assert(sizeof(struct lfs_dent) == 12, "dent layout");

static int in_blob(const struct lfs_header *h, uint64_t off, uint64_t len)
{
    return off <= h->blob_size && len <= h->blob_size - off;
}

/* Whether blob[off, off+len) is a name a directory can hold: 1..NAME_MAX bytes, no '/' and no
 * NUL, neither "." nor "..".  The engines pass these names to the kernel (readdir, lookup) and
 * join them into paths opened under a layer root: anything else could name another place. */
static int valid_name(const char *blob, uint32_t off, uint32_t len)
{
    const char *s = blob + off;
    if (len == 0 || len > LFS_NAME_MAX || memchr(s, '/', len) != NULL || memchr(s, '\0', len) != NULL)
        return 0;
    return !(s[0] == '.' && (len == 1 || (len == 2 && s[1] == '.')));
}

/* The order of directory entries (lfs_lookup's binary search): bytes, then length. */
static int name_cmp(const char *blob, const struct lfs_dent *a, const struct lfs_dent *b)
{
    uint32_t n = a->name_len < b->name_len ? a->name_len : b->name_len;
    int c = memcmp(blob + a->name_off, blob + b->name_off, n);
    return c ? c : (a->name_len < b->name_len ? -1 : a->name_len > b->name_len);
}

static int known_type(uint32_t mode)
{
    switch (mode & S_IFMT) {
    case S_IFREG: case S_IFDIR: case S_IFLNK: case S_IFCHR: case S_IFBLK: case S_IFIFO: case S_IFSOCK:
        return 1;
    }
    return 0;
}

/* Check one node (i >= 1) on its own: ranges, names, parent order, payloads.  NULL or the reason. */
static const char *check_node(const struct lfs_index *ix, uint32_t i, uint64_t *dents_seen)
{
    const struct lfs_header *h = ix->h;
    const struct lfs_node *n = &ix->nodes[i];
    int is_dir = (n->mode & S_IFMT) == S_IFDIR;
    if (!known_type(n->mode))
        return "a node has an unknown file type";
    if (n->pending != 0)
        return "a node is marked pending (only a lazy index in memory has those)";
    if (n->layer >= h->n_layers)
        return "a node names a layer beyond the stack";
    if (!in_blob(h, n->name_off, n->name_len) || !in_blob(h, n->xattr_off, n->xattr_len) ||
        !in_blob(h, n->target_off, n->target_len))
        return "a node's name, xattrs or target lie outside the blob";
    if (i == LFS_ROOT_INO) {
        if (!is_dir || n->parent != LFS_ROOT_INO || n->name_len != 0)
            return "the root is not a nameless directory that is its own parent";
    } else {
        /* Parents are numbered before their children (breadth-first numbering), so every
         * chain of parent links descends strictly and ends at the root: no cycle is possible. */
        if (n->parent < LFS_ROOT_INO || n->parent >= i)
            return "a node's parent is not numbered before it";
        if ((ix->nodes[n->parent].mode & S_IFMT) != S_IFDIR)
            return "a node's parent is not a directory";
        if (!valid_name(ix->blob, n->name_off, n->name_len))
            return "a node's name is empty, too long, '.', '..' or holds '/' or NUL";
    }
    if (is_dir) {
        /* Directories' entry ranges follow each other in node order and cover every entry once. */
        if (n->first_dent != *dents_seen || n->n_dents > h->n_dents - *dents_seen)
            return "a directory's entry range does not follow the previous directory's";
        *dents_seen += n->n_dents;
    } else if (n->n_dents != 0) {
        return "a non-directory lists entries";
    }
    if ((n->mode & S_IFMT) == S_IFLNK) {
        if (n->target_len == 0 || n->target_len >= LFS_TARGET_MAX ||
            memchr(ix->blob + n->target_off, '\0', n->target_len) != NULL)
            return "a symlink's target is empty, too long or holds NUL";
    } else if (n->target_len != 0) {
        return "a node that is not a symlink has a target";
    }
    /* xattr records must tile their range exactly; names as listxattr(2) returns them */
    uint64_t off = n->xattr_off, end = (uint64_t)n->xattr_off + n->xattr_len;
    while (off < end) {
        uint32_t nl, vl;
        if (end - off < 8)
            return "a node's xattr records do not tile their range";
        memcpy(&nl, ix->blob + off, 4);
        memcpy(&vl, ix->blob + off + 4, 4);
        if ((uint64_t)nl + vl > end - off - 8)
            return "a node's xattr records do not tile their range";
        if (nl == 0 || nl > LFS_XATTR_NAME_MAX || vl > LFS_XATTR_SIZE_MAX ||
            memchr(ix->blob + off + 8, '\0', nl) != NULL)
            return "an xattr name is empty, too long or holds NUL, or its value is too long";
        off += 8 + (uint64_t)nl + vl;
    }
    return NULL;
}

/* Check the whole index once, so that every accessor and every walk over it (parent chains,
 * directory trees) is a bounded array access that terminates.  NULL, or the reason it is bad. */
static const char *check_index(const struct lfs_index *ix)
{
    const struct lfs_header *h = ix->h;
    uint64_t dents_seen = 0;
    for (uint32_t i = LFS_ROOT_INO; i < h->n_nodes; i++) {
        const char *why = check_node(ix, i, &dents_seen);
        if (why != NULL)
            return why;
    }
    if (dents_seen != h->n_dents)
        return "some entries belong to no directory";
    /* Entries that name a node of this directory under the node's own name.  Each node has at
     * most one (its parent lists a name once); if every node but the root has one, a path built
     * from parent links leads to the node. */
    uint64_t own_names = 0;
    for (uint32_t i = LFS_ROOT_INO; i < h->n_nodes; i++) {
        const struct lfs_node *dir = &ix->nodes[i];
        if ((dir->mode & S_IFMT) != S_IFDIR)
            continue;
        for (uint32_t k = dir->first_dent; k < dir->first_dent + dir->n_dents; k++) {
            const struct lfs_dent *d = &ix->dents[k];
            if (d->ino <= LFS_ROOT_INO || d->ino >= h->n_nodes || !in_blob(h, d->name_off, d->name_len))
                return "an entry names no node, or the root";
            const struct lfs_node *child = &ix->nodes[d->ino];
            int own = child->parent == i && child->name_len == d->name_len &&
                      (child->name_off == d->name_off ||
                       memcmp(ix->blob + child->name_off, ix->blob + d->name_off, d->name_len) == 0);
            /* the node's own name was checked with the node */
            if (!own && !valid_name(ix->blob, d->name_off, d->name_len))
                return "an entry's name is empty, too long, '.', '..' or holds '/' or NUL";
            if (k > dir->first_dent && name_cmp(ix->blob, &ix->dents[k - 1], d) >= 0)
                return "a directory's entries are not sorted or repeat a name";
            /* a directory is listed once, by its parent, under its name: the directory tree is
             * the tree of parent links, so a walk down the entries ends */
            if ((child->mode & S_IFMT) == S_IFDIR && !own)
                return "a directory is listed by a directory that is not its parent, or by another name";
            own_names += own;
        }
    }
    if (own_names != h->n_nodes - 2)
        return "a node is not listed by its parent under its name";
    return NULL;
}

int lfs_index_open(struct lfs_index *ix, const char *path)
{
    memset(ix, 0, sizeof *ix);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    if ((uint64_t)st.st_size < sizeof(struct lfs_header) || (uint64_t)st.st_size > SIZE_MAX) {
        close(fd);
        ix->why = "the file is shorter than a header";
        return -EINVAL;
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED)
        return -e;
    ix->map = map;
    ix->map_len = (size_t)st.st_size;
    const struct lfs_header *h = map;
    uint64_t size = (uint64_t)st.st_size;
    const char *why = NULL;
    if (memcmp(h->magic, LFS_MAGIC, 8) != 0 || h->version != LFS_VERSION)
        why = "another magic or format version";
    else if (h->n_nodes < 2 || h->n_layers < 1)
        why = "no root node or no layer";
    else if (h->off_nodes > size || (uint64_t)h->n_nodes * sizeof(struct lfs_node) > size - h->off_nodes ||
             h->off_dents > size || (uint64_t)h->n_dents * sizeof(struct lfs_dent) > size - h->off_dents ||
             h->off_blob > size || h->blob_size > size - h->off_blob || (h->off_nodes % 8) != 0 ||
             (h->off_dents % 4) != 0)
        why = "a table lies outside the file or is misaligned";
    else if (!in_blob(h, h->key_off, h->key_len))
        why = "the key lies outside the blob";
    if (why == NULL) {
        ix->h = h;
        ix->nodes = (const struct lfs_node *)((const char *)map + h->off_nodes);
        ix->dents = (const struct lfs_dent *)((const char *)map + h->off_dents);
        ix->blob = (const char *)map + h->off_blob;
        ix->n_nodes = ix->max_nodes = h->n_nodes;
        ix->n_dents = ix->max_dents = h->n_dents;
        why = check_index(ix);
    }
    if (why == NULL)
        return 0;
    munmap(map, (size_t)st.st_size);
    memset(ix, 0, sizeof *ix);
    ix->why = why;
    return -EINVAL;
}

void lfs_index_close(struct lfs_index *ix)
{
    if (ix->lazy)
        lfs_lazy_free(ix);
    if (ix->map)
        munmap(ix->map, ix->map_len);
    memset(ix, 0, sizeof *ix);
}

/* ------------------------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    struct lfs_index ix;
    PyObject *path;
} IndexObject;

static PyObject *os_error(int err)
{
    errno = err;
    return PyErr_SetFromErrno(PyExc_OSError);
}

static const struct lfs_node *get_node(IndexObject *self, unsigned long long ino)
{
    const struct lfs_node *n = self->ix.map ? lfs_node(&self->ix, ino) : NULL;
    if (n == NULL)
        os_error(ESTALE);
    return n;
}

/* The node of the inode number a Python int names; sets an exception (OverflowError, TypeError or
 * OSError ESTALE) and returns NULL otherwise.  *ino receives the number. */
static const struct lfs_node *node_arg(IndexObject *self, PyObject *arg, unsigned long long *ino)
{
    *ino = PyLong_AsUnsignedLongLong(arg);
    if (*ino == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    return get_node(self, *ino);
}

static int Index_init(IndexObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"path", NULL};
    PyObject *path = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&", kwlist, PyUnicode_FSConverter, &path))
        return -1;
    /* Map the file into a local struct with the GIL released: other threads may be reading
     * self->ix meanwhile (a second __init__), so it changes only below, with the GIL held. */
    struct lfs_index ix;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = lfs_index_open(&ix, PyBytes_AS_STRING(path));
    Py_END_ALLOW_THREADS
    if (rc == -EINVAL)
        PyErr_Format(PyExc_ValueError, "%s: not a layerfs merged index of format %d: %s",
                     PyBytes_AS_STRING(path), LFS_VERSION, ix.why);
    else if (rc < 0) {
        errno = -rc;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path);
    }
    if (rc < 0) {
        Py_DECREF(path);
        return -1;
    }
    lfs_index_close(&self->ix);
    self->ix = ix;
    Py_XSETREF(self->path, path);
    return 0;
}

static void Index_dealloc(IndexObject *self)
{
    lfs_index_close(&self->ix);
    Py_XDECREF(self->path);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Index_lookup(IndexObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned long long parent;
    char *name;
    Py_ssize_t len;
    if (nargs != 2 || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "lookup(parent: int, name: bytes)");
        return NULL;
    }
    parent = PyLong_AsUnsignedLongLong(args[0]);
    if (parent == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    const struct lfs_node *dir = get_node(self, parent);
    if (dir == NULL)
        return NULL;
    if ((dir->mode & S_IFMT) != S_IFDIR)
        return os_error(ENOTDIR);
    if (PyBytes_AsStringAndSize(args[1], &name, &len) < 0)
        return NULL;
    if (len > LFS_NAME_MAX)
        return os_error(ENAMETOOLONG);
    if (len == 1 && name[0] == '.')
        return PyLong_FromUnsignedLong((unsigned long)parent);
    if (len == 2 && name[0] == '.' && name[1] == '.')
        return PyLong_FromUnsignedLong(dir->parent);
    return PyLong_FromUnsignedLong(lfs_lookup(&self->ix, dir, name, len));
}

static PyObject *attr_tuple(uint64_t ino, const struct lfs_node *n)
{
    return Py_BuildValue("(KIIIIKKKLLL)", (unsigned long long)ino, n->mode, n->nlink, n->uid, n->gid,
                         (unsigned long long)n->rdev, (unsigned long long)n->size,
                         (unsigned long long)n->blocks, (long long)n->atime_ns, (long long)n->mtime_ns,
                         (long long)n->ctime_ns);
}

static PyObject *Index_getattr(IndexObject *self, PyObject *arg)
{
    unsigned long long ino;
    const struct lfs_node *n = node_arg(self, arg, &ino);
    return n ? attr_tuple(ino, n) : NULL;
}

static PyObject *Index_node(IndexObject *self, PyObject *arg)
{
    unsigned long long ino;
    const struct lfs_node *n = node_arg(self, arg, &ino);
    if (n == NULL)
        return NULL;
    return Py_BuildValue("(IIIII)", n->layer, n->parent, n->first_dent, n->n_dents, n->flags);
}

static PyObject *Index_readdir(IndexObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned long long ino, start, count;
    if (!_PyArg_CheckPositional("readdir", nargs, 3, 3))
        return NULL;
    /* one at a time: no C API call may run with an exception pending */
    if (((ino = PyLong_AsUnsignedLongLong(args[0])) == (unsigned long long)-1 && PyErr_Occurred()) ||
        ((start = PyLong_AsUnsignedLongLong(args[1])) == (unsigned long long)-1 && PyErr_Occurred()) ||
        ((count = PyLong_AsUnsignedLongLong(args[2])) == (unsigned long long)-1 && PyErr_Occurred()))
        return NULL;
    const struct lfs_node *dir = get_node(self, ino);
    if (dir == NULL)
        return NULL;
    if ((dir->mode & S_IFMT) != S_IFDIR)
        return os_error(ENOTDIR);
    if (start > dir->n_dents)
        start = dir->n_dents;
    if (count > dir->n_dents - start)
        count = dir->n_dents - start;
    PyObject *list = PyList_New((Py_ssize_t)count);
    if (list == NULL)
        return NULL;
    for (unsigned long long i = 0; i < count; i++) {
        const struct lfs_dent *d = &self->ix.dents[dir->first_dent + start + i];
        PyObject *item = Py_BuildValue("(y#I)", self->ix.blob + d->name_off, (Py_ssize_t)d->name_len,
                                       d->ino);
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
    }
    return list;
}

static PyObject *Index_readlink(IndexObject *self, PyObject *arg)
{
    unsigned long long ino;
    const struct lfs_node *n = node_arg(self, arg, &ino);
    if (n == NULL)
        return NULL;
    if ((n->mode & S_IFMT) != S_IFLNK)
        return os_error(EINVAL);
    return PyBytes_FromStringAndSize(self->ix.blob + n->target_off, n->target_len);
}

static PyObject *Index_listxattr(IndexObject *self, PyObject *arg)
{
    unsigned long long ino;
    const struct lfs_node *n = node_arg(self, arg, &ino);
    if (n == NULL)
        return NULL;
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return NULL;
    uint64_t off = n->xattr_off, end = (uint64_t)n->xattr_off + n->xattr_len;
    while (off < end) {
        uint32_t nl, vl;
        memcpy(&nl, self->ix.blob + off, 4);
        memcpy(&vl, self->ix.blob + off + 4, 4);
        PyObject *name = PyBytes_FromStringAndSize(self->ix.blob + off + 8, nl);
        if (name == NULL || PyList_Append(list, name) < 0) {
            Py_XDECREF(name);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(name);
        off += 8 + (uint64_t)nl + vl;
    }
    return list;
}

static PyObject *Index_getxattr(IndexObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "getxattr(ino: int, name: bytes)");
        return NULL;
    }
    unsigned long long ino = PyLong_AsUnsignedLongLong(args[0]);
    if (ino == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    const struct lfs_node *n = get_node(self, ino);
    if (n == NULL)
        return NULL;
    const char *want = PyBytes_AS_STRING(args[1]);
    size_t want_len = (size_t)PyBytes_GET_SIZE(args[1]);
    uint64_t off = n->xattr_off, end = (uint64_t)n->xattr_off + n->xattr_len;
    while (off < end) {
        uint32_t nl, vl;
        memcpy(&nl, self->ix.blob + off, 4);
        memcpy(&vl, self->ix.blob + off + 4, 4);
        if (nl == want_len && memcmp(self->ix.blob + off + 8, want, nl) == 0)
            return PyBytes_FromStringAndSize(self->ix.blob + off + 8 + nl, vl);
        off += 8 + (uint64_t)nl + vl;
    }
    return os_error(ENODATA);
}

static PyObject *Index_path(IndexObject *self, PyObject *arg)
{
    unsigned long long ino;
    const struct lfs_node *n = node_arg(self, arg, &ino);
    if (n == NULL)
        return NULL;
    /* Walk up to the root twice: once to size the path, once to fill it from the end. */
    size_t len = 0;
    unsigned depth = 0;
    for (uint64_t i = ino; i != LFS_ROOT_INO; i = self->ix.nodes[i].parent) {
        len += self->ix.nodes[i].name_len + (len ? 1 : 0);
        if (++depth > self->ix.n_nodes)
            return os_error(ELOOP);
    }
    if (len == 0)
        return PyBytes_FromStringAndSize(".", 1);
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
    if (out == NULL)
        return NULL;
    char *buf = PyBytes_AS_STRING(out);
    size_t pos = len;
    for (uint64_t i = ino; i != LFS_ROOT_INO; i = self->ix.nodes[i].parent) {
        const struct lfs_node *m = &self->ix.nodes[i];
        if (pos != len)
            buf[--pos] = '/';
        pos -= m->name_len;
        memcpy(buf + pos, self->ix.blob + m->name_off, m->name_len);
    }
    return out;
}

static PyObject *Index_get_n_nodes(IndexObject *self, void *closure)
{
    return PyLong_FromUnsignedLong(self->ix.map ? self->ix.h->n_nodes : 0);
}

static PyObject *Index_get_n_layers(IndexObject *self, void *closure)
{
    return PyLong_FromUnsignedLong(self->ix.map ? self->ix.h->n_layers : 0);
}

static PyObject *Index_get_n_dents(IndexObject *self, void *closure)
{
    return PyLong_FromUnsignedLong(self->ix.map ? self->ix.h->n_dents : 0);
}

static PyObject *Index_get_key(IndexObject *self, void *closure)
{
    if (!self->ix.map)
        Py_RETURN_NONE;
    return PyUnicode_DecodeUTF8(self->ix.blob + self->ix.h->key_off, self->ix.h->key_len, "replace");
}

static PyMethodDef Index_methods[] = {
    {"lookup", (PyCFunction)(void (*)(void))Index_lookup, METH_FASTCALL,
     "lookup(parent, name) -> ino, or 0 when the name is not in the merged dir"},
    {"getattr", (PyCFunction)Index_getattr, METH_O,
     "getattr(ino) -> (ino, mode, nlink, uid, gid, rdev, size, blocks, atime_ns, mtime_ns, ctime_ns)"},
    {"node", (PyCFunction)Index_node, METH_O, "node(ino) -> (layer, parent, first_dent, n_dents, flags)"},
    {"readdir", (PyCFunction)(void (*)(void))Index_readdir, METH_FASTCALL,
     "readdir(ino, start, count) -> [(name, ino)], children in name order from position start"},
    {"readlink", (PyCFunction)Index_readlink, METH_O, "readlink(ino) -> target bytes"},
    {"listxattr", (PyCFunction)Index_listxattr, METH_O, "listxattr(ino) -> [name bytes]"},
    {"getxattr", (PyCFunction)(void (*)(void))Index_getxattr, METH_FASTCALL,
     "getxattr(ino, name) -> value bytes; OSError(ENODATA) if absent"},
    {"path", (PyCFunction)Index_path, METH_O, "path(ino) -> path relative to the layer root"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Index_getset[] = {
    {"n_nodes", (getter)Index_get_n_nodes, NULL, "number of node slots (inode numbers < n_nodes)", NULL},
    {"n_layers", (getter)Index_get_n_layers, NULL, "number of layers in the stack", NULL},
    {"n_dents", (getter)Index_get_n_dents, NULL, "number of directory entries", NULL},
    {"key", (getter)Index_get_key, NULL, "the stack's name stored in the index", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject IndexType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "layerfs._native.MergedIndex",
    .tp_basicsize = sizeof(IndexObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "MergedIndex(path): a merged-tree index file, mapped read-only",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Index_init,
    .tp_dealloc = (destructor)Index_dealloc,
    .tp_methods = Index_methods,
    .tp_getset = Index_getset,
};

/* Add value (a new reference, or NULL with an exception set) to the module; value is released. */
static int add_owned(PyObject *module, const char *name, PyObject *value)
{
    int rc = PyModule_AddObjectRef(module, name, value);
    Py_XDECREF(value);
    return rc;
}

int layerfs_init_merge(PyObject *module)
{
    /* the format, defined once (merge.h): layerfs/_mount/index.py reads these */
    if (add_owned(module, "INDEX_MAGIC", PyBytes_FromStringAndSize(LFS_MAGIC, 8)) < 0 ||
        PyModule_AddIntConstant(module, "INDEX_VERSION", LFS_VERSION) < 0 ||
        PyModule_AddIntConstant(module, "INDEX_HEADER_SIZE", sizeof(struct lfs_header)) < 0 ||
        PyModule_AddIntConstant(module, "INDEX_NODE_SIZE", sizeof(struct lfs_node)) < 0 ||
        PyModule_AddIntConstant(module, "INDEX_DENT_SIZE", sizeof(struct lfs_dent)) < 0 ||
        PyModule_AddIntConstant(module, "INDEX_ROOT_INO", LFS_ROOT_INO) < 0 ||
        PyModule_AddIntConstant(module, "INDEX_FLAG_MERGED", LFS_FLAG_MERGED) < 0 ||
        PyModule_AddIntConstant(module, "INDEX_FLAG_OPAQUE", LFS_FLAG_OPAQUE) < 0 ||
        PyModule_AddIntConstant(module, "INDEX_FLAG_DENIED", LFS_FLAG_DENIED) < 0 ||
        PyModule_AddIntConstant(module, "INDEX_NAME_MAX", LFS_NAME_MAX) < 0 ||
        add_owned(module, "INDEX_BLOB_MAX", PyLong_FromUnsignedLong(LFS_BLOB_MAX)) < 0)
        return -1;
    if (PyType_Ready(&IndexType) < 0)
        return -1;
    Py_INCREF(&IndexType);
    if (PyModule_AddObject(module, "MergedIndex", (PyObject *)&IndexType) < 0) {
        Py_DECREF(&IndexType);
        return -1;
    }
    return 0;
}
