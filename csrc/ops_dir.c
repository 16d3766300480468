/* ops_dir.c: FUSE requests on names: mknod, mkdir, symlink, create, link, unlink, rmdir, rename.
 *
 * Every request copies its parent directories up first (docs/overlay.rst "Copy-up"), then acts on
 * the upper directory with *at() calls on directory fds, never on joined paths:
 *   - a new name where a lower name was deleted replaces the whiteout atomically (made under a
 *     temporary name in the work directory, then renamed over it); a new directory there is opaque;
 *   - removing a name a lower layer has leaves a whiteout and copies nothing (rm -rf of a lower tree
 *     costs one mknod per name); removing an upper-only name just removes it;
 *   - renaming a directory a lower layer has (lower or merged) answers EXDEV, as the kernel does by
 *     default: tools then copy; a non-directory is copied up with its data and renamed in the upper,
 *     leaving a whiteout (RENAME_WHITEOUT) where a lower name was.
 * Errors follow the merged view, not the upper: EEXIST when the merged view has the name,
 * ENOTEMPTY when it shows any child (whiteouts do not count).
 *
 * Ownership of new objects: the caller's uid, and its gid or the parent's when the parent is
 * setgid (the kernel's inode_init_owner rules), the caller's taken back to the IDs on disk when
 * the mount has an ID mapping (idmap.h); the kernel has already applied the umask
 * (FUSE_CAP_DONT_MASK is not asked for) and checked permissions (default_permissions).
 *
 * Every request here takes fs->tree exclusively.
 */
#include "fs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif
#ifndef RENAME_WHITEOUT
#define RENAME_WHITEOUT (1 << 2)
#endif

/* Resolve and copy up a parent directory; checks the name. */
static int prepare_dir(struct lfs_fs *fs, fuse_ino_t parent, const char *name, struct lfs_obj *dir,
                       struct onode **d)
{
    if (!fs->writable)
        return -EROFS;
    if (strlen(name) > LFS_NAME_MAX)
        return -ENAMETOOLONG;
    int rc = node_resolve(fs, parent, dir);
    if (rc < 0)
        return rc;
    if (!lfs_is_dir(node_type(fs, dir)))
        return -ENOTDIR;
    if (dir->on && dir->on->dead)
        return -ENOENT;
    rc = upper_copy_up(fs, dir, COPY_META);
    if (rc < 0)
        return rc;
    *d = dir->on;
    if ((*d)->ds == NULL && (rc = dir_load(fs, *d)) < 0)
        return rc;
    return 0;
}

/* The owner and final mode of a new object made by the request's caller in `d`. */
static void new_owner(fuse_req_t req, struct lfs_fs *fs, struct onode *d, mode_t *mode, uid_t *uid, gid_t *gid)
{
    const struct fuse_ctx *ctx = fuse_req_ctx(req);
    struct stat dst;
    *uid = lfs_idmap_to_container(&fs->uids, ctx->uid); /* the caller's IDs are host IDs (idmap.h) */
    *gid = lfs_idmap_to_container(&fs->gids, ctx->gid);
    int from_parent = 0;
    if (upper_stat(fs, d, &dst) == 0 && (dst.st_mode & S_ISGID)) {
        *gid = dst.st_gid;
        from_parent = 1;
        if (S_ISDIR(*mode))
            *mode |= S_ISGID;
    }
    /* a setgid file given the parent's group, which its creator is not in, loses the bit unless
     * the creator is root (taken to have CAP_FSETID), the host's or the mapped namespace's;
     * a group of the caller's own is always the caller's (the kernel's inode_init_owner) */
    if (!S_ISDIR(*mode) && (*mode & S_ISGID) && from_parent && ctx->uid != 0 && *uid != 0 &&
        !lfs_caller_in_group(req, *gid))
        *mode &= ~(mode_t)S_ISGID;
}

/* Create `name` in `d` with make(), over a whiteout if there is one.  make(fd, name) creates the
 * object in directory fd; the new object then gets owner and mode.  Returns 0 and the new onode. */
struct maker {
    mode_t mode;     /* type and permission bits */
    dev_t rdev;
    const char *target;
    int fd;          /* create: the opened file (returned) */
    int as_file;     /* unprivileged: a device (or another's fifo) made as a regular file whose
                        override gives its type (upper_needs_override) */
};

static int make_at(struct lfs_fs *fs, int dirfd, const char *name, struct maker *m)
{
    switch (m->as_file ? S_IFREG : m->mode & S_IFMT) {
    case S_IFDIR:
        return mkdirat(dirfd, name, 0700) < 0 ? -errno : 0;
    case S_IFLNK:
        return symlinkat(m->target, dirfd, name) < 0 ? -errno : 0;
    case S_IFREG:
        if (m->fd == -2) { /* create: keep it open */
            int fd = openat(dirfd, name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0600);
            if (fd < 0)
                return -errno;
            m->fd = fd;
            return 0;
        }
        /* fall through: mknod of a regular file */
    default:
        if (m->as_file)
            return mknodat(dirfd, name, S_IFREG | 0600, 0) < 0 ? -errno : 0;
        return mknodat(dirfd, name, (m->mode & S_IFMT) | 0600, m->rdev) < 0 ? -errno : 0;
    }
}

static int set_owner_mode(struct lfs_fs *fs, int dirfd, const char *name, const struct maker *m, mode_t mode,
                          uid_t uid, gid_t gid)
{
    if (upper_needs_override(fs, mode, uid, gid, m->rdev))
        return upper_set_override(fs, dirfd, name, mode, uid, gid, m->rdev);
    if (fchownat(dirfd, name, uid, gid, AT_SYMLINK_NOFOLLOW) < 0 && (fs->privileged || errno != EPERM))
        return -errno;
    if (!S_ISLNK(mode) && fchmodat(dirfd, name, mode & 07777, 0) < 0)
        return -errno;
    return 0;
}

static int create_node(fuse_req_t req, struct lfs_fs *fs, struct onode *d, const char *name, struct maker *m,
                       struct lfs_obj *out)
{
    size_t len = strlen(name);
    struct lfs_obj existing;
    struct lfs_obj dirobj = {d->id, d, d->lower};
    int rc = node_lookup(fs, &dirobj, name, len, &existing);
    if (rc == 0)
        return -EEXIST;
    if (rc != -ENOENT)
        return rc;
    mode_t mode = m->mode;
    uid_t uid;
    gid_t gid;
    new_owner(req, fs, d, &mode, &uid, &gid);
    m->as_file = !S_ISREG(mode) && !S_ISDIR(mode) && upper_needs_override(fs, mode, uid, gid, m->rdev);
    struct uent *e = dir_find(d->ds, name, len);
    int over_whiteout = e && e->whiteout;
    int opaque = 0;
    if (!over_whiteout) {
        if ((rc = make_at(fs, d->dirfd, name, m)) < 0)
            return rc;
        rc = set_owner_mode(fs, d->dirfd, name, m, mode, uid, gid);
        if (rc < 0) {
            if (m->fd >= 0) {
                close(m->fd);
                m->fd = -2;
            }
            (void)unlinkat(d->dirfd, name, S_ISDIR(mode) ? AT_REMOVEDIR : 0);
            return rc;
        }
    } else {
        char tmp[64];
        if ((rc = upper_tmpname(fs, tmp, sizeof tmp)) < 0)
            return rc;
        if ((rc = make_at(fs, fs->work_fd, tmp, m)) < 0)
            return rc;
        rc = set_owner_mode(fs, fs->work_fd, tmp, m, mode, uid, gid);
        if (rc == 0 && S_ISDIR(mode)) {
            /* a directory where a lower name was deleted must not merge with it */
            int fd = openat(fs->work_fd, tmp, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            rc = fd < 0 ? -errno : upper_set_opaque(fs, fd);
            if (fd >= 0)
                close(fd);
            opaque = 1;
        }
        if (rc == 0) {
            unsigned flags = S_ISDIR(mode) ? RENAME_EXCHANGE : 0;
            if (renameat2(fs->work_fd, tmp, d->dirfd, name, flags) < 0)
                rc = -errno;
            else if (flags == RENAME_EXCHANGE)
                (void)unlinkat(fs->work_fd, tmp, 0); /* the whiteout it replaced */
        }
        if (rc < 0) {
            if (m->fd >= 0) {
                close(m->fd);
                m->fd = -2;
            }
            (void)unlinkat(fs->work_fd, tmp, S_ISDIR(mode) ? AT_REMOVEDIR : 0);
            return rc;
        }
    }
    struct stat st;
    if (fstatat(d->dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return -errno;
    if ((rc = upper_apply_override(fs, d->dirfd, name, &st)) < 0)
        return rc;
    if (dir_add(d->ds, name, len, (uint8_t)IFTODT(st.st_mode), 0, st.st_ino) == NULL)
        return -ENOMEM;
    struct onode *on = node_new(fs, LFS_UPPER_BIT | (uint64_t)st.st_ino, st.st_mode);
    if (on == NULL)
        return -ENOMEM;
    on->has_upper = 1;
    on->counted = 1;
    on->upper_ino = st.st_ino;
    on->opaque = opaque;
    node_set_name(on, d, name, len);
    node_hash_ino(fs, on);
    if (S_ISDIR(st.st_mode)) {
        on->dirfd = openat(d->dirfd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        on->ds = calloc(1, sizeof *on->ds);
        if (on->dirfd < 0 || on->ds == NULL)
            return on->dirfd < 0 ? -errno : -ENOMEM;
    }
    *out = (struct lfs_obj){on->id, on, 0};
    return 0;
}

static void reply_new(fuse_req_t req, struct lfs_fs *fs, enum lfs_op op, int rc, struct lfs_obj *obj,
                      struct fuse_file_info *fi, int fd)
{
    struct stat st;
    struct fuse_entry_param e;
    if (rc == 0)
        rc = node_stat(fs, obj, &st);
    if (rc == 0) {
        node_entry(fs, obj->id, &st, &e);
        node_count_lookup(fs, obj);
    }
    pthread_rwlock_unlock(&fs->tree);
    if (fd >= 0)
        close(fd); /* data goes through the fd cache (NO_OPEN): this one was only for O_EXCL */
    if (rc < 0) {
        lfs_reply_err(req, fs, op, -rc);
        return;
    }
    if (fi) {
        fi->fh = 0;
        fi->keep_cache = 1;
        if (fuse_reply_create(req, &e, fi) == -ENOENT)
            node_forget(fs, obj->id, 1); /* interrupted: the kernel will not forget it */
    } else {
        fuse_reply_entry(req, &e);
    }
}

static void do_make(fuse_req_t req, fuse_ino_t parent, const char *name, struct maker *m, enum lfs_op op,
                    struct fuse_file_info *fi)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, op);
    struct lfs_obj dir, obj = {0, NULL, 0};
    struct onode *d = NULL;
    if (!fs->writable) {
        lfs_reply_err(req, fs, op, EROFS);
        return;
    }
    pthread_rwlock_wrlock(&fs->tree);
    int rc = prepare_dir(fs, parent, name, &dir, &d);
    if (rc == 0)
        rc = create_node(req, fs, d, name, m, &obj);
    reply_new(req, fs, op, rc, &obj, fi, m->fd);
}

void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
    struct maker m = {mode, rdev, NULL, -1};
    do_make(req, parent, name, &m, OP_MKNOD, NULL);
}

void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
    struct maker m = {S_IFDIR | (mode & 07777), 0, NULL, -1};
    do_make(req, parent, name, &m, OP_MKDIR, NULL);
}

void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
    struct maker m = {S_IFLNK | 0777, 0, link, -1};
    do_make(req, parent, name, &m, OP_SYMLINK, NULL);
}

void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi)
{
    struct maker m = {S_IFREG | (mode & 07777), 0, NULL, -2};
    do_make(req, parent, name, &m, OP_CREATE, fi);
}

void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_LINK);
    if (!fs->writable) {
        lfs_reply_err(req, fs, OP_LINK, EROFS);
        return;
    }
    struct lfs_obj src, dir, existing;
    struct onode *d = NULL;
    pthread_rwlock_wrlock(&fs->tree);
    int rc = node_resolve(fs, ino, &src);
    if (rc == 0 && lfs_is_dir(node_type(fs, &src)))
        rc = -EPERM;
    /* with its data: a metadata-only copy finds its data at its own lower path, which the new
     * name has not (the kernel writes a redirect xattr for it; layerfs writes none) */
    if (rc == 0)
        rc = upper_copy_up(fs, &src, COPY_DATA);
    if (rc == 0)
        rc = prepare_dir(fs, newparent, newname, &dir, &d);
    size_t len = strlen(newname);
    if (rc == 0) {
        rc = node_lookup(fs, &dir, newname, len, &existing);
        rc = rc == 0 ? -EEXIST : rc == -ENOENT ? 0 : rc;
    }
    if (rc == 0) {
        struct onode *on = src.on;
        int sfd = on->name && on->parent ? on->parent->dirfd : AT_FDCWD;
        char path[64];
        const char *sname = on->name;
        int flags = 0;
        if (sname == NULL) { /* linking an unlinked, open file back in */
            snprintf(path, sizeof path, "/proc/self/fd/%d", on->keepfd);
            sname = path;
            flags = AT_SYMLINK_FOLLOW;
        }
        struct uent *e = dir_find(d->ds, newname, len);
        if (e && e->whiteout) {
            char tmp[64];
            rc = upper_tmpname(fs, tmp, sizeof tmp);
            if (rc == 0 && linkat(sfd, sname, fs->work_fd, tmp, flags) < 0)
                rc = -errno;
            if (rc == 0 && renameat(fs->work_fd, tmp, d->dirfd, newname) < 0) {
                rc = -errno;
                (void)unlinkat(fs->work_fd, tmp, 0);
            }
        } else if (linkat(sfd, sname, d->dirfd, newname, flags) < 0) {
            rc = -errno;
        }
        if (rc == 0 && dir_add(d->ds, newname, len, (uint8_t)IFTODT(on->type), 0, on->upper_ino) == NULL)
            rc = -ENOMEM;
        if (rc == 0 && on->name == NULL)
            node_set_name(on, d, newname, len);
        if (rc == 0)
            on->dead = 0;
    }
    reply_new(req, fs, OP_LINK, rc, &src, NULL, -1);
}

/* Keep an upper object reachable by fd when its name goes (the kernel may still use it). */
static void keep_object(struct lfs_fs *fs, struct onode *on)
{
    if (on == NULL || !on->has_upper || on->keepfd >= 0 || lfs_is_dir(on->type) || on->name == NULL ||
        on->parent == NULL)
        return;
    on->keepfd = openat(on->parent->dirfd, on->name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
}

/* The object at `name` of `d` has just lost that name (callers keep_object() it first).
 *   - A lower object (each name of a lower hard link is an object of its own for the kernel)
 *     is dead: no name leads to it, but an open fd may still read it, or write it (its data
 *     then goes to an anonymous copy: upper_copy_up).
 *   - An upper object whose name this was follows one of its other names, a hard link in the
 *     same directory, or else its kept fd; it is dead once no name at all links it. */
static void name_gone(struct lfs_fs *fs, struct lfs_obj *child, struct onode *d, const char *name)
{
    struct onode *on = child->on;
    if (on == NULL || !on->has_upper) {
        if (on == NULL) {
            const struct lfs_node *n = lfs_node(&fs->ix, child->lower);
            if (n == NULL || (on = node_new(fs, child->id, n->mode)) == NULL)
                return; /* out of memory: a write through an open fd then fails with EEXIST */
            on->lower = child->lower;
            child->on = on;
        }
        on->dead = 1;
        return;
    }
    if (on->name != NULL && (on->parent != d || strcmp(on->name, name) != 0))
        return; /* another of its names went: the one it follows is still there */
    struct stat st;
    int linked = !lfs_is_dir(on->type) && on->keepfd >= 0 && fstat(on->keepfd, &st) == 0 && st.st_nlink > 0;
    if (on->name != NULL)
        node_set_name(on, NULL, NULL, 0);
    if (!linked) {
        on->dead = 1;
        return;
    }
    for (size_t i = 0; d->ds && i < d->ds->norder; i++) {
        struct uent *e = d->ds->order[i];
        if (e && !e->whiteout && e->ino == on->upper_ino) {
            node_set_name(on, d, e->name, e->len);
            return;
        }
    }
}

void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_UNLINK);
    if (!fs->writable) {
        lfs_reply_err(req, fs, OP_UNLINK, EROFS);
        return;
    }
    struct lfs_obj dir, child;
    struct onode *d = NULL;
    size_t len = strlen(name);
    pthread_rwlock_wrlock(&fs->tree);
    int rc = node_resolve(fs, parent, &dir);
    if (rc == 0)
        rc = node_lookup(fs, &dir, name, len, &child);
    if (rc == 0 && lfs_is_dir(node_type(fs, &child)))
        rc = -EISDIR;
    if (rc == 0)
        rc = prepare_dir(fs, parent, name, &dir, &d);
    if (rc == 0) {
        struct uent *e = dir_find(d->ds, name, len);
        int lower = node_lower_has(fs, d, name, len);
        if (e && !e->whiteout) {
            if (child.on)
                keep_object(fs, child.on); /* before its name goes */
            if (lower) {
                rc = upper_whiteout(fs, d, name);
            } else if (unlinkat(d->dirfd, name, 0) < 0) {
                rc = -errno;
            } else {
                dir_remove(d->ds, e);
            }
        } else {
            rc = upper_whiteout(fs, d, name);
        }
        if (rc == 0)
            name_gone(fs, &child, d, name);
    }
    pthread_rwlock_unlock(&fs->tree);
    lfs_reply_err(req, fs, OP_UNLINK, -rc);
}

/* Remove the whiteouts an upper directory holds (it shows nothing: rmdir and rename need it empty). */
static int clear_whiteouts(struct lfs_fs *fs, struct onode *dir)
{
    if (dir->ds == NULL) {
        int rc = dir_load(fs, dir);
        if (rc < 0)
            return rc;
    }
    for (size_t i = 0; i < dir->ds->norder; i++) {
        struct uent *e = dir->ds->order[i];
        if (e == NULL)
            continue;
        if (!e->whiteout)
            return -ENOTEMPTY;
        if (unlinkat(dir->dirfd, e->name, 0) < 0 && errno != ENOENT)
            return -errno;
        dir_remove(dir->ds, e);
    }
    return 0;
}

void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_RMDIR);
    if (!fs->writable) {
        lfs_reply_err(req, fs, OP_RMDIR, EROFS);
        return;
    }
    struct lfs_obj dir, child;
    struct onode *d = NULL;
    size_t len = strlen(name);
    pthread_rwlock_wrlock(&fs->tree);
    int rc = node_resolve(fs, parent, &dir);
    if (rc == 0)
        rc = node_lookup(fs, &dir, name, len, &child);
    if (rc == 0 && !lfs_is_dir(node_type(fs, &child)))
        rc = -ENOTDIR;
    if (rc == 0)
        rc = dir_check_empty(fs, &child);
    if (rc == 0)
        rc = prepare_dir(fs, parent, name, &dir, &d);
    if (rc == 0) {
        int lower = node_lower_has(fs, d, name, len);
        struct uent *e = dir_find(d->ds, name, len);
        if (e && !e->whiteout) {
            if (child.on && child.on->has_upper)
                rc = clear_whiteouts(fs, child.on);
            if (rc == 0) {
                if (lower) {
                    rc = upper_whiteout(fs, d, name);
                } else if (unlinkat(d->dirfd, name, AT_REMOVEDIR) < 0) {
                    rc = -errno;
                } else {
                    dir_remove(d->ds, e);
                }
            }
        } else {
            rc = upper_whiteout(fs, d, name);
        }
        if (rc == 0 && child.on == NULL && (child.on = node_new(fs, child.id, S_IFDIR)) != NULL)
            child.on->lower = child.lower; /* a pristine directory: dead too (no creating in it) */
        if (rc == 0 && child.on) {
            child.on->dead = 1;
            if (child.on->parent == d)
                node_set_name(child.on, NULL, NULL, 0);
        }
    }
    pthread_rwlock_unlock(&fs->tree);
    lfs_reply_err(req, fs, OP_RMDIR, -rc);
}

/* Whether a directory object comes (in part) from a lower layer: such a one cannot be renamed
 * without redirect_dir (EXDEV, docs/overlay.rst "Rename"). */
static int dir_has_lower(const struct lfs_obj *obj)
{
    return obj->on == NULL || !obj->on->has_upper || obj->on->lower != 0;
}

void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent, const char *newname,
               unsigned int flags)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_RENAME);
    if (!fs->writable) {
        lfs_reply_err(req, fs, OP_RENAME, EROFS);
        return;
    }
    if (flags & ~(unsigned)(RENAME_NOREPLACE | RENAME_EXCHANGE)) {
        lfs_reply_err(req, fs, OP_RENAME, EINVAL);
        return;
    }
    struct lfs_obj dir1, dir2, src, dst;
    struct onode *d1 = NULL, *d2 = NULL;
    size_t len1 = strlen(name), len2 = strlen(newname);
    pthread_rwlock_wrlock(&fs->tree);
    int rc = node_resolve(fs, parent, &dir1);
    if (rc == 0)
        rc = node_lookup(fs, &dir1, name, len1, &src);
    int have_dst = 0;
    if (rc == 0)
        rc = node_resolve(fs, newparent, &dir2);
    if (rc == 0) {
        int r = node_lookup(fs, &dir2, newname, len2, &dst);
        if (r == 0)
            have_dst = 1;
        else if (r != -ENOENT)
            rc = r;
    }
    mode_t st = rc == 0 ? node_type(fs, &src) : 0;
    mode_t dt = have_dst ? node_type(fs, &dst) : 0;
    if (rc == 0 && (flags & RENAME_NOREPLACE) && have_dst)
        rc = -EEXIST;
    if (rc == 0 && (flags & RENAME_EXCHANGE) && !have_dst)
        rc = -ENOENT;
    if (rc == 0 && have_dst && dst.id == src.id) {
        pthread_rwlock_unlock(&fs->tree); /* two names of one object: nothing to do (POSIX) */
        lfs_reply_err(req, fs, OP_RENAME, 0);
        return;
    }
    /* a directory with a lower part moves with a redirect to it, or not at all (docs/overlay.rst "Rename") */
    int redirect1 = rc == 0 && lfs_is_dir(st) && dir_has_lower(&src);
    int redirect2 = rc == 0 && (flags & RENAME_EXCHANGE) && lfs_is_dir(dt) && dir_has_lower(&dst);
    if ((redirect1 || redirect2) && !fs->redirect_dir)
        rc = -EXDEV;
    if (rc == 0 && have_dst && !(flags & RENAME_EXCHANGE)) {
        if (lfs_is_dir(dt) && !lfs_is_dir(st))
            rc = -EISDIR;
        else if (!lfs_is_dir(dt) && lfs_is_dir(st))
            rc = -ENOTDIR;
        else if (lfs_is_dir(dt))
            rc = dir_check_empty(fs, &dst);
    }
    if (rc == 0)
        rc = prepare_dir(fs, parent, name, &dir1, &d1);
    if (rc == 0)
        rc = prepare_dir(fs, newparent, newname, &dir2, &d2);
    if (rc == 0)
        rc = upper_copy_up(fs, &src, COPY_DATA);
    if (rc == 0 && (flags & RENAME_EXCHANGE))
        rc = upper_copy_up(fs, &dst, COPY_DATA);
    /* a replaced directory that is empty in the merged view may still hold whiteouts */
    if (rc == 0 && have_dst && !(flags & RENAME_EXCHANGE) && lfs_is_dir(dt) && dst.on && dst.on->has_upper)
        rc = clear_whiteouts(fs, dst.on);
    int lower1 = rc == 0 ? node_lower_has(fs, d1, name, len1) : 0;
    int lower2 = rc == 0 ? node_lower_has(fs, d2, newname, len2) : 0;
    /* a redirect names the lower part wherever the directory goes; set before the move, it is
     * true at both names, so a failed rename leaves a consistent upper */
    if (rc == 0 && redirect1)
        rc = src.on->lower ? upper_set_redirect(fs, src.on->dirfd, src.on->lower) : -EIO;
    if (rc == 0 && redirect2)
        rc = dst.on->lower ? upper_set_redirect(fs, dst.on->dirfd, dst.on->lower) : -EIO;
    if (rc == 0 && lfs_is_dir(st) && lower2 && !src.on->opaque && !redirect1) {
        rc = upper_set_opaque(fs, src.on->dirfd); /* it must not merge with the lower name it lands on */
        if (rc == 0)
            src.on->opaque = 1;
    }
    if (rc == 0 && (flags & RENAME_EXCHANGE) && lfs_is_dir(dt) && lower1 && !dst.on->opaque && !redirect2) {
        rc = upper_set_opaque(fs, dst.on->dirfd);
        if (rc == 0)
            dst.on->opaque = 1;
    }
    struct uent *e1 = rc == 0 ? dir_find(d1->ds, name, len1) : NULL;
    struct uent *e2 = rc == 0 ? dir_find(d2->ds, newname, len2) : NULL;
    if (rc == 0 && have_dst && !(flags & RENAME_EXCHANGE) && dst.on)
        keep_object(fs, dst.on); /* the replaced object may still be open */
    if (rc == 0) {
        if (flags & RENAME_EXCHANGE) {
            if (renameat2(d1->dirfd, name, d2->dirfd, newname, RENAME_EXCHANGE) < 0)
                rc = -errno;
        } else {
            if (e2 && e2->whiteout && lfs_is_dir(st) && unlinkat(d2->dirfd, newname, 0) < 0)
                rc = -errno; /* a directory cannot be renamed over the whiteout's device node */
            if (rc == 0 && renameat2(d1->dirfd, name, d2->dirfd, newname, lower1 ? RENAME_WHITEOUT : 0) < 0)
                rc = -errno;
        }
    }
    if (rc == 0) {
        struct stat sst;
        ino_t sino = src.on->upper_ino;
        if (fstatat(d2->dirfd, newname, &sst, AT_SYMLINK_NOFOLLOW) == 0)
            sino = sst.st_ino;
        if (flags & RENAME_EXCHANGE) {
            ino_t dino = dst.on->upper_ino;
            dir_add(d1->ds, name, len1, (uint8_t)IFTODT(dt), 0, dino);
            dir_add(d2->ds, newname, len2, (uint8_t)IFTODT(st), 0, sino);
            node_set_name(dst.on, d1, name, len1);
        } else {
            if (lower1) {
                struct stat wst;
                ino_t wino = fstatat(d1->dirfd, name, &wst, AT_SYMLINK_NOFOLLOW) == 0 ? wst.st_ino : 0;
                dir_add(d1->ds, name, len1, DT_CHR, 1, wino);
                __atomic_fetch_add(&fs->whiteouts, 1, __ATOMIC_RELAXED);
            } else if (e1) {
                dir_remove(d1->ds, e1);
            }
            dir_add(d2->ds, newname, len2, (uint8_t)IFTODT(st), 0, sino);
            if (have_dst)
                name_gone(fs, &dst, d2, newname);
        }
        node_set_name(src.on, d2, newname, len2);
        src.on->dead = 0;
    }
    pthread_rwlock_unlock(&fs->tree);
    lfs_reply_err(req, fs, OP_RENAME, -rc);
}
