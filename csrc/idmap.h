/* idmap.h: fuse-overlayfs's `-o uidmapping=` / `gidmapping=`: the IDs a mount shows are not the
 * IDs on disk, but translated by ranges (docs/overlay.rst "ID mappings").
 *
 * Two domains, named as a user namespace's mapping names them (the runtime spec's
 * containerID / hostID, containers-storage's CONTAINER:HOST:SIZE):
 *   - container IDs: the IDs on disk, in the layers, the upper and its overrides (the image's);
 *   - host IDs: the IDs the mount shows, and the IDs its callers have (the FUSE request's).
 * A range {container, host, size} shows container ID c in [container, container + size) as
 * host + (c - container), and takes host ID h in [host, host + size) back as container +
 * (h - host).  An ID no range holds becomes the overflow ID (/proc/sys/kernel/overflowuid,
 * overflowgid: 65534), both ways, as fuse-overlayfs's find_mapping does.  A map without ranges
 * is the identity (no option given).
 *
 * The engine keeps every ID in the container domain; the one place where IDs go out is
 * lfs_attr_shown (node_entry and the attribute replies), the places where they come in are the
 * SETATTR owner, the creating caller's uid and gid (ops_dir.c new_owner), the group check
 * (ops_meta.c lfs_caller_in_group) and the root check (the caller's uid on disk 0: ops_dir.c
 * new_owner, ops_meta.c drop_sgid).  One exception (lfs_idmap_own_link): an unprivileged daemon's symlink,
 * which cannot carry an override, is the daemon's own on disk and shown as the caller.  IDs in
 * xattr values (POSIX ACLs, v3 file capabilities) are not translated.  No allocation, no system call; thread-safe (read-only once
 * the session is made).
 */
#ifndef LAYERFS_IDMAP_H
#define LAYERFS_IDMAP_H

#include <stdint.h>

#define LFS_IDMAP_MAX 64 /* ranges per map: more is refused (the kernel's uid_map takes 340) */

struct lfs_idrange {
    uint32_t container, host, size;
};

struct lfs_idmap {
    uint32_t n;        /* ranges in use; 0: the identity */
    uint32_t overflow; /* what an ID no range holds becomes */
    struct lfs_idrange r[LFS_IDMAP_MAX];
};

/* Whether the map is one the engine takes: at most LFS_IDMAP_MAX ranges, none empty, none
 * running past 2^32, none overlapping another on either side (each ID has one translation).
 * Returns 0 or -EINVAL. */
int lfs_idmap_check(const struct lfs_idmap *m);

/* The host ID (shown) of container ID `id` (on disk). */
uint32_t lfs_idmap_to_host(const struct lfs_idmap *m, uint32_t id);

/* The container ID (on disk) of host ID `id` (a caller's, or given to chown). */
uint32_t lfs_idmap_to_container(const struct lfs_idmap *m, uint32_t id);

#endif
