/* ops_meta.c: FUSE requests about one object: lookup, forget, getattr, setattr, readlink,
 * statfs and the xattr requests.
 *
 * On a read-only mount (and for pristine lower objects of a writable one) every answer comes from
 * the merged index in memory: no layer directory is read (docs/fuse.rst "Capabilities the C engine uses").  On a
 * writable mount a change of metadata copies the object up first: metadata only when the mount
 * has metacopy on (chmod of a 1 GiB lower file writes no data), else with its data
 * (docs/overlay.rst "Copy-up").
 *
 * Cache: lookups and attributes carry the mount's timeouts (layerfs/_mount/cache.py), negative
 * lookups too: the upper changes only through this mount, and the kernel updates or invalidates
 * what each change it sent us affects.
 *
 * Overlay-private xattrs (trusted.overlay.*, user.overlay.*, user.fuseoverlayfs.*) are never
 * shown: reading one answers ENODATA, setting or removing one EPERM, and listings skip them
 * (docs/overlay.rst "Private xattrs").  Except the mount's own namespace (trusted.overlay.* as root,
 * user.overlay.* unprivileged), which a program inside may use as data, as on the kernel overlay
 * since Linux 6.7 (overlayfs.rst "Nesting overlayfs mounts"): OWN.X is stored escaped, as
 * OWN.overlay.X, in the upper object, and listed as OWN.X again.
 */
#include "fs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <unistd.h>

#define RDLOCK(fs) do { if ((fs)->writable) pthread_rwlock_rdlock(&(fs)->tree); } while (0)
#define WRLOCK(fs) do { if ((fs)->writable) pthread_rwlock_wrlock(&(fs)->tree); } while (0)
#define UNLOCK(fs) do { if ((fs)->writable) pthread_rwlock_unlock(&(fs)->tree); } while (0)

void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_LOOKUP);
    size_t len = strlen(name);
    struct lfs_obj dir, child;
    struct fuse_entry_param e;
    RDLOCK(fs);
    int rc = node_resolve(fs, parent, &dir);
    if (rc == 0 && !lfs_is_dir(node_type(fs, &dir)))
        rc = -ENOTDIR;
    if (rc == 0 && len > LFS_NAME_MAX)
        rc = -ENAMETOOLONG;
    if (rc == 0) {
        if (strcmp(name, ".") == 0) {
            child = dir;
        } else if (strcmp(name, "..") == 0) {
            uint64_t up = dir.on && dir.on->has_upper ? (dir.on->parent ? dir.on->parent->id : LFS_ROOT_INO)
                                                      : fs->ix.nodes[dir.lower].parent;
            rc = node_resolve(fs, up, &child);
        } else {
            rc = node_lookup(fs, &dir, name, len, &child);
        }
    }
    struct stat st;
    if (rc == 0)
        rc = node_stat(fs, &child, &st);
    if (rc == 0) {
        node_entry(fs, child.id, &st, &e);
        node_count_lookup(fs, &child);
    }
    UNLOCK(fs);
    if (rc == -ENOENT) { /* a negative entry the kernel may cache (layerfs/_mount/cache.py) */
        memset(&e, 0, sizeof e);
        e.entry_timeout = fs->negative_timeout;
        fuse_reply_entry(req, &e);
        return;
    }
    if (rc < 0) {
        lfs_reply_err(req, fs, OP_LOOKUP, -rc);
        return;
    }
    fuse_reply_entry(req, &e);
}

void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_FORGET);
    node_forget(fs, ino, nlookup); /* index nodes live as long as the mount */
    fuse_reply_none(req);
}

void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_FORGET);
    for (size_t i = 0; i < count; i++)
        node_forget(fs, forgets[i].ino, forgets[i].nlookup);
    fuse_reply_none(req);
}

void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_GETATTR);
    struct lfs_obj obj;
    struct stat st;
    RDLOCK(fs);
    int rc = node_resolve(fs, ino, &obj);
    if (rc == 0)
        rc = node_stat(fs, &obj, &st);
    UNLOCK(fs);
    if (rc < 0) {
        lfs_reply_err(req, fs, OP_GETATTR, -rc);
        return;
    }
    lfs_attr_shown(fs, &st);
    fuse_reply_attr(req, &st, fs->attr_timeout);
}

/* Apply a SETATTR to the upper object (already copied up). */
static int apply_setattr(struct lfs_fs *fs, struct lfs_obj *obj, const struct stat *attr, int to_set)
{
    struct onode *on = obj->on;
    int dirfd = lfs_is_dir(on->type) ? on->dirfd : (on->parent ? on->parent->dirfd : -1);
    const char *name = lfs_is_dir(on->type) ? "" : on->name;
    char path[64];
    if (name == NULL) { /* unlinked but still referenced: through its kept fd */
        if (on->keepfd < 0)
            return -ESTALE;
        snprintf(path, sizeof path, "/proc/self/fd/%d", on->keepfd);
        dirfd = AT_FDCWD;
        name = path;
    } else if (name[0] == '\0') {
        snprintf(path, sizeof path, "/proc/self/fd/%d", dirfd);
        dirfd = AT_FDCWD;
        name = path;
    }
    int nofollow = name == path ? 0 : AT_SYMLINK_NOFOLLOW;
    struct stat given = *attr;
    if (lfs_idmap_own_link(fs, on->type)) {
        /* its owner on disk is the daemon's own, shown as the caller: an owner given that shows as
         * the daemon's user is that owner on disk (lfs_attr_shown); any other fails below (EPERM) */
        if ((to_set & FUSE_SET_ATTR_UID) && lfs_idmap_to_host(&fs->uids, given.st_uid) == fs->self_uid)
            given.st_uid = fs->self_uid;
        if ((to_set & FUSE_SET_ATTR_GID) && lfs_idmap_to_host(&fs->gids, given.st_gid) == fs->self_gid)
            given.st_gid = fs->self_gid;
        attr = &given;
    }
    /* unprivileged: an owner the daemon cannot give, or an object in the override form, keeps
     * owner and mode in its override instead (upper.c) */
    int done = (to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID | FUSE_SET_ATTR_MODE))
                   ? upper_set_owner_mode(fs, on, attr, to_set) : 0;
    if (done < 0)
        return done;
    if (!done && (to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID))) {
        uid_t uid = (to_set & FUSE_SET_ATTR_UID) ? attr->st_uid : (uid_t)-1;
        gid_t gid = (to_set & FUSE_SET_ATTR_GID) ? attr->st_gid : (gid_t)-1;
        if (fchownat(dirfd, name, uid, gid, nofollow) < 0)
            return -errno;
    }
    if (!done && (to_set & FUSE_SET_ATTR_MODE) && !S_ISLNK(on->type)) {
        if (fchmodat(dirfd, name, attr->st_mode & 07777, 0) < 0)
            return -errno;
    }
    if (to_set & FUSE_SET_ATTR_SIZE) {
        int fd = upper_open(fs, on, O_WRONLY);
        if (fd < 0)
            return fd;
        int r = ftruncate(fd, attr->st_size);
        int e = errno;
        close(fd);
        if (r < 0)
            return -e;
    }
    if (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_ATIME_NOW | FUSE_SET_ATTR_MTIME_NOW)) {
        struct timespec ts[2] = {{0, UTIME_OMIT}, {0, UTIME_OMIT}};
        if (to_set & FUSE_SET_ATTR_ATIME_NOW)
            ts[0].tv_nsec = UTIME_NOW;
        else if (to_set & FUSE_SET_ATTR_ATIME)
            ts[0] = attr->st_atim;
        if (to_set & FUSE_SET_ATTR_MTIME_NOW)
            ts[1].tv_nsec = UTIME_NOW;
        else if (to_set & FUSE_SET_ATTR_MTIME)
            ts[1] = attr->st_mtim;
        if (utimensat(dirfd, name, ts, nofollow) < 0)
            return -errno;
    }
    return 0;
}

/* Whether the request's caller is in group `gid` (an ID on disk; primary or supplementary), as the
 * kernel judges it: by the group the mount shows, since the caller's groups are host IDs (idmap.h). */
int lfs_caller_in_group(fuse_req_t req, gid_t gid)
{
    const struct lfs_fs *fs = fuse_req_userdata(req);
    gid = lfs_idmap_to_host(&fs->gids, gid);
    if (fuse_req_ctx(req)->gid == gid)
        return 1;
    gid_t list[64];
    int n = fuse_req_getgroups(req, 64, list);
    for (int i = 0; i < n && i < 64; i++)
        if (list[i] == gid)
            return 1;
    return 0;
}

/* The VFS drops the setgid bit of a file that is not group-executable when a caller outside its
 * group, without CAP_FSETID, writes, truncates or chowns it (fs/attr.c setattr_should_drop_sgid);
 * FUSE without HANDLE_KILLPRIV_V2 (libfuse 3.14 has none) forwards only the group-executable case
 * as a mode change.  What reaches us instead: a SETATTR with no attribute at all (before a write,
 * or for chown(-1, -1)) or one with a size.  Whether the caller has CAP_FSETID is not known here:
 * uid 0 is taken to have it, the host's or, with an ID mapping, the namespace's (idmap.h). */
static void drop_sgid(fuse_req_t req, struct lfs_fs *fs, const struct lfs_obj *obj, struct stat *attr, int *to_set)
{
    struct stat cur;
    uid_t caller = fuse_req_ctx(req)->uid;
    if (caller == 0 || lfs_idmap_to_container(&fs->uids, caller) == 0 || (*to_set != 0 && !(*to_set & FUSE_SET_ATTR_SIZE)) ||
        node_stat(fs, obj, &cur) < 0)
        return;
    if (S_ISREG(cur.st_mode) && (cur.st_mode & (S_ISGID | S_IXGRP)) == S_ISGID && !(*to_set & FUSE_SET_ATTR_MODE) &&
        !lfs_caller_in_group(req, cur.st_gid)) {
        attr->st_mode = cur.st_mode & ~(mode_t)S_ISGID;
        *to_set |= FUSE_SET_ATTR_MODE;
    }
}

void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_SETATTR);
    if (!fs->writable) {
        lfs_reply_err(req, fs, OP_SETATTR, EROFS);
        return;
    }
    /* chown names host IDs; the upper and its overrides keep the IDs on disk (idmap.h) */
    if (to_set & FUSE_SET_ATTR_UID)
        attr->st_uid = lfs_idmap_to_container(&fs->uids, attr->st_uid);
    if (to_set & FUSE_SET_ATTR_GID)
        attr->st_gid = lfs_idmap_to_container(&fs->gids, attr->st_gid);
    struct lfs_obj obj;
    struct stat st;
    WRLOCK(fs);
    int rc = node_resolve(fs, ino, &obj);
    if (rc == 0 && (to_set & FUSE_SET_ATTR_SIZE) && lfs_is_dir(node_type(fs, &obj)))
        rc = -EISDIR;
    if (rc == 0)
        drop_sgid(req, fs, &obj, attr, &to_set);
    if (rc == 0) {
        int data = COPY_META;
        if (to_set & FUSE_SET_ATTR_SIZE)
            data = attr->st_size == 0 ? COPY_EMPTY : COPY_DATA;
        rc = upper_copy_up(fs, &obj, data);
    }
    if (rc == 0)
        rc = apply_setattr(fs, &obj, attr, to_set);
    if (rc == 0)
        rc = node_stat(fs, &obj, &st);
    UNLOCK(fs);
    if (rc < 0) {
        lfs_reply_err(req, fs, OP_SETATTR, -rc);
        return;
    }
    lfs_attr_shown(fs, &st);
    fuse_reply_attr(req, &st, fs->attr_timeout);
}

void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_READLINK);
    struct lfs_obj obj;
    char *target = NULL;
    RDLOCK(fs);
    int rc = node_resolve(fs, ino, &obj);
    if (rc == 0 && node_type(fs, &obj) != S_IFLNK)
        rc = -EINVAL;
    if (rc == 0 && obj.on && obj.on->has_upper) {
        target = malloc(PATH_MAX + 1);
        if (target == NULL) {
            rc = -ENOMEM;
        } else if ((obj.on->name == NULL || obj.on->parent == NULL) && obj.on->keepfd < 0) {
            rc = -ESTALE;
        } else {
            /* by name, or by the kept fd of an object whose name went (its other links remain) */
            ssize_t n = obj.on->name && obj.on->parent ? readlinkat(obj.on->parent->dirfd, obj.on->name, target, PATH_MAX)
                                                       : readlinkat(obj.on->keepfd, "", target, PATH_MAX);
            if (n < 0)
                rc = -errno;
            else
                target[n] = '\0';
        }
    } else if (rc == 0) {
        const struct lfs_node *n = &fs->ix.nodes[obj.lower];
        target = malloc(n->target_len + 1);
        if (target == NULL) {
            rc = -ENOMEM;
        } else {
            memcpy(target, fs->ix.blob + n->target_off, n->target_len);
            target[n->target_len] = '\0';
        }
    }
    UNLOCK(fs);
    if (rc < 0)
        lfs_reply_err(req, fs, OP_READLINK, -rc);
    else
        fuse_reply_readlink(req, target);
    free(target);
}

void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_STATFS);
    struct statvfs sv;
    int fd = fs->writable ? fs->upper_fd : fs->layer_fds[fs->n_layers - 1];
    if (fstatvfs(fd, &sv) < 0) {
        lfs_reply_err(req, fs, OP_STATFS, errno);
        return;
    }
    sv.f_namemax = LFS_NAME_MAX; /* 255, like the kernel overlay (docs/overlay.rst "Name length") */
    fuse_reply_statfs(req, &sv);
}

/* -- xattrs -------------------------------------------------------------------------------- */

static const char *own_prefix(const struct lfs_fs *fs)
{
    return fs->privileged ? "trusted.overlay." : "user.overlay.";
}

/* What an xattr name asked for through the mount is in the upper: the name itself, OWN.overlay.X for
 * OWN.X (into buf; returns buf), or NULL for a private name that is neither shown nor accepted. */
static const char *upper_xattr_name(const struct lfs_fs *fs, const char *name, char *buf, size_t size)
{
    const char *own = own_prefix(fs);
    size_t olen = strlen(own);
    if (strncmp(name, own, olen) == 0) {
        int n = snprintf(buf, size, "%soverlay.%s", own, name + olen);
        return n < 0 || (size_t)n >= size ? NULL : buf;
    }
    return is_private_xattr(name) ? NULL : name;
}

static int index_getxattr(struct lfs_fs *fs, const struct lfs_node *n, const char *name, const char **value,
                          uint32_t *vlen)
{
    size_t want = strlen(name);
    uint64_t off = n->xattr_off, end = (uint64_t)n->xattr_off + n->xattr_len;
    while (off < end) {
        uint32_t nl, vl;
        memcpy(&nl, fs->ix.blob + off, 4);
        memcpy(&vl, fs->ix.blob + off + 4, 4);
        if (nl == want && memcmp(fs->ix.blob + off + 8, name, nl) == 0) {
            *value = fs->ix.blob + off + 8 + nl;
            *vlen = vl;
            return 0;
        }
        off += 8 + (uint64_t)nl + vl;
    }
    return -ENODATA;
}

void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_GETXATTR);
    struct lfs_obj obj;
    char *buf = NULL;
    int rc;
    char escaped[XATTR_NAME_MAX + 1];
    const char *uname = upper_xattr_name(fs, name, escaped, sizeof escaped);
    RDLOCK(fs);
    rc = node_resolve(fs, ino, &obj);
    if (rc == 0 && (uname == NULL || (uname != name && !(obj.on && obj.on->has_upper))))
        rc = -ENODATA; /* private, or escaped on an object the index holds without its private names */
    if (rc == 0 && obj.on && obj.on->has_upper) {
        if (size > 0 && (buf = malloc(size)) == NULL)
            rc = -ENOMEM;
        else
            rc = upper_getxattr(fs, obj.on, uname, buf, size);
        UNLOCK(fs);
        if (rc < 0)
            lfs_reply_err(req, fs, OP_GETXATTR, -rc);
        else if (size == 0)
            fuse_reply_xattr(req, (size_t)rc);
        else
            fuse_reply_buf(req, buf, (size_t)rc);
        free(buf);
        return;
    }
    const char *value = NULL;
    uint32_t vlen = 0;
    if (rc == 0)
        rc = index_getxattr(fs, &fs->ix.nodes[obj.lower], name, &value, &vlen);
    UNLOCK(fs); /* the index never changes: value stays valid */
    if (rc < 0)
        lfs_reply_err(req, fs, OP_GETXATTR, -rc);
    else if (size == 0)
        fuse_reply_xattr(req, vlen);
    else if (vlen > size)
        lfs_reply_err(req, fs, OP_GETXATTR, ERANGE);
    else
        fuse_reply_buf(req, value, vlen);
}

/* Keep the names of a listxattr buffer that are not overlay-private, OWN.overlay.X shown as OWN.X;
 * returns the new length (names are only ever moved towards the start). */
static size_t filter_private(const struct lfs_fs *fs, char *buf, size_t len)
{
    const char *own = own_prefix(fs);
    size_t olen = strlen(own), elen = olen + strlen("overlay.");
    size_t out = 0;
    for (size_t i = 0; i < len;) {
        size_t n = strnlen(buf + i, len - i);
        if (i + n >= len)
            break; /* no terminating NUL: not a name */
        const char *src = buf + i;
        if (!is_private_xattr(src)) {
            memmove(buf + out, src, n + 1);
            out += n + 1;
        } else if (n > elen && strncmp(src, own, olen) == 0 && strncmp(src + olen, "overlay.", elen - olen) == 0) {
            memmove(buf + out, src, olen);
            memmove(buf + out + olen, src + elen, n - elen + 1);
            out += n - (elen - olen) + 1;
        }
        i += n + 1;
    }
    return out;
}

void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_LISTXATTR);
    struct lfs_obj obj;
    RDLOCK(fs);
    int rc = node_resolve(fs, ino, &obj);
    if (rc == 0 && obj.on && obj.on->has_upper) {
        int n = upper_listxattr(fs, obj.on, NULL, 0);
        char *buf = n > 0 ? malloc((size_t)n) : NULL;
        if (n > 0 && buf == NULL)
            n = -ENOMEM;
        if (n > 0)
            n = upper_listxattr(fs, obj.on, buf, (size_t)n);
        UNLOCK(fs);
        if (n < 0) {
            free(buf);
            lfs_reply_err(req, fs, OP_LISTXATTR, -n);
            return;
        }
        size_t total = buf ? filter_private(fs, buf, (size_t)n) : 0;
        if (size == 0)
            fuse_reply_xattr(req, total);
        else if (total > size)
            lfs_reply_err(req, fs, OP_LISTXATTR, ERANGE);
        else
            fuse_reply_buf(req, buf, total);
        free(buf);
        return;
    }
    if (rc < 0) {
        UNLOCK(fs);
        lfs_reply_err(req, fs, OP_LISTXATTR, -rc);
        return;
    }
    const struct lfs_node *n = &fs->ix.nodes[obj.lower];
    UNLOCK(fs);
    size_t total = 0;
    uint64_t off, end = (uint64_t)n->xattr_off + n->xattr_len;
    for (off = n->xattr_off; off < end;) {
        uint32_t nl, vl;
        memcpy(&nl, fs->ix.blob + off, 4);
        memcpy(&vl, fs->ix.blob + off + 4, 4);
        total += nl + 1;
        off += 8 + (uint64_t)nl + vl;
    }
    if (size == 0) {
        fuse_reply_xattr(req, total);
        return;
    }
    if (total > size) {
        lfs_reply_err(req, fs, OP_LISTXATTR, ERANGE);
        return;
    }
    char *buf = malloc(total ? total : 1);
    if (buf == NULL) {
        lfs_reply_err(req, fs, OP_LISTXATTR, ENOMEM);
        return;
    }
    size_t pos = 0;
    for (off = n->xattr_off; off < end;) {
        uint32_t nl, vl;
        memcpy(&nl, fs->ix.blob + off, 4);
        memcpy(&vl, fs->ix.blob + off + 4, 4);
        memcpy(buf + pos, fs->ix.blob + off + 8, nl);
        buf[pos + nl] = '\0';
        pos += nl + 1;
        off += 8 + (uint64_t)nl + vl;
    }
    fuse_reply_buf(req, buf, total);
    free(buf);
}

static void change_xattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value, size_t size,
                         int flags, int remove)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    enum lfs_op op = remove ? OP_REMOVEXATTR : OP_SETXATTR;
    COUNT(fs, op);
    if (!fs->writable) {
        lfs_reply_err(req, fs, op, EROFS);
        return;
    }
    char escaped[XATTR_NAME_MAX + 1];
    const char *uname = upper_xattr_name(fs, name, escaped, sizeof escaped);
    if (uname == NULL) {
        lfs_reply_err(req, fs, op, EPERM);
        return;
    }
    struct lfs_obj obj;
    WRLOCK(fs);
    int rc = node_resolve(fs, ino, &obj);
    if (rc == 0 && !(obj.on && obj.on->has_upper)) {
        /* check against the lower object first: a refused change must not copy anything up */
        const char *v;
        uint32_t vl;
        int has = uname == name && index_getxattr(fs, &fs->ix.nodes[obj.lower], name, &v, &vl) == 0;
        if (remove && !has)
            rc = -ENODATA;
        else if (!remove && (flags & XATTR_CREATE) && has)
            rc = -EEXIST;
        else if (!remove && (flags & XATTR_REPLACE) && !has)
            rc = -ENODATA;
    }
    if (rc == 0)
        rc = upper_copy_up(fs, &obj, COPY_META);
    if (rc == 0)
        rc = remove ? upper_removexattr(fs, obj.on, uname) : upper_setxattr(fs, obj.on, uname, value, size, flags);
    UNLOCK(fs);
    lfs_reply_err(req, fs, op, -rc);
}

void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value, size_t size, int flags)
{
    change_xattr(req, ino, name, value, size, flags, 0);
}

void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
    change_xattr(req, ino, name, NULL, 0, 0, 1);
}
