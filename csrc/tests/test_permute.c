/*
 * Randomized test of the fd moves in fdpass_exec() and fdpass_spawn(), meant
 * to run under AddressSanitizer, UndefinedBehaviorSanitizer and valgrind.
 *
 * Each case builds a random fd layout in a forked child: socketpair ends on
 * random numbers from 0 to MAX_LAYOUT_FD - 1, some of them twice, with stdio
 * sometimes closed and FD_CLOEXEC set at random, plus random signal settings.
 * It then picks random fds to pass, in random order, which makes cycles,
 * overlaps with 0-2 and gaps. Each socketpair end has its own inode, so a
 * file is identified by (st_dev, st_ino) wherever it lands.
 *
 *   exec:    fdpass_exec() runs this program again in --check mode, which
 *            compares its own fd table and signal state with the expected
 *            one passed in argv.
 *   restore: fdpass_exec() of a missing file, sometimes with RLIMIT_NOFILE
 *            lowered so that the moves fail part-way, or with a closed or
 *            repeated fd. Every fd number, fd flag, status flag and signal
 *            setting must be as before.
 *   spawn:   fdpass_spawn() starts --check the same way, and the caller's
 *            fd table and signal state must be unchanged.
 *
 * Usage: test_permute [-n CASES_PER_KIND] [-s SEED]
 *        test_permute --check REPORT_PATH SPEC   (internal)
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fdpass.h"

/* Layout fds live on 0 .. MAX_LAYOUT_FD - 1. */
#define MAX_LAYOUT_FD 24
/* The snapshot covers every fd a case can touch, including the backups
 * fdpass_exec() makes above the targets and DIAGNOSTIC_FD. */
#define SNAPSHOT_FDS 256
/* An F_DUPFD_CLOEXEC copy of stderr, for messages while stdio is rearranged. */
#define DIAGNOSTIC_FD 250
#define MAX_PASSED 10
#define MISSING_PATH "/nonexistent/fdpass-test-permute"

enum expect_kind { EXPECT_CLOSED, EXPECT_FILE, EXPECT_DEVNULL };

struct expected_fd {
    enum expect_kind kind;
    dev_t dev;
    ino_t ino;
};

struct fd_state {
    int open;
    int fd_flags;
    int status_flags;
    dev_t dev;
    ino_t ino;
};

struct process_state {
    struct fd_state fds[SNAPSHOT_FDS];
    sigset_t mask;
    void (*sigpipe)(int);
    void (*sigxfsz)(int);
    void (*sigusr2)(int);
    struct rlimit nofile;
};

struct layout {
    int fds[MAX_PASSED + 2];
    int nfds;
    int sigpipe_ignored;
    int sigusr2_ignored;
    int sighup_handled;
};

/* The variable through which --check gets the signals that must still be
 * blocked, as a decimal bit mask with bit N for signal N. Unset means none. */
#define BLOCKED_VARIABLE "FDPASS_TEST_BLOCKED"

/* Seconds a case may run, the --check program included, before SIGALRM ends it. */
#define CASE_TIMEOUT 30

static uint64_t rng_state;
static struct rlimit original_nofile_limit;

static uint32_t rng_next(void)
{
    /* xorshift64*: small, seedable, and good enough to pick layouts. */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 2685821657736338717ULL) >> 32);
}

static int rng_below(int bound)
{
    return (int)(rng_next() % (uint32_t)bound);
}

static void diag(const char *format, ...)
{
    char message[512];
    va_list args;
    int length;

    va_start(args, format);
    length = vsnprintf(message, sizeof(message), format, args);
    va_end(args);
    if (length > (int)sizeof(message) - 1)
        length = (int)sizeof(message) - 1;
    if (write(DIAGNOSTIC_FD, message, (size_t)length) < 0 && write(2, message, (size_t)length) < 0)
        return;
}

static int is_open(int fd)
{
    return fcntl(fd, F_GETFD) != -1;
}

static void snapshot(struct process_state *state)
{
    int fd;

    memset(state, 0, sizeof(*state));
    for (fd = 0; fd < SNAPSHOT_FDS; fd++) {
        struct fd_state *entry = &state->fds[fd];
        struct stat st;

        entry->fd_flags = fcntl(fd, F_GETFD);
        if (entry->fd_flags == -1)
            continue;
        entry->open = 1;
        entry->status_flags = fcntl(fd, F_GETFL);
        if (fstat(fd, &st) == 0) {
            entry->dev = st.st_dev;
            entry->ino = st.st_ino;
        }
    }

    pthread_sigmask(SIG_SETMASK, NULL, &state->mask);
    getrlimit(RLIMIT_NOFILE, &state->nofile);
    {
        struct sigaction action;

        sigaction(SIGPIPE, NULL, &action);
        state->sigpipe = action.sa_handler;
        sigaction(SIGXFSZ, NULL, &action);
        state->sigxfsz = action.sa_handler;
        sigaction(SIGUSR2, NULL, &action);
        state->sigusr2 = action.sa_handler;
    }
}

/* Return the number of differences between before and after, each reported. */
static int compare_states(const char *label, const struct process_state *before, const struct process_state *after)
{
    int differences = 0;
    int fd;
    int sig;

    for (fd = 0; fd < SNAPSHOT_FDS; fd++) {
        const struct fd_state *a = &before->fds[fd];
        const struct fd_state *b = &after->fds[fd];

        if (a->open != b->open || a->fd_flags != b->fd_flags || a->status_flags != b->status_flags ||
            a->dev != b->dev || a->ino != b->ino) {
            diag("%s: fd %d was open=%d flags=%d status=%#x ino=%lu, now open=%d flags=%d status=%#x ino=%lu\n",
                 label, fd, a->open, a->fd_flags, a->status_flags, (unsigned long)a->ino,
                 b->open, b->fd_flags, b->status_flags, (unsigned long)b->ino);
            differences++;
        }
    }
    for (sig = 1; sig < NSIG; sig++) {
        if (sigismember(&before->mask, sig) != sigismember(&after->mask, sig)) {
            diag("%s: signal %d blocked=%d before, %d after\n", label, sig,
                 sigismember(&before->mask, sig), sigismember(&after->mask, sig));
            differences++;
        }
    }
    if (before->sigpipe != after->sigpipe || before->sigxfsz != after->sigxfsz || before->sigusr2 != after->sigusr2) {
        diag("%s: SIGPIPE, SIGXFSZ or SIGUSR2 disposition changed\n", label);
        differences++;
    }
    if (before->nofile.rlim_cur != after->nofile.rlim_cur || before->nofile.rlim_max != after->nofile.rlim_max) {
        diag("%s: RLIMIT_NOFILE changed\n", label);
        differences++;
    }

    return differences;
}

/*
 * Exit a case child. LeakSanitizer's exit-time check loops forever when it
 * cannot open /dev/null for its own stdio, so the fd limit goes back up and
 * closed stdio gets /dev/null first.
 */
static void finish_case(int status)
{
    int s;

    setrlimit(RLIMIT_NOFILE, &original_nofile_limit);
    for (s = 0; s < 3; s++) {
        if (!is_open(s)) {
            int fd = open("/dev/null", O_RDWR);

            if (fd >= 0 && fd != s) {
                dup2(fd, s);
                close(fd);
            }
        }
    }
    exit(status);
}

static void die(const char *what)
{
    diag("%s: %s\n", what, strerror(errno));
    finish_case(3);
}

static int place_at_free_number(int fd)
{
    int attempt;

    for (attempt = 0; attempt < 64; attempt++) {
        int target = rng_below(MAX_LAYOUT_FD);

        if (target == fd)
            return fd;
        if (is_open(target))
            continue;
        if (dup2(fd, target) < 0)
            die("dup2");
        close(fd);
        return target;
    }

    return fd;
}

/* A handler that does nothing, so that a signal counts as handled. */
static void ignore_signal(int sig)
{
    (void)sig;
}

/*
 * Build a random layout in this (forked) process. Every fd below
 * DIAGNOSTIC_FD is closed first, so the layout is all there is.
 */
static void build_layout(struct layout *layout)
{
    int open_fds[MAX_LAYOUT_FD];
    int nopen = 0;
    int pairs = 1 + rng_below(6);
    int i;
    int fd;

    if (fcntl(2, F_DUPFD_CLOEXEC, DIAGNOSTIC_FD) != DIAGNOSTIC_FD)
        die("F_DUPFD_CLOEXEC of stderr");
    for (fd = 0; fd < DIAGNOSTIC_FD; fd++)
        close(fd);

    for (i = 0; i < pairs; i++) {
        int pair[2];

        if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) < 0)
            die("socketpair");
        place_at_free_number(pair[0]);
        place_at_free_number(pair[1]);
    }

    /* A few files sit on two numbers, so a passed file may also stay behind. */
    for (i = rng_below(3); i > 0; i--) {
        int source = rng_below(MAX_LAYOUT_FD);
        int target = rng_below(MAX_LAYOUT_FD);

        if (is_open(source) && !is_open(target) && dup2(source, target) < 0)
            die("dup2 alias");
    }

    for (fd = 0; fd < MAX_LAYOUT_FD; fd++) {
        if (!is_open(fd))
            continue;
        if (fcntl(fd, F_SETFD, rng_below(2) ? FD_CLOEXEC : 0) < 0)
            die("F_SETFD");
        open_fds[nopen++] = fd;
    }

    /* Pick distinct open fds in random order: a partial Fisher-Yates shuffle. */
    layout->nfds = rng_below(nopen < MAX_PASSED ? nopen + 1 : MAX_PASSED + 1);
    for (i = 0; i < layout->nfds; i++) {
        int j = i + rng_below(nopen - i);
        int swap = open_fds[i];

        open_fds[i] = open_fds[j];
        open_fds[j] = swap;
        layout->fds[i] = open_fds[i];
    }

    {
        sigset_t mask;

        sigemptyset(&mask);
        if (rng_below(2))
            sigaddset(&mask, SIGUSR1);
        if (rng_below(2))
            sigaddset(&mask, SIGTERM);
        if (rng_below(2))
            sigaddset(&mask, SIGHUP);
        pthread_sigmask(SIG_SETMASK, &mask, NULL);
    }
    layout->sighup_handled = rng_below(2);
    signal(SIGHUP, layout->sighup_handled ? ignore_signal : SIG_DFL);
    layout->sigpipe_ignored = rng_below(2);
    layout->sigusr2_ignored = rng_below(2);
    signal(SIGPIPE, layout->sigpipe_ignored ? SIG_IGN : SIG_DFL);
    signal(SIGXFSZ, layout->sigpipe_ignored ? SIG_IGN : SIG_DFL);
    signal(SIGUSR2, layout->sigusr2_ignored ? SIG_IGN : SIG_DFL);
}

/*
 * Return the signals that fdpass_exec() must leave blocked, as
 * BLOCKED_VARIABLE's bit mask: those this thread blocks that have SIG_DFL.
 */
static unsigned long long blocked_after_exec(void)
{
    unsigned long long expected = 0;
    struct sigaction action;
    sigset_t mask;
    int sig;

    pthread_sigmask(SIG_SETMASK, NULL, &mask);
    for (sig = 1; sig < NSIG && sig < 64; sig++) {
        if (sigismember(&mask, sig) != 1 || sigaction(sig, NULL, &action) == -1)
            continue;
        if (action.sa_handler == SIG_DFL)
            expected |= 1ULL << sig;
    }
    return expected;
}

static int is_passed(const struct layout *layout, int fd)
{
    int i;

    for (i = 0; i < layout->nfds; i++) {
        if (layout->fds[i] == fd)
            return 1;
    }
    return 0;
}

/*
 * Write the fd table the new program must see into spec, one "FD=KIND" entry
 * per fd that must be open: KIND is "null" for /dev/null or DEV:INO.
 * exec_rules selects fdpass_exec()'s stdio rule (/dev/null replaces a passed
 * or FD_CLOEXEC stdio fd) over fdpass_spawn()'s (a FD_CLOEXEC stdio fd is
 * closed by execve, a passed one stays).
 */
static void format_spec(const struct layout *layout, const struct process_state *before, int exec_rules,
                        char *spec, size_t size)
{
    size_t used = 0;
    int s;
    int i;

    spec[0] = '\0';
    for (s = 0; s < 3; s++) {
        const struct fd_state *entry = &before->fds[s];
        int devnull = !entry->open;
        int closed = 0;

        if (entry->open && (entry->fd_flags & FD_CLOEXEC)) {
            if (exec_rules)
                devnull = 1;
            else
                closed = 1;
        }
        if (exec_rules && is_passed(layout, s))
            devnull = 1;
        if (closed)
            continue;
        if (devnull)
            used += (size_t)snprintf(spec + used, size - used, "%d=null,", s);
        else
            used += (size_t)snprintf(spec + used, size - used, "%d=%lu:%lu,", s,
                                     (unsigned long)entry->dev, (unsigned long)entry->ino);
    }
    for (i = 0; i < layout->nfds; i++) {
        const struct fd_state *entry = &before->fds[layout->fds[i]];

        used += (size_t)snprintf(spec + used, size - used, "%d=%lu:%lu,", 3 + i,
                                 (unsigned long)entry->dev, (unsigned long)entry->ino);
    }
    if (used >= size)
        die("spec buffer too small");
}

/* --check mode: compare this process's fd table and signals with spec. */
static int check_main(const char *report_path, const char *spec, int sigusr2_ignored)
{
    struct expected_fd expected[SNAPSHOT_FDS];
    struct stat devnull;
    const char *cursor = spec;
    FILE *report;
    int failures = 0;
    int fd;
    int sig;
    unsigned long long expected_blocked;
    sigset_t mask;
    struct sigaction action;

    memset(expected, 0, sizeof(expected));
    if (stat("/dev/null", &devnull) < 0)
        return 3;
    while (*cursor != '\0') {
        char *end;
        long number = strtol(cursor, &end, 10);

        if (*end != '=' || number < 0 || number >= SNAPSHOT_FDS)
            return 3;
        cursor = end + 1;
        if (strncmp(cursor, "null,", 5) == 0) {
            expected[number].kind = EXPECT_DEVNULL;
            cursor += 5;
        } else {
            expected[number].kind = EXPECT_FILE;
            expected[number].dev = (dev_t)strtoul(cursor, &end, 10);
            expected[number].ino = (ino_t)strtoul(end + 1, &end, 10);
            cursor = end + 1;
        }
    }

    /* Every fd must be checked before anything here opens one. */
    {
        struct fd_state seen[SNAPSHOT_FDS];

        memset(seen, 0, sizeof(seen));
        for (fd = 0; fd < SNAPSHOT_FDS; fd++) {
            struct stat st;

            seen[fd].fd_flags = fcntl(fd, F_GETFD);
            seen[fd].open = seen[fd].fd_flags != -1;
            if (seen[fd].open && fstat(fd, &st) == 0) {
                seen[fd].dev = st.st_dev;
                seen[fd].ino = st.st_ino;
            }
        }

        report = fopen(report_path, "a");
        if (report == NULL)
            return 3;
        for (fd = 0; fd < SNAPSHOT_FDS; fd++) {
            const struct expected_fd *want = &expected[fd];
            const struct fd_state *got = &seen[fd];

            if (want->kind == EXPECT_CLOSED) {
                if (got->open) {
                    fprintf(report, "fd %d is open (ino %lu), expected closed\n", fd, (unsigned long)got->ino);
                    failures++;
                }
                continue;
            }
            if (!got->open) {
                fprintf(report, "fd %d is closed, expected open\n", fd);
                failures++;
                continue;
            }
            if (got->fd_flags & FD_CLOEXEC) {
                fprintf(report, "fd %d has FD_CLOEXEC set\n", fd);
                failures++;
            }
            if (want->kind == EXPECT_DEVNULL && (got->dev != devnull.st_dev || got->ino != devnull.st_ino)) {
                fprintf(report, "fd %d has ino %lu, expected /dev/null\n", fd, (unsigned long)got->ino);
                failures++;
            }
            if (want->kind == EXPECT_FILE && (got->dev != want->dev || got->ino != want->ino)) {
                fprintf(report, "fd %d has ino %lu, expected ino %lu\n", fd, (unsigned long)got->ino,
                        (unsigned long)want->ino);
                failures++;
            }
        }
    }

    expected_blocked = getenv(BLOCKED_VARIABLE) ? strtoull(getenv(BLOCKED_VARIABLE), NULL, 10) : 0;
    pthread_sigmask(SIG_SETMASK, NULL, &mask);
    for (sig = 1; sig < NSIG; sig++) {
        int blocked = sigismember(&mask, sig) == 1;
        int want_blocked = sig < 64 && ((expected_blocked >> sig) & 1);

        if (blocked != want_blocked) {
            fprintf(report, "signal %d is %s\n", sig, blocked ? "blocked" : "not blocked");
            failures++;
        }
    }
    sigaction(SIGPIPE, NULL, &action);
    if (action.sa_handler != SIG_DFL) {
        fprintf(report, "SIGPIPE is not SIG_DFL\n");
        failures++;
    }
    sigaction(SIGXFSZ, NULL, &action);
    if (action.sa_handler != SIG_DFL) {
        fprintf(report, "SIGXFSZ is not SIG_DFL\n");
        failures++;
    }
    /* Only SIGPIPE and SIGXFSZ are reset; any other ignored signal stays ignored. */
    sigaction(SIGUSR2, NULL, &action);
    if ((action.sa_handler == SIG_IGN) != sigusr2_ignored) {
        fprintf(report, "SIGUSR2 ignored=%d, expected %d\n", action.sa_handler == SIG_IGN, sigusr2_ignored);
        failures++;
    }

    if (failures)
        fprintf(report, "spec was %s\n", spec);
    fclose(report);
    return failures ? 1 : 0;
}

static const char *self_path;
static const char *report_path;

static void make_check_argv(char *argv[5], char *spec, const struct layout *layout)
{
    argv[0] = (char *)self_path;
    argv[1] = layout->sigusr2_ignored ? "--check-sigusr2-ignored" : "--check";
    argv[2] = (char *)report_path;
    argv[3] = spec;
    argv[4] = NULL;
}

/* In a forked child: fdpass_exec() into --check, whose exit status is the result. */
static void case_exec(void)
{
    static char spec[4096];
    struct process_state before;
    struct layout layout;
    static char blocked_entry[64];
    char *argv[5];
    char *envp[] = {blocked_entry, NULL};
    int bad_index;

    build_layout(&layout);
    snapshot(&before);
    format_spec(&layout, &before, 1, spec, sizeof(spec));
    make_check_argv(argv, spec, &layout);
    snprintf(blocked_entry, sizeof(blocked_entry), BLOCKED_VARIABLE "=%llu", blocked_after_exec());

    fdpass_exec(self_path, argv, envp, layout.fds, layout.nfds, &bad_index);
    diag("fdpass_exec returned: %s (bad_index %d)\n", strerror(errno), bad_index);
    finish_case(2);
}

/* In a forked child: a failed fdpass_exec() must restore everything. */
static void case_restore(void)
{
    struct process_state before, after;
    struct layout layout;
    char *argv[] = {MISSING_PATH, NULL};
    char *envp[] = {NULL};
    int bad_index;
    int expected_bad_index = -1;
    int result;
    int saved_errno;
    int variant = rng_below(4);

    build_layout(&layout);

    if (variant == 1 && layout.nfds > 0) {
        /* Repeat an fd: rejected with EINVAL before anything changes. */
        layout.fds[layout.nfds] = layout.fds[rng_below(layout.nfds)];
        expected_bad_index = layout.nfds;
        layout.nfds++;
    } else if (variant == 2) {
        /* Pass a closed fd: rejected with EBADF before anything changes. */
        int fd;

        for (fd = 0; fd < MAX_LAYOUT_FD && is_open(fd); fd++)
            ;
        layout.fds[layout.nfds] = fd;
        expected_bad_index = layout.nfds;
        layout.nfds++;
    } else if (variant == 3) {
        /* Lower the fd limit so that the saves, moves or /dev/null opens hit
         * EMFILE, EBADF or EINVAL part-way; fds already above it stay open. */
        struct rlimit limit;

        if (getrlimit(RLIMIT_NOFILE, &limit) < 0)
            die("getrlimit");
        limit.rlim_cur = (rlim_t)(3 + rng_below(MAX_LAYOUT_FD + MAX_PASSED));
        if (setrlimit(RLIMIT_NOFILE, &limit) < 0)
            die("setrlimit");
    }

    snapshot(&before);
    result = fdpass_exec(MISSING_PATH, argv, envp, layout.fds, layout.nfds, &bad_index);
    saved_errno = errno;
    snapshot(&after);

    if (result != -1 || saved_errno == 0) {
        diag("restore: fdpass_exec returned %d, errno %d\n", result, saved_errno);
        finish_case(1);
    }
    if (bad_index != expected_bad_index) {
        diag("restore: bad_index %d, expected %d (errno %s)\n", bad_index, expected_bad_index,
             strerror(saved_errno));
        finish_case(1);
    }
    if (variant == 0 && saved_errno != ENOENT) {
        diag("restore: errno %s, expected ENOENT\n", strerror(saved_errno));
        finish_case(1);
    }
    finish_case(compare_states("restore", &before, &after) ? 1 : 0);
}

/* In a forked child: fdpass_spawn() --check, and this process must not change. */
static void case_spawn(void)
{
    static char spec[4096];
    struct process_state before, after;
    struct layout layout;
    char *argv[5];
    char *envp[] = {NULL};
    int bad_index;
    int status;
    pid_t pid;

    build_layout(&layout);
    snapshot(&before);
    format_spec(&layout, &before, 0, spec, sizeof(spec));
    make_check_argv(argv, spec, &layout);

    pid = fdpass_spawn(self_path, argv, envp, layout.fds, layout.nfds, 0, NULL, &bad_index);
    if (pid < 0) {
        diag("fdpass_spawn failed: %s (bad_index %d)\n", strerror(errno), bad_index);
        finish_case(2);
    }
    snapshot(&after);
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR)
            die("waitpid");
    }

    if (compare_states("spawn caller", &before, &after))
        finish_case(1);
    finish_case(WIFEXITED(status) ? WEXITSTATUS(status) : 4);
}

static void print_report(void)
{
    char buffer[4096];
    FILE *report = fopen(report_path, "r");
    size_t n;

    if (report == NULL)
        return;
    while ((n = fread(buffer, 1, sizeof(buffer), report)) > 0)
        fwrite(buffer, 1, n, stderr);
    fclose(report);
}

static int run_case(const char *kind, void (*body)(void), uint64_t case_seed)
{
    int status;
    pid_t pid;

    fflush(NULL);
    pid = fork();
    if (pid < 0) {
        perror("fork");
        return 0;
    }
    if (pid == 0) {
        rng_state = case_seed;
        alarm(CASE_TIMEOUT);
        body();
        finish_case(5);
    }
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            perror("waitpid");
            return 0;
        }
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 1;

    fprintf(stderr, "FAILED %s case, seed %llu: %s %d\n", kind, (unsigned long long)case_seed,
            WIFEXITED(status) ? "exit status" : "signal",
            WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
    print_report();
    return 0;
}

int main(int argc, char **argv)
{
    static char report_template[] = "/tmp/fdpass-test-permute-XXXXXX";
    static char resolved[PATH_MAX];
    uint64_t seed = 1;
    int cases = 300;
    int passed = 0, failed = 0;
    int report_fd;
    int i;
    int opt;

    if (argc == 4 && strcmp(argv[1], "--check") == 0)
        return check_main(argv[2], argv[3], 0);
    if (argc == 4 && strcmp(argv[1], "--check-sigusr2-ignored") == 0)
        return check_main(argv[2], argv[3], 1);

    while ((opt = getopt(argc, argv, "n:s:")) != -1) {
        if (opt == 'n')
            cases = atoi(optarg);
        else if (opt == 's')
            seed = strtoull(optarg, NULL, 10);
        else {
            fprintf(stderr, "usage: %s [-n CASES_PER_KIND] [-s SEED]\n", argv[0]);
            return 2;
        }
    }

    if (realpath(argv[0], resolved) == NULL) {
        perror(argv[0]);
        return 2;
    }
    self_path = resolved;
    if (getrlimit(RLIMIT_NOFILE, &original_nofile_limit) < 0) {
        perror("getrlimit");
        return 2;
    }
    report_fd = mkstemp(report_template);
    if (report_fd < 0) {
        perror("mkstemp");
        return 2;
    }
    close(report_fd);
    report_path = report_template;

    for (i = 0; i < cases; i++) {
        uint64_t case_seed = seed * 1000003ULL + (uint64_t)i * 3 + 1;
        int ok;

        ok = run_case("exec", case_exec, case_seed);
        passed += ok;
        failed += !ok;
        ok = run_case("restore", case_restore, case_seed + 1);
        passed += ok;
        failed += !ok;
        ok = run_case("spawn", case_spawn, case_seed + 2);
        passed += ok;
        failed += !ok;
        if (truncate(report_path, 0) < 0)
            perror("truncate");
    }

    unlink(report_path);
    printf("test_permute: %d passed, %d failed (seed %llu, %d cases per kind)\n", passed, failed,
           (unsigned long long)seed, cases);
    return failed ? 1 : 0;
}
