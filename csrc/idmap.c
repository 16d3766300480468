/* idmap.c: translating owners between the IDs on disk and the IDs a mount shows (see idmap.h).
 *
 * Cost: a scan of at most LFS_IDMAP_MAX ranges per ID, only on mounts given a mapping (without
 * one, lfs_attr_shown returns at its first test).  Errors: lfs_idmap_check's -EINVAL only.
 */
#include "fs.h"
#include "idmap.h"

#include <errno.h>
#include <sys/stat.h>

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
            if ((uint64_t)a->container < (uint64_t)b->container + b->size &&
                (uint64_t)b->container < (uint64_t)a->container + a->size)
                return -EINVAL;
            if ((uint64_t)a->host < (uint64_t)b->host + b->size && (uint64_t)b->host < (uint64_t)a->host + a->size)
                return -EINVAL;
        }
    }
    return 0;
}

uint32_t lfs_idmap_to_host(const struct lfs_idmap *m, uint32_t id)
{
    if (m->n == 0)
        return id;
    for (uint32_t i = 0; i < m->n; i++)
        if (id >= m->r[i].container && id - m->r[i].container < m->r[i].size)
            return m->r[i].host + (id - m->r[i].container);
    return m->overflow;
}

uint32_t lfs_idmap_to_container(const struct lfs_idmap *m, uint32_t id)
{
    if (m->n == 0)
        return id;
    for (uint32_t i = 0; i < m->n; i++)
        if (id >= m->r[i].host && id - m->r[i].host < m->r[i].size)
            return m->r[i].container + (id - m->r[i].host);
    return m->overflow;
}

uid_t lfs_idmap_caller_uid(const struct lfs_fs *fs, uid_t host)
{
    return lfs_idmap_to_container(&fs->uids, host);
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
