// The launch environment: which rank this process is and how to meet the
// others, read from the variables torchrun and Slurm users already know.
//
//   RANK, WORLD_SIZE            this process's global rank, number of ranks
//   LOCAL_RANK, LOCAL_WORLD_SIZE  rank and number of ranks on this node
//                               (LOCAL_RANK picks the GPU)
//   MASTER_ADDR, MASTER_PORT    where rank 0 serves the rendezvous store
//   MTC_RDZV_DIR                a directory to meet through instead (file
//                               store; mtc-launch sets it on one node)
//   MTC_RDZV_TOKEN              the secret every rank presents to rank 0's
//                               TCP store (required off loopback;
//                               docs/security.md)
//
// When RANK is not set, Slurm's SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and
// SLURM_NTASKS_PER_NODE are read instead (`srun --ntasks-per-node=8 train`).
// When neither is set the process is a world of one: rank 0 of 1.
// Defaults: LOCAL_WORLD_SIZE = WORLD_SIZE (one node) and LOCAL_RANK =
// RANK mod LOCAL_WORLD_SIZE. mtc-launch (docs/launching.md) sets them all.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace mtc::rt {

struct LaunchEnv {
  int64_t rank = 0;
  int64_t world_size = 1;
  int64_t local_rank = 0;
  int64_t local_world_size = 1;
  std::string master_addr;  // "" when unset
  int master_port = 0;      // 0 when unset
  std::string rdzv_dir;     // "" when unset
  std::string rdzv_token;   // "" when unset
  // Where rank and size came from, for messages: "RANK/WORLD_SIZE",
  // "SLURM_PROCID/SLURM_NTASKS" or "no RANK/WORLD_SIZE set".
  std::string source;
};

// Looks a variable up; returns nullptr when it is unset.
using EnvLookup = std::function<const char*(const char* name)>;

// Reads and checks the variables above (integers, 0 <= RANK < WORLD_SIZE,
// 0 <= LOCAL_RANK < LOCAL_WORLD_SIZE, 1 <= MASTER_PORT <= 65535; RANK
// without WORLD_SIZE is an error). Throws CommError (comm.h) naming the
// variable and its value.
LaunchEnv read_launch_env(const EnvLookup& lookup);
LaunchEnv read_launch_env();  // from this process's environment

}  // namespace mtc::rt
