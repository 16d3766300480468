/* module.c: the module object of layerfs._native; each part adds itself (see native.h). */
#include "native.h"

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "layerfs._native",
    "Native helpers of layerfs: system calls Python lacks and the mount's hot path.\n"
    "Use layerfs._sys, never this module directly.",
    -1, NULL,
};

PyMODINIT_FUNC PyInit__native(void)
{
    PyObject *m = PyModule_Create(&native_module);
    if (m == NULL)
        return NULL;
    if (layerfs_init_sys(m) < 0 || layerfs_init_merge(m) < 0 || layerfs_init_session(m) < 0 || layerfs_init_mergebuild(m) < 0 ||
        layerfs_init_override(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
