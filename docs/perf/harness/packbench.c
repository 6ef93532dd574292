// Times packing a 2048 × 2048 row-major W into 512 × 512 blocks of 64-wide panels: mode 0 panel order (memcpy),
// 1 row order (memcpy), 2 row order with AVX-512 copies and a prefetch PD rows ahead. gcc -O2 -mavx512f; ./packbench MODE [PD]
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <immintrin.h>
#define K 2048
#define N 2048
#define KC 512
#define NC 512
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(int argc,char**argv){
  int mode=atoi(argv[1]); int pd=argc>2?atoi(argv[2]):8;
  float*w=aligned_alloc(64,(size_t)K*N*4); float*dst=aligned_alloc(64,KC*NC*4);
  for(size_t i=0;i<(size_t)K*N;i++)w[i]=i;
  double best=1e9;
  for(int rep=0;rep<20;rep++){
    double t=now();
    for(int jc=0;jc<N;jc+=NC)for(int p0=0;p0<K;p0+=KC){
      if(mode==0){ for(int q=0;q<NC/64;q++)for(int p=0;p<KC;p++)memcpy(dst+q*64*KC+p*64,w+(size_t)(p0+p)*N+jc+q*64,256);}
      else if(mode==1){ for(int p=0;p<KC;p++)for(int q=0;q<NC/64;q++)memcpy(dst+q*64*KC+p*64,w+(size_t)(p0+p)*N+jc+q*64,256);}
      else { for(int p=0;p<KC;p++){ const float*src=w+(size_t)(p0+p+pd)*N+jc; for(int l=0;l<NC/16;l++)_mm_prefetch((const char*)(src+l*16),_MM_HINT_T0);
          for(int q=0;q<NC/64;q++){ const float*s=w+(size_t)(p0+p)*N+jc+q*64; float*d=dst+q*64*KC+p*64;
            for(int v=0;v<4;v++)_mm512_store_ps(d+16*v,_mm512_loadu_ps(s+16*v));}}}
    }
    t=now()-t; if(t<best)best=t;
    // touch to keep w in cache-like state as in gemm (read by nothing else)
  }
  printf("mode %d pd %d: %.0f us (%.1f GB/s read)\n",mode,pd,best*1e6,(double)K*N*4/best/1e9);
}
