/*
 * ffleet-sandbox: confine one FFmpeg/ffprobe process with the kernel's own tools, then exec it.
 *
 *   ffleet-sandbox [--ppid PID] [--fsize BYTES] [--nproc N] [--require-landlock]
 *                  [--read PATH]... [--lib PATH]... [--write DIR]... [--device PATH]... -- PROGRAM ARG...
 *   ffleet-sandbox --probe        print what this kernel enforces, as JSON, from a self-test
 *
 * Why a helper and not Python's preexec_fn: preexec_fn forces fork() instead of vfork() in the
 * parent (measured 2-3x slower per tiny file), and one small exec can set everything at once:
 * the parent-death signal (which setpriv used to set), the rlimits, no_new_privs, Landlock and
 * seccomp. ffleet builds this file with the system C compiler (ffleet/sandbox.py); it needs only
 * libc and the kernel headers.
 *
 * What the confined process can still do: read PROGRAM, the --read paths and the system's
 * library folders (Landlock); write only inside the --write folders; nothing else on the file
 * system. It cannot create any socket (seccomp: socket/socketpair fail with EACCES), cannot
 * fork or start another program (seccomp refuses fork, vfork and clone without CLONE_THREAD;
 * Landlock lets it execute PROGRAM only), cannot grow a file past --fsize (RLIMIT_FSIZE), dump
 * core, ptrace, or use io_uring, bpf, userfaultfd, perf events, keyrings or namespaces.
 * Landlock is used at the best ABI the kernel offers; without Landlock the file system rules are
 * missing, which --probe reports and --require-landlock turns into a refusal (exit 126).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

extern char **environ;

#define EXIT_SANDBOX 126 /* as a shell reports "cannot execute": the caller maps it to sandbox_error */

/* Landlock's ABI, spelled out so that old kernel headers in a build image do not matter. */
#ifndef __NR_landlock_create_ruleset
#define __NR_landlock_create_ruleset 444
#define __NR_landlock_add_rule 445
#define __NR_landlock_restrict_self 446
#endif
#define LL_CREATE_RULESET_VERSION (1U << 0)
#define LL_RULE_PATH_BENEATH 1
#define FS_EXECUTE (1ULL << 0)
#define FS_WRITE_FILE (1ULL << 1)
#define FS_READ_FILE (1ULL << 2)
#define FS_READ_DIR (1ULL << 3)
#define FS_REMOVE_DIR (1ULL << 4)
#define FS_REMOVE_FILE (1ULL << 5)
#define FS_MAKE_CHAR (1ULL << 6)
#define FS_MAKE_DIR (1ULL << 7)
#define FS_MAKE_REG (1ULL << 8)
#define FS_MAKE_SOCK (1ULL << 9)
#define FS_MAKE_FIFO (1ULL << 10)
#define FS_MAKE_BLOCK (1ULL << 11)
#define FS_MAKE_SYM (1ULL << 12)
#define FS_REFER (1ULL << 13)    /* ABI 2 */
#define FS_TRUNCATE (1ULL << 14) /* ABI 3 */
#define FS_IOCTL_DEV (1ULL << 15) /* ABI 5 */
#define NET_BIND_TCP (1ULL << 0)  /* ABI 4 */
#define NET_CONNECT_TCP (1ULL << 1)
#define SCOPE_ABSTRACT_UNIX (1ULL << 0) /* ABI 6 */
#define SCOPE_SIGNAL (1ULL << 1)

struct ll_ruleset_attr {
    uint64_t handled_access_fs;
    uint64_t handled_access_net;
    uint64_t scoped;
};
struct ll_path_beneath_attr {
    uint64_t allowed_access;
    int32_t parent_fd;
} __attribute__((packed));

/* Rights that apply to a file (as opposed to a folder); a rule on a file may hold only these. */
#define FILE_RIGHTS (FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV)

/* What the program may read besides its own paths: the dynamic loader and libraries of a
 * distribution's FFmpeg, the CPU topology some libraries read, and random sources. */
static const char *const SYSTEM_READ[] = {
    "/usr/lib", "/usr/lib64", "/usr/local/lib", "/lib", "/lib64", "/etc/ld.so.cache",
    "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/sys/devices/system/cpu",
    "/dev/zero", "/dev/urandom", "/dev/random", NULL,
};
/* The dynamic loader is opened for execution by the kernel itself when the program is dynamically
 * linked (Debian's FFmpeg): Landlock asks for the execute right on it too. */
static const char *const SYSTEM_EXEC[] = {
    "/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1", NULL,
};

static int landlock_abi(void) {
    long abi = syscall(__NR_landlock_create_ruleset, NULL, 0, LL_CREATE_RULESET_VERSION);
    return abi < 0 ? 0 : (int)abi;
}

static uint64_t fs_rights_for(int abi) {
    uint64_t rights = (1ULL << 13) - 1; /* ABI 1: bits 0-12 */
    if (abi >= 2) rights |= FS_REFER;
    if (abi >= 3) rights |= FS_TRUNCATE;
    if (abi >= 5) rights |= FS_IOCTL_DEV;
    return rights;
}

static int add_path_rule(int ruleset, const char *path, uint64_t wanted, uint64_t handled, int must_exist) {
    int fd = open(path, O_PATH | O_CLOEXEC);
    if (fd < 0) {
        if (!must_exist && (errno == ENOENT || errno == ENOTDIR)) return 0;
        fprintf(stderr, "ffleet-sandbox: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) == 0 && !S_ISDIR(st.st_mode)) wanted &= FILE_RIGHTS;
    struct ll_path_beneath_attr rule = {.allowed_access = wanted & handled, .parent_fd = fd};
    int rc = (int)syscall(__NR_landlock_add_rule, ruleset, LL_RULE_PATH_BENEATH, &rule, 0);
    int saved = errno;
    close(fd);
    if (rc != 0) {
        fprintf(stderr, "ffleet-sandbox: landlock rule for %s: %s\n", path, strerror(saved));
        return -1;
    }
    return 0;
}

struct paths {
    const char **items;
    int count;
};

static void push(struct paths *p, const char *item) {
    p->items = realloc(p->items, sizeof(char *) * (size_t)(p->count + 1));
    if (!p->items) { perror("ffleet-sandbox"); exit(EXIT_SANDBOX); }
    p->items[p->count++] = item;
}

/* Returns the ABI applied (0: Landlock unavailable, nothing applied), or -1 on a hard error. */
static int apply_landlock(const char *program, struct paths *reads, struct paths *libs, struct paths *writes,
                          struct paths *devices) {
    int abi = landlock_abi();
    if (abi <= 0) return 0;
    struct ll_ruleset_attr attr = {.handled_access_fs = fs_rights_for(abi)};
    size_t attr_size = sizeof(uint64_t);
    if (abi >= 4) {
        attr.handled_access_net = NET_BIND_TCP | NET_CONNECT_TCP; /* no rule: no TCP at all */
        attr_size = 2 * sizeof(uint64_t);
    }
    if (abi >= 6) {
        attr.scoped = SCOPE_ABSTRACT_UNIX | SCOPE_SIGNAL; /* no signals or abstract sockets outside */
        attr_size = sizeof(attr);
    }
    int ruleset = (int)syscall(__NR_landlock_create_ruleset, &attr, attr_size, 0);
    if (ruleset < 0) {
        fprintf(stderr, "ffleet-sandbox: landlock_create_ruleset: %s\n", strerror(errno));
        return -1;
    }
    uint64_t handled = attr.handled_access_fs;
    uint64_t read = FS_READ_FILE | FS_READ_DIR;
    uint64_t write = read | FS_WRITE_FILE | FS_TRUNCATE | FS_MAKE_REG | FS_MAKE_DIR | FS_REMOVE_FILE | FS_REMOVE_DIR;
    for (int i = 0; SYSTEM_READ[i]; i++)
        if (add_path_rule(ruleset, SYSTEM_READ[i], read, handled, 0)) return -1;
    /* writing into /dev/null (a "-f null" or PCM sink) loses everything: harmless */
    if (add_path_rule(ruleset, "/dev/null", FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE, handled, 0)) return -1;
    for (int i = 0; SYSTEM_EXEC[i]; i++)
        if (add_path_rule(ruleset, SYSTEM_EXEC[i], FS_EXECUTE | FS_READ_FILE, handled, 0)) return -1;
    if (add_path_rule(ruleset, program, FS_EXECUTE | FS_READ_FILE, handled, 1)) return -1;
    for (int i = 0; i < reads->count; i++)
        if (add_path_rule(ruleset, reads->items[i], read, handled, 1)) return -1;
    for (int i = 0; i < libs->count; i++) /* an FFmpeg installed outside /usr: its libraries, or an interpreter */
        if (add_path_rule(ruleset, libs->items[i], read | FS_EXECUTE, handled, 0)) return -1;
    for (int i = 0; i < writes->count; i++)
        if (add_path_rule(ruleset, writes->items[i], write, handled, 1)) return -1;
    for (int i = 0; i < devices->count; i++) /* GPU nodes: read, write and ioctl, nothing else */
        if (add_path_rule(ruleset, devices->items[i], FS_READ_FILE | FS_WRITE_FILE | FS_IOCTL_DEV, handled, 0)) return -1;
    if (syscall(__NR_landlock_restrict_self, ruleset, 0) != 0) {
        fprintf(stderr, "ffleet-sandbox: landlock_restrict_self: %s\n", strerror(errno));
        return -1;
    }
    close(ruleset);
    return abi;
}

#if defined(__x86_64__)
#define SANDBOX_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define SANDBOX_AUDIT_ARCH AUDIT_ARCH_AARCH64
#else
#error "ffleet-sandbox knows the system calls of x86_64 and aarch64 only"
#endif

#define LOAD_NR BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr))
#define RET(v) BPF_STMT(BPF_RET | BPF_K, (v))
#define DENY(nr, err) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (nr), 0, 1), RET(SECCOMP_RET_ERRNO | (err))

static int apply_seccomp(void) {
    struct sock_filter filter[] = {
        /* another architecture's calling convention (e.g. int 0x80 on x86_64) would bypass the table */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SANDBOX_AUDIT_ARCH, 1, 0),
        RET(SECCOMP_RET_KILL_PROCESS),
        LOAD_NR,
#if defined(__x86_64__)
        BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000, 0, 1), /* the x32 ABI: same numbers + this bit */
        RET(SECCOMP_RET_ERRNO | EPERM),
        DENY(__NR_fork, EPERM),
        DENY(__NR_vfork, EPERM),
#endif
        /* no network and no unix sockets: EACCES, which FFmpeg reports as "Permission denied" */
        DENY(__NR_socket, EACCES),
        DENY(__NR_socketpair, EACCES),
        /* clone3 passes its flags in memory seccomp cannot read: ENOSYS makes libc fall back to clone */
        DENY(__NR_clone3, ENOSYS),
        DENY(__NR_ptrace, EPERM),
        DENY(__NR_process_vm_readv, EPERM),
        DENY(__NR_process_vm_writev, EPERM),
        DENY(__NR_bpf, EPERM),
        DENY(__NR_userfaultfd, EPERM),
        DENY(__NR_perf_event_open, EPERM),
        DENY(__NR_io_uring_setup, EPERM), /* io_uring requests are not seen by seccomp */
        DENY(__NR_keyctl, EPERM),
        DENY(__NR_add_key, EPERM),
        DENY(__NR_request_key, EPERM),
        DENY(__NR_unshare, EPERM),
        DENY(__NR_setns, EPERM),
        DENY(__NR_mount, EPERM),
        DENY(__NR_umount2, EPERM),
        DENY(__NR_pivot_root, EPERM),
        DENY(__NR_chroot, EPERM),
        /* clone: threads (CLONE_THREAD) only, no new processes */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])), /* low 32 bits (little endian) */
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, 0x00010000 /* CLONE_THREAD */, 1, 0),
        RET(SECCOMP_RET_ERRNO | EPERM),
        RET(SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = (unsigned short)(sizeof(filter) / sizeof(filter[0])), .filter = filter};
    if (syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0) {
        fprintf(stderr, "ffleet-sandbox: seccomp: %s\n", strerror(errno));
        return -1;
    }
    return 0;
}

static int set_limit(int resource, rlim_t value, const char *name) {
    struct rlimit lim = {value, value};
    struct rlimit old;
    if (getrlimit(resource, &old) == 0 && old.rlim_max != RLIM_INFINITY && old.rlim_max < value)
        lim.rlim_cur = lim.rlim_max = old.rlim_max; /* never raise a limit someone else lowered */
    if (setrlimit(resource, &lim) != 0) {
        fprintf(stderr, "ffleet-sandbox: setrlimit %s: %s\n", name, strerror(errno));
        return -1;
    }
    return 0;
}

/* The self-test behind --probe: apply everything to this process, then try what must now fail. */
static int probe(void) {
    struct paths none = {0};
    int abi = landlock_abi();
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return EXIT_SANDBOX;
    int applied = apply_landlock("/proc/self/exe", &none, &none, &none, &none);
    int seccomp_ok = apply_seccomp() == 0;
    int sock = socket(AF_UNIX, SOCK_STREAM, 0);
    int socket_blocked = sock < 0 && errno == EACCES;
    int fd = open("/etc/passwd", O_RDONLY | O_CLOEXEC);
    int files_blocked = fd < 0 && errno == EACCES;
    pid_t child = (pid_t)syscall(__NR_clone, SIGCHLD, 0, 0, 0, 0);
    if (child == 0) _exit(0);
    int fork_blocked = child < 0 && errno == EPERM;
    printf("{\"landlock_abi\": %d, \"landlock_applied\": %s, \"seccomp\": %s, \"sockets_blocked\": %s, "
           "\"files_blocked\": %s, \"fork_blocked\": %s}\n",
           abi, applied > 0 ? "true" : "false", seccomp_ok ? "true" : "false", socket_blocked ? "true" : "false",
           files_blocked ? "true" : "false", fork_blocked ? "true" : "false");
    return 0;
}

static void usage(void) {
    fprintf(stderr, "usage: ffleet-sandbox [--ppid PID] [--fsize BYTES] [--nproc N] [--require-landlock] "
                    "[--read PATH]... [--lib PATH]... [--write DIR]... [--device PATH]... -- PROGRAM ARG...\n"
                    "       ffleet-sandbox --probe\n");
    exit(EXIT_SANDBOX);
}

static unsigned long long number(const char *text, const char *flag) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || *end || !*text) {
        fprintf(stderr, "ffleet-sandbox: %s needs a number, got %s\n", flag, text);
        exit(EXIT_SANDBOX);
    }
    return v;
}

int main(int argc, char **argv) {
    struct paths reads = {0}, libs = {0}, writes = {0}, devices = {0};
    long long ppid = -1;
    unsigned long long fsize = 0, nproc = 0;
    int require_landlock = 0, i = 1;
    if (argc == 2 && strcmp(argv[1], "--probe") == 0) return probe();
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) { i++; break; }
        if (strcmp(a, "--require-landlock") == 0) { require_landlock = 1; continue; }
        if (i + 1 >= argc) usage();
        if (strcmp(a, "--read") == 0) push(&reads, argv[++i]);
        else if (strcmp(a, "--write") == 0) push(&writes, argv[++i]);
        else if (strcmp(a, "--lib") == 0) push(&libs, argv[++i]);
        else if (strcmp(a, "--device") == 0) push(&devices, argv[++i]);
        else if (strcmp(a, "--ppid") == 0) ppid = (long long)number(argv[++i], a);
        else if (strcmp(a, "--fsize") == 0) fsize = number(argv[++i], a);
        else if (strcmp(a, "--nproc") == 0) nproc = number(argv[++i], a);
        else usage();
    }
    if (i >= argc) usage();
    const char *program = argv[i];

    /* die with ffleet: the flag survives exec; if ffleet died before it was set, stop now */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) { perror("ffleet-sandbox: pdeathsig"); return EXIT_SANDBOX; }
    if (ppid > 0 && getppid() != (pid_t)ppid) return EXIT_SANDBOX;
    if (set_limit(RLIMIT_CORE, 0, "core")) return EXIT_SANDBOX;
    if (fsize && set_limit(RLIMIT_FSIZE, (rlim_t)fsize, "fsize")) return EXIT_SANDBOX;
    /* per user, and not enforced for root: the seccomp rule on fork is what holds for root */
    if (nproc && set_limit(RLIMIT_NPROC, (rlim_t)nproc, "nproc")) return EXIT_SANDBOX;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) { perror("ffleet-sandbox: no_new_privs"); return EXIT_SANDBOX; }
    int abi = apply_landlock(program, &reads, &libs, &writes, &devices);
    if (abi < 0) return EXIT_SANDBOX;
    if (abi == 0 && require_landlock) {
        fprintf(stderr, "ffleet-sandbox: this kernel has no Landlock, and the sandbox is required\n");
        return EXIT_SANDBOX;
    }
    if (apply_seccomp()) return EXIT_SANDBOX;
    execve(program, &argv[i], environ);
    fprintf(stderr, "ffleet-sandbox: cannot execute %s: %s\n", program, strerror(errno));
    return EXIT_SANDBOX;
}
