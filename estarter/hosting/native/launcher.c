/*
 * estarter-launch: the child-side launcher, in C.
 *
 * Same contract as estarter/hosting/launcher.py (the reference and the fallback):
 * runs in the new child before any app code, applies the launch flags to itself,
 * then execs the app. In C because it runs on every launch: a Python launcher
 * costs an interpreter start plus ctypes (about 17 ms here) before the app's own
 * start-up even begins, and its guard process keeps a whole interpreter (5 MB).
 *
 *   estarter-launch [--setsid] [--pdeathsig N] [--parent PID]
 *                   [--guard] [--guard-proc PATH]... [--guard-token TOKEN]
 *                   [--cgroup PATH]... [--rlimit NAME=SOFT:HARD]...
 *                   [--unshare-net] [--info-fd FD --block-fd FD]
 *                   [--no-new-privs] [--user UID:GID] [--seccomp FD]
 *                   -- ARGV...
 *
 * --info-fd/--block-fd (as bwrap's): once in its own network namespace, write
 * {"child-pid": PID, "net-namespace": INODE} to the info fd, then wait until a byte
 * (or EOF) arrives on the block fd before going on; the supervisor sets up the
 * namespace's network in between (EOF instead of the byte: exit 122). Both fds are
 * closed before the exec.
 *
 * --seccomp FD: read a seccomp BPF program (struct sock_filter[], as libseccomp
 * exports it) from FD to its end and install it, the last step before the exec
 * (it needs --no-new-privs once the user is dropped).
 *
 * Before the exec, every signal disposition is reset to SIG_DFL (but SIGXFSZ under
 * an RLIMIT_FSIZE) and the signal mask emptied, whatever estarter inherited.
 *
 * Exit codes: 121 usage error, 122 set-up failed, 127 exec failed.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

#define MAX_ITEMS 32
#define GUARD_KILL_MS 5000
#define GUARD_RMDIR_MS 60000
#define GUARD_WATCH_MS 120000

struct rl { int resource; rlim_t soft, hard; };

static struct {
    int setsid, pdeathsig, guard, unshare_net, no_new_privs;
    long parent;
    const char *guard_procs[MAX_ITEMS]; int n_guard_procs;
    const char *guard_token;
    const char *cgroups[MAX_ITEMS]; int n_cgroups;
    struct rl rlimits[MAX_ITEMS]; int n_rlimits;
    int fsize_limited;
    long uid, gid;
    int info_fd, block_fd;
    int seccomp_fd;
} opt = { .pdeathsig = SIGKILL, .parent = -1, .uid = -1, .gid = -1,
          .info_fd = -1, .block_fd = -1, .seccomp_fd = -1 };

static void fail(int code, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    if (n > (int)sizeof buf - 2) n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    if (write(2, "estarter-launcher: ", 19) < 0 || write(2, buf, (size_t)n) < 0) { /* nothing */ }
    _exit(code);
}

static long parse_long(const char *s, const char *what) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s) fail(121, "bad %s: %s", what, s);
    return v;
}

static rlim_t parse_rlim(const char *s) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || (*end && *end != ':')) fail(121, "bad rlimit value: %s", s);
    return v < 0 ? RLIM_INFINITY : (rlim_t)v;
}

static int rlimit_by_name(const char *name, size_t len) {
    static const struct { const char *name; int res; } names[] = {
        {"RLIMIT_AS", RLIMIT_AS}, {"RLIMIT_CPU", RLIMIT_CPU}, {"RLIMIT_FSIZE", RLIMIT_FSIZE},
        {"RLIMIT_NPROC", RLIMIT_NPROC}, {"RLIMIT_NOFILE", RLIMIT_NOFILE},
        {"RLIMIT_CORE", RLIMIT_CORE}, {"RLIMIT_DATA", RLIMIT_DATA},
        {"RLIMIT_STACK", RLIMIT_STACK}, {"RLIMIT_MEMLOCK", RLIMIT_MEMLOCK},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strlen(names[i].name) == len && strncmp(names[i].name, name, len) == 0)
            return names[i].res;
    return -1;
}

static void add_rlimit(const char *arg) {
    const char *eq = strchr(arg, '=');
    if (!eq || opt.n_rlimits >= MAX_ITEMS) fail(121, "bad --rlimit: %s", arg);
    int res = rlimit_by_name(arg, (size_t)(eq - arg));
    if (res < 0) fail(121, "unknown rlimit: %s", arg);
    const char *colon = strchr(eq + 1, ':');
    if (!colon) fail(121, "bad --rlimit: %s", arg);
    struct rl *r = &opt.rlimits[opt.n_rlimits++];
    r->resource = res;
    r->soft = parse_rlim(eq + 1);
    r->hard = parse_rlim(colon + 1);
    if (res == RLIMIT_FSIZE) opt.fsize_limited = 1;
}

static int parse(int argc, char **argv) {
    int i = 1;
    for (; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--")) return i + 1;
        else if (!strcmp(a, "--setsid")) opt.setsid = 1;
        else if (!strcmp(a, "--guard")) opt.guard = 1;
        else if (!strcmp(a, "--unshare-net")) opt.unshare_net = 1;
        else if (!strcmp(a, "--no-new-privs")) opt.no_new_privs = 1;
        else if (!v) fail(121, "%s needs a value", a);
        else if (!strcmp(a, "--pdeathsig")) { opt.pdeathsig = (int)parse_long(v, a); i++; }
        else if (!strcmp(a, "--parent")) { opt.parent = parse_long(v, a); i++; }
        else if (!strcmp(a, "--guard-token")) { opt.guard_token = v; i++; }
        else if (!strcmp(a, "--info-fd")) { opt.info_fd = (int)parse_long(v, a); i++; }
        else if (!strcmp(a, "--seccomp")) { opt.seccomp_fd = (int)parse_long(v, a); i++; }
        else if (!strcmp(a, "--block-fd")) { opt.block_fd = (int)parse_long(v, a); i++; }
        else if (!strcmp(a, "--rlimit")) { add_rlimit(v); i++; }
        else if (!strcmp(a, "--guard-proc") || !strcmp(a, "--cgroup")) {
            int g = a[2] == 'g' && a[3] == 'u';
            if ((g ? opt.n_guard_procs : opt.n_cgroups) >= MAX_ITEMS) fail(121, "too many %s", a);
            if (g) opt.guard_procs[opt.n_guard_procs++] = v;
            else opt.cgroups[opt.n_cgroups++] = v;
            i++;
        } else if (!strcmp(a, "--user")) {
            char *colon = strchr(v, ':');
            if (!colon) fail(121, "bad --user: %s", v);
            *colon = '\0';
            opt.uid = parse_long(v, a);
            opt.gid = parse_long(colon + 1, a);
            i++;
        } else fail(121, "unknown flag %s", a);
    }
    fail(121, "usage: estarter-launch [FLAGS] -- ARGV...");
    return -1;
}

/* ---- the guard: kills the app's processes if the supervisor dies first ---- */

static void sleep_ms(long ms) {
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

static long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* SIGKILL every pid listed in a cgroup.procs file; returns how many were listed. */
static int kill_listed(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    int n = 0;
    long pid;
    while (fscanf(f, "%ld", &pid) == 1) { kill((pid_t)pid, SIGKILL); n++; }
    fclose(f);
    return n;
}

/* Without cgroups: SIGKILL every process whose environment carries the token. */
static int kill_token(const char *token) {
    char needle[256];
    int nlen = snprintf(needle, sizeof needle, "ESTARTER_LIMITS_TOKEN=%s", token);
    if (nlen <= 0 || nlen >= (int)sizeof needle) return 0;
    DIR *d = opendir("/proc");
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    static char env[65536];
    while ((e = readdir(d))) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end || pid <= 0 || pid == getpid()) continue;
        char path[64];
        snprintf(path, sizeof path, "/proc/%ld/environ", pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        ssize_t len = read(fd, env, sizeof env - 1);
        close(fd);
        if (len <= 0) continue;
        for (ssize_t off = 0; off < len; off += (ssize_t)strlen(env + off) + 1) {
            env[len] = '\0';
            if (strcmp(env + off, needle) == 0) { kill((pid_t)pid, SIGKILL); n++; break; }
        }
    }
    closedir(d);
    return n;
}

static void sweep(void) {
    long deadline = now_ms() + GUARD_KILL_MS;
    while (now_ms() < deadline) {
        int listed = 0;
        if (opt.n_guard_procs)
            for (int i = 0; i < opt.n_guard_procs; i++) listed += kill_listed(opt.guard_procs[i]);
        else if (opt.guard_token)
            listed = kill_token(opt.guard_token);
        if (!listed) break;
        sleep_ms(20);
    }
    for (int i = 0; i < opt.n_guard_procs; i++) {
        char dir[PATH_MAX];
        snprintf(dir, sizeof dir, "%s", opt.guard_procs[i]);
        char *slash = strrchr(dir, '/');
        if (!slash) continue;
        *slash = '\0';
        /* EBUSY lasts while exiting tasks are still charged: long on a loaded
           host. The guard has nothing else to do, so it keeps trying a while. */
        long rm_deadline = now_ms() + GUARD_RMDIR_MS;
        while (rmdir(dir) != 0 && errno != ENOENT && now_ms() < rm_deadline)
            sleep_ms(50);
    }
}

/* The app ended first. Either the supervisor cleans up (removes the app's cgroups),
 * or the app's end was the supervisor's PDEATHSIG and the supervisor is dying: on a
 * loaded host a dying Ray worker can take seconds to exit, and then nobody else
 * removes the cgroups. So wait for whichever comes first: the cgroups gone (the
 * supervisor did its job), the supervisor gone (sweep), or GUARD_WATCH_MS (a
 * supervisor that keeps them on purpose). Returns whether the supervisor died. */
static int wait_supervisor_cleanup(int sup_fd) {
    long start = now_ms(), deadline = start + GUARD_WATCH_MS;
    for (;;) {
        struct pollfd s = { sup_fd, POLLIN, 0 };
        if (poll(&s, 1, 200) > 0) return 1;
        if (!opt.n_guard_procs) {  /* token mode: no cgroups to watch, a second's grace */
            if (now_ms() - start >= 1000) return 0;
            continue;
        }
        int left = 0;
        for (int i = 0; i < opt.n_guard_procs && !left; i++)
            left = access(opt.guard_procs[i], F_OK) == 0;
        if (!left || now_ms() >= deadline) return 0;
    }
}

static void guard(pid_t supervisor) {
    int app_fd = (int)syscall(SYS_pidfd_open, getpid(), 0);
    int sup_fd = (int)syscall(SYS_pidfd_open, supervisor, 0);
    if (app_fd < 0 || sup_fd < 0) {  /* no pidfd, or the supervisor is already gone */
        if (app_fd >= 0) close(app_fd);
        if (sup_fd >= 0) close(sup_fd);
        return;
    }
    pid_t pid = fork();
    if (pid < 0) fail(122, "fork of the guard: %s", strerror(errno));
    if (pid > 0) {  /* the launcher: reap the intermediate, go on */
        close(app_fd);
        close(sup_fd);
        waitpid(pid, NULL, 0);
        return;
    }
    setsid();
    if (fork() != 0) _exit(0);
    /* Never hold the app's stdio pipes open: the host reads them until EOF. */
    int devnull = open("/dev/null", O_RDWR);
    if (devnull >= 0) { dup2(devnull, 0); dup2(devnull, 1); dup2(devnull, 2); }
    for (int fd = 3; fd < 1024; fd++)
        if (fd != app_fd && fd != sup_fd) close(fd);
    signal(SIGHUP, SIG_IGN);
    struct pollfd fds[2] = { { app_fd, POLLIN, 0 }, { sup_fd, POLLIN, 0 } };
    while (poll(fds, 2, -1) < 0 && errno == EINTR) { }
    int sup_dead = fds[1].revents != 0;
    if (!sup_dead) sup_dead = wait_supervisor_cleanup(sup_fd);
    if (sup_dead) sweep();
    _exit(0);
}

/* What estarter inherited must not reach the app: SIG_IGN for SIGINT and SIGQUIT
 * (`estarter run ... &` from a script, nohup), a blocked mask (some Ray workers,
 * service managers). exec keeps both, so an app would never see the signals its
 * shutdown relies on. Every disposition back to SIG_DFL, except SIGXFSZ under
 * RLIMIT_FSIZE (ignored on purpose: a write past it fails with EFBIG), and an empty
 * mask. sigaction fails (EINVAL) for the signals glibc keeps for itself: fine. */
static void reset_signals(void) {
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP || (sig == SIGXFSZ && opt.fsize_limited))
            continue;
        sigaction(sig, &dfl, NULL);
    }
    sigset_t none;
    sigemptyset(&none);
    if (sigprocmask(SIG_SETMASK, &none, NULL) != 0)
        fail(122, "sigprocmask: %s", strerror(errno));
}

/* Reads the program from fd to its end, closes fd, installs the filter. */
static void install_seccomp(int fd) {
    static struct sock_filter prog[BPF_MAXINSNS + 1];
    size_t have = 0;
    for (;;) {
        ssize_t r = read(fd, (char *)prog + have, sizeof prog - have);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) fail(122, "--seccomp %d: %s", fd, strerror(errno));
        if (r == 0 || (have += (size_t)r) == sizeof prog) break;
    }
    close(fd);
    if (have == 0 || have % sizeof prog[0] || have > BPF_MAXINSNS * sizeof prog[0])
        fail(122, "--seccomp %d: not a BPF program (%zu bytes)", fd, have);
    struct sock_fprog fprog = { (unsigned short)(have / sizeof prog[0]), prog };
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fprog, 0, 0) != 0)
        fail(122, "prctl(PR_SET_SECCOMP): %s", strerror(errno));
}

int main(int argc, char **argv) {
    int first = parse(argc, argv);
    if (first >= argc) fail(121, "nothing to run");
    if (opt.setsid && setsid() < 0) fail(122, "setsid: %s", strerror(errno));
    if (opt.pdeathsig && prctl(PR_SET_PDEATHSIG, opt.pdeathsig, 0, 0, 0) != 0)
        fail(122, "prctl(PDEATHSIG): %s", strerror(errno));
    pid_t supervisor = opt.parent > 0 ? (pid_t)opt.parent : getppid();
    /* The parent may have died between fork and prctl: then nobody would kill us. */
    if (opt.pdeathsig && getppid() != supervisor) _exit(122);
    if (opt.guard) guard(supervisor);
    char pid[32];
    int plen = snprintf(pid, sizeof pid, "%d", (int)getpid());
    for (int i = 0; i < opt.n_cgroups; i++) {
        /* A v1 "tasks" file gets "0": the calling thread, which is this whole process
         * (the launcher has one thread). Linux then skips its cgroup-wide threadgroup
         * lock, whose write side waits an RCU grace period (7-15 ms here); a pid
         * written into cgroup.procs always takes it. */
        const char *path = opt.cgroups[i];
        size_t len = strlen(path);
        int tasks = len >= 6 && strcmp(path + len - 6, "/tasks") == 0;
        const char *who = tasks ? "0" : pid;
        int wlen = tasks ? 1 : plen;
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write(fd, who, (size_t)wlen) != wlen)
            fail(122, "cannot join cgroup %s: %s", path, strerror(errno));
        close(fd);
    }
    for (int i = 0; i < opt.n_rlimits; i++) {
        struct rlimit r = { opt.rlimits[i].soft, opt.rlimits[i].hard };
        if (setrlimit(opt.rlimits[i].resource, &r) != 0)
            fail(122, "setrlimit %d: %s", opt.rlimits[i].resource, strerror(errno));
    }
    /* A write past RLIMIT_FSIZE then fails with EFBIG instead of killing the app. */
    if (opt.fsize_limited) signal(SIGXFSZ, SIG_IGN);
    if (opt.unshare_net && unshare(CLONE_NEWNET) != 0)
        fail(122, "unshare(CLONE_NEWNET): %s", strerror(errno));
    if (opt.info_fd >= 0) {
        struct stat ns;
        if (stat("/proc/self/ns/net", &ns) != 0) fail(122, "stat netns: %s", strerror(errno));
        char info[96];
        int n = snprintf(info, sizeof info, "{\"child-pid\": %d, \"net-namespace\": %lu}\n",
                         (int)getpid(), (unsigned long)ns.st_ino);
        if (write(opt.info_fd, info, (size_t)n) != n) fail(122, "--info-fd: %s", strerror(errno));
        close(opt.info_fd);
    }
    if (opt.block_fd >= 0) {
        char b;
        ssize_t r;
        while ((r = read(opt.block_fd, &b, 1)) < 0 && errno == EINTR) { }
        if (r != 1) fail(122, "the supervisor did not release the launch");
        close(opt.block_fd);
    }
    if (opt.no_new_privs && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        fail(122, "prctl(NO_NEW_PRIVS): %s", strerror(errno));
    if (opt.uid >= 0) {
        if (setgroups(0, NULL) != 0 || setgid((gid_t)opt.gid) != 0 || setuid((uid_t)opt.uid) != 0)
            fail(122, "cannot become uid %ld: %s", opt.uid, strerror(errno));
    }
    reset_signals();
    if (opt.seccomp_fd >= 0) install_seccomp(opt.seccomp_fd);
    execvp(argv[first], argv + first);
    fail(127, "cannot run %s: %s", argv[first], strerror(errno));
    return 127;
}
