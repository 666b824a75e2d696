// The CUDA target's Backend (program.h): program memory is device memory of
// the current CUDA device (the one the program's Context selected).
//
//   alloc        cudaMalloc + cudaMemset 0; on failure throws mtc::rt::Error
//                naming the buffer, the size, cudaGetErrorString and the
//                device's free/total memory
//   release      cudaFree (errors ignored: it runs while unwinding)
//   upload       cudaMemcpy host -> device     } each ordered after all work
//   download     cudaMemcpy device -> host     } on the device (generated code
//   zero         cudaMemset 0                  } runs on the Context's
//                                                non-blocking stream, which the
//                                                legacy default stream does not
//                                                wait for) and finished before
//                                                it returns
//   synchronize  cudaDeviceSynchronize
//   memory_info  cudaMemGetInfo
//   comm_factory nccl_comm_factory() (comm.h: NCCL on device LOCAL_RANK), the
//                program's GridComm of a multi-rank run (grid_comm.h:
//                ProgramComms); null when the runtime was built without NCCL
// Every CUDA error other than an allocation failure throws
// mtc::rt::cuda::CudaError (cuda_check.h).
#pragma once

#include "mtc/rt/program.h"

namespace mtc::rt::cuda {

const Backend& cuda_backend();

}  // namespace mtc::rt::cuda
