/* The physical floor for bench/payload.exs: pipe I/O and nothing else.
 *
 *   raw_pipe_echo               echo: read a 4-byte big-endian length and that
 *                               many bytes from stdin, write both back to
 *                               stdout with one writev; repeat until EOF.
 *   raw_pipe_echo drive SIZE N  driver: start `raw_pipe_echo` as a child on a
 *                               pipe pair and time N round trips of SIZE bytes,
 *                               outside the BEAM; prints one line of
 *                               nanoseconds per round trip.
 *
 * Reads go straight into a buffer of the frame's size (one copy out of the
 * kernel each way), like a reader that knows the length first.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int read_full(int fd, uint8_t *buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, buf + got, n - got);
    if (r == 0) return got == 0 ? 0 : -1;
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    got += (size_t)r;
  }
  return 1;
}

static int writev_full(int fd, struct iovec *iov, int cnt) {
  while (cnt > 0) {
    ssize_t w = writev(fd, iov, cnt);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    while (cnt > 0 && (size_t)w >= iov->iov_len) {
      w -= (ssize_t)iov->iov_len;
      iov++;
      cnt--;
    }
    if (cnt > 0) {
      iov->iov_base = (uint8_t *)iov->iov_base + w;
      iov->iov_len -= (size_t)w;
    }
  }
  return 0;
}

static uint8_t *grow(uint8_t *buf, size_t *cap, size_t need) {
  if (need <= *cap) return buf;
  free(buf);
  *cap = need;
  buf = malloc(need ? need : 1);
  if (!buf) exit(3);
  return buf;
}

static int echo(void) {
  uint8_t head[4], *buf = NULL;
  size_t cap = 0;
  for (;;) {
    int r = read_full(0, head, 4);
    if (r == 0) return 0;
    if (r < 0) return 1;
    size_t len = ((size_t)head[0] << 24) | ((size_t)head[1] << 16) | ((size_t)head[2] << 8) | head[3];
    buf = grow(buf, &cap, len);
    if (len && read_full(0, buf, len) != 1) return 1;
    struct iovec iov[2] = {{head, 4}, {buf, len}};
    if (writev_full(1, iov, 2) < 0) return 1;
  }
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int drive(const char *self, size_t size, int n) {
  int to_child[2], from_child[2];
  if (pipe(to_child) || pipe(from_child)) return 2;
  pid_t pid = fork();
  if (pid == 0) {
    dup2(to_child[0], 0);
    dup2(from_child[1], 1);
    close(to_child[0]); close(to_child[1]); close(from_child[0]); close(from_child[1]);
    execl(self, self, (char *)NULL);
    _exit(127);
  }
  close(to_child[0]);
  close(from_child[1]);
  uint8_t head[4] = {(uint8_t)(size >> 24), (uint8_t)(size >> 16), (uint8_t)(size >> 8), (uint8_t)size};
  uint8_t *out = malloc(size ? size : 1), *in = malloc(size ? size : 1), back[4];
  memset(out, 0xA5, size);
  for (int i = 0; i < n; i++) {
    uint64_t t0 = now_ns();
    struct iovec iov[2] = {{head, 4}, {out, size}};
    /* The child echoes as it reads only after the whole frame arrived, so
     * a blocking writev of the whole frame cannot deadlock. */
    if (writev_full(to_child[1], iov, 2) < 0) return 2;
    if (read_full(from_child[0], back, 4) != 1) return 2;
    if (size && read_full(from_child[0], in, size) != 1) return 2;
    printf("%s%llu", i ? " " : "", (unsigned long long)(now_ns() - t0));
  }
  printf("\n");
  close(to_child[1]);
  waitpid(pid, NULL, 0);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 4 && strcmp(argv[1], "drive") == 0)
    return drive(argv[0], strtoull(argv[2], NULL, 10), atoi(argv[3]));
  return echo();
}
