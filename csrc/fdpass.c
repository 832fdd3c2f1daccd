/*
 * The fdpass C core: move chosen fds into the systemd socket-activation
 * layout (3, 4, ...) and execve, with every change undone if execve fails.
 *
 * Python calls these through cffi. No Python code runs between the steps of
 * fdpass_exec(), so no Python code can observe a half-moved fd table.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fdpass.h"

/* SD_LISTEN_FDS_START in sd-daemon.h: the first passed fd is always 3. */
#define FIRST_PASSED_FD 3

/* Marks a target slot that already contains its chosen fd, so nothing moves. */
#define SLOT_IDENTITY (-2)
/* Marks a target slot that was closed before the move. */
#define SLOT_WAS_CLOSED (-1)

struct slot_backup {
    int saved;  /* F_DUPFD_CLOEXEC copy of the slot's old file, or a SLOT_ mark */
    int flags;  /* the slot's fd flags before the move */
};

struct exec_state {
    int nfds;
    int first_unpassed;          /* 3 + nfds: every fd from here up is not passed */
    struct slot_backup *slots;   /* one per target slot 3 + i */
    int slots_saved;             /* slots[0 .. slots_saved) are filled in */
    int slots_moved;             /* target slots 3 .. 3 + slots_moved were overwritten */
    int stdio_opened[3];
    int *cloexec_set;            /* fds >= first_unpassed that we marked FD_CLOEXEC */
    int ncloexec_set;
    int signals_changed;
    sigset_t old_mask;
    struct sigaction old_sigpipe;
    struct sigaction old_sigxfsz;
};

static int fd_is_open(int fd)
{
    return fcntl(fd, F_GETFD) != -1 || errno != EBADF;
}

/*
 * Check that every fd is open and appears once. Changes nothing.
 * On failure, *bad_index is the index of the offending entry.
 */
static int validate_fds(const int *fds, int nfds, int *bad_index)
{
    unsigned char *seen;
    int max_fd = -1;
    int i;

    for (i = 0; i < nfds; i++) {
        if (fds[i] < 0 || fcntl(fds[i], F_GETFD) == -1) {
            *bad_index = i;
            errno = EBADF;
            return -1;
        }
        if (fds[i] > max_fd)
            max_fd = fds[i];
    }

    if (nfds == 0)
        return 0;

    seen = calloc((size_t)max_fd / 8 + 1, 1);
    if (seen == NULL)
        return -1;
    for (i = 0; i < nfds; i++) {
        unsigned char bit = (unsigned char)(1u << (fds[i] % 8));

        if (seen[fds[i] / 8] & bit) {
            free(seen);
            *bad_index = i;
            errno = EINVAL;
            return -1;
        }
        seen[fds[i] / 8] |= bit;
    }
    free(seen);

    return 0;
}

/* Open /dev/null on each of 0, 1 and 2 that is closed, so no passed fd lands there. */
static int open_missing_stdio(struct exec_state *st)
{
    int s;

    for (s = 0; s < 3; s++) {
        int fd;

        if (fd_is_open(s))
            continue;

        fd = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (fd < 0)
            return -1;
        if (fd != s) {
            int placed = dup2(fd, s);
            int saved_errno = errno;

            close(fd);
            if (placed < 0) {
                errno = saved_errno;
                return -1;
            }
        } else if (fcntl(s, F_SETFD, 0) == -1) {
            close(s);
            return -1;
        }
        st->stdio_opened[s] = 1;
    }

    return 0;
}

/*
 * Keep a copy of whatever sits in each target slot 3 + i, above every target,
 * so that a failed exec can put it back. A chosen fd that sits in some other
 * target slot is read from that copy, because the move overwrites the slot.
 */
static int save_target_slots(struct exec_state *st, const int *fds)
{
    int k;

    for (k = 0; k < st->nfds; k++) {
        int slot = FIRST_PASSED_FD + k;
        struct slot_backup *backup = &st->slots[k];

        backup->flags = fcntl(slot, F_GETFD);
        if (fds[k] == slot) {
            backup->saved = SLOT_IDENTITY;
        } else if (backup->flags == -1) {
            backup->saved = SLOT_WAS_CLOSED;
        } else {
            backup->saved = fcntl(slot, F_DUPFD_CLOEXEC, st->first_unpassed);
            if (backup->saved < 0)
                return -1;
        }
        st->slots_saved = k + 1;
    }

    return 0;
}

/*
 * Place fds[i] on 3 + i. dup2() creates the new fd with FD_CLOEXEC clear. A
 * slot that already contains its fd gets FD_CLOEXEC cleared with F_GETFD and
 * F_SETFD.
 */
static int move_fds(struct exec_state *st, const int *fds)
{
    int i;

    for (i = 0; i < st->nfds; i++) {
        int slot = FIRST_PASSED_FD + i;
        int source = fds[i];

        if (st->slots[i].saved == SLOT_IDENTITY) {
            int flags = fcntl(slot, F_GETFD);

            if (flags == -1 || fcntl(slot, F_SETFD, flags & ~FD_CLOEXEC) == -1)
                return -1;
            st->slots_moved = i + 1;
            continue;
        }

        if (source >= FIRST_PASSED_FD && source < st->first_unpassed)
            source = st->slots[source - FIRST_PASSED_FD].saved;
        if (dup2(source, slot) < 0)
            return -1;
        st->slots_moved = i + 1;
    }

    return 0;
}

static int remember_cloexec_set(struct exec_state *st, int fd, int *capacity)
{
    if (st->ncloexec_set == *capacity) {
        int new_capacity = *capacity ? *capacity * 2 : 64;
        int *grown = realloc(st->cloexec_set, (size_t)new_capacity * sizeof(int));

        if (grown == NULL)
            return -1;
        st->cloexec_set = grown;
        *capacity = new_capacity;
    }
    st->cloexec_set[st->ncloexec_set++] = fd;

    return 0;
}

static int set_cloexec_if_clear(struct exec_state *st, int fd, int *capacity)
{
    int flags = fcntl(fd, F_GETFD);

    if (flags == -1 || (flags & FD_CLOEXEC))
        return 0;
    if (remember_cloexec_set(st, fd, capacity) < 0)
        return -1;
    if (fcntl(fd, F_SETFD, flags | FD_CLOEXEC) == -1) {
        st->ncloexec_set--;
        return -1;
    }

    return 0;
}

/*
 * Set FD_CLOEXEC on every fd from first_unpassed up, and record which ones
 * changed. /proc/self/fd lists the open fds; without /proc, every number below
 * RLIMIT_NOFILE is tried, which is slow but correct.
 */
static int cloexec_unpassed_fds(struct exec_state *st)
{
    int capacity = 0;
    DIR *dir = opendir("/proc/self/fd");

    if (dir == NULL) {
        struct rlimit limit;
        long fd;

        if (getrlimit(RLIMIT_NOFILE, &limit) == -1)
            return -1;
        for (fd = st->first_unpassed; fd < (long)limit.rlim_cur && fd < INT_MAX; fd++) {
            if (set_cloexec_if_clear(st, (int)fd, &capacity) < 0)
                return -1;
        }
        return 0;
    }

    for (;;) {
        struct dirent *entry;
        char *end;
        long fd;

        errno = 0;
        entry = readdir(dir);
        if (entry == NULL)
            break;
        fd = strtol(entry->d_name, &end, 10);
        if (*end != '\0' || end == entry->d_name || fd < st->first_unpassed || fd == dirfd(dir))
            continue;
        if (set_cloexec_if_clear(st, (int)fd, &capacity) < 0) {
            int saved_errno = errno;

            closedir(dir);
            errno = saved_errno;
            return -1;
        }
    }
    if (errno != 0) {
        int saved_errno = errno;

        closedir(dir);
        errno = saved_errno;
        return -1;
    }
    closedir(dir);

    return 0;
}

/*
 * Unblock every signal and reset SIGPIPE and SIGXFSZ from SIG_IGN to SIG_DFL.
 * execve keeps ignored dispositions and the mask. CPython ignores both signals
 * at start-up, so a new image would otherwise inherit them. subprocess's
 * restore_signals does the same for a child.
 */
static int reset_signals(struct exec_state *st)
{
    sigset_t all_unblocked;
    struct sigaction dfl;

    sigemptyset(&all_unblocked);
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);

    if (sigaction(SIGPIPE, NULL, &st->old_sigpipe) == -1 ||
        sigaction(SIGXFSZ, NULL, &st->old_sigxfsz) == -1)
        return -1;
    if (pthread_sigmask(SIG_SETMASK, &all_unblocked, &st->old_mask) != 0) {
        errno = EINVAL;
        return -1;
    }
    st->signals_changed = 1;

    if (st->old_sigpipe.sa_handler == SIG_IGN && sigaction(SIGPIPE, &dfl, NULL) == -1)
        return -1;
    if (st->old_sigxfsz.sa_handler == SIG_IGN && sigaction(SIGXFSZ, &dfl, NULL) == -1)
        return -1;

    return 0;
}

/* Undo every change recorded in st, in reverse order, and free it. Keeps errno. */
static void rollback(struct exec_state *st)
{
    int saved_errno = errno;
    int i;

    if (st->signals_changed) {
        sigaction(SIGPIPE, &st->old_sigpipe, NULL);
        sigaction(SIGXFSZ, &st->old_sigxfsz, NULL);
        pthread_sigmask(SIG_SETMASK, &st->old_mask, NULL);
    }

    for (i = 0; i < st->ncloexec_set; i++) {
        int flags = fcntl(st->cloexec_set[i], F_GETFD);

        if (flags != -1)
            fcntl(st->cloexec_set[i], F_SETFD, flags & ~FD_CLOEXEC);
    }

    for (i = 0; i < st->slots_saved; i++) {
        int slot = FIRST_PASSED_FD + i;
        struct slot_backup *backup = &st->slots[i];

        if (backup->saved == SLOT_IDENTITY) {
            fcntl(slot, F_SETFD, backup->flags);
        } else if (backup->saved == SLOT_WAS_CLOSED) {
            if (i < st->slots_moved)
                close(slot);
        } else {
            if (i < st->slots_moved && dup2(backup->saved, slot) >= 0)
                fcntl(slot, F_SETFD, backup->flags);
            close(backup->saved);
        }
    }

    for (i = 0; i < 3; i++) {
        if (st->stdio_opened[i])
            close(i);
    }

    free(st->slots);
    free(st->cloexec_set);
    errno = saved_errno;
}

/*
 * Move fds[i] to 3 + i and clear FD_CLOEXEC on exactly those fds. Set it on
 * every other fd above 2, and open /dev/null on a closed 0, 1 or 2. Reset the
 * signal mask and the SIGPIPE/SIGXFSZ dispositions, then call
 * execve(path, argv, envp).
 *
 * Returns only on failure: -1 with errno set, and every fd number, fd flag and
 * signal setting as it was before the call. For a closed or repeated fd, errno
 * is EBADF or EINVAL, *bad_index names the entry, and nothing was changed.
 *
 * Not async-signal-safe: it allocates memory and reads /proc/self/fd.
 * NOTE: another thread that opens or closes fds during the call can race with
 * the move; callers should not run fd-changing threads while it runs.
 */
int fdpass_exec(const char *path, char *const argv[], char *const envp[],
                const int *fds, int nfds, int *bad_index)
{
    struct exec_state st;

    *bad_index = -1;
    if (path == NULL || argv == NULL || envp == NULL || nfds < 0 ||
        (nfds > 0 && fds == NULL) || nfds > INT_MAX - FIRST_PASSED_FD) {
        errno = EINVAL;
        return -1;
    }
    if (validate_fds(fds, nfds, bad_index) < 0)
        return -1;

    memset(&st, 0, sizeof(st));
    st.nfds = nfds;
    st.first_unpassed = FIRST_PASSED_FD + nfds;
    st.slots = calloc((size_t)nfds + 1, sizeof(*st.slots));
    if (st.slots == NULL)
        return -1;

    if (open_missing_stdio(&st) < 0 ||
        save_target_slots(&st, fds) < 0 ||
        move_fds(&st, fds) < 0 ||
        cloexec_unpassed_fds(&st) < 0 ||
        reset_signals(&st) < 0) {
        rollback(&st);
        return -1;
    }

    execve(path, argv, envp);

    rollback(&st);
    return -1;
}

/*
 * Fill out[i] with the fd flags, status flags, file type and, for a socket,
 * SO_DOMAIN, SO_TYPE, SO_PROTOCOL and SO_ACCEPTCONN of fds[i]. A closed fd
 * gets out[i].error = EBADF; the call still succeeds. Changes nothing.
 * Async-signal-safe.
 */
int fdpass_inspect(const int *fds, int nfds, struct fdpass_fdinfo *out)
{
    int i;

    if (nfds < 0 || (nfds > 0 && (fds == NULL || out == NULL))) {
        errno = EINVAL;
        return -1;
    }

    for (i = 0; i < nfds; i++) {
        struct fdpass_fdinfo *info = &out[i];
        struct stat st;
        socklen_t len;

        memset(info, 0, sizeof(*info));
        info->fd = fds[i];
        info->family = info->type = info->protocol = -1;

        info->fd_flags = fds[i] < 0 ? -1 : fcntl(fds[i], F_GETFD);
        if (info->fd_flags == -1) {
            info->error = fds[i] < 0 ? EBADF : errno;
            continue;
        }
        info->status_flags = fcntl(fds[i], F_GETFL);
        if (info->status_flags == -1 || fstat(fds[i], &st) == -1) {
            info->error = errno;
            continue;
        }
        info->mode = st.st_mode & S_IFMT;
        if (!S_ISSOCK(st.st_mode))
            continue;

        len = sizeof(int);
        if (getsockopt(fds[i], SOL_SOCKET, SO_DOMAIN, &info->family, &len) == -1 ||
            getsockopt(fds[i], SOL_SOCKET, SO_TYPE, &info->type, &len) == -1 ||
            getsockopt(fds[i], SOL_SOCKET, SO_PROTOCOL, &info->protocol, &len) == -1 ||
            getsockopt(fds[i], SOL_SOCKET, SO_ACCEPTCONN, &info->listening, &len) == -1)
            info->error = errno;
    }

    return 0;
}

/*
 * Set (cloexec != 0) or clear FD_CLOEXEC on each fd with F_GETFD/F_SETFD.
 * Stops at the first failure, with the earlier fds already changed, so
 * callers check the fds first. Async-signal-safe.
 */
int fdpass_set_cloexec(const int *fds, int nfds, int cloexec)
{
    int i;

    if (nfds < 0 || (nfds > 0 && fds == NULL)) {
        errno = EINVAL;
        return -1;
    }

    for (i = 0; i < nfds; i++) {
        int flags = fcntl(fds[i], F_GETFD);

        if (flags == -1)
            return -1;
        flags = cloexec ? (flags | FD_CLOEXEC) : (flags & ~FD_CLOEXEC);
        if (fcntl(fds[i], F_SETFD, flags) == -1)
            return -1;
    }

    return 0;
}
