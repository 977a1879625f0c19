/* redline-sbx: the two small jobs of the redline sandbox that need C.
 *
 *   redline-sbx init READY_FD LIFELINE_FD BPF_FD [LABEL]
 *       The sandbox's pid 1 (bwrap --as-pid-1), started with CAP_SYS_ADMIN in the sandbox's
 *       (and CAP_SETPCAP, to drop it) in the sandbox's user namespace only for its first step: it makes /proc/sys, /proc/sysrq-trigger,
 *       /proc/irq and /proc/bus read-only mounts (bwrap skips them in a user namespace, where
 *       its access() test says "not writable" for root inside). Then it drops every capability,
 *       sets no_new_privs, loads the seccomp program read from BPF_FD (-1: none), says "ready",
 *       reaps orphans, and lives exactly as long as the harness holds the lifeline pipe's
 *       write end. LABEL (the sandbox id) only names it in ps.
 *
 *   redline-sbx launch SYNC_FD BLOCK_FD OWNER STATE VIEW [CGROUP_PROCS...] -- PATH ARGV0 [ARGS...]
 *       Starts bwrap: joins the sandbox's cgroups (so that everything bwrap forks is capped).
 *       With STATE and VIEW given (not "-"), it first enters a private mount namespace of its own
 *       and binds the sandbox's state directory STATE on VIEW there: bwrap, running as an
 *       unprivileged uid, finds everything at VIEW even when STATE lies under a directory only
 *       root may search (pytest's tmp_path); the bind dies with the namespace, nothing to clean.
 *       With SYNC_FD >= 0 it then makes the sandbox's user namespace itself, owned by host
 *       uid/gid OWNER (the first id of the sandbox's range: the kernel charges per-user counts
 *       such as inotify instances to the owner, so they must not be host root's) but with
 *       host root's capabilities kept for that one call (so no policy against unprivileged
 *       user namespaces, e.g. Ubuntu's AppArmor one, gets in the way). It writes one byte to
 *       SYNC_FD, waits for one byte on BLOCK_FD (the harness writes the uid/gid maps
 *       meanwhile) and becomes root of the namespace: from then on it, bwrap and everything
 *       in the sandbox run as the sandbox's unprivileged host ids. Then it execs PATH as ARGV0.
 *
 *   redline-sbx exec PIDFD ERRFD NSFLAGS UID GID BPF CWD [CGROUP_PROCS...] -- CMD [ARGS...]
 *       Runs one command inside a running sandbox: joins the sandbox's cgroups (host paths),
 *       enters all its namespaces at once through a pidfd of its init (no pid-reuse race),
 *       forks into its pid namespace, becomes UID/GID (as seen inside) with no capabilities
 *       and no_new_privs, loads the seccomp program in file BPF ("-" for none), changes to CWD
 *       and execs CMD with the environment it was given; if that exec fails, its errno goes to
 *       ERRFD (-1: none). The parent waits and passes the exit status on (a signal N as 128+N).
 *
 * Exit codes of its own: 125 setup failed, 126 CMD not executable, 127 CMD not found.
 * Why C: a Python child costs ~20 ms, and neither nsenter nor setpriv can load a seccomp
 * filter; this replaces the nsenter + setpriv + env chain of three execs with one.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define SETUP_FAILED 125

static void die(const char *what, const char *arg)
{
    int e = errno;
    fprintf(stderr, "redline-sbx: %s%s%s: %s\n", what, arg ? " " : "", arg ? arg : "", strerror(e));
    _exit(SETUP_FAILED);
}

static long number(const char *s, const char *what)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 0);
    if (errno || *s == '\0' || *end != '\0') {
        errno = EINVAL;
        die(what, s);
    }
    return v;
}

static void drop_bounding_set(void);
static void clear_capabilities(void);

static void read_bpf_fd(int fd, struct sock_fprog *prog)
{
    static struct sock_filter buf[BPF_MAXINSNS];
    size_t got = 0;
    for (;;) {
        ssize_t n = read(fd, (char *)buf + got, sizeof buf - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("read seccomp program", NULL);
        if (n == 0)
            break;
        got += (size_t)n;
        if (got == sizeof buf) {
            errno = EFBIG;
            die("seccomp program too long", NULL);
        }
    }
    if (got == 0 || got % sizeof(struct sock_filter)) {
        errno = EINVAL;
        die("bad seccomp program", NULL);
    }
    prog->filter = buf;
    prog->len = (unsigned short)(got / sizeof(struct sock_filter));
    close(fd);
}

/* Rootless mode: bwrap made the user namespace unprivileged, so the kernel forbids setgroups
   in it ("deny" in /proc/self/setgroups) and the caller's groups stay, unmapped (nobody). */
static int setgroups_denied(void)
{
    char buf[8] = {0};
    int fd = open("/proc/self/setgroups", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);
    if (fd >= 0)
        close(fd);
    return n > 0 && strncmp(buf, "deny", 4) == 0;
}

static void protect_proc(void)
{
    static const char *const paths[] = {"/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"};
    const unsigned long ro = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC;
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        if (access(paths[i], F_OK) < 0)
            continue;
        if (mount(paths[i], paths[i], NULL, MS_BIND | MS_REC, NULL) < 0 || mount(NULL, paths[i], NULL, ro, NULL) < 0) {
            /* Rootless (bwrap made the user namespace unprivileged): the kernel refuses these
               binds; the files stay unwritable for the agent all the same (they belong to ids
               it does not have), which the rootless containment record says. */
            if (errno == EPERM && setgroups_denied())
                return;
            die("make read-only", paths[i]);
        }
    }
}

static int run_init(int ready, int lifeline, int bpf)
{
    char b;
    struct sock_fprog prog = {0, NULL};
    if (bpf >= 0)
        read_bpf_fd(bpf, &prog);
    protect_proc();
    /* Not dumpable: nothing without CAP_SYS_PTRACE can ptrace the init (rootless, it has the
       agent's uid; taking it over could keep the sandbox past the harness's end). */
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
        die("not dumpable", NULL);
    drop_bounding_set();
    clear_capabilities();
    if (prog.len && syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) < 0)
        die("load seccomp program", NULL);
    /* Children of pid 1 (orphans included) are reaped by the kernel. */
    signal(SIGCHLD, SIG_IGN);
    for (int fd = 3; fd < 1024; fd++)
        if (fd != ready && fd != lifeline)
            close(fd);
    if (write(ready, "1\n", 2) != 2)
        die("write ready", NULL);
    close(ready);
    for (;;) {
        ssize_t n = read(lifeline, &b, 1);
        if (n == 0 || (n < 0 && errno != EINTR))
            _exit(0); /* harness gone: pid 1 exits and the kernel ends the sandbox */
    }
}

static void join_cgroup(const char *procs)
{
    char buf[32];
    int fd = open(procs, O_WRONLY | O_CLOEXEC);
    int n = snprintf(buf, sizeof buf, "%d\n", (int)getpid());
    if (fd < 0 || write(fd, buf, (size_t)n) != n)
        die("join cgroup", procs);
    close(fd);
}

static void read_bpf(const char *path, struct sock_fprog *prog)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) < 0)
        die("open seccomp program", path);
    if (st.st_size <= 0 || st.st_size % sizeof(struct sock_filter) || st.st_size > (1 << 20)) {
        errno = EINVAL;
        die("bad seccomp program", path);
    }
    prog->filter = malloc((size_t)st.st_size);
    if (!prog->filter || read(fd, prog->filter, (size_t)st.st_size) != st.st_size)
        die("read seccomp program", path);
    prog->len = (unsigned short)(st.st_size / sizeof(struct sock_filter));
    close(fd);
}

static void drop_bounding_set(void)
{
    /* Needs CAP_SETPCAP: before any uid change, which may clear it. */
    for (int cap = 0; cap < 64; cap++)
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL)
            die("drop capability bounding set", NULL);
}

static void clear_capabilities(void)
{
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0)
        die("clear ambient capabilities", NULL);
    memset(data, 0, sizeof data);
    if (syscall(SYS_capset, &hdr, data) < 0)
        die("clear capabilities", NULL);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        die("no_new_privs", NULL);
}

static void drop_privileges(uid_t uid, gid_t gid)
{
    drop_bounding_set();
    if (setgroups(0, NULL) < 0 && !(errno == EPERM && setgroups_denied()))
        die("set user", NULL);
    if (setresgid(gid, gid, gid) < 0 || setresuid(uid, uid, uid) < 0)
        die("set user", NULL);
    /* Root inside keeps uid 0 but no capability at all. */
    clear_capabilities();
}

static void pass_status_on(pid_t child)
{
    int st;
    while (waitpid(child, &st, 0) < 0)
        if (errno != EINTR)
            die("waitpid", NULL);
    /* A signal death reads as a shell reports it (128 + N), as Inspect's contract expects. */
    _exit(WIFSIGNALED(st) ? 128 + WTERMSIG(st) : WEXITSTATUS(st));
}

static int find_separator(int argc, char **argv, int from)
{
    for (int i = from; i < argc; i++)
        if (strcmp(argv[i], "--") == 0)
            return i;
    return 0;
}

static void enter_new_userns(int sync, int block, uid_t owner)
{
    char b = 'u';
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    /* The new namespace's owner is the creator's effective ids; keep the capabilities. */
    if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0 || setresgid(0, owner, 0) < 0 || setresuid(0, owner, 0) < 0)
        die("take the sandbox's host ids", NULL);
    if (syscall(SYS_capget, &hdr, data) < 0)
        die("capget", NULL);
    data[0].effective = data[0].permitted;
    data[1].effective = data[1].permitted;
    if (syscall(SYS_capset, &hdr, data) < 0)
        die("capset", NULL);
    if (unshare(CLONE_NEWUSER) < 0)
        die("make user namespace", NULL);
    if (write(sync, &b, 1) != 1 || read(block, &b, 1) != 1)
        die("wait for the id maps", NULL);
    close(sync);
    close(block);
    /* Root of the new namespace: the first id of the sandbox's host range. */
    if (setgroups(0, NULL) < 0 || setresgid(0, 0, 0) < 0 || setresuid(0, 0, 0) < 0)
        die("become root of the user namespace", NULL);
}

static void bind_view(const char *state, const char *view)
{
    if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        die("private mount namespace", NULL);
    if (mount(state, view, NULL, MS_BIND | MS_REC, NULL) < 0)
        die("bind the state directory on", view);
}

static int run_launch(int argc, char **argv)
{
    int sep = find_separator(argc, argv, 5);
    if (argc < 8 || sep == 0 || sep + 2 >= argc) {
        errno = EINVAL;
        die("usage: launch SYNC_FD BLOCK_FD OWNER STATE VIEW [CGROUP_PROCS...] -- PATH ARGV0 [ARGS...]", NULL);
    }
    int sync = (int)number(argv[0], "sync fd");
    int block = (int)number(argv[1], "block fd");
    uid_t owner = (uid_t)number(argv[2], "owner");
    for (int i = 5; i < sep; i++)
        join_cgroup(argv[i]);
    if (strcmp(argv[3], "-") != 0 && strcmp(argv[4], "-") != 0)
        bind_view(argv[3], argv[4]);
    if (sync >= 0)
        enter_new_userns(sync, block, owner);
    execv(argv[sep + 1], argv + sep + 2);
    die("exec", argv[sep + 1]);
    return SETUP_FAILED;
}

static int run_exec(int argc, char **argv)
{
    struct sock_fprog prog = {0, NULL};
    int sep = find_separator(argc, argv, 7);
    if (argc < 9 || sep == 0 || sep + 1 >= argc) {
        errno = EINVAL;
        die("usage: exec PIDFD ERRFD NSFLAGS UID GID BPF CWD [CGROUP_PROCS...] -- CMD [ARGS...]", NULL);
    }
    int pidfd = (int)number(argv[0], "pidfd");
    int errfd = (int)number(argv[1], "error fd");
    int flags = (int)number(argv[2], "namespace flags");
    uid_t uid = (uid_t)number(argv[3], "uid");
    gid_t gid = (gid_t)number(argv[4], "gid");
    for (int i = 7; i < sep; i++)
        join_cgroup(argv[i]); /* before setns: these are host paths */
    if (strcmp(argv[5], "-") != 0)
        read_bpf(argv[5], &prog);
    if (setns(pidfd, flags) < 0)
        die("enter sandbox namespaces", NULL);
    close(pidfd);
    pid_t child = fork();
    if (child < 0)
        die("fork", NULL);
    if (child > 0) {
        close(errfd); /* the harness sees EOF on it once the child has exec'd (or died) */
        pass_status_on(child);
    }
    drop_privileges(uid, gid);
    if (chdir(argv[6]) < 0)
        die("cannot change directory to", argv[6]);
    if (prog.len && syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) < 0)
        die("load seccomp program", NULL);
    /* ERRFD closes on a successful exec; a failed one reports its errno there, out of band:
       nothing the command prints can pass for it. */
    if (errfd >= 0 && fcntl(errfd, F_SETFD, FD_CLOEXEC) < 0)
        die("error fd", NULL);
    execvp(argv[sep + 1], argv + sep + 1);
    int e = errno;
    if (errfd >= 0 && write(errfd, &e, sizeof e) != sizeof e)
        e = errno;
    fprintf(stderr, "redline-sbx: %s: %s\n", argv[sep + 1], strerror(e));
    _exit(e == ENOENT ? 127 : 126);
}

int main(int argc, char **argv)
{
    if ((argc == 5 || argc == 6) && strcmp(argv[1], "init") == 0)
        return run_init((int)number(argv[2], "ready fd"), (int)number(argv[3], "lifeline fd"),
                        (int)number(argv[4], "seccomp fd"));
    if (argc > 2 && strcmp(argv[1], "launch") == 0)
        return run_launch(argc - 2, argv + 2);
    if (argc > 2 && strcmp(argv[1], "exec") == 0)
        return run_exec(argc - 2, argv + 2);
    fprintf(stderr, "usage: redline-sbx init|launch|exec ... (see sbx.c)\n");
    return 2;
}
