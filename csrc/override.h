/* override.h: the owners, modes and device numbers kept in `user.containers.override_stat`.
 *
 * The format and the rules are documented once, for Python, in layerfs/_layer/override.py (and
 * docs/overlay.rst "Owners kept in an xattr"); this is their C twin, used by the merged-index walk
 * (mergebuild.c) and the writable upper (upper.c, ops_meta.c, ops_dir.c).  tests/test_rootless.py
 * checks that both read every value alike.  No allocation, no system call but the xattr reads and
 * writes of lfs_override_get / _set; thread-safe.
 */
#ifndef LAYERFS_OVERRIDE_H
#define LAYERFS_OVERRIDE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define LFS_OVERRIDE_XATTR "user.containers.override_stat"
#define LFS_OVERRIDE_PREFIX "user.containers.override_" /* private: never shown, never from a tar */
/* The longest value written: "4294967295:4294967295:7777:block-4294967295-4294967295" + NUL;
 * a longer value read is malformed. */
#define LFS_OVERRIDE_MAX 64

struct lfs_override {
    uint32_t uid, gid;
    uint32_t mode; /* type and permission bits (07777) */
    uint64_t rdev;
};

/* Read value[0..len) for a file whose st_mode on disk is disk_mode.  Returns 0, or -EINVAL when
 * it is malformed or does not fit the file (a type change other than regular file -> device,
 * fifo or socket). */
int lfs_override_parse(const char *value, size_t len, uint32_t disk_mode, struct lfs_override *out);

/* Write the value of o into buf (NUL-terminated).  Returns its length, or -EINVAL. */
int lfs_override_format(const struct lfs_override *o, char *buf, size_t size);

/* The permission bits an object kept in the override form has on disk (layerfs/_layer/override.py
 * disk_mode): no setuid, setgid or sticky, no write for others, the owner may read and write (a
 * directory: also search). */
uint32_t lfs_override_disk_mode(uint32_t mode);

/* Apply the override of the object at `path` (an l*xattr path: "/proc/self/fd/N[/name]", not
 * followed when `follow` is 0) to *uid, *gid, *mode, *rdev, if it has a valid one (only regular
 * files and directories can).  Returns 1 if applied, 0 if none, -errno if it cannot be read. */
int lfs_override_get(const char *path, int follow, uint32_t *uid, uint32_t *gid, uint32_t *mode, uint64_t *rdev);

/* Set the override of the object at `path` (as for lfs_override_get).  Returns 0 or -errno. */
int lfs_override_set(const char *path, int follow, const struct lfs_override *o);

#endif
