/* eessi-pipeline: a single-process stand-in for the parts of HPCC's hpcc.h that
 * HPCC's STREAM/stream.c uses, so that STREAM builds and runs without MPI or the rest
 * of HPCC.  Written for this project (not taken from HPCC); one "rank" only. */
#ifndef EESSI_STREAM_HPCC_SHIM_H
#define EESSI_STREAM_HPCC_SHIM_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

typedef int MPI_Comm;
typedef int MPI_Datatype;
typedef int MPI_Op;
#define MPI_COMM_WORLD 0
#define MPI_DOUBLE 0
#define MPI_MIN 0

typedef struct {
  char outFname[256];
  long StreamVectorSize;
  int StreamThreads;
  long MemBytes;
} HPCC_Params;

#define HPCC_XMALLOC(t, s) ((t *)malloc(sizeof(t) * (size_t)(s)))
#define HPCC_free(p) free(p)

static inline double MPI_Wtime(void) {
  struct timeval tv;
  gettimeofday(&tv, NULL);
  return (double)tv.tv_sec + 1.0e-6 * (double)tv.tv_usec;
}
static inline int MPI_Comm_size(MPI_Comm c, int *n) { (void)c; *n = 1; return 0; }
static inline int MPI_Comm_rank(MPI_Comm c, int *r) { (void)c; *r = 0; return 0; }
static inline int MPI_Barrier(MPI_Comm c) { (void)c; return 0; }
static inline int MPI_Abort(MPI_Comm c, int code) { (void)c; exit(code); }
static inline int MPI_Allreduce(const void *s, void *r, int n, MPI_Datatype t, MPI_Op o, MPI_Comm c) {
  (void)t; (void)o; (void)c; memcpy(r, s, sizeof(double) * (size_t)n); return 0;
}
static inline int MPI_Gather(const void *s, int sn, MPI_Datatype st, void *r, int rn, MPI_Datatype rt,
                             int root, MPI_Comm c) {
  (void)st; (void)rn; (void)rt; (void)root; (void)c; memcpy(r, s, sizeof(double) * (size_t)sn); return 0;
}

/* Elements per vector: a quarter of MemBytes spread over `vectors` vectors. */
static inline long HPCC_LocalVectorSize(HPCC_Params *p, int vectors, size_t size, int pow2) {
  (void)pow2;
  return (long)(p->MemBytes / 4 / (long)vectors / (long)size);
}

#define Mmin(a, b) ((a) < (b) ? (a) : (b))
#define Mmax(a, b) ((a) > (b) ? (a) : (b))

int HPCC_Stream(HPCC_Params *params, int doIO, MPI_Comm comm, int world_rank, double *copyGBs,
                double *scaleGBs, double *addGBs, double *triadGBs, int *failure);

#endif
