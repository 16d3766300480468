/* node.c: what a FUSE nodeid denotes, and looking names up through the upper and the index.
 *
 * The three kinds of nodeid are described in fs.h.  A lookup in a directory that has no upper
 * counterpart is answered from the index alone (a binary search; no system call, no allocation),
 * exactly as on a read-only mount: nothing in such a directory can have changed, since any change
 * first copies its directory up.  In a directory with an upper, the name is looked for in the
 * directory's upper entries (dir.c, loaded once), then in the merged lower directory unless the
 * upper directory is opaque or a whiteout hides the name (docs/overlay.rst "Layers and lookup").
 *
 * Onodes of index nodes are never freed (they are few: what was changed).  Onodes of upper-only
 * objects count the lookups the kernel holds and are freed when the kernel forgets them and no
 * child points at them.
 *
 * Locking: callers hold fs->tree (shared or exclusive).  Creating onodes and loading directory
 * states from a shared section is serialised by fs->tbl (a mutex), so two lookups never create
 * two onodes for one object.
 * Errors: functions return 0 or -errno.
 */
#include "fs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <unistd.h>

static pthread_mutex_t tbl = PTHREAD_MUTEX_INITIALIZER;

static size_t hash_u64(uint64_t v, size_t n)
{
    v ^= v >> 33;
    v *= 0xff51afd7ed558ccdULL;
    v ^= v >> 33;
    return (size_t)(v & (n - 1));
}

/* Record that the entries of directory `dir` are its (writable mounts: node_lower_location). */
static void note_dents(struct lfs_fs *fs, uint32_t dir)
{
    const struct lfs_node *n = &fs->ix.nodes[dir];
    for (uint32_t k = 0; k < n->n_dents; k++)
        fs->dent_dir[n->first_dent + k] = dir;
}

/* The index grew (a lazy index merged directory `dir`): make the per-node tables as long, before
 * the new nodes are published (lfs_lazy_load calls this with its lock held, fs->tree as it was). */
int node_grow(void *ctx, uint32_t dir, uint32_t n_nodes, uint32_t n_dents)
{
    struct lfs_fs *fs = ctx;
    int rc = lfs_region_grow(&fs->ix_on_r, sizeof *fs->ix_on * (size_t)n_nodes);
    if (rc == 0)
        rc = fd_grow(fs, n_nodes);
    if (rc == 0 && fs->writable && (rc = lfs_region_grow(&fs->dent_dir_r, sizeof *fs->dent_dir * (size_t)n_dents)) == 0)
        note_dents(fs, dir);
    return rc;
}

int node_init(struct lfs_fs *fs)
{
    fs->nbuckets = 1 << 12;
    int rc = lfs_region_init(&fs->ix_on_r, sizeof *fs->ix_on * (size_t)fs->ix.max_nodes);
    if (rc == 0)
        rc = lfs_region_grow(&fs->ix_on_r, sizeof *fs->ix_on * (size_t)lfs_n_nodes(&fs->ix));
    if (rc < 0)
        return rc;
    fs->ix_on = (struct onode **)fs->ix_on_r.base;
    fs->by_id = calloc(fs->nbuckets, sizeof *fs->by_id);
    fs->by_ino = calloc(fs->nbuckets, sizeof *fs->by_ino);
    if (fs->by_id == NULL || fs->by_ino == NULL)
        return -ENOMEM;
    if (!fs->writable)
        return 0;
    if ((rc = lfs_region_init(&fs->dent_dir_r, sizeof *fs->dent_dir * ((size_t)fs->ix.max_dents + 1))) < 0 ||
        (rc = lfs_region_grow(&fs->dent_dir_r, sizeof *fs->dent_dir * (size_t)lfs_n_dents(&fs->ix))) < 0)
        return rc;
    fs->dent_dir = (uint32_t *)fs->dent_dir_r.base;
    for (uint32_t i = 1; i < lfs_n_nodes(&fs->ix); i++)
        if (lfs_is_dir(fs->ix.nodes[i].mode) && fs->ix.nodes[i].pending == 0)
            note_dents(fs, i);
    struct onode *root = node_new(fs, LFS_ROOT_INO, S_IFDIR);
    if (root == NULL)
        return -ENOMEM;
    root->lower = LFS_ROOT_INO;
    root->has_upper = 1;
    root->dirfd = fcntl(fs->upper_fd, F_DUPFD_CLOEXEC, 3);
    if (root->dirfd < 0)
        return -errno;
    struct stat st;
    if (fstat(root->dirfd, &st) < 0)
        return -errno;
    root->upper_ino = st.st_ino;
    node_hash_ino(fs, root);
    fs->root = root;
    return 0;
}

static void onode_free(struct onode *on)
{
    if (on->dirfd >= 0)
        close(on->dirfd);
    if (on->keepfd >= 0)
        close(on->keepfd);
    if (on->ds) {
        dir_free(on->ds);
        free(on->ds);
    }
    free(on->name);
    free(on);
}

void node_free_all(struct lfs_fs *fs)
{
    if (fs->ix_on) {
        for (uint32_t i = 0; i < lfs_n_nodes(&fs->ix); i++)
            if (fs->ix_on[i])
                onode_free(fs->ix_on[i]);
    }
    lfs_region_free(&fs->ix_on_r);
    fs->ix_on = NULL;
    if (fs->by_id) {
        for (size_t b = 0; b < fs->nbuckets; b++) {
            struct onode *on = fs->by_id[b];
            while (on) {
                struct onode *next = on->hnext_id;
                onode_free(on);
                on = next;
            }
        }
        free(fs->by_id);
        fs->by_id = NULL;
    }
    free(fs->by_ino);
    fs->by_ino = NULL;
    lfs_region_free(&fs->dent_dir_r);
    fs->dent_dir = NULL;
    fs->root = NULL;
}

static int is_index_id(const struct lfs_fs *fs, uint64_t id)
{
    return id >= 1 && id < lfs_n_nodes(&fs->ix);
}

static struct onode *find_id(struct lfs_fs *fs, uint64_t id)
{
    if (is_index_id(fs, id))
        return fs->ix_on[id];
    for (struct onode *on = fs->by_id[hash_u64(id, fs->nbuckets)]; on; on = on->hnext_id)
        if (on->id == id)
            return on;
    return NULL;
}

struct onode *node_new(struct lfs_fs *fs, uint64_t id, mode_t type)
{
    struct onode *on = calloc(1, sizeof *on);
    if (on == NULL)
        return NULL;
    on->id = id;
    on->type = type & S_IFMT;
    on->dirfd = -1;
    on->keepfd = -1;
    on->slot = -1;
    if (is_index_id(fs, id)) {
        fs->ix_on[id] = on;
    } else {
        size_t b = hash_u64(id, fs->nbuckets);
        on->hnext_id = fs->by_id[b];
        fs->by_id[b] = on;
    }
    return on;
}

struct onode *node_get_index(struct lfs_fs *fs, uint32_t ino)
{
    return is_index_id(fs, ino) ? fs->ix_on[ino] : NULL;
}

void node_hash_ino(struct lfs_fs *fs, struct onode *on)
{
    size_t b = hash_u64(on->upper_ino, fs->nbuckets);
    on->hnext_ino = fs->by_ino[b];
    fs->by_ino[b] = on;
}

void node_unhash_ino(struct lfs_fs *fs, struct onode *on)
{
    struct onode **p = &fs->by_ino[hash_u64(on->upper_ino, fs->nbuckets)];
    for (; *p; p = &(*p)->hnext_ino)
        if (*p == on) {
            *p = on->hnext_ino;
            on->hnext_ino = NULL;
            return;
        }
}

struct onode *node_by_ino(struct lfs_fs *fs, ino_t ino)
{
    for (struct onode *on = fs->by_ino[hash_u64(ino, fs->nbuckets)]; on; on = on->hnext_ino)
        if (on->upper_ino == ino && on->has_upper)
            return on;
    return NULL;
}

void node_set_name(struct onode *on, struct onode *parent, const char *name, size_t len)
{
    char *copy = NULL;
    if (name != NULL) {
        copy = malloc(len + 1);
        if (copy == NULL)
            return; /* keeps the old name: the object stays reachable through it or its keepfd */
        memcpy(copy, name, len);
        copy[len] = '\0';
    }
    free(on->name);
    on->name = copy;
    if (on->parent != parent) {
        if (on->parent)
            on->parent->refs--;
        if (parent)
            parent->refs++;
        on->parent = parent;
    }
}

/* The position of `name` among the entries of index directory `dir`, or UINT32_MAX. */
uint32_t lfs_lookup_dent(const struct lfs_index *ix, const struct lfs_node *dir, const char *name, size_t len)
{
    size_t lo = dir->first_dent, hi = (size_t)dir->first_dent + dir->n_dents;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const struct lfs_dent *d = &ix->dents[mid];
        size_t n = d->name_len < len ? d->name_len : len;
        int c = memcmp(ix->blob + d->name_off, name, n);
        if (c == 0)
            c = d->name_len < len ? -1 : d->name_len > len ? 1 : 0;
        if (c == 0)
            return (uint32_t)mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return UINT32_MAX;
}

/* The nodeid of lower object `ino` reached through directory entry `dent` (see fs.h). */
uint64_t node_child_id(struct lfs_fs *fs, uint32_t ino, uint32_t dent)
{
    const struct lfs_node *n = &fs->ix.nodes[ino];
    if (!fs->writable || lfs_is_dir(n->mode) || n->nlink <= 1)
        return ino;
    return ((uint64_t)dent + 1) << LFS_GEN_SHIFT | ino;
}

/* Where a lower object sits in the index: its directory and name (copy-up needs them). */
int node_lower_location(struct lfs_fs *fs, const struct lfs_obj *obj, uint32_t *dir, const char **name, size_t *len)
{
    uint64_t id = obj->id;
    if (is_index_id(fs, id)) {
        const struct lfs_node *n = &fs->ix.nodes[id];
        if (id == LFS_ROOT_INO)
            return -EINVAL;
        *dir = n->parent;
        *name = fs->ix.blob + n->name_off;
        *len = n->name_len;
        return 0;
    }
    if (id & LFS_UPPER_BIT)
        return -EINVAL;
    uint64_t dent = (id >> LFS_GEN_SHIFT) - 1;
    if (dent >= lfs_n_dents(&fs->ix) || fs->dent_dir == NULL)
        return -ESTALE;
    const struct lfs_dent *d = &fs->ix.dents[dent];
    *dir = fs->dent_dir[dent];
    *name = fs->ix.blob + d->name_off;
    *len = d->name_len;
    return 0;
}

int node_resolve(struct lfs_fs *fs, uint64_t id, struct lfs_obj *out)
{
    out->id = id;
    if (is_index_id(fs, id)) {
        out->on = fs->ix_on[id];
        out->lower = (uint32_t)id;
        if (out->on && out->on->has_upper && !lfs_is_dir(out->on->type))
            out->lower = out->on->lower;
        return 0;
    }
    if (!fs->writable)
        return -ESTALE;
    struct onode *on = find_id(fs, id);
    if (on != NULL) {
        out->on = on;
        out->lower = on->lower;
        return 0;
    }
    if (id & LFS_UPPER_BIT)
        return -ESTALE;
    /* one name of a lower hard link: ((dent + 1) << 32) | ino */
    uint32_t ino = (uint32_t)(id & 0xffffffffu);
    uint64_t dent = (id >> LFS_GEN_SHIFT) - 1;
    if (!is_index_id(fs, ino) || dent >= lfs_n_dents(&fs->ix) || fs->ix.dents[dent].ino != ino)
        return -ESTALE;
    out->on = NULL;
    out->lower = ino;
    return 0;
}

uint32_t node_lower_child(struct lfs_fs *fs, const struct onode *dir, const char *name, size_t len)
{
    if (dir->lower == 0 || dir->opaque || len > LFS_NAME_MAX)
        return 0;
    const struct lfs_node *n = lfs_node(&fs->ix, dir->lower);
    if (n == NULL || !lfs_is_dir(n->mode) || lfs_ready(&fs->ix, dir->lower) < 0)
        return 0; /* a directory is ready before it is used (node_dir_ready): never so in fact */
    return lfs_lookup(&fs->ix, n, name, len);
}

int node_lower_has(struct lfs_fs *fs, const struct onode *dir, const char *name, size_t len)
{
    return node_lower_child(fs, dir, name, len) != 0;
}

mode_t node_type(struct lfs_fs *fs, const struct lfs_obj *obj)
{
    if (obj->on)
        return obj->on->type;
    const struct lfs_node *n = lfs_node(&fs->ix, obj->lower);
    return n ? (n->mode & S_IFMT) : 0;
}

static int upper_xattr_is(struct lfs_fs *fs, int dirfd, const char *name, const char *suffix, const char *want)
{
    char attr[64], value[8], path[64];
    snprintf(attr, sizeof attr, "%s.overlay.%s", fs->privileged ? "trusted" : "user", suffix);
    snprintf(path, sizeof path, "/proc/self/fd/%d/", dirfd);
    /* lgetxattr on "<dirfd>/<name>": the final name is not followed */
    size_t plen = strlen(path), nlen = strlen(name);
    char *full = malloc(plen + nlen + 1);
    if (full == NULL)
        return 0;
    memcpy(full, path, plen);
    memcpy(full + plen, name, nlen + 1);
    ssize_t n = lgetxattr(full, attr, value, sizeof value);
    free(full);
    if (n < 0)
        return 0;
    if (want == NULL)
        return 1;
    return (size_t)n == strlen(want) && memcmp(value, want, (size_t)n) == 0;
}

/* The index directory that the redirect of upper directory `name` (in `dir`) names, or 0 when it
 * has none or names no lower directory.  The kernel's form (docs/overlay.rst "Rename"): an absolute
 * path from the root, or a bare name looked up in the lower directory of the same parent.  Only
 * trusted.overlay.redirect is followed (the kernel's default, redirect_always_follow); an
 * unprivileged upper's user.overlay.* markers are the userxattr mode's, which never follows. */
static uint32_t upper_redirect(struct lfs_fs *fs, struct onode *dir, const char *name, int *has)
{
    char path[64 + LFS_NAME_MAX + 2], value[LFS_TARGET_MAX];
    *has = 0;
    if (!fs->privileged || dir->dirfd < 0)
        return 0;
    int n = snprintf(path, sizeof path, "/proc/self/fd/%d/%s", dir->dirfd, name);
    if (n < 0 || (size_t)n >= sizeof path)
        return 0;
    ssize_t len = lgetxattr(path, "trusted.overlay.redirect", value, sizeof value);
    if (len <= 0)
        return 0;
    *has = 1;
    if (value[0] != '/') {
        if (memchr(value, '/', (size_t)len) != NULL)
            return 0; /* a relative redirect is one name */
        return node_lower_child(fs, dir, value, (size_t)len);
    }
    uint32_t ino = LFS_ROOT_INO;
    for (ssize_t i = 0; i < len;) {
        while (i < len && value[i] == '/')
            i++;
        ssize_t start = i;
        while (i < len && value[i] != '/')
            i++;
        if (i == start)
            break;
        const struct lfs_node *d = lfs_node(&fs->ix, ino);
        if (d == NULL || !lfs_is_dir(d->mode) || lfs_ready(&fs->ix, ino) < 0)
            return 0;
        ino = lfs_lookup(&fs->ix, d, value + start, (size_t)(i - start));
        if (ino == 0)
            return 0;
    }
    const struct lfs_node *t = lfs_node(&fs->ix, ino);
    return ino != LFS_ROOT_INO && t != NULL && lfs_is_dir(t->mode) ? ino : 0;
}

/* The onode for an upper entry `e` of `dir` seen for the first time.  Called with tbl held. */
static struct onode *node_from_upper(struct lfs_fs *fs, struct onode *dir, const struct uent *e)
{
    uint32_t lower_c = node_lower_child(fs, dir, e->name, e->len);
    const struct lfs_node *ln = lower_c ? &fs->ix.nodes[lower_c] : NULL;
    struct onode *on;
    if (e->dtype == DT_DIR) {
        int opaque = upper_xattr_is(fs, dir->dirfd, e->name, "opaque", "y"), redirected = 0;
        if (!opaque) {
            uint32_t to = upper_redirect(fs, dir, e->name, &redirected);
            if (redirected) {
                lower_c = to;
                ln = lower_c ? &fs->ix.nodes[lower_c] : NULL;
            }
        }
        if (ln && lfs_is_dir(ln->mode) && !opaque && fs->ix_on[lower_c] == NULL) {
            on = node_new(fs, lower_c, S_IFDIR);
            if (on == NULL)
                return NULL;
            on->lower = lower_c;
        } else {
            on = node_new(fs, LFS_UPPER_BIT | (uint64_t)e->ino, S_IFDIR);
            if (on == NULL)
                return NULL;
            on->opaque = opaque;
            on->counted = 1;
            if (redirected && ln && lfs_is_dir(ln->mode))
                on->lower = lower_c; /* its lower directory has an onode already: merge it all the same */
        }
        on->dirfd = openat(dir->dirfd, e->name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (on->dirfd < 0) {
            /* vanished or unreadable: treat as a plain entry without a directory fd */
            on->dirfd = -1;
        }
    } else {
        mode_t t = e->dtype == DT_REG ? S_IFREG : e->dtype == DT_LNK ? S_IFLNK : e->dtype == DT_FIFO ? S_IFIFO
                 : e->dtype == DT_CHR ? S_IFCHR : e->dtype == DT_BLK ? S_IFBLK : e->dtype == DT_SOCK ? S_IFSOCK : 0;
        if (t == 0) {
            struct stat st;
            if (fstatat(dir->dirfd, e->name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                return NULL;
            t = st.st_mode & S_IFMT;
        }
        on = node_new(fs, LFS_UPPER_BIT | (uint64_t)e->ino, t);
        if (on == NULL)
            return NULL;
        on->counted = 1;
        if (t == S_IFREG && ln && (ln->mode & S_IFMT) == S_IFREG && fs->privileged &&
            upper_xattr_is(fs, dir->dirfd, e->name, "metacopy", NULL)) {
            on->metacopy = 1;
            on->lower = lower_c;
        }
    }
    on->has_upper = 1;
    on->upper_ino = e->ino;
    node_set_name(on, dir, e->name, e->len);
    if (on->name == NULL && e->len) {
        on->has_upper = 0;
        return NULL;
    }
    node_hash_ino(fs, on);
    return on;
}

/* Load the entries of an upper directory if they are not yet (callers may hold fs->tree shared). */
int node_load_dir(struct lfs_fs *fs, struct onode *dir)
{
    pthread_mutex_lock(&tbl);
    int rc = __atomic_load_n(&dir->ds, __ATOMIC_ACQUIRE) ? 0 : dir_load(fs, dir);
    pthread_mutex_unlock(&tbl);
    return rc;
}

/* The index directory whose entries directory `dir` shows below its upper ones: its own node
 * when pristine, its merged lower directory once it has an upper (none when opaque); 0: none. */
static uint32_t lower_dir(const struct lfs_obj *dir)
{
    const struct onode *on = dir->on;
    return on && on->has_upper ? (on->opaque ? 0 : on->lower) : dir->lower;
}

/* Whether the lower part of directory `dir` is one the index could not list (LFS_FLAG_DENIED):
 * listing it and looking names up in it answer EACCES, as the kernel overlay answers when the
 * mounter may not read a lower directory (a name its upper holds is still found). */
int node_denied(struct lfs_fs *fs, const struct lfs_obj *dir)
{
    uint32_t lower = lower_dir(dir);
    const struct lfs_node *n = lower ? lfs_node(&fs->ix, lower) : NULL;
    if (n != NULL && lfs_ready(&fs->ix, lower) < 0)
        return 1; /* callers made it ready (node_dir_ready) and answered its error: never so in fact */
    return n != NULL && (n->flags & LFS_FLAG_DENIED);
}

/* Make sure the lower directory behind `dir` has its entries (a lazy index merges them now):
 * every request that reads a directory's entries calls this first.  0 or -errno. */
int node_dir_ready(struct lfs_fs *fs, const struct lfs_obj *dir)
{
    uint32_t lower = lower_dir(dir);
    return lower ? lfs_ready(&fs->ix, lower) : 0;
}

int node_lookup(struct lfs_fs *fs, const struct lfs_obj *dir, const char *name, size_t len, struct lfs_obj *out)
{
    if (len > LFS_NAME_MAX)
        return -ENAMETOOLONG;
    if (!lfs_is_dir(node_type(fs, dir)))
        return -ENOTDIR;
    int ready = node_dir_ready(fs, dir);
    if (ready < 0)
        return ready;
    struct onode *d = dir->on;
    if (d == NULL || !d->has_upper) {
        /* pristine directory: the index alone knows */
        const struct lfs_node *dn = lfs_node(&fs->ix, dir->lower);
        if (dn == NULL)
            return -ESTALE;
        if (dn->flags & LFS_FLAG_DENIED)
            return -EACCES;
        uint32_t dent = lfs_lookup_dent(&fs->ix, dn, name, len);
        if (dent == UINT32_MAX)
            return -ENOENT;
        return node_resolve(fs, node_child_id(fs, fs->ix.dents[dent].ino, dent), out);
    }
    if (d->ds == NULL) {
        int rc = node_load_dir(fs, d);
        if (rc < 0)
            return rc;
    }
    struct uent *e = dir_find(d->ds, name, len);
    if (e != NULL) {
        if (e->whiteout)
            return -ENOENT;
        pthread_mutex_lock(&tbl);
        struct onode *on = node_by_ino(fs, e->ino);
        if (on == NULL)
            on = node_from_upper(fs, d, e);
        pthread_mutex_unlock(&tbl);
        if (on == NULL)
            return -EIO;
        out->id = on->id;
        out->on = on;
        out->lower = on->lower;
        return 0;
    }
    if (d->lower == 0 || d->opaque)
        return -ENOENT;
    const struct lfs_node *ln = lfs_node(&fs->ix, d->lower);
    if (ln && (ln->flags & LFS_FLAG_DENIED))
        return -EACCES;
    uint32_t dent = ln && lfs_is_dir(ln->mode) ? lfs_lookup_dent(&fs->ix, ln, name, len) : UINT32_MAX;
    if (dent == UINT32_MAX)
        return -ENOENT;
    return node_resolve(fs, node_child_id(fs, fs->ix.dents[dent].ino, dent), out);
}

void node_fill_stat(uint64_t id, const struct lfs_node *n, struct stat *st)
{
    memset(st, 0, sizeof *st);
    st->st_ino = id;
    st->st_mode = n->mode;
    st->st_nlink = n->nlink;
    st->st_uid = n->uid;
    st->st_gid = n->gid;
    st->st_rdev = n->rdev;
    st->st_size = (off_t)n->size;
    st->st_blocks = (blkcnt_t)n->blocks;
    st->st_blksize = 4096;
    int64_t t[3] = {n->atime_ns, n->mtime_ns, n->ctime_ns};
    struct timespec *ts[3] = {&st->st_atim, &st->st_mtim, &st->st_ctim};
    for (int i = 0; i < 3; i++) {
        ts[i]->tv_sec = t[i] / 1000000000LL;
        ts[i]->tv_nsec = t[i] % 1000000000LL;
        if (ts[i]->tv_nsec < 0) {
            ts[i]->tv_nsec += 1000000000LL;
            ts[i]->tv_sec--;
        }
    }
}

int node_stat(struct lfs_fs *fs, const struct lfs_obj *obj, struct stat *st)
{
    struct onode *on = obj->on;
    if (on == NULL || !on->has_upper) {
        const struct lfs_node *n = lfs_node(&fs->ix, obj->lower);
        if (n == NULL)
            return -ESTALE;
        int rc = lfs_is_dir(n->mode) ? lfs_ready(&fs->ix, obj->lower) : 0; /* its nlink */
        if (rc < 0)
            return rc;
        /* st_ino: the lower object's, for every name of a hard link.  An unlinked or removed lower
         * object keeps the lower object's link count, as on the kernel overlay: no layer lost it. */
        node_fill_stat(obj->lower, n, st);
        return 0;
    }
    int rc = upper_stat(fs, on, st);
    if (rc < 0)
        return rc;
    st->st_ino = obj->id;
    if (lfs_is_dir(on->type) && on->lower && !on->opaque)
        st->st_nlink = 1; /* a merged directory (the kernel overlay's rule) */
    if (on->metacopy && on->lower) {
        const struct lfs_node *n = lfs_node(&fs->ix, on->lower);
        if (n)
            st->st_blocks = (blkcnt_t)n->blocks; /* the data still lives in the lower file */
    }
    return 0; /* a removed upper object has the count of its upper object (0), a merged directory 1 */
}

void node_entry(struct lfs_fs *fs, uint64_t id, const struct stat *st, struct fuse_entry_param *e)
{
    memset(e, 0, sizeof *e);
    e->ino = id;
    e->generation = 1;
    e->entry_timeout = fs->entry_timeout;
    e->attr_timeout = fs->attr_timeout;
    e->attr = *st;
    lfs_attr_shown(fs, &e->attr);
}

void node_count_lookup(struct lfs_fs *fs, const struct lfs_obj *obj)
{
    if (obj->on && obj->on->counted)
        __atomic_fetch_add(&obj->on->nlookup, 1, __ATOMIC_RELAXED);
}

/* Free an upper-only onode nobody refers to any more: not the kernel (nlookup 0), not a child.
 * Called with fs->tree held exclusively. */
void node_maybe_free(struct lfs_fs *fs, struct onode *on)
{
    while (on && on->counted && on->nlookup == 0 && on->refs == 0 && on != fs->root) {
        struct onode *parent = on->parent;
        if (on->slot >= 0)
            fd_drop(fs, &(struct lfs_obj){on->id, on, on->lower});
        node_unhash_ino(fs, on);
        struct onode **p = &fs->by_id[hash_u64(on->id, fs->nbuckets)];
        for (; *p; p = &(*p)->hnext_id)
            if (*p == on) {
                *p = on->hnext_id;
                break;
            }
        if (parent)
            parent->refs--;
        on->parent = NULL;
        onode_free(on);
        on = parent;
    }
}

void node_forget(struct lfs_fs *fs, uint64_t id, uint64_t n)
{
    if (!fs->writable)
        return;
    if (is_index_id(fs, id) && __atomic_load_n(&fs->ix_on[id], __ATOMIC_ACQUIRE) == NULL)
        return; /* a pristine lower object: nothing to forget (the common case) */
    pthread_rwlock_wrlock(&fs->tree);
    struct onode *on = find_id(fs, id);
    if (on && on->counted) {
        on->nlookup = on->nlookup > n ? on->nlookup - n : 0;
        node_maybe_free(fs, on);
    } else if (on && on->dead) {
        /* Lookups of lower objects are not counted, but the kernel forgets an inode only when it
         * evicts it, and no name leads to a dead one any more: what kept it usable goes now
         * (an unlinked copy-up's fd would otherwise hold its disk space until unmount). */
        fd_drop(fs, &(struct lfs_obj){on->id, on, on->lower});
        if (on->keepfd >= 0) {
            close(on->keepfd);
            on->keepfd = -1;
        }
    }
    pthread_rwlock_unlock(&fs->tree);
}

/* The node's path relative to its layer, into buf.  Returns 0 or -ENAMETOOLONG. */
int node_path(const struct lfs_index *ix, uint32_t ino, char *buf, size_t size)
{
    size_t len = 0, depth = 0;
    for (uint64_t i = ino; i != LFS_ROOT_INO; i = ix->nodes[i].parent) {
        len += ix->nodes[i].name_len + 1;
        if (++depth > size / 2 || len > size) /* a loaded index is acyclic; this bounds the walk anyway */
            return -ENAMETOOLONG;
    }
    if (len == 0) {
        if (size < 2)
            return -ENAMETOOLONG;
        strcpy(buf, ".");
        return 0;
    }
    size_t pos = len - 1;
    buf[pos] = '\0';
    for (uint64_t i = ino; i != LFS_ROOT_INO; i = ix->nodes[i].parent) {
        const struct lfs_node *m = &ix->nodes[i];
        if (pos != len - 1)
            buf[--pos] = '/';
        pos -= m->name_len;
        memcpy(buf + pos, ix->blob + m->name_off, m->name_len);
    }
    return 0;
}
