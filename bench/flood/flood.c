// A UDP packet flood for the flow benchmark: 16-byte datagrams to one address, sendmmsg in batches of 64, for a
// fixed time; prints how many were sent. Bounded by time; run only inside a lab pod namespace.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

int main(int argc, char **argv) {
  if (argc != 4) { fprintf(stderr, "usage: flood IP PORT SECONDS\n"); return 2; }
  struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
  if (inet_pton(AF_INET, argv[1], &dst.sin_addr) != 1) { fprintf(stderr, "bad address\n"); return 2; }
  double seconds = atof(argv[3]);
  if (seconds <= 0 || seconds > 60) { fprintf(stderr, "seconds must be in (0, 60]\n"); return 2; }
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  if (fd < 0) { perror("socket"); return 1; }
  enum { BATCH = 64 };
  char payload[16] = "weft-flow-bench";
  struct iovec iov = {.iov_base = payload, .iov_len = sizeof payload};
  struct mmsghdr msgs[BATCH];
  memset(msgs, 0, sizeof msgs);
  for (int i = 0; i < BATCH; i++) {
    msgs[i].msg_hdr.msg_name = &dst;
    msgs[i].msg_hdr.msg_namelen = sizeof dst;
    msgs[i].msg_hdr.msg_iov = &iov;
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  struct timespec start, now;
  clock_gettime(CLOCK_MONOTONIC, &start);
  long long sent = 0;
  for (;;) {
    int n = sendmmsg(fd, msgs, BATCH, 0);
    if (n > 0) sent += n;
    if ((sent & 1023) < BATCH) {
      clock_gettime(CLOCK_MONOTONIC, &now);
      if ((now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) / 1e9 >= seconds) break;
    }
  }
  printf("%lld\n", sent);
  return 0;
}
