/*
 * spawn: run a command and report its wall time, CPU time and peak RSS, measured the way a
 * tiny parent sees them.
 *
 *   spawn FD CMD [ARGS...]
 *
 * Forks, execs CMD (stdin/stdout/stderr inherited), wait4()s it and writes one line to file
 * descriptor FD (closed in the child):
 *
 *   <wall_ns> <user_us> <sys_us> <maxrss_kib> <wait_status>
 *
 * Why not Python's subprocess + os.wait4 directly: Linux carries a process's RSS high-water
 * mark across execve (signal->maxrss takes the pre-exec mm's hiwater), so a child forked or
 * vforked from a 15 MB Python interpreter reports ru_maxrss >= 15 MB whatever it execs. Forked
 * from this static binary (~100 KiB resident) the child's ru_maxrss is its own peak.
 * benches/run builds it with musl-gcc -static (or cc) into its work directory.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: spawn FD CMD [ARGS...]\n");
        return 2;
    }
    int fd = atoi(argv[1]);
    if (fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) {
        perror("spawn: fcntl");
        return 2;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pid_t pid = fork();
    if (pid < 0) {
        perror("spawn: fork");
        return 2;
    }
    if (pid == 0) {
        execv(argv[2], &argv[2]);
        fprintf(stderr, "spawn: exec %s: %s\n", argv[2], strerror(errno));
        _exit(127);
    }
    int status = 0;
    struct rusage ru;
    while (wait4(pid, &status, 0, &ru) < 0) {
        if (errno != EINTR) {
            perror("spawn: wait4");
            return 2;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long long wall = (long long)(t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
    char line[160];
    int n = snprintf(line, sizeof line, "%lld %lld %lld %ld %d\n", wall,
                     (long long)ru.ru_utime.tv_sec * 1000000LL + ru.ru_utime.tv_usec,
                     (long long)ru.ru_stime.tv_sec * 1000000LL + ru.ru_stime.tv_usec,
                     ru.ru_maxrss, status);
    if (write(fd, line, n) != n) {
        perror("spawn: write");
        return 2;
    }
    return 0;
}
