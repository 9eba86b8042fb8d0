/* sysprobe: make one syscall by name and print "<name> ok" or "<name> errno=<n>".
 * Built statically by tests/integration/runtimed/test_security.py into its test image:
 * Debian's busybox-static runs applets in-process and has no way to issue these calls,
 * so the seccomp tests need a real executable. Raw syscall(2) everywhere, so libc
 * cannot substitute another call (glibc's clone() would try clone3 first). */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/bpf.h>
#include <linux/io_uring.h>
#include <linux/perf_event.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static long child_exit(long rc) {
    /* In the child of a successful clone: leave at once. */
    if (rc == 0)
        _exit(0);
    if (rc > 0)
        waitpid((pid_t)rc, NULL, __WALL);
    return rc;
}

static long probe(const char *name) {
    if (!strcmp(name, "clone_plain"))
        return child_exit(syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0));
    if (!strcmp(name, "clone_newuser"))
        return child_exit(syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0));
    if (!strcmp(name, "clone3_newuser")) {
        struct clone_args args;
        memset(&args, 0, sizeof args);
        args.flags = CLONE_NEWUSER;
        args.exit_signal = SIGCHLD;
        return child_exit(syscall(SYS_clone3, &args, sizeof args));
    }
    if (!strcmp(name, "unshare_user"))
        return syscall(SYS_unshare, CLONE_NEWUSER);
    if (!strcmp(name, "mount"))
        return syscall(SYS_mount, "none", "/mnt", "tmpfs", 0, "size=64k");
    if (!strcmp(name, "keyctl")) /* KEYCTL_GET_KEYRING_ID of the session keyring */
        return syscall(SYS_keyctl, 0, -3, 0);
    if (!strcmp(name, "add_key")) /* into the process keyring (KEY_SPEC_PROCESS_KEYRING) */
        return syscall(SYS_add_key, "user", "crib-probe", "x", 1, -2);
    if (!strcmp(name, "swapon"))
        return syscall(SYS_swapon, "/nonexistent-swap", 0);
    if (!strcmp(name, "io_uring_setup")) {
        struct io_uring_params p;
        memset(&p, 0, sizeof p);
        return syscall(SYS_io_uring_setup, 1, &p);
    }
    if (!strcmp(name, "bpf")) { /* an empty BPF_MAP_CREATE: EINVAL if it gets that far */
        union bpf_attr attr;
        memset(&attr, 0, sizeof attr);
        return syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof attr);
    }
    if (!strcmp(name, "perf_event_open")) { /* own task clock, user space only */
        struct perf_event_attr attr;
        memset(&attr, 0, sizeof attr);
        attr.size = sizeof attr;
        attr.type = PERF_TYPE_SOFTWARE;
        attr.config = PERF_COUNT_SW_TASK_CLOCK;
        attr.exclude_kernel = 1;
        attr.exclude_hv = 1;
        return syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0);
    }
    errno = 0;
    return -2;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        errno = 0;
        long rc = probe(argv[i]);
        if (rc == -2 && errno == 0)
            printf("%s unknown-probe\n", argv[i]);
        else if (rc < 0)
            printf("%s errno=%d\n", argv[i], errno);
        else
            printf("%s ok\n", argv[i]);
        fflush(stdout);
    }
    return 0;
}
