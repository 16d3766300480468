/* fdcache.c: the backing file descriptors that data requests use, bounded.
 *
 * With FUSE_CAP_NO_OPEN_SUPPORT the kernel sends no OPEN or RELEASE: a READ or WRITE names the
 * inode only.  So the engine keeps one fd per object it served data for, in a cache of at most
 * max_open fds (CLOCK eviction, a second chance for recently used ones); an fd a request is using
 * is pinned (refs) and never closed under it.  A tar of more files than the cache holds reopens the
 * evicted ones instead of failing with EMFILE (docs/fuse.rst "Capabilities the C engine uses").
 *
 * Which file backs an object: a pristine lower object, or a metadata-only copy-up, reads its lower
 * file (opened inside its layer with openat2, see open_in_layer); an object with upper data uses
 * its upper file, opened read-write so that reads and writes share one fd.  A copy-up drops the
 * lower fd of the object (fd_drop), so the next request opens the upper file: a file open for
 * reading before the copy-up then reads the new data, as on the kernel overlay.
 *
 * Locking: fs->fd_lock guards the slots.  Callers hold fs->tree (shared at least) while they use
 * an fd, so the onode owning a slot cannot be freed meanwhile.
 */
#include "fs.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

/* openat2(2) confined to the layer: RESOLVE_IN_ROOT keeps "..", absolute names and symlinks inside
 * the layer's root, and RESOLVE_NO_SYMLINKS refuses any symlink on the way.  A layer of the store is
 * immutable, but a `-o lowerdir=` directory belongs to the caller and may change under a mount
 * (a directory swapped for a symlink to elsewhere): the daemon, root with allow_other, must never
 * read outside the layer then.  The index descends only through real directories, so a valid
 * layer never meets a symlink here. */
int open_in_layer(int layer_fd, const char *path, int flags)
{
    struct open_how how = {
        .flags = (uint64_t)flags,
        .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS,
    };
    return (int)syscall(SYS_openat2, layer_fd, path, &how, sizeof how);
}

int fd_init(struct lfs_fs *fs, uint32_t max_open)
{
    struct rlimit rl; /* the cache holds at most max_open fds, and never more than half the limit */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl); /* best effort: the cap below follows what we got */
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && max_open > rl.rlim_cur / 2)
        max_open = (uint32_t)(rl.rlim_cur / 2);
    if (max_open < 1)
        max_open = 1;
    fs->max_open = max_open;
    int rc = lfs_region_init(&fs->slot_of_r, sizeof(int32_t) * fs->ix.max_nodes);
    if (rc < 0)
        return rc;
    fs->slot_of = (int32_t *)fs->slot_of_r.base;
    if ((rc = fd_grow(fs, lfs_n_nodes(&fs->ix))) < 0)
        return rc;
    fs->slots = malloc(sizeof(struct fdslot) * max_open);
    if (fs->slots == NULL)
        return -ENOMEM;
    int err = pthread_mutex_init(&fs->fd_lock, NULL);
    if (err)
        return -err;
    for (uint32_t i = 0; i < max_open; i++)
        fs->slots[i] = (struct fdslot){0, -1, 0, 0};
    return 0;
}

/* Give the new nodes of a lazy index no slot (node_grow, before they are published). */
int fd_grow(struct lfs_fs *fs, uint32_t n_nodes)
{
    if (n_nodes <= fs->slot_of_n)
        return 0;
    int rc = lfs_region_grow(&fs->slot_of_r, sizeof(int32_t) * (size_t)n_nodes);
    if (rc < 0)
        return rc;
    for (uint32_t i = fs->slot_of_n; i < n_nodes; i++)
        fs->slot_of[i] = -1;
    fs->slot_of_n = n_nodes;
    return 0;
}

void fd_free(struct lfs_fs *fs)
{
    if (fs->slots) {
        for (uint32_t i = 0; i < fs->max_open; i++)
            if (fs->slots[i].fd >= 0)
                close(fs->slots[i].fd);
        free(fs->slots);
        fs->slots = NULL;
        pthread_mutex_destroy(&fs->fd_lock);
    }
    lfs_region_free(&fs->slot_of_r);
    fs->slot_of = NULL;
    fs->slot_of_n = 0;
}

/* Which slot pointer an object uses, and its cache key. */
static int uses_upper(const struct lfs_obj *obj)
{
    return obj->on && obj->on->has_upper && !obj->on->metacopy;
}

static int32_t *slot_ref(struct lfs_fs *fs, const struct lfs_obj *obj)
{
    if (uses_upper(obj))
        return &obj->on->slot;
    return &fs->slot_of[obj->lower];
}

static uint64_t slot_key(const struct lfs_obj *obj)
{
    return uses_upper(obj) ? obj->on->id | (1ULL << 62) : obj->lower;
}

static int open_backing(struct lfs_fs *fs, const struct lfs_obj *obj, int write)
{
    if (uses_upper(obj)) {
        /* no atime from our own reads: the mount is noatime, as the kernel's FUSE inodes are */
        int fd = upper_open(fs, obj->on, O_RDWR | O_NOATIME);
        if (fd == -EPERM) /* O_NOATIME needs the owner or CAP_FOWNER */
            fd = upper_open(fs, obj->on, O_RDWR);
        if (fd < 0 && !write && (fd == -EACCES || fd == -EROFS || fd == -EPERM))
            fd = upper_open(fs, obj->on, O_RDONLY);
        return fd;
    }
    if (write)
        return -EROFS; /* callers copy up before writing */
    const struct lfs_node *n = lfs_node(&fs->ix, obj->lower);
    if (n == NULL || (n->mode & S_IFMT) != S_IFREG)
        return n == NULL ? -ESTALE : -EINVAL;
    char path[PATH_MAX];
    int rc = node_path(&fs->ix, obj->lower, path, sizeof path);
    if (rc < 0)
        return rc;
    int fd = open_in_layer(fs->layer_fds[n->layer], path, fs->open_flags);
    if (fd < 0 && errno == EPERM && (fs->open_flags & O_NOATIME))
        fd = open_in_layer(fs->layer_fds[n->layer], path, fs->open_flags & ~O_NOATIME);
    return fd < 0 ? -errno : fd;
}

/* The lookup table a slot belongs to, for eviction: the slot remembers its key only, so find the
 * owner's pointer again from the key. */
static void clear_owner(struct lfs_fs *fs, struct fdslot *v)
{
    if (v->id & (1ULL << 62)) {
        struct lfs_obj o;
        if (node_resolve(fs, v->id & ~(1ULL << 62), &o) == 0 && o.on && o.on->slot >= 0 &&
            &fs->slots[o.on->slot] == v)
            o.on->slot = -1;
    } else if (v->id < lfs_n_nodes(&fs->ix) && fs->slot_of[v->id] >= 0 && &fs->slots[fs->slot_of[v->id]] == v) {
        fs->slot_of[v->id] = -1;
    }
}

int fd_get(struct lfs_fs *fs, const struct lfs_obj *obj, int *slot, int write)
{
    int32_t *ref = slot_ref(fs, obj);
    uint64_t key = slot_key(obj);
    pthread_mutex_lock(&fs->fd_lock);
    int s = *ref;
    if (s >= 0 && fs->slots[s].id == key) {
        fs->slots[s].refs++;
        fs->slots[s].recent = 1;
        int cached = fs->slots[s].fd;
        pthread_mutex_unlock(&fs->fd_lock);
        *slot = s;
        return cached;
    }
    pthread_mutex_unlock(&fs->fd_lock);
    int fd = open_backing(fs, obj, write); /* outside the lock: it walks a path */
    if (fd < 0)
        return fd;
    int victim_fd = -1;
    pthread_mutex_lock(&fs->fd_lock);
    s = *ref;
    if (s >= 0 && fs->slots[s].id == key) { /* another thread opened it meanwhile */
        fs->slots[s].refs++;
        fs->slots[s].recent = 1;
        int cached = fs->slots[s].fd;
        pthread_mutex_unlock(&fs->fd_lock);
        close(fd);
        *slot = s;
        return cached;
    }
    *slot = -1;
    for (uint32_t tries = 0; tries < 2 * fs->max_open; tries++) { /* CLOCK: a second chance */
        struct fdslot *v = &fs->slots[fs->hand];
        uint32_t here = fs->hand;
        fs->hand = (fs->hand + 1) % fs->max_open;
        if (v->fd >= 0 && (v->refs > 0 || v->recent)) {
            v->recent = 0;
            continue;
        }
        if (v->fd >= 0) {
            victim_fd = v->fd;
            clear_owner(fs, v);
        } else {
            __atomic_fetch_add(&fs->open_files, 1, __ATOMIC_RELAXED);
        }
        *v = (struct fdslot){key, fd, 1, 1};
        *ref = (int32_t)here;
        *slot = (int)here;
        break;
    }
    pthread_mutex_unlock(&fs->fd_lock);
    if (victim_fd >= 0)
        close(victim_fd);
    return fd;
}

void fd_put(struct lfs_fs *fs, int slot, int fd)
{
    if (slot < 0) {
        close(fd);
        return;
    }
    pthread_mutex_lock(&fs->fd_lock);
    fs->slots[slot].refs--;
    pthread_mutex_unlock(&fs->fd_lock);
}

/* Close the cached fds of an object (its lower one and its upper one), e.g. after a copy-up.
 * Called with fs->tree held exclusively, so no request is using them. */
void fd_drop(struct lfs_fs *fs, const struct lfs_obj *obj)
{
    pthread_mutex_lock(&fs->fd_lock);
    int32_t *refs[2] = {obj->lower < lfs_n_nodes(&fs->ix) && obj->lower ? &fs->slot_of[obj->lower] : NULL,
                        obj->on ? &obj->on->slot : NULL};
    for (int i = 0; i < 2; i++) {
        if (refs[i] == NULL || *refs[i] < 0)
            continue;
        struct fdslot *v = &fs->slots[*refs[i]];
        if (v->fd >= 0 && v->refs == 0) {
            close(v->fd);
            *v = (struct fdslot){0, -1, 0, 0};
            __atomic_fetch_sub(&fs->open_files, 1, __ATOMIC_RELAXED);
        }
        *refs[i] = -1;
    }
    pthread_mutex_unlock(&fs->fd_lock);
}
