/*
 * The fdpass C core. This file is read twice: by fdpass.c, and by cffi's cdef
 * in csrc/build.py, so it holds only declarations that cdef can parse (no
 * include guards, no macros).
 *
 * Every function returns -1 with errno set on each failure path.
 */

/* Facts about one fd, filled in by fdpass_inspect(). */
struct fdpass_fdinfo {
    int fd;
    int error;          /* 0, or the errno that made the fd unusable */
    int fd_flags;       /* F_GETFD result: FD_CLOEXEC or 0 */
    int status_flags;   /* F_GETFL result: O_ACCMODE, O_APPEND, O_NONBLOCK */
    unsigned int mode;  /* st_mode & S_IFMT */
    int family;         /* SO_DOMAIN, or -1 if the fd is not a socket */
    int type;           /* SO_TYPE, or -1 */
    int protocol;       /* SO_PROTOCOL, or -1 */
    int listening;      /* SO_ACCEPTCONN: 1 for a listening socket */
};

int fdpass_exec(const char *path, char *const argv[], char *const envp[],
                const int *fds, int nfds, int *bad_index);

int fdpass_inspect(const int *fds, int nfds, struct fdpass_fdinfo *out);

int fdpass_find_unadoptable_range(int first_fd, int nfds);

int fdpass_split_strings(char *block, int count, char *out[]);

int fdpass_set_cloexec(const int *fds, int nfds, int cloexec);

int fdpass_set_cloexec_range(int first_fd, int nfds);

/* Flags for fdpass_spawn(). */
enum {
    FDPASS_SPAWN_LISTEN_PID = 1,         /* set LISTEN_PID=<child PID> in the child's environment */
    FDPASS_SPAWN_NEW_PROCESS_GROUP = 2,  /* setpgid(0, 0): the child leads a new process group */
    FDPASS_SPAWN_PARENT_DEATHSIG = 4     /* PR_SET_PDEATHSIG SIGKILL: the child dies with the caller's thread */
};

int fdpass_spawn(const char *path, char *const argv[], char *const envp[],
                 const int *fds, int nfds, int flags, const char *cwd, int *bad_index);

int fdpass_set_child_subreaper(int on);

/* A POSIX timer that sends SIGKILL to this process at deadline_ns on
 * CLOCK_MONOTONIC. execve and fork do not carry it over. */
int fdpass_kill_timer_arm(long long deadline_ns, intptr_t *timer_out);

int fdpass_kill_timer_cancel(intptr_t timer);

/* Migrate the calling thread onto cpu if its affinity mask allows every
 * online CPU, and give it every CPU again in the same call. Returns 1 if it
 * moved, 0 if it was left where it was. */
int fdpass_move_to_cpu(int cpu);

/* Write-fault every resident page of every private writable mapping, so
 * that this process no longer shares it with a process it forked or that
 * forked it. Returns the number of pages, or -1 with errno. */
long fdpass_unshare_private_pages(void);
