/* eessi-pipeline: run HPCC's STREAM kernel as a stand-alone program (written for this project).
 * usage: stream [MiB of memory, default 512]; prints STREAM's table, then "Triad: <GB/s>". */
#include "hpcc.h"

int main(int argc, char **argv) {
  HPCC_Params params;
  double copy = 0.0, scale = 0.0, add = 0.0, triad = 0.0;
  int failure = 0;
  long mib = argc > 1 ? atol(argv[1]) : 512;
  memset(&params, 0, sizeof(params));
  strcpy(params.outFname, "/dev/stdout");
  params.MemBytes = (mib > 0 ? mib : 512) * 1024L * 1024L;
  if (HPCC_Stream(&params, 1, MPI_COMM_WORLD, 0, &copy, &scale, &add, &triad, &failure) != 0 || failure) {
    fprintf(stderr, "STREAM failed (validation or allocation)\n");
    return 1;
  }
  fflush(stdout);
  printf("Copy: %.4f GB/s\nScale: %.4f GB/s\nAdd: %.4f GB/s\nTriad: %.4f GB/s\n", copy, scale, add, triad);
  return 0;
}
