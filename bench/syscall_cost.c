/*
 * Per-call cost of the system calls that a restart issues per fd, on this
 * machine: F_GETFD and F_SETFD (fdpass, old and new image), ioctl(FIOCLEX)
 * (os.set_inheritable), getsockname() (every socket.socket(fileno=)) and
 * getsockopt() (its auto-detection). docs/benchmarks.md explains with these
 * figures why some targets stay out of reach.
 *
 * Build and run: cc -O2 -o /tmp/syscall_cost bench/syscall_cost.c && /tmp/syscall_cost
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SOCKETS 10000
#define REPEATS 3

static long long monotonic_ns(void)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec * 1000000000LL + now.tv_nsec;
}

static void report(const char *name, long long start)
{
    printf("%-24s %7.1f ns per call\n", name, (double)(monotonic_ns() - start) / SOCKETS);
}

int main(void)
{
    struct rlimit limit = {SOCKETS + 64, SOCKETS + 64};
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fds[SOCKETS];
    int repeat;
    int i;

    if (setrlimit(RLIMIT_NOFILE, &limit) == -1) {
        perror("setrlimit");
        return 1;
    }
    for (i = 0; i < SOCKETS; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fds[i] == -1 || bind(fds[i], (struct sockaddr *)&address, sizeof(address)) == -1 ||
            listen(fds[i], 8) == -1) {
            perror("socket");
            return 1;
        }
    }

    for (repeat = 0; repeat < REPEATS; repeat++) {
        struct sockaddr_storage name;
        socklen_t length;
        int value;
        long long start;

        printf("round %d, %d listening TCP sockets\n", repeat + 1, SOCKETS);

        start = monotonic_ns();
        for (i = 0; i < SOCKETS; i++)
            fcntl(fds[i], F_GETFD);
        report("fcntl(F_GETFD)", start);

        start = monotonic_ns();
        for (i = 0; i < SOCKETS; i++)
            fcntl(fds[i], F_SETFD, 0);
        report("fcntl(F_SETFD)", start);

        start = monotonic_ns();
        for (i = 0; i < SOCKETS; i++)
            ioctl(fds[i], FIOCLEX);
        report("ioctl(FIOCLEX)", start);

        start = monotonic_ns();
        for (i = 0; i < SOCKETS; i++) {
            length = sizeof(name);
            getsockname(fds[i], (struct sockaddr *)&name, &length);
        }
        report("getsockname()", start);

        start = monotonic_ns();
        for (i = 0; i < SOCKETS; i++) {
            length = sizeof(value);
            getsockopt(fds[i], SOL_SOCKET, SO_TYPE, &value, &length);
        }
        report("getsockopt(SO_TYPE)", start);
    }

    return 0;
}
