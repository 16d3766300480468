/* idmap.c: translating owners between the IDs on disk and the IDs a mount shows (see idmap.h).
 *
 * Cost: a scan of at most LFS_IDMAP_MAX ranges per ID, only on mounts given a mapping (without
 * one, lfs_attr_shown returns at its first test).  Errors: lfs_idmap_check's -EINVAL only.
 */
#include "fs.h"
#include "idmap.h"

#include <errno.h>
#include <sys/stat.h>

/* Whether [a, a + na) and [b, b + nb) share an ID. */
static int overlap(uint64_t a, uint64_t na, uint64_t b, uint64_t nb)
{
    return a < b + nb && b < a + na;
}

int lfs_idmap_check(const struct lfs_idmap *m)
{
    if (m->n > LFS_IDMAP_MAX)
        return -EINVAL;
    for (uint32_t i = 0; i < m->n; i++) {
        const struct lfs_idrange *a = &m->r[i];
        if (a->size == 0 || (uint64_t)a->container + a->size > (1ULL << 32) || (uint64_t)a->host + a->size > (1ULL << 32))
            return -EINVAL;
        for (uint32_t k = 0; k < i; k++) {
            const struct lfs_idrange *b = &m->r[k];
            if (overlap(a->container, a->size, b->container, b->size) || overlap(a->host, a->size, b->host, b->size))
                return -EINVAL;
        }
    }
    return 0;
}

/* `id` from one side of the ranges to the other: from the container side (on disk) to the host
 * side when to_host, else back. */
static uint32_t translate(const struct lfs_idmap *m, uint32_t id, int to_host)
{
    if (m->n == 0)
        return id;
    for (uint32_t i = 0; i < m->n; i++) {
        uint32_t from = to_host ? m->r[i].container : m->r[i].host;
        uint32_t to = to_host ? m->r[i].host : m->r[i].container;
        if (id >= from && id - from < m->r[i].size)
            return to + (id - from);
    }
    return m->overflow;
}

uint32_t lfs_idmap_to_host(const struct lfs_idmap *m, uint32_t id)
{
    return translate(m, id, 1);
}

uint32_t lfs_idmap_to_container(const struct lfs_idmap *m, uint32_t id)
{
    return translate(m, id, 0);
}

int lfs_idmap_own_link(const struct lfs_fs *fs, mode_t mode)
{
    return !fs->privileged && S_ISLNK(mode);
}

void lfs_attr_shown(const struct lfs_fs *fs, struct stat *st)
{
    if (fs->uids.n == 0 && fs->gids.n == 0)
        return;
    /* An unprivileged daemon's symlink carries no override (xattr(7): no user.* xattrs on a
     * symlink), so its owner on disk is the daemon's own, which stands for whatever the mapping
     * shows as the daemon's user: the caller (docs/overlay.rst "ID mappings"). */
    int own = lfs_idmap_own_link(fs, st->st_mode);
    if (!(own && st->st_uid == fs->self_uid))
        st->st_uid = lfs_idmap_to_host(&fs->uids, st->st_uid);
    if (!(own && st->st_gid == fs->self_gid))
        st->st_gid = lfs_idmap_to_host(&fs->gids, st->st_gid);
}
