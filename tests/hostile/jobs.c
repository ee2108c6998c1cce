/* Hostile job behaviours for tests/hostile.rs and tests/sandbox.rs: `jobs MODE [ARG]`.
 * Each mode is one row (or a variant) of HOSTILE.md; what it prints is checked by the test.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *ename(int e) {
  const char *n = strerrorname_np(e);
  return n ? n : "?";
}

static void *spin_thread(void *a) {
  (void)a;
  for (volatile unsigned long i = 0;; i++) {
  }
  return NULL;
}
static void *sleep_thread(void *a) {
  (void)a;
  for (;;) pause();
  return NULL;
}

__attribute__((noreturn)) static int spin(void) {
  for (volatile unsigned long i = 0;; i++) {
  }
}

static int threads(int n) {
  pthread_t t;
  for (int i = 1; i < n; i++) pthread_create(&t, NULL, spin_thread, NULL);
  return spin();
}

/* N threads spin until the process has used MS ms of CPU, then it prints its own CPU time. */
static long long ms_target;
static long long process_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}
static void *cpu_thread(void *a) {
  (void)a;
  while (process_ns() < ms_target * 1000000LL) {
  }
  return NULL;
}
static int cputhreads(int n, long ms) {
  ms_target = ms;
  pthread_t t[64];
  if (n > 64) n = 64;
  for (int i = 0; i < n; i++) pthread_create(&t[i], NULL, cpu_thread, NULL);
  for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
  printf("process_cpu_ns %lld\n", process_ns());
  return 0;
}

/* Classic fork bomb. */
__attribute__((noreturn)) static int forkbomb(void) {
  for (;;) fork();
}

/* Fork children that wait forever until fork fails; report how many. */
static int forkcount(void) {
  int n = 0;
  for (;;) {
    pid_t p = fork();
    if (p == 0) {
      for (;;) pause();
    }
    if (p < 0) {
      printf("forks %d errno=%s\n", n, ename(errno));
      return 1;
    }
    n++;
  }
}

static int threadbomb(void) {
  int n = 0;
  pthread_attr_t at;
  pthread_attr_init(&at);
  pthread_attr_setstacksize(&at, 64 * 1024);
  for (;;) {
    pthread_t t;
    int e = pthread_create(&t, &at, sleep_thread, NULL);
    if (e) {
      printf("threads %d errno=%s\n", n, ename(e));
      return 1;
    }
    n++;
  }
}

/* Children that exit at once and are never waited for, then more until fork fails. */
static int zombies(void) {
  int n = 0;
  for (int i = 0; i < 10000; i++) {
    pid_t p = fork();
    if (p == 0) _exit(0);
    if (p < 0) break;
    n++;
  }
  printf("zombies %d\n", n);
  return 0;
}

/* Double fork + setsid; the daemon ignores every catchable signal and sleeps forever. */
static int daemonize(int keep_stdout) {
  pid_t p = fork();
  if (p == 0) {
    setsid();
    if (fork() == 0) {
      for (int s = 1; s < 32; s++) signal(s, SIG_IGN);
      if (!keep_stdout) {
        close(0);
        close(1);
        close(2);
      }
      for (;;) pause();
    }
    _exit(0);
  }
  waitpid(p, NULL, 0);
  printf("main exits\n");
  return 0;
}

static void noop(int s) { (void)s; }
static int sigspin(void) {
  int sigs[] = {SIGTERM, SIGXCPU, SIGINT, SIGHUP, SIGALRM, SIGUSR1, SIGUSR2, SIGQUIT, SIGTSTP};
  for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) signal(sigs[i], noop);
  return spin();
}

/* kill(-1), then every pid in 1..32768 but our own. */
static int killall(void) {
  int r = kill(-1, SIGKILL);
  printf("kill(-1) = %d errno=%s\n", r, r < 0 ? ename(errno) : "0");
  int hits = 0;
  for (int pid = 1; pid <= 32768; pid++) {
    if (pid == getpid()) continue;
    if (kill(pid, SIGKILL) == 0) hits++;
    kill(-pid, SIGKILL);
  }
  printf("killed %d others\n", hits);
  return 0;
}

static int hog(long mib) {
  for (long i = 0; i < mib; i++) {
    char *p = malloc(1 << 20);
    if (!p) {
      printf("malloc failed at %ld MiB\n", i);
      return 1;
    }
    memset(p, (int)i, 1 << 20);
  }
  printf("allocated %ld MiB\n", mib);
  return 0;
}

/* Write files of 4 MiB (under the file size limit) into DIR until a write fails. */
static int fill(const char *dir) {
  static char buf[1 << 20];
  memset(buf, 'x', sizeof buf);
  long long total = 0;
  for (int f = 0;; f++) {
    char path[256];
    snprintf(path, sizeof path, "%s/fill%d", dir, f);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
      printf("wrote %lld errno=%s\n", total, ename(errno));
      return 1;
    }
    for (int i = 0; i < 4; i++) {
      ssize_t n = write(fd, buf, sizeof buf);
      if (n < 0) {
        printf("wrote %lld errno=%s\n", total, ename(errno));
        return 1;
      }
      total += n;
      if (n < (ssize_t)sizeof buf) break;
    }
    close(fd);
  }
}

static long vmlck(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long kb = -1;
  while (f && fgets(line, sizeof line, f))
    if (sscanf(line, "VmLck: %ld kB", &kb) == 1) break;
  return kb;
}

static int lockmem(void) {
  int r = mlockall(MCL_CURRENT | MCL_FUTURE);
  printf("mlockall = %d errno=%s\n", r, r ? ename(errno) : "0");
  size_t n = 64 << 20;
  char *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  memset(p, 1, n);
  r = mlock(p, n);
  printf("mlock = %d errno=%s\n", r, r ? ename(errno) : "0");
  char *q = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_LOCKED, -1, 0);
  printf("map_locked = %s\n", q == MAP_FAILED ? ename(errno) : "mapped");
  printf("VmLck %ld\n", vmlck());
  return 0;
}

#pragma GCC diagnostic ignored "-Winfinite-recursion"
static int recurse(int d) {
  volatile char pad[256];
  pad[0] = (char)d;
  return recurse(d + 1) + pad[0];
}

/* One file until it fails (EFBIG past RLIMIT_FSIZE, SIGXFSZ ignored), then many until ENOSPC. */
static int fillwd(void) {
  static char buf[1 << 16];
  signal(SIGXFSZ, SIG_IGN);
  int fd = open("big", O_WRONLY | O_CREAT | O_TRUNC, 0644);
  long long big = 0;
  ssize_t n;
  while ((n = write(fd, buf, sizeof buf)) > 0) big += n;
  printf("big %lld errno=%s\n", big, ename(errno));
  close(fd);
  fill(".");
  return 1;
}

static int inodes(void) {
  long n = 0;
  for (;;) {
    char name[32];
    snprintf(name, sizeof name, "f%ld", n);
    int fd = open(name, O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (fd < 0) {
      printf("files %ld errno=%s\n", n, ename(errno));
      return 1;
    }
    close(fd);
    if (++n >= 10000000) return 0;
  }
}

static int fds(void) {
  int n = 0;
  for (;;) {
    if (open("/dev/null", O_RDONLY) < 0) {
      printf("fds %d errno=%s\n", n, ename(errno));
      return 0;
    }
    n++;
  }
}

static int sysv(void) {
  int a = shmget(IPC_PRIVATE, 1 << 20, IPC_CREAT | 0666);
  int b = shmget(0x1234, 1 << 20, IPC_CREAT | 0666);
  if (a >= 0) memset(shmat(a, NULL, 0), 1, 1 << 20);
  int m = msgget(0x4321, IPC_CREAT | 0666);
  struct {
    long type;
    char text[16];
  } msg = {1, "corral"};
  int ms = m >= 0 ? msgsnd(m, &msg, sizeof msg.text, IPC_NOWAIT) : -1;
  int s = semget(0x5678, 4, IPC_CREAT | 0666);
  int px = shm_open("/corral-posix", O_CREAT | O_RDWR, 0666);
  if (px >= 0 && ftruncate(px, 4096) < 0) px = -1;
  printf("shm %d %d msg %d sent %d sem %d posix %d\n", a, b, m, ms, s, px);
  return 0;
}

static void *flood_err(void *a) {
  (void)a;
  for (;;) fputc('e', stderr);
  return NULL;
}
__attribute__((noreturn)) static int flood(int both) {
  if (both) {
    pthread_t t;
    pthread_create(&t, NULL, flood_err, NULL);
  }
  for (;;) putchar('x');
}

static int weird(void) {
  static const char head[] = "\x1b[2J\x1b[31mred\x1b[0m \0nul \xff\xfe\xc3( invalid \xed\xa0\x80 end\n";
  fwrite(head, 1, sizeof head - 1, stdout);
  fflush(stdout);
  static char line[1 << 20];
  memset(line, 'y', sizeof line);
  for (int i = 0; i < 100; i++) fwrite(line, 1, sizeof line, stdout);
  putchar('\n');
  return 0;
}

static int closeout(void) {
  printf("before\n");
  fflush(stdout);
  close(1);
  struct timespec t = {0, 200 * 1000 * 1000};
  nanosleep(&t, NULL);
  ssize_t r = write(1, "after\n", 6);
  fprintf(stderr, "write after close = %zd errno=%s\n", r, r < 0 ? ename(errno) : "0");
  int p[2];
  if (pipe(p) == 0) {
    close(p[0]);
    signal(SIGPIPE, SIG_DFL);
    r = write(p[1], "x", 1); /* SIGPIPE: the job dies of it */
  }
  return 0;
}

/* chmod 4755 on our own file, exec it again: the child reports its identity. */
static int suid(const char *self) {
  int r = chmod(self, 04755);
  struct stat st;
  stat(self, &st);
  printf("chmod = %d mode %o\n", r, st.st_mode & 07777);
  fflush(stdout);
  execl(self, self, "whoami", (char *)NULL);
  printf("exec failed errno=%s\n", ename(errno));
  return 1;
}
static int whoami(void) {
  printf("euid %d\n", (int)geteuid());
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  while (f && fgets(line, sizeof line, f))
    if (!strncmp(line, "Cap", 3) || !strncmp(line, "Uid", 3) || !strncmp(line, "NoNewPrivs", 10))
      fputs(line, stdout);
  return 0;
}

/* Fork up to the process limit, every process touching 16 MiB, then spin. */
static int bombhog(void) {
  for (int i = 0; i < 200; i++) {
    pid_t p = fork();
    if (p < 0) break;
    if (p == 0) break;
  }
  hog(16);
  return spin();
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOFBF, 1 << 16);
  const char *m = argc > 1 ? argv[1] : "";
  const char *a = argc > 2 ? argv[2] : "";
  int r = 2;
  if (!strcmp(m, "spin")) r = spin();
  else if (!strcmp(m, "sleep")) r = (sleep(1000), 0);
  else if (!strcmp(m, "threads")) r = threads(atoi(a));
  else if (!strcmp(m, "cputhreads")) r = cputhreads(atoi(a), argc > 3 ? atol(argv[3]) : 800);
  else if (!strcmp(m, "forkbomb")) r = forkbomb();
  else if (!strcmp(m, "forkcount")) r = forkcount();
  else if (!strcmp(m, "threadbomb")) r = threadbomb();
  else if (!strcmp(m, "zombies")) r = zombies();
  else if (!strcmp(m, "daemon")) r = daemonize(0);
  else if (!strcmp(m, "daemon-stdout")) r = daemonize(1);
  else if (!strcmp(m, "sigspin")) r = sigspin();
  else if (!strcmp(m, "killall")) r = killall();
  else if (!strcmp(m, "hog")) r = hog(atol(a));
  else if (!strcmp(m, "fill")) r = fill(a);
  else if (!strcmp(m, "mlock")) r = lockmem();
  else if (!strcmp(m, "recurse")) r = recurse(0);
  else if (!strcmp(m, "fillwd")) r = fillwd();
  else if (!strcmp(m, "inodes")) r = inodes();
  else if (!strcmp(m, "fds")) r = fds();
  else if (!strcmp(m, "sysv")) r = sysv();
  else if (!strcmp(m, "flood")) r = flood(0);
  else if (!strcmp(m, "flood2")) r = flood(1);
  else if (!strcmp(m, "weird")) r = weird();
  else if (!strcmp(m, "closeout")) r = closeout();
  else if (!strcmp(m, "suid")) r = suid(argv[0]);
  else if (!strcmp(m, "whoami")) r = whoami();
  else if (!strcmp(m, "bombhog")) r = bombhog();
  else fprintf(stderr, "unknown mode %s\n", m);
  fflush(stdout);
  return r;
}
