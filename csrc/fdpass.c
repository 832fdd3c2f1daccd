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
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
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
    int stdio_saved[3];          /* F_DUPFD_CLOEXEC copy of an fd that /dev/null replaced on 0-2, or -1 */
    int stdio_flags[3];          /* the fd flags of 0, 1 and 2 before that */
    int *fd_flags;               /* F_GETFD of each chosen fd, read while validating */
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
 * On failure, *bad_index is the index of the offending entry. If flags is not
 * NULL, flags[i] receives the F_GETFD result of fds[i].
 */
static int validate_fds_flags(const int *fds, int nfds, int *bad_index, int *flags)
{
    unsigned char *seen;
    int max_fd = -1;
    int i;

    for (i = 0; i < nfds; i++) {
        int fd_flags = fds[i] < 0 ? -1 : fcntl(fds[i], F_GETFD);

        if (fd_flags == -1) {
            *bad_index = i;
            errno = EBADF;
            return -1;
        }
        if (flags != NULL)
            flags[i] = fd_flags;
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

static int validate_fds(const int *fds, int nfds, int *bad_index)
{
    return validate_fds_flags(fds, nfds, bad_index, NULL);
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

static int is_chosen(const int *fds, int nfds, int fd)
{
    int i;

    for (i = 0; i < nfds; i++) {
        if (fds[i] == fd)
            return 1;
    }

    return 0;
}

/*
 * Put /dev/null on each of 0, 1 and 2 that contains a chosen fd or an fd with
 * FD_CLOEXEC set. Runs after the move has copied chosen fds to their target
 * slots. Otherwise the new program would find a passed file on stdio too, or
 * stdio closed by execve. The old fd is kept above every target so that a
 * failed exec can restore it.
 */
static int replace_stdio_for_exec(struct exec_state *st, const int *fds)
{
    int s;

    for (s = 0; s < 3; s++) {
        int null_fd;
        int placed;
        int saved_errno;

        st->stdio_flags[s] = fcntl(s, F_GETFD);
        if (st->stdio_flags[s] == -1)
            return -1;
        if (!(st->stdio_flags[s] & FD_CLOEXEC) && !is_chosen(fds, st->nfds, s))
            continue;

        null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (null_fd < 0)
            return -1;
        st->stdio_saved[s] = fcntl(s, F_DUPFD_CLOEXEC, st->first_unpassed);
        if (st->stdio_saved[s] < 0) {
            saved_errno = errno;
            close(null_fd);
            errno = saved_errno;
            return -1;
        }

        /* dup2() leaves FD_CLOEXEC clear on s, so the new program keeps /dev/null. */
        placed = dup2(null_fd, s);
        saved_errno = errno;
        close(null_fd);
        if (placed < 0) {
            close(st->stdio_saved[s]);
            st->stdio_saved[s] = -1;
            errno = saved_errno;
            return -1;
        }
    }

    return 0;
}

/*
 * Keep a copy of whatever sits in each target slot 3 + i, above every target,
 * so that a failed exec can put it back. A chosen fd that sits in some other
 * target slot is read from that copy, because the move overwrites the slot.
 */
static int save_target_slots(struct exec_state *st, const int *fds, const int *fd_flags)
{
    int k;

    for (k = 0; k < st->nfds; k++) {
        int slot = FIRST_PASSED_FD + k;
        struct slot_backup *backup = &st->slots[k];

        if (fds[k] == slot) {
            /* validate_fds_flags() has read this fd's flags already. */
            backup->flags = fd_flags[k];
            backup->saved = SLOT_IDENTITY;
            st->slots_saved = k + 1;
            continue;
        }

        backup->flags = fcntl(slot, F_GETFD);
        if (backup->flags == -1) {
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
 * slot that already contains its fd gets FD_CLOEXEC cleared with F_SETFD,
 * unless it is clear already.
 */
static int move_fds(struct exec_state *st, const int *fds)
{
    int i;

    for (i = 0; i < st->nfds; i++) {
        int slot = FIRST_PASSED_FD + i;
        int source = fds[i];

        if (st->slots[i].saved == SLOT_IDENTITY) {
            int flags = st->slots[i].flags;

            if ((flags & FD_CLOEXEC) && fcntl(slot, F_SETFD, flags & ~FD_CLOEXEC) == -1)
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

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)  /* linux/close_range.h, Linux 5.11 */
#endif

/* close_range(first, last, CLOSE_RANGE_CLOEXEC): -1 with errno ENOSYS or EINVAL before Linux 5.11. */
static int close_range_cloexec(unsigned int first, unsigned int last)
{
#ifdef SYS_close_range
    return (int)syscall(SYS_close_range, first, last, CLOSE_RANGE_CLOEXEC);
#else
    (void)first;
    (void)last;
    errno = ENOSYS;
    return -1;
#endif
}

/* One record of getdents64(2). */
struct linux_dirent64 {
    unsigned long long d_ino;
    long long d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

/*
 * Open /proc/self/fd. When every fd number below the soft RLIMIT_NOFILE is in
 * use (EMFILE), lift the soft limit to the hard one for this one open() and
 * put it back at once. The listing must still cover the fds above the soft
 * limit, because no loop below that limit would reach them.
 */
static int open_fd_directory(void)
{
    struct rlimit limit;
    struct rlimit lifted;
    int dir_fd = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int saved_errno;

    if (dir_fd >= 0 || errno != EMFILE)
        return dir_fd;
    if (getrlimit(RLIMIT_NOFILE, &limit) == -1 || limit.rlim_cur >= limit.rlim_max) {
        errno = EMFILE;
        return -1;
    }

    lifted = limit;
    lifted.rlim_cur = limit.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &lifted) == -1) {
        errno = EMFILE;
        return -1;
    }
    dir_fd = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    saved_errno = errno;
    setrlimit(RLIMIT_NOFILE, &limit);

    errno = saved_errno;
    return dir_fd;
}

/*
 * Call set_cloexec_if_clear() on every open fd from first_unpassed up, as
 * /proc/self/fd lists them. procfs puts fd N at directory offset N + 2, after
 * "." and "..", so one lseek() skips the passed fds: with thousands passed, a
 * full listing costs milliseconds. If the offset is rejected, the listing
 * starts from the top. Returns -2 if /proc/self/fd cannot be opened.
 */
static int cloexec_unpassed_from_proc(struct exec_state *st, int *capacity)
{
    long long buffer[1024];  /* 8 KiB, aligned for struct linux_dirent64 */
    int dir_fd = open_fd_directory();
    int saved_errno;

    if (dir_fd < 0)
        return -2;
    if (lseek(dir_fd, (off_t)st->first_unpassed + 2, SEEK_SET) == -1 && lseek(dir_fd, 0, SEEK_SET) == -1)
        goto fail;

    for (;;) {
        long length = syscall(SYS_getdents64, dir_fd, buffer, sizeof(buffer));
        long offset;

        if (length == -1)
            goto fail;
        if (length == 0)
            break;

        for (offset = 0; offset < length;) {
            struct linux_dirent64 *entry = (struct linux_dirent64 *)((char *)buffer + offset);
            char *end;
            long fd = strtol(entry->d_name, &end, 10);

            offset += entry->d_reclen;
            if (*end != '\0' || end == entry->d_name || fd < st->first_unpassed || fd == dir_fd)
                continue;
            if (set_cloexec_if_clear(st, (int)fd, capacity) < 0)
                goto fail;
        }
    }

    close(dir_fd);
    return 0;

fail:
    saved_errno = errno;
    close(dir_fd);
    errno = saved_errno;
    return -1;
}

/*
 * Set FD_CLOEXEC on every fd from first_unpassed up, and record which ones
 * changed. /proc/self/fd lists the open fds; without /proc, every number below
 * RLIMIT_NOFILE is tried, which is slow but correct. Where close_range() has
 * CLOSE_RANGE_CLOEXEC, one more call covers any fd the listing missed.
 */
static int cloexec_unpassed_fds(struct exec_state *st)
{
    int capacity = 0;
    int listed = cloexec_unpassed_from_proc(st, &capacity);

    if (listed == -1)
        return -1;
    if (listed == -2) {
        struct rlimit limit;
        long fd;

        if (getrlimit(RLIMIT_NOFILE, &limit) == -1)
            return -1;
        for (fd = st->first_unpassed; fd < (long)limit.rlim_cur && fd < INT_MAX; fd++) {
            if (set_cloexec_if_clear(st, (int)fd, &capacity) < 0)
                return -1;
        }
    }

    /* NOTE: an fd that neither the listing nor the loop recorded (one opened by
     * another thread meanwhile, or one above the soft RLIMIT_NOFILE when
     * /proc/self/fd cannot be opened) keeps FD_CLOEXEC if execve fails. */
    if (close_range_cloexec((unsigned int)st->first_unpassed, ~0U) == -1 && errno != ENOSYS && errno != EINVAL)
        return -1;

    return 0;
}

/*
 * Read the main thread's blocked signals into *bits (bit N - 1 for signal N).
 * /proc/self/status describes the thread group leader, which is the main
 * thread, and unlike /proc/self/task/<getpid()> it also works in a PID
 * namespace that sees the host's /proc. Return 0, or -1 if it cannot be read.
 */
static int read_main_thread_mask(unsigned long long *bits)
{
    char status[4096];
    const char *line;
    size_t used = 0;
    ssize_t got;
    int fd;

    fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    while (used < sizeof(status) - 1) {
        got = read(fd, status + used, sizeof(status) - 1 - used);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break;
        used += (size_t)got;
    }
    close(fd);
    status[used] = '\0';

    line = strstr(status, "\nSigBlk:");
    if (line == NULL)
        return -1;
    *bits = strtoull(line + strlen("\nSigBlk:"), NULL, 16);
    return 0;
}

/*
 * Build the mask the new image starts with. A signal that this thread blocks
 * stays blocked if it is pending, or if it has SIG_DFL and the main thread
 * blocks it too. A program that blocks a signal without a handler in every
 * thread takes it with sigwait() or signalfd. Unblocked, a pending or newly
 * sent one would run its default action, such as terminating the process,
 * before the new image could take it. Other signals are unblocked, so a mask
 * that one thread set for itself does not silence them in the new image,
 * whose only thread starts with this mask.
 */
static void build_exec_mask(const sigset_t *old_mask, sigset_t *exec_mask)
{
    sigset_t pending;
    struct sigaction current;
    unsigned long long main_blocked = ~0ULL;
    int sig;

    sigemptyset(exec_mask);
    if (sigpending(&pending) == -1)
        sigemptyset(&pending);
    /* NOTE: if /proc cannot be read, the calling thread's mask alone decides. */
    if ((pid_t)syscall(SYS_gettid) != getpid() && read_main_thread_mask(&main_blocked) < 0)
        main_blocked = ~0ULL;

    for (sig = 1; sig < NSIG; sig++) {
        if (sigismember(old_mask, sig) != 1)
            continue;
        /* sigaction() rejects the numbers that the C library keeps for itself. */
        if (sigaction(sig, NULL, &current) == -1)
            continue;
        if (sigismember(&pending, sig) == 1 ||
            (current.sa_handler == SIG_DFL && sig <= 64 && ((main_blocked >> (sig - 1)) & 1)))
            sigaddset(exec_mask, sig);
    }
}

/*
 * Set the mask from build_exec_mask() and reset SIGPIPE and SIGXFSZ from
 * SIG_IGN to SIG_DFL. execve keeps ignored dispositions and the mask. CPython
 * ignores both signals at start-up, so a new image would otherwise inherit
 * them. subprocess's restore_signals does the same for a child.
 */
static int reset_signals(struct exec_state *st)
{
    sigset_t exec_mask;
    struct sigaction dfl;

    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);

    if (sigaction(SIGPIPE, NULL, &st->old_sigpipe) == -1 ||
        sigaction(SIGXFSZ, NULL, &st->old_sigxfsz) == -1)
        return -1;
    if (pthread_sigmask(SIG_SETMASK, NULL, &st->old_mask) != 0) {
        errno = EINVAL;
        return -1;
    }
    build_exec_mask(&st->old_mask, &exec_mask);
    if (pthread_sigmask(SIG_SETMASK, &exec_mask, NULL) != 0) {
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

    for (i = 0; i < 3; i++) {
        if (st->stdio_saved[i] >= 0) {
            if (dup2(st->stdio_saved[i], i) >= 0)
                fcntl(i, F_SETFD, st->stdio_flags[i]);
            close(st->stdio_saved[i]);
        }
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

    free(st->fd_flags);
    free(st->slots);
    free(st->cloexec_set);
    errno = saved_errno;
}

/*
 * Move fds[i] to 3 + i and clear FD_CLOEXEC on exactly those fds. Set it on
 * every other fd above 2. Open /dev/null on each of 0, 1 and 2 that is closed,
 * contains a chosen fd or has FD_CLOEXEC set. Reset the signal mask and the
 * SIGPIPE/SIGXFSZ dispositions, then call execve(path, argv, envp).
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

    memset(&st, 0, sizeof(st));
    st.stdio_saved[0] = st.stdio_saved[1] = st.stdio_saved[2] = -1;
    st.nfds = nfds;
    st.first_unpassed = FIRST_PASSED_FD + nfds;
    st.slots = calloc((size_t)nfds + 1, sizeof(*st.slots));
    st.fd_flags = calloc((size_t)nfds + 1, sizeof(*st.fd_flags));
    if (st.slots == NULL || st.fd_flags == NULL) {
        free(st.slots);
        free(st.fd_flags);
        errno = ENOMEM;
        return -1;
    }
    if (validate_fds_flags(fds, nfds, bad_index, st.fd_flags) < 0) {
        rollback(&st);
        return -1;
    }

    if (open_missing_stdio(&st) < 0 ||
        save_target_slots(&st, fds, st.fd_flags) < 0 ||
        move_fds(&st, fds) < 0 ||
        replace_stdio_for_exec(&st, fds) < 0 ||
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
 * Return the offset of the first of first_fd .. first_fd + nfds - 1 (the
 * layout LISTEN_FDS declares) that is closed or has FD_CLOEXEC set, or nfds
 * if every one is open with FD_CLOEXEC clear, as a passed fd is. F_GETFD
 * reads only the fd table, so this costs a fraction of fdpass_inspect() per
 * fd. Changes nothing. Async-signal-safe.
 */
int fdpass_find_unadoptable_range(int first_fd, int nfds)
{
    int i;

    if (first_fd < 0 || nfds < 0 || nfds > INT_MAX - first_fd) {
        errno = EINVAL;
        return -1;
    }

    for (i = 0; i < nfds; i++) {
        int flags = fcntl(first_fd + i, F_GETFD);

        if (flags == -1 || (flags & FD_CLOEXEC))
            return i;
    }

    return nfds;
}

/*
 * Point out[0 .. count - 1] at the count NUL-terminated strings that follow
 * each other in block, and set out[count] to NULL: the argv or envp array
 * that execve() takes. One call from Python replaces one allocation per
 * string. block must hold at least count NUL bytes. Async-signal-safe.
 */
int fdpass_split_strings(char *block, int count, char *out[])
{
    int i;

    if (block == NULL || out == NULL || count < 0) {
        errno = EINVAL;
        return -1;
    }

    for (i = 0; i < count; i++) {
        out[i] = block;
        block += strlen(block) + 1;
    }
    out[count] = NULL;

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

/*
 * Set FD_CLOEXEC on first_fd .. first_fd + nfds - 1, which must all be open.
 * One close_range() call does it where the kernel has CLOSE_RANGE_CLOEXEC
 * (Linux 5.11). Elsewhere each fd gets F_GETFD and F_SETFD, and a failure
 * leaves the earlier fds changed. Async-signal-safe.
 */
int fdpass_set_cloexec_range(int first_fd, int nfds)
{
    int fd;

    if (first_fd < 0 || nfds < 0 || nfds > INT_MAX - first_fd) {
        errno = EINVAL;
        return -1;
    }
    if (nfds == 0)
        return 0;
    if (close_range_cloexec((unsigned int)first_fd, (unsigned int)(first_fd + nfds - 1)) == 0)
        return 0;
    if (errno != ENOSYS && errno != EINVAL)
        return -1;

    for (fd = first_fd; fd < first_fd + nfds; fd++) {
        int flags = fcntl(fd, F_GETFD);

        if (flags == -1 || fcntl(fd, F_SETFD, flags | FD_CLOEXEC) == -1)
            return -1;
    }

    return 0;
}

/*
 * fdpass_spawn(): start a new program with chosen fds on 3, 4, ... while the
 * caller keeps running. The child shares the parent's memory (CLONE_VM), so
 * everything it touches is allocated here, before clone(), and the child
 * calls only async-signal-safe functions: no malloc, no stdio, no locks.
 */

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

/* The child runs a few small frames on this stack; mmap() backs it lazily. */
#define SPAWN_STACK_SIZE (128 * 1024)
#define SPAWN_DIRENT_BUFFER_SIZE 4096

static const char LISTEN_PID_PREFIX[] = "LISTEN_PID=";
/* "LISTEN_PID=", the decimal digits of any pid_t, and NUL. */
#define LISTEN_PID_ENTRY_SIZE (sizeof(LISTEN_PID_PREFIX) + 24)

/* struct linux_dirent64 from getdents64(2); glibc before 2.30 does not declare it. */
struct spawn_dirent64 {
    unsigned long long d_ino;
    long long d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

/* Everything the child reads or writes, prepared by the parent before clone(). */
struct spawn_plan {
    const char *path;
    char *const *argv;
    char *const *envp;
    const char *cwd;          /* the directory the child changes into, or NULL */
    char *listen_pid_entry;   /* the envp slot the child fills in, or NULL */
    const int *fds;
    int *dups;                /* scratch: F_DUPFD_CLOEXEC copies of fds, above every target */
    int nfds;
    int first_unpassed;       /* 3 + nfds */
    char *dirent_buffer;      /* SPAWN_DIRENT_BUFFER_SIZE bytes for getdents64 */
    int flags;                /* FDPASS_SPAWN_* */
    pid_t parent_pid;         /* the caller's PID, to detect its death before PR_SET_PDEATHSIG */
    struct sigaction default_action;
    sigset_t empty_mask;
    volatile int child_errno; /* set by the child when it fails; 0 after a successful execve */
};

static void child_reset_signal_dispositions(const struct spawn_plan *plan)
{
    int sig;

    for (sig = 1; sig < NSIG; sig++) {
        struct sigaction old;

        if (sig == SIGKILL || sig == SIGSTOP)
            continue;
        /* glibc rejects its own internal signals with EINVAL; they need no reset. */
        if (sigaction(sig, NULL, &old) == -1 || old.sa_handler == SIG_DFL)
            continue;
        /* An ignored signal stays ignored across execve, as nohup(1) expects,
         * except the two CPython ignores for itself at start-up. */
        if (old.sa_handler == SIG_IGN && sig != SIGPIPE && sig != SIGXFSZ)
            continue;
        sigaction(sig, &plan->default_action, NULL);
    }
}

static int child_open_missing_stdio(void)
{
    int s;

    for (s = 0; s < 3; s++) {
        int fd;

        if (fcntl(s, F_GETFD) != -1 || errno != EBADF)
            continue;
        fd = open("/dev/null", O_RDWR);
        if (fd < 0)
            return -1;
        if (fd != s) {
            if (dup2(fd, s) < 0)
                return -1;
            close(fd);
        }
    }

    return 0;
}

/*
 * Place fds[i] on 3 + i. Every source is first copied above all the targets,
 * so a source that sits on another entry's target slot is never overwritten
 * before it is read. The copies carry FD_CLOEXEC, so execve closes them.
 */
static int child_move_fds(struct spawn_plan *plan)
{
    int i;

    for (i = 0; i < plan->nfds; i++) {
        plan->dups[i] = fcntl(plan->fds[i], F_DUPFD_CLOEXEC, plan->first_unpassed);
        if (plan->dups[i] < 0)
            return -1;
    }
    for (i = 0; i < plan->nfds; i++) {
        if (dup2(plan->dups[i], FIRST_PASSED_FD + i) < 0)
            return -1;
    }

    return 0;
}

static int child_set_cloexec(int fd)
{
    int flags = fcntl(fd, F_GETFD);

    if (flags == -1)
        return errno == EBADF ? 0 : -1;
    if (flags & FD_CLOEXEC)
        return 0;

    return fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
}

static int child_parse_fd(const char *name)
{
    long fd = 0;

    if (*name == '\0')
        return -1;
    for (; *name != '\0'; name++) {
        if (*name < '0' || *name > '9' || fd > INT_MAX / 10)
            return -1;
        fd = fd * 10 + (*name - '0');
    }

    return fd > INT_MAX ? -1 : (int)fd;
}

/* Walk /proc/self/fd with getdents64(2), which, unlike readdir(3), does not allocate. */
static int child_cloexec_from_proc(struct spawn_plan *plan)
{
    int dir = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

    if (dir < 0)
        return -1;
    for (;;) {
        long n = syscall(SYS_getdents64, dir, plan->dirent_buffer, SPAWN_DIRENT_BUFFER_SIZE);
        long offset;

        if (n < 0) {
            close(dir);
            return -1;
        }
        if (n == 0)
            break;
        for (offset = 0; offset < n;) {
            struct spawn_dirent64 *entry = (struct spawn_dirent64 *)(plan->dirent_buffer + offset);
            int fd = child_parse_fd(entry->d_name);

            offset += entry->d_reclen;
            if (fd < plan->first_unpassed || fd == dir)
                continue;
            if (child_set_cloexec(fd) < 0) {
                close(dir);
                return -1;
            }
        }
    }
    close(dir);

    return 0;
}

/*
 * Set FD_CLOEXEC on every fd from first_unpassed up: close_range(2) with
 * CLOSE_RANGE_CLOEXEC on Linux 5.11 and later, else /proc/self/fd, else every
 * number below RLIMIT_NOFILE.
 */
static int child_cloexec_unpassed_fds(struct spawn_plan *plan)
{
    struct rlimit limit;
    long fd;

#ifdef SYS_close_range
    if (syscall(SYS_close_range, (unsigned int)plan->first_unpassed, ~0U, CLOSE_RANGE_CLOEXEC) == 0)
        return 0;
#endif
    if (child_cloexec_from_proc(plan) == 0)
        return 0;

    if (getrlimit(RLIMIT_NOFILE, &limit) == -1)
        return -1;
    for (fd = plan->first_unpassed; fd < (long)limit.rlim_cur && fd < INT_MAX; fd++) {
        if (child_set_cloexec((int)fd) < 0)
            return -1;
    }

    return 0;
}

/* Write "LISTEN_PID=<pid>" into out, a buffer of LISTEN_PID_ENTRY_SIZE bytes. */
static void child_format_listen_pid(char *out, long pid)
{
    char digits[24];
    size_t ndigits = 0;
    size_t i;

    do {
        digits[ndigits++] = (char)('0' + pid % 10);
        pid /= 10;
    } while (pid > 0);

    for (i = 0; i < sizeof(LISTEN_PID_PREFIX) - 1; i++)
        *out++ = LISTEN_PID_PREFIX[i];
    while (ndigits > 0)
        *out++ = digits[--ndigits];
    *out = '\0';
}

static int spawn_child(void *arg)
{
    struct spawn_plan *plan = arg;

    child_reset_signal_dispositions(plan);
    if (child_open_missing_stdio() < 0 ||
        child_move_fds(plan) < 0 ||
        child_cloexec_unpassed_fds(plan) < 0)
        goto fail;
    if (plan->listen_pid_entry != NULL)
        child_format_listen_pid(plan->listen_pid_entry, (long)syscall(SYS_getpid));
    if ((plan->flags & FDPASS_SPAWN_NEW_PROCESS_GROUP) && setpgid(0, 0) < 0)
        goto fail;
    /* Without CLONE_FS the child has its own working directory. */
    if (plan->cwd != NULL && chdir(plan->cwd) < 0)
        goto fail;
    if (plan->flags & FDPASS_SPAWN_PARENT_DEATHSIG) {
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
            goto fail;
        /* A caller that died before prctl() would send no signal. */
        if (getppid() != plan->parent_pid) {
            errno = ESRCH;
            goto fail;
        }
    }

    /* The handlers are SIG_DFL by now, so a signal that arrives from here on
     * cannot run parent code on the shared memory. */
    sigprocmask(SIG_SETMASK, &plan->empty_mask, NULL);
    execve(plan->path, plan->argv, plan->envp);

fail:
    plan->child_errno = errno ? errno : EINVAL;
    _exit(127);
}

/* Copy envp without its LISTEN_PID= entries, and add the slot the child fills in. */
static char **spawn_environment(char *const envp[], char **listen_pid_entry)
{
    size_t count = 0;
    size_t kept = 0;
    char **copy;
    size_t i;

    while (envp[count] != NULL)
        count++;
    copy = malloc((count + 2) * sizeof(*copy));
    *listen_pid_entry = malloc(LISTEN_PID_ENTRY_SIZE);
    if (copy == NULL || *listen_pid_entry == NULL) {
        free(copy);
        free(*listen_pid_entry);
        *listen_pid_entry = NULL;
        errno = ENOMEM;
        return NULL;
    }

    for (i = 0; i < count; i++) {
        if (strncmp(envp[i], LISTEN_PID_PREFIX, sizeof(LISTEN_PID_PREFIX) - 1) != 0)
            copy[kept++] = envp[i];
    }
    copy[kept++] = *listen_pid_entry;
    copy[kept] = NULL;

    return copy;
}

/*
 * Start path as a new process with fds[i] on 3 + i, as execve(path, argv, envp)
 * in a child, and return the child's PID. The caller keeps running; nothing
 * about the caller's fds, fd flags or signal settings changes.
 *
 * In the child, between clone() and execve(), with no Python code run:
 * - every signal handler becomes SIG_DFL, and so do ignored SIGPIPE and
 *   SIGXFSZ; other ignored signals stay ignored; the signal mask is emptied;
 * - 0, 1 and 2, if closed, are opened on /dev/null;
 * - fds[i] is placed on 3 + i with FD_CLOEXEC clear, whatever the overlaps
 *   between fds and the targets;
 * - every other fd above 2 gets FD_CLOEXEC, so execve closes it;
 * - with FDPASS_SPAWN_LISTEN_PID in flags, every LISTEN_PID= entry of envp is
 *   dropped and LISTEN_PID=<the child's own PID> is added;
 * - with FDPASS_SPAWN_NEW_PROCESS_GROUP, the child calls setpgid(0, 0);
 * - with cwd not NULL, the child changes into that directory;
 * - with FDPASS_SPAWN_PARENT_DEATHSIG, the child gets SIGKILL when the
 *   calling thread exits (PR_SET_PDEATHSIG), and fails with ESRCH if the
 *   caller is already gone.
 *
 * The child is created with clone(CLONE_VM | CLONE_VFORK) on its own stack,
 * as glibc's posix_spawn does: it runs no atfork handlers (so CPython issues
 * no fork-in-threads DeprecationWarning), copies no page tables, and only the
 * calling thread waits, until the child has called execve or exited. Every
 * signal is blocked in the calling thread around clone() and the mask is
 * restored after, so no handler runs in the child on the shared memory.
 *
 * Returns -1 with errno set on failure, and no child is left behind. A closed
 * or repeated fd gives EBADF or EINVAL with *bad_index set, checked before
 * anything starts. Otherwise errno is ENOMEM, clone()'s errno, or the errno
 * of the child's failed step or execve; that child has been reaped.
 *
 * Not async-signal-safe in the caller (it allocates), but safe to call from
 * any thread of a multithreaded program: the child calls only
 * async-signal-safe functions, plus syscall(2) for getdents64, close_range
 * and getpid.
 * NOTE: a thread that reaps any child (waitpid(-1)) can reap a child whose
 * execve failed before this function does; errno is still the child's.
 */
int fdpass_spawn(const char *path, char *const argv[], char *const envp[],
                 const int *fds, int nfds, int flags, const char *cwd, int *bad_index)
{
    struct spawn_plan plan;
    char **child_envp = NULL;
    void *stack;
    sigset_t all_signals, old_mask;
    pid_t pid;
    int saved_errno;

    *bad_index = -1;
    if (path == NULL || argv == NULL || envp == NULL || nfds < 0 ||
        (nfds > 0 && fds == NULL) || nfds > INT_MAX - FIRST_PASSED_FD ||
        (flags & ~(FDPASS_SPAWN_LISTEN_PID | FDPASS_SPAWN_NEW_PROCESS_GROUP |
                   FDPASS_SPAWN_PARENT_DEATHSIG)) != 0) {
        errno = EINVAL;
        return -1;
    }
    if (validate_fds(fds, nfds, bad_index) < 0)
        return -1;

    memset(&plan, 0, sizeof(plan));
    plan.path = path;
    plan.argv = argv;
    plan.envp = envp;
    plan.cwd = cwd;
    plan.fds = fds;
    plan.nfds = nfds;
    plan.first_unpassed = FIRST_PASSED_FD + nfds;
    plan.flags = flags;
    plan.parent_pid = getpid();
    plan.default_action.sa_handler = SIG_DFL;
    sigemptyset(&plan.default_action.sa_mask);
    sigemptyset(&plan.empty_mask);

    if (flags & FDPASS_SPAWN_LISTEN_PID) {
        child_envp = spawn_environment(envp, &plan.listen_pid_entry);
        if (child_envp == NULL)
            return -1;
        plan.envp = child_envp;
    }
    plan.dups = malloc(((size_t)nfds + 1) * sizeof(int));
    plan.dirent_buffer = malloc(SPAWN_DIRENT_BUFFER_SIZE);
    stack = mmap(NULL, SPAWN_STACK_SIZE, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (plan.dups == NULL || plan.dirent_buffer == NULL || stack == MAP_FAILED) {
        saved_errno = stack == MAP_FAILED ? errno : ENOMEM;
        pid = -1;
        goto out;
    }

    sigfillset(&all_signals);
    pthread_sigmask(SIG_BLOCK, &all_signals, &old_mask);
    /* The stack grows down on every architecture Linux runs CPython on. */
    pid = clone(spawn_child, (char *)stack + SPAWN_STACK_SIZE,
                CLONE_VM | CLONE_VFORK | SIGCHLD, &plan);
    saved_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);

    if (pid > 0 && plan.child_errno != 0) {
        saved_errno = plan.child_errno;
        while (waitpid(pid, NULL, 0) == -1 && errno == EINTR)
            ;
        pid = -1;
    }

out:
    if (stack != MAP_FAILED)
        munmap(stack, SPAWN_STACK_SIZE);
    free(plan.dirent_buffer);
    free(plan.dups);
    free(plan.listen_pid_entry);
    free(child_envp);
    errno = saved_errno;
    return pid;
}

/*
 * Set or clear PR_SET_CHILD_SUBREAPER on the calling process, so orphaned
 * descendants are reparented to it instead of to init and it can reap them.
 * Async-signal-safe.
 */
int fdpass_set_child_subreaper(int on)
{
    return prctl(PR_SET_CHILD_SUBREAPER, on ? 1 : 0, 0, 0, 0) == -1 ? -1 : 0;
}

/*
 * Create a timer that sends SIGKILL to the whole process at the absolute
 * CLOCK_MONOTONIC time deadline_ns, and store its id in *timer_out.
 * deadline_ns must be above 0, since an all-zero it_value disarms a timer.
 * A deadline already past fires at once.
 */
int fdpass_kill_timer_arm(long long deadline_ns, intptr_t *timer_out)
{
    struct sigevent event;
    struct itimerspec when;
    timer_t timer;
    int saved_errno;

    if (deadline_ns <= 0) {
        errno = EINVAL;
        return -1;
    }

    memset(&event, 0, sizeof event);
    event.sigev_notify = SIGEV_SIGNAL;
    event.sigev_signo = SIGKILL;
    if (timer_create(CLOCK_MONOTONIC, &event, &timer) == -1)
        return -1;

    memset(&when, 0, sizeof when);
    when.it_value.tv_sec = (time_t)(deadline_ns / 1000000000LL);
    when.it_value.tv_nsec = (long)(deadline_ns % 1000000000LL);
    if (timer_settime(timer, TIMER_ABSTIME, &when, NULL) == -1) {
        saved_errno = errno;
        timer_delete(timer);
        errno = saved_errno;
        return -1;
    }

    *timer_out = (intptr_t)timer;
    return 0;
}

/* Delete a timer from fdpass_kill_timer_arm(), so that it sends no signal. */
int fdpass_kill_timer_cancel(intptr_t timer)
{
    return timer_delete((timer_t)timer) == -1 ? -1 : 0;
}

/*
 * Migrate the calling thread onto cpu, if its affinity mask allows every
 * online CPU, and leave it as unrestricted as before. Both steps happen in
 * this one call, so no code of the program runs, and no thread or child
 * inherits the mask, while it allows one CPU only. The kernel migrates a
 * running thread off a CPU that its new mask excludes before
 * sched_setaffinity() returns. The mask is then set to every CPU, not to
 * the saved one. sched_getaffinity() leaves out inactive CPUs, and since
 * Linux 6.2 the mask set last also caps later cpuset changes. So writing
 * the saved mask back would pin the thread, and every thread and child it
 * creates, to today's CPUs. A thread whose mask leaves out an online CPU,
 * through a cpuset, taskset or the program, is left alone, because its
 * mask could not be given back as it was. Returns 1 if the thread moved,
 * and 0 if it runs on cpu already or is left alone.
 */
int fdpass_move_to_cpu(int cpu)
{
    cpu_set_t mask;
    long online;

    if (cpu < 0 || cpu >= CPU_SETSIZE) {
        errno = EINVAL;
        return -1;
    }
    if (sched_getaffinity(0, sizeof mask, &mask) == -1)
        return -1;
    online = sysconf(_SC_NPROCESSORS_ONLN);
    if (online < 2 || CPU_COUNT(&mask) != online || !CPU_ISSET(cpu, &mask) || sched_getcpu() == cpu)
        return 0;

    CPU_ZERO(&mask);
    CPU_SET(cpu, &mask);
    if (sched_setaffinity(0, sizeof mask, &mask) == -1)
        return -1;

    /* NOTE: a mask that another thread or taskset -p sets on this one
     * between the two calls is overwritten. */
    for (int i = 0; i < CPU_SETSIZE; i++)
        CPU_SET(i, &mask);
    return sched_setaffinity(0, sizeof mask, &mask) == -1 ? -1 : 1;
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/* Write-fault the pages [start, start + len) so that this process owns them. */
static int unshare_run(char *start, size_t len, size_t page, int *populate)
{
    if (*populate) {
        if (madvise(start, len, MADV_POPULATE_WRITE) == 0)
            return 0;
        if (errno != EINVAL)
            return -1;
        *populate = 0; /* before Linux 5.14 */
    }

    /* An atomic add of 0 writes without changing what another thread stores. */
    for (size_t offset = 0; offset < len; offset += page)
        __atomic_fetch_add(start + offset, 0, __ATOMIC_RELAXED);
    return 0;
}

/*
 * Take a private copy now of every resident page of every private writable
 * mapping, as a write would. After fork(), parent and child share such pages
 * until one of them writes, and the writer then pays a copy-on-write fault.
 * A forked standby and its parent call this while they are idle, so the
 * program that one of them later runs takes no such fault. Pages that are
 * not resident are left alone, so the call adds no memory that the process
 * has not used. Returns the number of pages written, or -1 if
 * /proc/self/maps cannot be read.
 */
long fdpass_unshare_private_pages(void)
{
    enum { CHUNK_PAGES = 4096 };
    unsigned char residency[CHUNK_PAGES];
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    int populate = 1;
    long written = 0;
    char line[512];
    FILE *maps;

    maps = fopen("/proc/self/maps", "re");
    if (maps == NULL)
        return -1;

    /* A line longer than the buffer, with a long path, goes on in the next
     * fgets(), which sscanf() then rejects, and only a line's start matters. */
    while (fgets(line, sizeof line, maps) != NULL) {
        unsigned long start, end;
        char perms[5];
        int name_at = 0;

        if (sscanf(line, "%lx-%lx %4s %*s %*s %*s %n", &start, &end, perms, &name_at) < 3)
            continue;
        /* [vvar], [vvar_vclock] and [vsyscall] belong to the kernel. */
        if (strcmp(perms, "rw-p") != 0 || (name_at > 0 && strncmp(line + name_at, "[v", 2) == 0))
            continue;

        for (size_t chunk = start; chunk < end; chunk += CHUNK_PAGES * page) {
            size_t pages = (end - chunk) / page < CHUNK_PAGES ? (end - chunk) / page : CHUNK_PAGES;
            size_t run = 0;

            if (mincore((void *)chunk, pages * page, residency) == -1)
                break;
            for (size_t i = 0; i <= pages; i++) {
                if (i < pages && (residency[i] & 1)) {
                    run++;
                    continue;
                }
                if (run > 0 && unshare_run((char *)(chunk + (i - run) * page), run * page, page, &populate) == 0)
                    written += (long)run;
                run = 0;
            }
        }
    }

    fclose(maps);
    return written;
}
