// Two cores read-modify-write their share of a 784-row W each iteration (spin barrier
// between iterations): by rows, by column halves of each row, or by column halves with
// a gap of `gap` floats between them (row stride 128 + gap).
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
enum { ROWS = 784, ITERS = 20000 };
static float *w; static int mode, gap, stride; static atomic_int bar[2]; static double secs[2];
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static void work(int t, int threads) {
  if (mode == 0) { // rows
    int r0 = threads == 1 ? 0 : t * ROWS / 2, r1 = threads == 1 ? ROWS : (t + 1) * ROWS / 2;
    for (int i = r0; i < r1; i++) { float *p = w + (size_t)i * stride; for (int j = 0; j < 128; j++) p[j] = p[j] * 0.999f + 1e-6f; }
  } else { // column halves
    int c0 = threads == 1 ? 0 : t * 64, c1 = threads == 1 ? 128 : (t + 1) * 64;
    for (int i = 0; i < ROWS; i++) { float *p = w + (size_t)i * stride; float *q = p + (c0 >= 64 ? gap : 0); for (int j = c0; j < c1; j++) q[j] = q[j] * 0.999f + 1e-6f; }
  }
}
static int threads_g;
static void *run(void *arg) {
  int t = (int)(long)arg; cpu_set_t s; CPU_ZERO(&s); CPU_SET(t, &s); sched_setaffinity(0, sizeof s, &s);
  double best = 1e9;
  for (int rep = 0; rep < 10; rep++) {
    double st = now();
    for (int it = 0; it < ITERS / 10; it++) {
      work(t, threads_g);
      if (threads_g == 2) { long gi = (long)rep * (ITERS / 10) + it; atomic_fetch_add(&bar[0], 1); while (atomic_load(&bar[0]) < 2 * (gi + 1)) ; }
    }
    double e = (now() - st) / (ITERS / 10); if (e < best) best = e;
  }
  secs[t] = best; return 0;
}
int main(int argc, char **argv) {
  mode = atoi(argv[1]); gap = atoi(argv[2]); threads_g = atoi(argv[3]); stride = 128 + gap;
  w = aligned_alloc(4096, (size_t)ROWS * stride * 4 + 4096); for (size_t i = 0; i < (size_t)ROWS * stride; i++) w[i] = 0.5f;
  pthread_t th[2]; for (long t = 0; t < threads_g; t++) pthread_create(&th[t], 0, run, (void *)t);
  for (int t = 0; t < threads_g; t++) pthread_join(th[t], 0);
  printf("%s gap %d floats, %d thread(s): %.2f µs per pass\n", mode ? "column halves" : "rows", gap, threads_g, secs[0] * 1e6);
  return 0;
}
