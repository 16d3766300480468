/* upper.c: writing the upper directory in the kernel overlay's own format.
 *
 * What lands in the upper is exactly what the kernel overlay writes and reads (docs/overlay.rst
 * "The upper directory"), so that after `layerfs umount`, `mount -t overlay` of the same lowers,
 * upper and work shows what layerfs showed, and an upper written by the kernel mounts here:
 *   - a deleted lower name: a whiteout, a 0/0 character device (mknod of 0/0 needs no privilege
 *     since Linux 5.8);
 *   - a directory made where a lower name was deleted: opaque, `trusted.overlay.opaque=y`
 *     (`user.overlay.opaque=y` for an unprivileged mount, the kernel's userxattr form);
 *   - a metadata-only copy-up (chmod, chown, utimes or an xattr change of a lower file when
 *     metacopy is on): an upper file of the right size whose data is still the lower file's,
 *     marked `trusted.overlay.metacopy` (empty value); the kernel needs `-o metacopy=on` to
 *     follow it.  Its data is copied at the first write or truncation.
 *   - unprivileged, an object the daemon cannot make as it is (another's owner, a device node): a
 *     regular file or directory carrying `user.containers.override_stat` with its owner, mode and
 *     type, a mode on disk the daemon can use (override.h; docs/overlay.rst "Owners kept in an
 *     xattr"), as fuse-overlayfs writes it when it may not chown.  Everything else is made as it
 *     is, so that the kernel overlay reads a user's own changes alike.
 *
 * Copy-up follows the kernel's order (fs/overlayfs/copy_up.c): parents first; the object is
 * made under a temporary name in WORKDIR/work with its data (copy_file_range, holes kept through
 * SEEK_DATA / SEEK_HOLE), owner, xattrs (overlay-private ones never), mode and times, then renamed
 * into place, so the upper never holds half an object; the parent's times are restored, since a
 * copy-up changes nothing the merged view shows.  No fsync: like fuse-overlayfs and the kernel's
 * `volatile` mode, a crash may lose a copy-up's data that had not reached the disk (the lower
 * file, which still holds it, is never touched).
 *
 * A lower file unlinked while an fd still uses it has no name to be copied to: its copy is made
 * in WORK/work as usual, then kept by an fd only and unlinked there (copy_up_anonymous).
 *
 * Every call is made with fs->tree held exclusively.  Errors: -errno.
 */
#include "fs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

static const char *const private_prefixes[] = {"trusted.overlay.", "user.overlay.", "user.fuseoverlayfs.",
                                               LFS_OVERRIDE_PREFIX};

int is_private_xattr(const char *name)
{
    for (size_t i = 0; i < sizeof private_prefixes / sizeof *private_prefixes; i++)
        if (strncmp(name, private_prefixes[i], strlen(private_prefixes[i])) == 0)
            return 1;
    return 0;
}

static const char *ovl_xattr(struct lfs_fs *fs, const char *what, char *buf, size_t size)
{
    snprintf(buf, size, "%s.overlay.%s", fs->privileged ? "trusted" : "user", what);
    return buf;
}

/* "/proc/self/fd/<dirfd>/<name>" (or without the name): the path l*xattr calls take for an object
 * known by a directory fd and a name; the final component is never followed by the l* calls. */
static int fd_path(char *buf, size_t size, int dirfd, const char *name)
{
    int n = name ? snprintf(buf, size, "/proc/self/fd/%d/%s", dirfd, name) : snprintf(buf, size, "/proc/self/fd/%d", dirfd);
    return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

/* The path of an upper object for the xattr calls. */
static int upper_path(const struct onode *on, char *buf, size_t size, int *follow)
{
    *follow = 0;
    if (lfs_is_dir(on->type) && on->dirfd >= 0) {
        *follow = 1;
        return fd_path(buf, size, on->dirfd, NULL);
    }
    if (on->name && on->parent && on->parent->dirfd >= 0)
        return fd_path(buf, size, on->parent->dirfd, on->name);
    if (on->keepfd >= 0) {
        *follow = 1;
        return fd_path(buf, size, on->keepfd, NULL);
    }
    return -ESTALE;
}

int upper_parent_fd(struct lfs_fs *fs, const struct onode *on)
{
    return on->parent ? on->parent->dirfd : -1;
}

/* Whether an object with this type, owner and mode takes the override form in the upper: on an
 * unprivileged mount, a device node (no mknod without CAP_MKNOD), or anything but a symlink whose
 * owner is not the daemon's (no chown without CAP_CHOWN).  Everything else is made as it is, so
 * that the kernel overlay reads the upper as layerfs does.  A symlink cannot carry a user.* xattr:
 * it stays the daemon's (layerfs/_layer/override.py). */
int upper_needs_override(const struct lfs_fs *fs, mode_t mode, uid_t uid, gid_t gid, dev_t rdev)
{
    if (fs->privileged || S_ISLNK(mode) || (S_ISCHR(mode) && rdev == 0))
        return 0; /* a 0/0 char device needs no CAP_MKNOD since Linux 5.8 (and is a whiteout) */
    if (S_ISCHR(mode) || S_ISBLK(mode))
        return 1;
    return uid != fs->self_uid || gid != fs->self_gid;
}

/* On an unprivileged mount, give *st (the lstat of `name` in dirfd, or of dirfd itself when name
 * is NULL) the owner, mode and device number its override records, if it has one.  Returns 0 or
 * -errno. */
int upper_apply_override(struct lfs_fs *fs, int dirfd, const char *name, struct stat *st)
{
    if (fs->privileged)
        return 0;
    char path[PATH_MAX];
    int rc = fd_path(path, sizeof path, dirfd, name);
    if (rc < 0)
        return rc;
    uint32_t uid = st->st_uid, gid = st->st_gid, mode = st->st_mode;
    uint64_t rdev = st->st_rdev;
    rc = lfs_override_get(path, name == NULL, &uid, &gid, &mode, &rdev);
    if (rc <= 0)
        return rc;
    st->st_uid = uid;
    st->st_gid = gid;
    st->st_mode = mode;
    st->st_rdev = (dev_t)rdev;
    return 0;
}

/* Write the override form of `name` in dirfd (a regular file or directory): the xattr, and the
 * mode on disk that lets the daemon use it.  Returns 0 or -errno. */
int upper_set_override(struct lfs_fs *fs, int dirfd, const char *name, mode_t mode, uid_t uid, gid_t gid, dev_t rdev)
{
    char path[PATH_MAX];
    int rc = fd_path(path, sizeof path, dirfd, name);
    if (rc < 0)
        return rc;
    struct lfs_override o = {uid, gid, mode, (S_ISCHR(mode) || S_ISBLK(mode)) ? (uint64_t)rdev : 0};
    if ((rc = lfs_override_set(path, 0, &o)) < 0)
        return rc;
    return fchmodat(dirfd, name, lfs_override_disk_mode(mode), 0) < 0 ? -errno : 0;
}

int upper_stat(struct lfs_fs *fs, const struct onode *on, struct stat *st)
{
    int rc, dirfd;
    const char *name = NULL;
    if (lfs_is_dir(on->type) && on->dirfd >= 0) {
        dirfd = on->dirfd;
        rc = fstat(dirfd, st);
    } else if (on->name && on->parent && on->parent->dirfd >= 0) {
        dirfd = on->parent->dirfd;
        name = on->name;
        rc = fstatat(dirfd, name, st, AT_SYMLINK_NOFOLLOW);
    } else if (on->keepfd >= 0) {
        dirfd = on->keepfd;
        rc = fstat(dirfd, st);
    } else {
        return -ESTALE;
    }
    if (rc < 0)
        return -errno;
    return upper_apply_override(fs, dirfd, name, st);
}

/* chown and chmod (the SETATTR bits in to_set, values in attr) of an upper object on an
 * unprivileged mount, in the override form when the object has it or needs it now (see
 * upper_needs_override).  Returns 1 when done here, 0 when the caller is to chown and chmod the
 * object itself (it is made as it is), or -errno. */
int upper_set_owner_mode(struct lfs_fs *fs, const struct onode *on, const struct stat *attr, int to_set)
{
    if (fs->privileged)
        return 0;
    struct stat disk, eff;
    int rc, dirfd;
    const char *name = NULL;
    if (lfs_is_dir(on->type) && on->dirfd >= 0) {
        dirfd = on->dirfd;
        rc = fstat(dirfd, &disk);
    } else if (on->name && on->parent && on->parent->dirfd >= 0) {
        dirfd = on->parent->dirfd;
        name = on->name;
        rc = fstatat(dirfd, name, &disk, AT_SYMLINK_NOFOLLOW);
    } else if (on->keepfd >= 0) {
        dirfd = on->keepfd;
        rc = fstat(dirfd, &disk);
    } else {
        return -ESTALE;
    }
    if (rc < 0)
        return -errno;
    if (!S_ISREG(disk.st_mode) && !S_ISDIR(disk.st_mode))
        return 0; /* a symlink, fifo or socket of the daemon's: it cannot carry an override */
    char path[PATH_MAX];
    if ((rc = fd_path(path, sizeof path, dirfd, name)) < 0)
        return rc;
    uint32_t euid = disk.st_uid, egid = disk.st_gid, emode = disk.st_mode;
    uint64_t erdev = disk.st_rdev;
    int has = lfs_override_get(path, name == NULL, &euid, &egid, &emode, &erdev);
    if (has < 0)
        return has;
    eff = disk;
    eff.st_uid = euid;
    eff.st_gid = egid;
    eff.st_mode = emode;
    eff.st_rdev = (dev_t)erdev;
    uid_t uid = (to_set & FUSE_SET_ATTR_UID) ? attr->st_uid : eff.st_uid;
    gid_t gid = (to_set & FUSE_SET_ATTR_GID) ? attr->st_gid : eff.st_gid;
    mode_t mode = (to_set & FUSE_SET_ATTR_MODE) ? (eff.st_mode & S_IFMT) | (attr->st_mode & 07777) : eff.st_mode;
    if (!has && !upper_needs_override(fs, mode, uid, gid, eff.st_rdev))
        return 0;
    if (name == NULL) { /* the directory itself, or a kept fd: by its /proc path */
        struct lfs_override o = {uid, gid, mode, eff.st_rdev};
        if ((rc = lfs_override_set(path, 1, &o)) < 0)
            return rc;
        return chmod(path, lfs_override_disk_mode(mode)) < 0 ? -errno : 1;
    }
    rc = upper_set_override(fs, dirfd, name, mode, uid, gid, eff.st_rdev);
    return rc < 0 ? rc : 1;
}

int upper_open(struct lfs_fs *fs, const struct onode *on, int flags)
{
    int fd;
    flags |= O_CLOEXEC | O_NOFOLLOW;
    if (on->name && on->parent && on->parent->dirfd >= 0) {
        fd = openat(on->parent->dirfd, on->name, flags);
    } else if (on->keepfd >= 0) {
        char path[64];
        snprintf(path, sizeof path, "/proc/self/fd/%d", on->keepfd);
        fd = open(path, flags & ~O_NOFOLLOW);
    } else {
        return -ESTALE;
    }
    return fd < 0 ? -errno : fd;
}

int upper_getxattr(struct lfs_fs *fs, const struct onode *on, const char *name, void *buf, size_t size)
{
    char path[PATH_MAX];
    int follow, rc = upper_path(on, path, sizeof path, &follow);
    if (rc < 0)
        return rc;
    ssize_t n = follow ? getxattr(path, name, buf, size) : lgetxattr(path, name, buf, size);
    return n < 0 ? -errno : (int)n;
}

int upper_listxattr(struct lfs_fs *fs, const struct onode *on, char *buf, size_t size)
{
    char path[PATH_MAX];
    int follow, rc = upper_path(on, path, sizeof path, &follow);
    if (rc < 0)
        return rc;
    ssize_t n = follow ? listxattr(path, buf, size) : llistxattr(path, buf, size);
    return n < 0 ? -errno : (int)n;
}

int upper_setxattr(struct lfs_fs *fs, const struct onode *on, const char *name, const void *v, size_t size, int flags)
{
    char path[PATH_MAX];
    int follow, rc = upper_path(on, path, sizeof path, &follow);
    if (rc < 0)
        return rc;
    int r = follow ? setxattr(path, name, v, size, flags) : lsetxattr(path, name, v, size, flags);
    return r < 0 ? -errno : 0;
}

int upper_removexattr(struct lfs_fs *fs, const struct onode *on, const char *name)
{
    char path[PATH_MAX];
    int follow, rc = upper_path(on, path, sizeof path, &follow);
    if (rc < 0)
        return rc;
    int r = follow ? removexattr(path, name) : lremovexattr(path, name);
    return r < 0 ? -errno : 0;
}

int upper_set_opaque(struct lfs_fs *fs, int dirfd)
{
    char path[64], attr[64];
    int rc = fd_path(path, sizeof path, dirfd, NULL);
    if (rc < 0)
        return rc;
    return setxattr(path, ovl_xattr(fs, "opaque", attr, sizeof attr), "y", 1, 0) < 0 ? -errno : 0;
}

/* Record on the upper directory `dirfd` that its lower part is index directory `lower`, wherever
 * it is renamed to: the kernel's redirect form, an absolute path from the root (docs/overlay.rst
 * "Rename").  Written before the rename, it is true at the old name as at the new one. */
int upper_set_redirect(struct lfs_fs *fs, int dirfd, uint32_t lower)
{
    char value[LFS_TARGET_MAX], path[64], attr[64];
    if (lower == LFS_ROOT_INO || lfs_node(&fs->ix, lower) == NULL)
        return -EINVAL;
    value[0] = '/';
    int rc = node_path(&fs->ix, lower, value + 1, sizeof value - 1);
    if (rc < 0)
        return rc;
    if ((rc = fd_path(path, sizeof path, dirfd, NULL)) < 0)
        return rc;
    return setxattr(path, ovl_xattr(fs, "redirect", attr, sizeof attr), value, strlen(value), 0) < 0 ? -errno : 0;
}

int upper_tmpname(struct lfs_fs *fs, char *buf, size_t size)
{
    int n = snprintf(buf, size, "#lfs%x.%llx", (unsigned)getpid(), (unsigned long long)++fs->tmp_seq);
    return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

int upper_keep_times(struct lfs_fs *fs, int dirfd, struct timespec saved[2])
{
    struct stat st;
    if (fstat(dirfd, &st) < 0)
        return -errno;
    saved[0] = st.st_atim;
    saved[1] = st.st_mtim;
    return 0;
}

void upper_restore_times(int dirfd, const struct timespec saved[2])
{
    char path[64];
    if (fd_path(path, sizeof path, dirfd, NULL) == 0)
        (void)utimensat(AT_FDCWD, path, saved, 0); /* best effort: only the times are at stake */
}

/* Copy `size` bytes from src to dst, keeping holes.  Returns 0 or -errno. */
static int copy_data(int src, int dst, off_t size)
{
    off_t off = 0;
    int use_cfr = 1;
    char *buf = NULL;
    int rc = 0;
    while (off < size) {
        off_t data = lseek(src, off, SEEK_DATA);
        if (data < 0) {
            if (errno == ENXIO)
                break; /* a hole up to the end */
            data = off; /* no SEEK_DATA here: copy everything */
        }
        off_t hole = lseek(src, data, SEEK_HOLE);
        if (hole < 0 || hole > size)
            hole = size;
        loff_t in = data, out = data;
        size_t left = (size_t)(hole - data);
        while (left > 0) {
            ssize_t n = -1;
            if (use_cfr) {
                n = copy_file_range(src, &in, dst, &out, left, 0);
                if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EOPNOTSUPP || errno == EINVAL)) {
                    use_cfr = 0;
                    n = -2;
                }
            }
            if (!use_cfr) {
                if (buf == NULL && (buf = malloc(1 << 20)) == NULL) {
                    rc = -ENOMEM;
                    goto out;
                }
                size_t chunk = left < (1 << 20) ? left : (1 << 20);
                n = pread(src, buf, chunk, in);
                if (n > 0) {
                    ssize_t w = 0;
                    while (w < n) {
                        ssize_t k = pwrite(dst, buf + w, (size_t)(n - w), out + w);
                        if (k < 0) {
                            rc = -errno;
                            goto out;
                        }
                        w += k;
                    }
                    in += n;
                    out += n;
                }
            }
            if (n < 0) {
                rc = -errno;
                goto out;
            }
            if (n == 0)
                break; /* the source ended early (it cannot: lowers never change) */
            left -= (size_t)n;
        }
        off = hole;
    }
    if (ftruncate(dst, size) < 0)
        rc = -errno;
out:
    free(buf);
    return rc;
}

/* Set the xattrs of a lower object (the index's visible ones) on an object of the work dir. */
static int copy_xattrs(struct lfs_fs *fs, const struct lfs_node *n, const char *path, int is_link)
{
    uint64_t off = n->xattr_off, end = (uint64_t)n->xattr_off + n->xattr_len;
    while (off < end) {
        uint32_t nl, vl;
        memcpy(&nl, fs->ix.blob + off, 4);
        memcpy(&vl, fs->ix.blob + off + 4, 4);
        char name[XATTR_NAME_MAX + 1];
        if (nl > XATTR_NAME_MAX)
            return -EINVAL;
        memcpy(name, fs->ix.blob + off + 8, nl);
        name[nl] = '\0';
        const char *value = fs->ix.blob + off + 8 + nl;
        off += 8 + (uint64_t)nl + vl;
        if (is_private_xattr(name))
            continue;
        if (lsetxattr(path, name, value, vl, 0) < 0) {
            /* what the upper's file system or our privilege refuses is skipped, as the kernel's
             * copy-up skips EOPNOTSUPP (user.* on a symlink, trusted.* unprivileged) */
            if (errno == EOPNOTSUPP || errno == EPERM || (is_link && errno == EACCES))
                continue;
            return -errno;
        }
    }
    return 0;
}

static int apply_attrs(struct lfs_fs *fs, int workfd, const char *tmp, const struct lfs_node *n)
{
    char path[PATH_MAX];
    int rc = fd_path(path, sizeof path, workfd, tmp);
    if (rc < 0)
        return rc;
    int is_link = S_ISLNK(n->mode);
    /* chown, then xattrs (chown clears security.capability), then chmod (chown clears
     * setuid/setgid), then times: the order of layer application (docs/oci.rst "Applying a layer").
     * Unprivileged, what cannot be made as it is keeps its owner and mode in the override. */
    int over = upper_needs_override(fs, n->mode, n->uid, n->gid, (dev_t)n->rdev);
    if (!over && fchownat(workfd, tmp, n->uid, n->gid, AT_SYMLINK_NOFOLLOW) < 0 && (fs->privileged || errno != EPERM))
        return -errno;
    rc = copy_xattrs(fs, n, path, is_link);
    if (rc < 0)
        return rc;
    if (over) {
        if ((rc = upper_set_override(fs, workfd, tmp, n->mode, n->uid, n->gid, (dev_t)n->rdev)) < 0)
            return rc;
    } else if (!is_link && fchmodat(workfd, tmp, n->mode & 07777, 0) < 0) {
        return -errno;
    }
    struct timespec ts[2];
    ts[0].tv_sec = n->atime_ns / 1000000000LL;
    ts[0].tv_nsec = n->atime_ns % 1000000000LL;
    ts[1].tv_sec = n->mtime_ns / 1000000000LL;
    ts[1].tv_nsec = n->mtime_ns % 1000000000LL;
    for (int i = 0; i < 2; i++)
        if (ts[i].tv_nsec < 0) {
            ts[i].tv_nsec += 1000000000LL;
            ts[i].tv_sec--;
        }
    if (utimensat(workfd, tmp, ts, AT_SYMLINK_NOFOLLOW) < 0)
        return -errno;
    return 0;
}

static uint8_t dtype_of(mode_t m)
{
    return (uint8_t)IFTODT(m);
}

/* Move work/tmp into dir/name (no object there), keeping dir's times; record it in dir's state. */
static int install(struct lfs_fs *fs, struct onode *dir, const char *tmp, const char *name, size_t len,
                   mode_t type, ino_t *ino_out)
{
    struct timespec saved[2];
    int rc = upper_keep_times(fs, dir->dirfd, saved);
    if (rc < 0)
        return rc;
    if (dir->ds == NULL && (rc = dir_load(fs, dir)) < 0)
        return rc;
    struct stat st;
    if (fstatat(fs->work_fd, tmp, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return -errno;
    if (renameat2(fs->work_fd, tmp, dir->dirfd, name, RENAME_NOREPLACE) < 0)
        return -errno;
    upper_restore_times(dir->dirfd, saved);
    if (dir_add(dir->ds, name, len, dtype_of(type), 0, st.st_ino) == NULL)
        return -ENOMEM;
    *ino_out = st.st_ino;
    return 0;
}

static void discard_tmp(struct lfs_fs *fs, const char *tmp, int is_dir)
{
    (void)unlinkat(fs->work_fd, tmp, is_dir ? AT_REMOVEDIR : 0);
}

int upper_copy_up_dir(struct lfs_fs *fs, uint64_t id, struct onode **out)
{
    if (id == LFS_ROOT_INO) {
        *out = fs->root;
        return 0;
    }
    struct onode *on = node_get_index(fs, (uint32_t)id);
    if (on == NULL && !(id >= 1 && id < lfs_n_nodes(&fs->ix))) {
        /* an upper-only directory is in the upper by definition */
        struct lfs_obj o;
        int rc = node_resolve(fs, id, &o);
        if (rc < 0)
            return rc;
        if (o.on == NULL || !o.on->has_upper || !lfs_is_dir(o.on->type))
            return -EIO;
        *out = o.on;
        return 0;
    }
    if (on && on->has_upper) {
        *out = on;
        return 0;
    }
    const struct lfs_node *n = &fs->ix.nodes[id];
    if (!lfs_is_dir(n->mode))
        return -ENOTDIR;
    struct onode *parent;
    int rc = upper_copy_up_dir(fs, n->parent, &parent);
    if (rc < 0)
        return rc;
    char tmp[64];
    if ((rc = upper_tmpname(fs, tmp, sizeof tmp)) < 0)
        return rc;
    if (mkdirat(fs->work_fd, tmp, 0700) < 0)
        return -errno;
    rc = apply_attrs(fs, fs->work_fd, tmp, n);
    char name[LFS_NAME_MAX + 1];
    memcpy(name, fs->ix.blob + n->name_off, n->name_len);
    name[n->name_len] = '\0';
    ino_t ino = 0;
    if (rc == 0)
        rc = install(fs, parent, tmp, name, n->name_len, S_IFDIR, &ino);
    if (rc < 0) {
        discard_tmp(fs, tmp, 1);
        return rc;
    }
    if (on == NULL && (on = node_new(fs, id, S_IFDIR)) == NULL)
        return -ENOMEM;
    on->lower = (uint32_t)id;
    on->has_upper = 1;
    on->upper_ino = ino;
    node_set_name(on, parent, name, n->name_len);
    on->dirfd = openat(parent->dirfd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (on->dirfd < 0)
        return -errno;
    on->ds = calloc(1, sizeof *on->ds); /* a new directory: no upper entries yet */
    if (on->ds == NULL)
        return -ENOMEM;
    node_hash_ino(fs, on);
    __atomic_fetch_add(&fs->copyups, 1, __ATOMIC_RELAXED);
    *out = on;
    return 0;
}

/* Copy the data of a metacopy upper file from its lower file, then drop the mark. */
static int complete_metacopy(struct lfs_fs *fs, struct onode *on)
{
    const struct lfs_node *n = lfs_node(&fs->ix, on->lower);
    if (n == NULL)
        return -EIO;
    char path[PATH_MAX];
    int rc = node_path(&fs->ix, on->lower, path, sizeof path);
    if (rc < 0)
        return rc;
    int src = open_in_layer(fs->layer_fds[n->layer], path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (src < 0)
        return -errno;
    int dst = upper_open(fs, on, O_WRONLY);
    if (dst < 0) {
        close(src);
        return dst;
    }
    struct stat st;
    rc = fstat(dst, &st) < 0 ? -errno : 0;
    if (rc == 0) {
        off_t size = (off_t)n->size < st.st_size ? (off_t)n->size : st.st_size;
        rc = copy_data(src, dst, size);
        if (rc == 0 && st.st_size != size && ftruncate(dst, st.st_size) < 0)
            rc = -errno;
    }
    close(src);
    close(dst);
    if (rc < 0)
        return rc;
    char attr[64];
    rc = upper_removexattr(fs, on, ovl_xattr(fs, "metacopy", attr, sizeof attr));
    if (rc < 0 && rc != -ENODATA)
        return rc;
    on->metacopy = 0;
    fd_drop(fs, &(struct lfs_obj){on->id, on, on->lower});
    return 0;
}

/* Finish the copy-up of an unlinked lower object that an open fd still uses: the copy made as
 * WORK/work/tmp is kept by an fd only (keepfd), as an unlinked upper file is, and its name in the
 * work directory goes.  Nothing lands in the upper: the object has no name in the merged view. */
static int copy_up_anonymous(struct lfs_fs *fs, struct lfs_obj *obj, const char *tmp)
{
    struct onode *on = obj->on;
    struct stat st;
    int fd = openat(fs->work_fd, tmp, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) < 0) {
        int rc = -errno;
        if (fd >= 0)
            close(fd);
        discard_tmp(fs, tmp, 0);
        return rc;
    }
    discard_tmp(fs, tmp, 0);
    on->keepfd = fd;
    on->has_upper = 1;
    on->metacopy = 0;
    on->upper_ino = st.st_ino;
    fd_drop(fs, obj); /* the lower fd: data now comes from the copy */
    __atomic_fetch_add(&fs->copyups, 1, __ATOMIC_RELAXED);
    return 0;
}

/* Copy an object up (and its parents).  `data`: COPY_META allows a metadata-only copy-up (when
 * the mount has metacopy on), COPY_DATA copies the data (or completes a metacopy), COPY_EMPTY
 * makes an empty file (the caller truncates it to 0 next). */
int upper_copy_up(struct lfs_fs *fs, struct lfs_obj *obj, int data)
{
    int with_data = data == COPY_DATA;
    if (obj->on && obj->on->has_upper) {
        if (data != COPY_META && obj->on->metacopy) {
            if (data == COPY_EMPTY) { /* truncating to 0: the lower data is not needed at all */
                char attr[64];
                int rc = upper_removexattr(fs, obj->on, ovl_xattr(fs, "metacopy", attr, sizeof attr));
                if (rc < 0 && rc != -ENODATA)
                    return rc;
                obj->on->metacopy = 0;
                fd_drop(fs, obj);
                return 0;
            }
            return complete_metacopy(fs, obj->on);
        }
        return 0;
    }
    mode_t type = node_type(fs, obj);
    if (lfs_is_dir(type)) {
        struct onode *on;
        int rc = upper_copy_up_dir(fs, obj->id, &on);
        if (rc == 0) {
            obj->on = on;
            obj->lower = on->lower;
        }
        return rc;
    }
    const struct lfs_node *n = lfs_node(&fs->ix, obj->lower);
    if (n == NULL)
        return -ESTALE;
    int anonymous = obj->on && obj->on->dead; /* unlinked, still open: no name to copy it to */
    uint32_t pdir = 0;
    const char *lname = NULL;
    size_t llen = 0;
    int rc;
    struct onode *parent = NULL;
    if (anonymous) {
        data = data == COPY_META ? COPY_DATA : data;
    } else {
        if ((rc = node_lower_location(fs, obj, &pdir, &lname, &llen)) < 0)
            return rc;
        if ((rc = upper_copy_up_dir(fs, pdir, &parent)) < 0)
            return rc;
    }
    char name[LFS_NAME_MAX + 1];
    memcpy(name, lname ? lname : "", llen);
    name[llen] = '\0';
    char tmp[64];
    if ((rc = upper_tmpname(fs, tmp, sizeof tmp)) < 0)
        return rc;
    int meta = 0;
    switch (n->mode & S_IFMT) {
    case S_IFREG: {
        int fd = openat(fs->work_fd, tmp, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
        if (fd < 0)
            return -errno;
        meta = data == COPY_META && fs->metacopy && n->size > 0;
        if (data == COPY_EMPTY) {
            /* nothing to copy: the caller truncates to 0 */
        } else if (meta) {
            char attr[64];
            if (ftruncate(fd, (off_t)n->size) < 0 ||
                fsetxattr(fd, ovl_xattr(fs, "metacopy", attr, sizeof attr), "", 0, 0) < 0)
                rc = -errno;
        } else if (n->size > 0) {
            (void)with_data; /* COPY_DATA, or COPY_META without metacopy: the whole file */
            char path[PATH_MAX];
            rc = node_path(&fs->ix, obj->lower, path, sizeof path);
            int src = rc < 0 ? -1 : open_in_layer(fs->layer_fds[n->layer], path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
            if (rc == 0 && src < 0)
                rc = -errno;
            if (rc == 0) {
                rc = copy_data(src, fd, (off_t)n->size);
                close(src);
            }
        }
        close(fd);
        break;
    }
    case S_IFLNK: {
        char *target = malloc(n->target_len + 1);
        if (target == NULL)
            return -ENOMEM;
        memcpy(target, fs->ix.blob + n->target_off, n->target_len);
        target[n->target_len] = '\0';
        rc = symlinkat(target, fs->work_fd, tmp) < 0 ? -errno : 0;
        free(target);
        if (rc < 0)
            return rc;
        break;
    }
    default:
        if (upper_needs_override(fs, n->mode, n->uid, n->gid, (dev_t)n->rdev)) {
            /* a device (or another's fifo) an unprivileged mount cannot make: an empty regular
             * file, its type in the override (apply_attrs) */
            int fd = openat(fs->work_fd, tmp, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
            if (fd < 0 || close(fd) < 0)
                return -errno;
        } else if (mknodat(fs->work_fd, tmp, (n->mode & S_IFMT) | 0600, (dev_t)n->rdev) < 0) {
            return -errno;
        }
        break;
    }
    if (rc == 0)
        rc = apply_attrs(fs, fs->work_fd, tmp, n);
    ino_t ino = 0;
    if (rc == 0 && anonymous)
        return copy_up_anonymous(fs, obj, tmp);
    if (rc == 0)
        rc = install(fs, parent, tmp, name, llen, n->mode, &ino);
    if (rc < 0) {
        discard_tmp(fs, tmp, 0);
        return rc;
    }
    struct onode *on = obj->on;
    if (on == NULL && (on = node_new(fs, obj->id, n->mode)) == NULL)
        return -ENOMEM;
    on->lower = obj->lower;
    on->has_upper = 1;
    on->metacopy = meta;
    on->upper_ino = ino;
    node_set_name(on, parent, name, llen);
    node_hash_ino(fs, on);
    fd_drop(fs, obj); /* the lower fd: reads now go to the upper file */
    if (obj->id >= lfs_n_nodes(&fs->ix))
        notify_inval_dir(fs, pdir); /* a name of a lower hard link: its st_ino changed */
    obj->on = on;
    __atomic_fetch_add(meta ? &fs->metacopies : &fs->copyups, 1, __ATOMIC_RELAXED);
    return 0;
}

/* Make the whiteout `name` in directory `dirfd`: a hard link of one whiteout the work directory
 * keeps, as the kernel's overlay makes them since Linux 5.8 (fs/overlayfs/dir.c ovl_whiteout,
 * "shared whiteout"): a link costs the upper file system a directory entry where a new 0/0
 * device costs it an inode, which on ext4 here is 16 us against 98-226 us, and rm -rf of a
 * lower tree is one whiteout per entry.  Falls back to a device of its own where the file system
 * refuses the link (no hard links; EMLINK makes a new shared one first).  Under fs->tree
 * exclusively.  Returns 0 or -errno (EEXIST: the name is taken). */
static int make_whiteout(struct lfs_fs *fs, int dirfd, const char *name)
{
    for (int tries = 0; !fs->no_shared_wo && tries < 2; tries++) {
        if (fs->shared_wo[0] == '\0') {
            char tmp[sizeof fs->shared_wo];
            if (upper_tmpname(fs, tmp, sizeof tmp) < 0 || mknodat(fs->work_fd, tmp, S_IFCHR, makedev(0, 0)) < 0)
                break;
            memcpy(fs->shared_wo, tmp, sizeof tmp);
        }
        if (linkat(fs->work_fd, fs->shared_wo, dirfd, name, 0) == 0)
            return 0;
        if (errno == EEXIST)
            return -EEXIST;
        if (errno != EMLINK && errno != ENOENT) { /* ENOENT: the work dir was emptied under us */
            fs->no_shared_wo = 1;
            break;
        }
        if (errno == EMLINK)
            (void)unlinkat(fs->work_fd, fs->shared_wo, 0); /* the links stay; a new one is made */
        fs->shared_wo[0] = '\0';
    }
    return mknodat(dirfd, name, S_IFCHR, makedev(0, 0)) < 0 ? -errno : 0;
}

int upper_whiteout(struct lfs_fs *fs, struct onode *dir, const char *name)
{
    size_t len = strlen(name);
    int rc;
    if (dir->ds == NULL && (rc = dir_load(fs, dir)) < 0)
        return rc;
    struct uent *e = dir_find(dir->ds, name, len);
    if (e == NULL) {
        if ((rc = make_whiteout(fs, dir->dirfd, name)) < 0)
            return rc;
    } else {
        /* an upper object is there: replace it atomically by a whiteout made in the work dir */
        char tmp[64];
        if ((rc = upper_tmpname(fs, tmp, sizeof tmp)) < 0)
            return rc;
        if ((rc = make_whiteout(fs, fs->work_fd, tmp)) < 0)
            return rc;
        unsigned flags = e->dtype == DT_DIR ? RENAME_EXCHANGE : 0;
        if (renameat2(fs->work_fd, tmp, dir->dirfd, name, flags) < 0) {
            rc = -errno;
            (void)unlinkat(fs->work_fd, tmp, 0);
            return rc;
        }
        if (flags == RENAME_EXCHANGE)
            (void)unlinkat(fs->work_fd, tmp, AT_REMOVEDIR); /* the old, empty directory */
    }
    struct stat st;
    ino_t ino = fstatat(dir->dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 ? st.st_ino : 0;
    if (dir_add(dir->ds, name, len, DT_CHR, 1, ino) == NULL)
        return -ENOMEM;
    __atomic_fetch_add(&fs->whiteouts, 1, __ATOMIC_RELAXED);
    return 0;
}
