/* fs.h: the state of one mount served by the C engine, shared by its files.
 *
 * A mount is a stack of immutable lower layers, described by the merged index (merge.h), and,
 * for a writable mount, an upper directory and a work directory in the kernel overlay's own
 * format (docs/overlay.rst).  The files of the engine, by concept:
 *
 *   session.c   the Python type FuseSession, libfuse set-up, the loop and its stop, statistics
 *   node.c      identities: what a FUSE nodeid denotes, lookups through the upper and the index
 *   dir.c       upper directories: their entries loaded once, merged listings (readdir)
 *   upper.c     writing the upper: copy-up, whiteouts, opaque directories, the work directory
 *   fdcache.c   backing file descriptors for data, bounded (CLOCK)
 *   idmap.c     -o uidmapping= / gidmapping=: the owners shown and the owners taken (idmap.h)
 *   ops_meta.c  FUSE requests on one object: lookup, forget, getattr, setattr, readlink, xattrs, statfs
 *   ops_dir.c   FUSE requests on names: mknod, mkdir, symlink, create, link, unlink, rmdir, rename
 *   ops_data.c  FUSE requests on data: open, read, write, flush, release, fsync, fallocate
 *
 * Identities (node.c).  A FUSE nodeid, which is also the st_ino a mount reports:
 *   - 1 .. n_nodes-1: an index node, i.e. a lower object (a merged directory or a file of one
 *     layer).  While untouched it has no struct onode at all ("pristine"): every request about it
 *     is answered from the index, as a read-only mount does.  When it is copied up it keeps its
 *     number, so a file open before the copy-up goes on to see the new data.
 *   - ((d + 1) << 32) | i on writable mounts: the name at directory entry d of a lower hard link i
 *     (index nlink > 1).  FUSE never says which name a file was opened by, so each name is its own
 *     inode for the kernel, while st_ino stays i for all of them (so tar, du and find still see
 *     one file with several names).  A write through one name copies up that name only and gives
 *     it an st_ino of its own: copy-up breaks the link, as the kernel overlay does by default
 *     (docs/overlay.rst "Hard links"), and the other names keep the lower data.
 *   - LFS_UPPER_BIT | upper inode: an object that exists only in the upper (created, or found in an
 *     upper left by an earlier mount or by the kernel): stable across remounts, and hard links in
 *     the upper share it.
 *
 * Locking.  One rwlock (fs->tree) guards the onodes, the upper directory states and every change
 * of the upper: requests that only read take it shared, requests that change the tree take it
 * exclusive.  The fd cache has its own mutex.  The lower layers never change, nor does what the
 * index says of them: a lazy index (merge.h) only adds directories' entries, under its own mutex,
 * taken last (lfs_ready, before a directory's entries or link count are read: node_dir_ready).
 */
#ifndef LAYERFS_FS_H
#define LAYERFS_FS_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* openat2, renameat2, copy_file_range, O_PATH, SEEK_DATA (Python.h defines it too) */
#endif
#define FUSE_USE_VERSION 312
#include <dirent.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <limits.h>
#include <stdio.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "idmap.h"
#include "merge.h"
#include "override.h"
#include "region.h"

#define LFS_UPPER_BIT (1ULL << 63)
#define LFS_GEN_SHIFT 32

enum lfs_op {
    OP_LOOKUP, OP_FORGET, OP_GETATTR, OP_SETATTR, OP_READLINK, OP_MKNOD, OP_MKDIR, OP_UNLINK, OP_RMDIR,
    OP_SYMLINK, OP_RENAME, OP_LINK, OP_OPEN, OP_READ, OP_WRITE, OP_FLUSH, OP_RELEASE, OP_FSYNC,
    OP_OPENDIR, OP_READDIR, OP_READDIRPLUS, OP_RELEASEDIR, OP_FSYNCDIR, OP_STATFS, OP_SETXATTR,
    OP_GETXATTR, OP_LISTXATTR, OP_REMOVEXATTR, OP_CREATE, OP_FALLOCATE, OP_COPYUP, OP_COUNT
};

/* One name in an upper directory (dir.c). */
struct uent {
    char *name;
    uint32_t len;
    uint8_t dtype;      /* DT_* of the upper object */
    uint8_t whiteout;   /* a whiteout: the name is deleted from the merged view */
    uint64_t seq;       /* its place among the upper-only names of a listing (stable) */
    ino_t ino;          /* the upper inode */
    struct uent *hnext;
};

/* The entries of one upper directory, loaded once (getdents) and kept up to date by every change
 * made through the mount: the upper changes only through us (the cache contract). */
struct dirstate {
    struct uent **buckets;
    size_t nbuckets, count;
    struct uent **order;   /* order[seq]: the entry first seen seq-th; NULL once removed (never reused) */
    size_t norder, cap;
    uint64_t next_seq;
};

/* An object the engine tracks: anything that is not a pristine lower object. */
struct onode {
    uint64_t id;              /* FUSE nodeid = st_ino */
    uint32_t lower;           /* dirs: the merged lower directory (index node) or 0;
                                 non-dirs: the lower object it was copied up from, whose data a
                                 metacopy still shows; 0 if none */
    mode_t type;              /* S_IFMT bits */
    unsigned has_upper : 1;   /* exists in the upper directory */
    unsigned metacopy : 1;    /* upper holds the metadata only; data still comes from `lower` */
    unsigned opaque : 1;      /* dirs: the upper directory cuts off what lies below */
    unsigned dead : 1;        /* its last name is gone; kept while the kernel refers to it */
    unsigned counted : 1;     /* every lookup the kernel holds was counted (upper-only nodes) */
    struct onode *parent;     /* the directory holding `name` (NULL for the root) */
    char *name;               /* one current name (malloc'd); NULL for the root, and for an upper
                                 object reached by keepfd only (see ops_dir.c name_gone) */
    uint64_t nlookup;
    uint32_t refs;            /* onodes whose parent this is: it lives while they do */
    ino_t upper_ino;
    int dirfd;                /* dirs with an upper: O_PATH | O_DIRECTORY fd of it (owned), else -1 */
    int keepfd;               /* an upper object that lost the name it was reached by (unlinked,
                                 or a hard link whose other names are elsewhere), or the anonymous
                                 copy of an unlinked lower file: an O_PATH fd that keeps it (owned),
                                 closed when the kernel forgets a dead object; else -1 */
    int32_t slot;             /* its fd cache slot (upper data), or -1 */
    struct dirstate *ds;      /* dirs with an upper: its entries (NULL until first needed) */
    struct onode *hnext_id, *hnext_ino;
};

struct lfs_fs {
    struct lfs_index ix;
    int *layer_fds;
    int n_layers;
    int open_flags;
    double entry_timeout, attr_timeout, negative_timeout;

    /* writable mounts */
    int writable;
    int upper_fd;       /* O_PATH | O_DIRECTORY of the upper directory (owned), or -1 */
    int work_fd;        /* O_PATH | O_DIRECTORY of WORKDIR/work (owned), or -1 */
    int privileged;     /* trusted.overlay.* (root) or user.overlay.* (userxattr) names; when 0,
                           what the mount cannot make as it is takes the override form (override.h) */
    uid_t self_uid;     /* the daemon's own ids: what it can make as it is when unprivileged */
    gid_t self_gid;
    int metacopy;       /* metadata-only copy-up for chmod/chown/utimes/xattr changes */
    int redirect_dir;   /* renames of lower directories write overlay.redirect (else EXDEV) */
    struct lfs_idmap uids, gids; /* the IDs shown for those on disk (idmap.h); n == 0: the identity.
                           Every ID the engine holds is an ID on disk (a container ID). */
    dev_t upper_dev;
    uint64_t tmp_seq;   /* names in the work directory (under tree) */
    char shared_wo[64]; /* the whiteout in the work directory new whiteouts link to ("": none yet) */
    int no_shared_wo;   /* the upper file system refused a link to it: each whiteout its own inode */
    pthread_rwlock_t tree;
    struct lfs_region ix_on_r, dent_dir_r, slot_of_r; /* where the three tables below live: they
                                   grow with a lazy index (node_grow), their addresses fixed */
    struct onode **ix_on;       /* per index node: its onode, or NULL while pristine */
    struct onode **by_id;       /* hash: id -> onode (ids beyond the index) */
    struct onode **by_ino;      /* hash: upper inode -> onode */
    size_t nbuckets;
    struct onode *root;         /* the root's onode (writable mounts) */
    uint32_t *dent_dir;         /* writable mounts, per directory entry: the directory holding it */
    struct fuse_session *se;    /* for notifications */

    /* backing fds (fdcache.c) */
    struct fdslot { uint64_t id; int fd; int refs; int recent; } *slots;
    int32_t *slot_of;           /* pristine index nodes: their slot, or -1 */
    uint32_t slot_of_n;         /* entries of slot_of filled in */
    uint32_t max_open, hand;
    pthread_mutex_t fd_lock;

    int no_open;
    int no_opendir;
    unsigned long requests[OP_COUNT];
    unsigned long errors[OP_COUNT];
    long open_files;
    unsigned long copyups, metacopies, whiteouts;
};

#define COUNT(fs, op) __atomic_fetch_add(&(fs)->requests[op], 1, __ATOMIC_RELAXED)

/* session.c */
int lfs_reply_err(fuse_req_t req, struct lfs_fs *fs, enum lfs_op op, int err);
extern const char *const lfs_op_names[OP_COUNT];

/* What a nodeid denotes now (node.c). */
struct lfs_obj {
    uint64_t id;
    struct onode *on;          /* NULL: a pristine lower object */
    uint32_t lower;            /* the index node behind it (pristine object, merged dir, data source) */
};

int node_resolve(struct lfs_fs *fs, uint64_t id, struct lfs_obj *out);
int node_lookup(struct lfs_fs *fs, const struct lfs_obj *dir, const char *name, size_t len, struct lfs_obj *out);
int node_denied(struct lfs_fs *fs, const struct lfs_obj *dir);
int node_stat(struct lfs_fs *fs, const struct lfs_obj *obj, struct stat *st);
mode_t node_type(struct lfs_fs *fs, const struct lfs_obj *obj);
int node_lower_has(struct lfs_fs *fs, const struct onode *dir, const char *name, size_t len);
uint32_t node_lower_child(struct lfs_fs *fs, const struct onode *dir, const char *name, size_t len);
struct onode *node_get_index(struct lfs_fs *fs, uint32_t ino);
struct onode *node_new(struct lfs_fs *fs, uint64_t id, mode_t type);
void node_set_name(struct onode *on, struct onode *parent, const char *name, size_t len);
void node_hash_ino(struct lfs_fs *fs, struct onode *on);
void node_unhash_ino(struct lfs_fs *fs, struct onode *on);
struct onode *node_by_ino(struct lfs_fs *fs, ino_t ino);
void node_count_lookup(struct lfs_fs *fs, const struct lfs_obj *obj);
void node_forget(struct lfs_fs *fs, uint64_t id, uint64_t n);
void node_maybe_free(struct lfs_fs *fs, struct onode *on);
uint64_t node_child_id(struct lfs_fs *fs, uint32_t ino, uint32_t dent);
int node_lower_location(struct lfs_fs *fs, const struct lfs_obj *obj, uint32_t *dir, const char **name, size_t *len);
uint32_t lfs_lookup_dent(const struct lfs_index *ix, const struct lfs_node *dir, const char *name, size_t len);
int node_init(struct lfs_fs *fs);
int node_grow(void *fs, uint32_t dir, uint32_t n_nodes, uint32_t n_dents); /* lfs_grow_fn */
int node_dir_ready(struct lfs_fs *fs, const struct lfs_obj *dir);
int node_load_dir(struct lfs_fs *fs, struct onode *dir);
void node_free_all(struct lfs_fs *fs);
int node_path(const struct lfs_index *ix, uint32_t ino, char *buf, size_t size);
void node_entry(struct lfs_fs *fs, uint64_t id, const struct stat *st, struct fuse_entry_param *e);
void node_fill_stat(uint64_t id, const struct lfs_node *n, struct stat *st);

/* idmap.c: give *st the owner the mount shows (the host IDs of its IDs on disk).  Called on every
 * attribute that leaves the engine: node_entry (lookup, readdirplus, the replies of creating
 * requests) and the replies of GETATTR and SETATTR. */
void lfs_attr_shown(const struct lfs_fs *fs, struct stat *st);
/* Whether an object of this type is kept in the daemon's own IDs on disk, whatever owner it is
 * given: a symlink of an unprivileged daemon (no override possible). */
int lfs_idmap_own_link(const struct lfs_fs *fs, mode_t mode);

/* dir.c */
int dir_load(struct lfs_fs *fs, struct onode *dir);
struct uent *dir_find(struct dirstate *ds, const char *name, size_t len);
struct uent *dir_add(struct dirstate *ds, const char *name, size_t len, uint8_t dtype, int whiteout, ino_t ino);
void dir_remove(struct dirstate *ds, struct uent *e);
void dir_free(struct dirstate *ds);
int dir_upper_is_empty(struct lfs_fs *fs, struct onode *dir, int *only_whiteouts);
int dir_check_empty(struct lfs_fs *fs, const struct lfs_obj *dir); /* 0, -ENOTEMPTY or -EACCES */
void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, int plus);

/* upper.c */
/* upper_copy_up's `data`: what the object's data must be in the upper */
enum { COPY_META = 0, COPY_DATA = 1, COPY_EMPTY = 2 };
int upper_copy_up(struct lfs_fs *fs, struct lfs_obj *obj, int data);
int upper_copy_up_dir(struct lfs_fs *fs, uint64_t id, struct onode **out);
int upper_whiteout(struct lfs_fs *fs, struct onode *dir, const char *name);
int upper_set_opaque(struct lfs_fs *fs, int fd);
int upper_set_redirect(struct lfs_fs *fs, int dirfd, uint32_t lower);
int upper_tmpname(struct lfs_fs *fs, char *buf, size_t size);
int upper_parent_fd(struct lfs_fs *fs, const struct onode *on);
int upper_open(struct lfs_fs *fs, const struct onode *on, int flags);
int upper_stat(struct lfs_fs *fs, const struct onode *on, struct stat *st);
int upper_getxattr(struct lfs_fs *fs, const struct onode *on, const char *name, void *buf, size_t size);
int upper_listxattr(struct lfs_fs *fs, const struct onode *on, char *buf, size_t size);
int upper_setxattr(struct lfs_fs *fs, const struct onode *on, const char *name, const void *v, size_t size, int flags);
int upper_removexattr(struct lfs_fs *fs, const struct onode *on, const char *name);
int upper_keep_times(struct lfs_fs *fs, int dirfd, struct timespec saved[2]);
int upper_needs_override(const struct lfs_fs *fs, mode_t mode, uid_t uid, gid_t gid, dev_t rdev);
int upper_apply_override(struct lfs_fs *fs, int dirfd, const char *name, struct stat *st);
int upper_set_override(struct lfs_fs *fs, int dirfd, const char *name, mode_t mode, uid_t uid, gid_t gid, dev_t rdev);
int upper_set_owner_mode(struct lfs_fs *fs, const struct onode *on, const struct stat *attr, int to_set);
void upper_restore_times(int dirfd, const struct timespec saved[2]);
int is_private_xattr(const char *name);

/* fdcache.c */
int fd_get(struct lfs_fs *fs, const struct lfs_obj *obj, int *slot, int write);
void fd_put(struct lfs_fs *fs, int slot, int fd);
void fd_drop(struct lfs_fs *fs, const struct lfs_obj *obj);
int fd_init(struct lfs_fs *fs, uint32_t max_open);
int fd_grow(struct lfs_fs *fs, uint32_t n_nodes);
void fd_free(struct lfs_fs *fs);
int open_in_layer(int layer_fd, const char *path, int flags);

/* The operations (ops_*.c). */
int lfs_caller_in_group(fuse_req_t req, gid_t gid); /* gid: an ID on disk */
void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name);
void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup);
void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets);
void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi);
void op_readlink(fuse_req_t req, fuse_ino_t ino);
void op_statfs(fuse_req_t req, fuse_ino_t ino);
void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size);
void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size);
void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value, size_t size, int flags);
void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name);
void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev);
void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode);
void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name);
void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi);
void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname);
void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name);
void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name);
void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent, const char *newname,
               unsigned int flags);
void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi);
void op_write_buf(fuse_req_t req, fuse_ino_t ino, struct fuse_bufvec *bufv, off_t off, struct fuse_file_info *fi);
void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi);
void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length, struct fuse_file_info *fi);
void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi);
void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi);
void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void op_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi);

/* Drop the kernel's cached listing of directory `dir` (session.c), when the engine changed what
 * it shows by itself: a copy-up that gives a name a new inode number changes its d_ino. */
void notify_inval_dir(struct lfs_fs *fs, uint64_t dir);

static inline int lfs_is_dir(mode_t m) { return (m & S_IFMT) == S_IFDIR; }

#endif
