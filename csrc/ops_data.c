/* ops_data.c: FUSE requests on data: open, read, write, flush, release, fsync, fallocate, and
 * the directory handle requests.
 *
 * When the kernel offers FUSE_CAP_NO_OPEN_SUPPORT / NO_OPENDIR_SUPPORT, OPEN and OPENDIR are
 * answered ENOSYS once and never sent again (nor RELEASE / RELEASEDIR): READ and WRITE then name
 * the inode, and the fd comes from the bounded cache (fdcache.c).  The kernel then opens files with
 * keep_cache and directories with FOPEN_CACHE_DIR by itself (fs/fuse/file.c fuse_file_open), so
 * listings and data stay in its caches.  Without those capabilities OPEN answers a handle-less
 * open with keep_cache, OPENDIR one with cache_readdir (docs/fuse.rst "Capabilities the C engine uses").
 *
 * Writes: the first WRITE (or a truncation, see ops_meta.c) copies the file up with its data; then
 * data goes to the upper file.  READs are spliced from the backing fd (fuse_reply_data), WRITEs are
 * copied into it with fuse_buf_copy.  No writeback cache: every write and its time reach the upper
 * file at once, so the kernel overlay mounted on the same upper afterwards shows the same times.
 */
#include "fs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define RDLOCK(fs) do { if ((fs)->writable) pthread_rwlock_rdlock(&(fs)->tree); } while (0)
#define UNLOCK(fs) do { if ((fs)->writable) pthread_rwlock_unlock(&(fs)->tree); } while (0)

static int wants_write(int flags)
{
    return (flags & O_ACCMODE) != O_RDONLY || (flags & (O_TRUNC | O_APPEND | O_CREAT));
}

void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_OPEN);
    if (wants_write(fi->flags) && !fs->writable) {
        lfs_reply_err(req, fs, OP_OPEN, EROFS);
        return;
    }
    struct lfs_obj obj;
    if (fs->writable)
        pthread_rwlock_wrlock(&fs->tree);
    int rc = node_resolve(fs, ino, &obj);
    mode_t type = rc == 0 ? node_type(fs, &obj) : 0;
    if (rc == 0 && type != S_IFREG)
        rc = type == S_IFDIR ? -EISDIR : -EINVAL;
    if (rc == 0 && fs->no_open && fs->slots) {
        UNLOCK(fs);
        fuse_reply_err(req, ENOSYS); /* not an error: the kernel now stops sending OPEN */
        return;
    }
    if (rc == 0 && wants_write(fi->flags))
        rc = upper_copy_up(fs, &obj, (fi->flags & O_TRUNC) ? COPY_EMPTY : COPY_DATA);
    UNLOCK(fs);
    if (rc < 0) {
        lfs_reply_err(req, fs, OP_OPEN, -rc);
        return;
    }
    fi->fh = 0; /* data requests find their fd by inode (fdcache.c) */
    fi->keep_cache = 1;
    fi->noflush = 1;
    fuse_reply_open(req, fi);
}

void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_READ);
    struct lfs_obj obj;
    RDLOCK(fs);
    int rc = node_resolve(fs, ino, &obj);
    if (rc == 0 && node_type(fs, &obj) != S_IFREG)
        rc = lfs_is_dir(node_type(fs, &obj)) ? -EISDIR : -EINVAL;
    int slot = -1, fd = -1;
    if (rc == 0) {
        fd = fd_get(fs, &obj, &slot, 0);
        if (fd < 0)
            rc = fd;
    }
    if (rc < 0) {
        UNLOCK(fs);
        lfs_reply_err(req, fs, OP_READ, -rc);
        return;
    }
    struct fuse_bufvec buf = FUSE_BUFVEC_INIT(size);
    buf.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
    buf.buf[0].fd = fd;
    buf.buf[0].pos = off;
    /* FUSE_BUF_SPLICE_MOVE needs FUSE_CAP_SPLICE_MOVE, which is not asked for */
    if (fuse_reply_data(req, &buf, 0) < 0)
        __atomic_fetch_add(&fs->errors[OP_READ], 1, __ATOMIC_RELAXED);
    fd_put(fs, slot, fd);
    UNLOCK(fs);
}

/* Resolve an object for a data change and copy it up with its data; returns with fs->tree held
 * (exclusively if a copy-up was needed, shared otherwise) or an error with it released. */
static int writable_object(struct lfs_fs *fs, fuse_ino_t ino, struct lfs_obj *obj, int *exclusive)
{
    pthread_rwlock_rdlock(&fs->tree);
    *exclusive = 0;
    int rc = node_resolve(fs, ino, obj);
    if (rc == 0 && node_type(fs, obj) != S_IFREG)
        rc = lfs_is_dir(node_type(fs, obj)) ? -EISDIR : -EINVAL;
    if (rc == 0 && (obj->on == NULL || !obj->on->has_upper || obj->on->metacopy)) {
        pthread_rwlock_unlock(&fs->tree);
        pthread_rwlock_wrlock(&fs->tree);
        *exclusive = 1;
        rc = node_resolve(fs, ino, obj);
        if (rc == 0)
            rc = upper_copy_up(fs, obj, COPY_DATA);
    }
    if (rc < 0)
        pthread_rwlock_unlock(&fs->tree);
    return rc;
}

void op_write_buf(fuse_req_t req, fuse_ino_t ino, struct fuse_bufvec *in, off_t off, struct fuse_file_info *fi)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_WRITE);
    if (!fs->writable) {
        lfs_reply_err(req, fs, OP_WRITE, EROFS);
        return;
    }
    struct lfs_obj obj;
    int exclusive;
    int rc = writable_object(fs, ino, &obj, &exclusive);
    if (rc < 0) {
        lfs_reply_err(req, fs, OP_WRITE, -rc);
        return;
    }
    int slot = -1;
    int fd = fd_get(fs, &obj, &slot, 1);
    if (fd < 0) {
        pthread_rwlock_unlock(&fs->tree);
        lfs_reply_err(req, fs, OP_WRITE, -fd);
        return;
    }
    struct fuse_bufvec out = FUSE_BUFVEC_INIT(fuse_buf_size(in));
    out.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
    out.buf[0].fd = fd;
    out.buf[0].pos = off;
    ssize_t n = fuse_buf_copy(&out, in, 0);
    fd_put(fs, slot, fd);
    pthread_rwlock_unlock(&fs->tree);
    if (n < 0)
        lfs_reply_err(req, fs, OP_WRITE, (int)-n);
    else
        fuse_reply_write(req, (size_t)n);
}

void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_FLUSH);
    fuse_reply_err(req, 0); /* nothing is buffered here */
}

void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_RELEASE);
    fuse_reply_err(req, 0); /* handles are not per open (fh 0): the fd cache keeps the fds */
}

void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_FSYNC);
    struct lfs_obj obj;
    RDLOCK(fs);
    int rc = node_resolve(fs, ino, &obj);
    if (rc == 0 && obj.on && obj.on->has_upper && !lfs_is_dir(obj.on->type) && obj.on->type == S_IFREG) {
        int slot = -1;
        int fd = fd_get(fs, &obj, &slot, 0);
        if (fd < 0)
            rc = fd;
        else {
            if ((datasync ? fdatasync(fd) : fsync(fd)) < 0)
                rc = -errno;
            fd_put(fs, slot, fd);
        }
    } /* a lower object has nothing to sync */
    UNLOCK(fs);
    lfs_reply_err(req, fs, OP_FSYNC, -rc);
}

void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length, struct fuse_file_info *fi)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_FALLOCATE);
    if (!fs->writable) {
        lfs_reply_err(req, fs, OP_FALLOCATE, EROFS);
        return;
    }
    struct lfs_obj obj;
    int exclusive;
    int rc = writable_object(fs, ino, &obj, &exclusive);
    if (rc < 0) {
        lfs_reply_err(req, fs, OP_FALLOCATE, -rc);
        return;
    }
    int slot = -1;
    int fd = fd_get(fs, &obj, &slot, 1);
    if (fd < 0) {
        rc = fd;
    } else {
        if (fallocate(fd, mode, offset, length) < 0)
            rc = -errno;
        fd_put(fs, slot, fd);
    }
    pthread_rwlock_unlock(&fs->tree);
    lfs_reply_err(req, fs, OP_FALLOCATE, -rc);
}

void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_OPENDIR);
    struct lfs_obj obj;
    RDLOCK(fs);
    int rc = node_resolve(fs, ino, &obj);
    if (rc == 0 && !lfs_is_dir(node_type(fs, &obj)))
        rc = -ENOTDIR;
    if (rc == 0)
        rc = node_dir_ready(fs, &obj);
    if (rc == 0 && node_denied(fs, &obj))
        rc = -EACCES;
    UNLOCK(fs);
    if (rc < 0) {
        lfs_reply_err(req, fs, OP_OPENDIR, -rc);
        return;
    }
    if (fs->no_opendir) {
        fuse_reply_err(req, ENOSYS); /* not an error: the kernel stops sending OPENDIR */
        return;
    }
    fi->fh = 0;
    fi->cache_readdir = 1; /* listings change only through us, and the kernel drops them then */
    fi->keep_cache = 1;
    fuse_reply_open(req, fi);
}

void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
    do_readdir(req, ino, size, off, 0);
}

void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
    do_readdir(req, ino, size, off, 1);
}

void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_RELEASEDIR);
    fuse_reply_err(req, 0);
}

void op_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    struct lfs_fs *fs = fuse_req_userdata(req);
    COUNT(fs, OP_FSYNCDIR);
    struct lfs_obj obj;
    RDLOCK(fs);
    int rc = node_resolve(fs, ino, &obj);
    if (rc == 0 && obj.on && obj.on->has_upper && obj.on->dirfd >= 0) {
        int fd = openat(obj.on->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0 || (datasync ? fdatasync(fd) : fsync(fd)) < 0)
            rc = -errno;
        if (fd >= 0)
            close(fd);
    }
    UNLOCK(fs);
    lfs_reply_err(req, fs, OP_FSYNCDIR, -rc);
}
