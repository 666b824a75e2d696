// Reads the launch environment (see mtc/rt/launch.h): RANK / WORLD_SIZE /
// LOCAL_RANK / LOCAL_WORLD_SIZE / MASTER_ADDR / MASTER_PORT / MTC_RDZV_DIR /
// MTC_RDZV_TOKEN, or Slurm's SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID /
// SLURM_NTASKS_PER_NODE when RANK is unset. Every value is checked (the
// token by the TCP store that uses it); a bad one is a CommError naming the
// variable.
#include <cerrno>
#include <cstdlib>

#include "mtc/rt/comm.h"
#include "mtc/rt/launch.h"

namespace mtc::rt {

namespace {

// A whole-string decimal integer, or CommError naming the variable.
int64_t parse_int(const char* name, const char* value) {
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(value, &end, 10);
  if (end == value || *end != '\0' || errno != 0)
    throw CommError(std::string(name) + "='" + value + "' is not an integer");
  return v;
}

// Slurm's SLURM_NTASKS_PER_NODE may read "4" or "4(x2)": the leading count.
int64_t parse_leading_int(const char* name, const char* value) {
  std::string s(value);
  size_t n = 0;
  while (n < s.size() && s[n] >= '0' && s[n] <= '9') ++n;
  if (n == 0) throw CommError(std::string(name) + "='" + value + "' does not start with a count");
  return parse_int(name, s.substr(0, n).c_str());
}

}  // namespace

LaunchEnv read_launch_env(const EnvLookup& lookup) {
  auto get = [&](const char* name) -> const char* {
    const char* v = lookup(name);
    return (v != nullptr && *v != '\0') ? v : nullptr;
  };
  LaunchEnv env;
  const char *rank_var = "RANK", *size_var = "WORLD_SIZE", *local_var = "LOCAL_RANK",
             *local_size_var = "LOCAL_WORLD_SIZE";
  if (get("RANK") == nullptr && get("WORLD_SIZE") == nullptr && get("SLURM_PROCID") != nullptr) {
    rank_var = "SLURM_PROCID";
    size_var = "SLURM_NTASKS";
    local_var = "SLURM_LOCALID";
    local_size_var = "SLURM_NTASKS_PER_NODE";
    env.source = "SLURM_PROCID/SLURM_NTASKS";
  } else {
    env.source = "RANK/WORLD_SIZE";
  }

  const char* rank = get(rank_var);
  const char* size = get(size_var);
  if (rank == nullptr && size == nullptr) {
    env.source = "no RANK/WORLD_SIZE set";
  } else if (rank == nullptr || size == nullptr) {
    throw CommError(std::string(rank ? size_var : rank_var) + " is not set but " +
                    (rank ? rank_var : size_var) +
                    " is: set both (mtc-launch, torchrun and srun set them)");
  } else {
    env.world_size = parse_int(size_var, size);
    env.rank = parse_int(rank_var, rank);
    if (env.world_size < 1)
      throw CommError(std::string(size_var) + "=" + size + " must be at least 1");
    if (env.rank < 0 || env.rank >= env.world_size)
      throw CommError(std::string(rank_var) + "=" + rank + " must be in [0, " + size_var + "=" +
                      size + ")");
  }

  env.local_world_size = env.world_size;
  if (const char* v = get(local_size_var)) {
    env.local_world_size = local_size_var == std::string("SLURM_NTASKS_PER_NODE")
                               ? parse_leading_int(local_size_var, v)
                               : parse_int(local_size_var, v);
    if (env.local_world_size < 1 || env.local_world_size > env.world_size)
      throw CommError(std::string(local_size_var) + "=" + v + " must be in [1, " + size_var + "=" +
                      std::to_string(env.world_size) + "]");
  }
  env.local_rank = env.rank % env.local_world_size;
  if (const char* v = get(local_var)) {
    env.local_rank = parse_int(local_var, v);
    if (env.local_rank < 0 || env.local_rank >= env.local_world_size)
      throw CommError(std::string(local_var) + "=" + v + " must be in [0, " + local_size_var + "=" +
                      std::to_string(env.local_world_size) + ")");
  }

  if (const char* v = get("MASTER_ADDR")) env.master_addr = v;
  if (const char* v = get("MASTER_PORT")) {
    int64_t port = parse_int("MASTER_PORT", v);
    if (port < 1 || port > 65535)
      throw CommError(std::string("MASTER_PORT=") + v + " is not a TCP port (1..65535)");
    env.master_port = static_cast<int>(port);
  }
  if (const char* v = get("MTC_RDZV_DIR")) env.rdzv_dir = v;
  if (const char* v = get("MTC_RDZV_TOKEN")) env.rdzv_token = v;  // checked by the TCP store
  return env;
}

LaunchEnv read_launch_env() {
  return read_launch_env([](const char* name) { return std::getenv(name); });
}

}  // namespace mtc::rt
