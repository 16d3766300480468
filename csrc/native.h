/* native.h: what each C file of csrc/ contributes to the extension module layerfs._native.
 *
 * Every file defines one `int layerfs_init_<part>(PyObject *module)` that adds its functions and
 * types to the module and returns 0, or sets an exception and returns -1.  module.c calls them
 * in order.  Python code reaches all of it through layerfs/_sys.py only.
 */
#ifndef LAYERFS_NATIVE_H
#define LAYERFS_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

int layerfs_init_sys(PyObject *module);   /* sys.c: openat2 and the *at() calls the unpacker needs */
int layerfs_init_merge(PyObject *module); /* merge.c: the merged-tree index (MergedIndex) of a mount */
int layerfs_init_session(PyObject *module); /* session.c: the C libfuse engine (FuseSession) */
int layerfs_init_mergebuild(PyObject *module); /* mergebuild.c: merge_build, the index walk in C */
int layerfs_init_override(PyObject *module); /* override.c: user.containers.override_stat (tests' hooks) */

#endif
