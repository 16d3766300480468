/* sys.c: the system calls the unpacker needs that Python's os module lacks.
 *
 * openat2(2) with RESOLVE_IN_ROOT resolves a path as if the given directory were "/": "..",
 * absolute paths and symlinks can never leave it.  Every call raises OSError (with errno and the
 * path) on failure.  The GIL is released around each system call.
 */
#include "native.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <unistd.h>

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
    return PyLong_FromLong(fd);
}

static PyMethodDef sys_methods[] = {
    {"openat2", (PyCFunction)(void (*)(void))py_openat2, METH_VARARGS | METH_KEYWORDS,
     "openat2(dirfd, path, flags, mode=0, resolve=0) -> fd"},
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
