// GridComm over a World (the host target's Gloo communicators) or over the
// program backend's communicators built alongside it (ProgramComms: NCCL on
// device memory), and the slice geometry of tensor-parallel parameters.
// Layouts and rules: mtc/rt/grid_comm.h.
#include "mtc/rt/grid_comm.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "mtc/rt/comm.h"
#include "mtc/rt/io.h"
#include "mtc/rt/launch.h"
#include "mtc/rt/trainer.h"

namespace mtc::rt {

GridIndex grid_index(const GridComm* comm) {
  if (comm == nullptr) return {0, 0, 0, 0, 0};
  return {comm->index(0), comm->index(1), comm->index(2), comm->index(3), comm->index(4)};
}

ParamSlice param_slice(const ParamDesc& d, const int64_t* grid, const GridIndex& at) {
  ParamSlice s;
  if (d.split_dim < 0 || d.split_axis < 0 || grid[d.split_axis] == 1) {
    s.chunk = d.numel;
    return s;
  }
  s.parts = grid[d.split_axis];
  s.index = at[static_cast<size_t>(d.split_axis)];
  s.chunk = d.shape[static_cast<size_t>(d.split_dim)] / s.parts;
  for (int k = 0; k < d.split_dim; ++k) s.outer *= d.shape[static_cast<size_t>(k)];
  for (size_t k = static_cast<size_t>(d.split_dim) + 1; k < d.shape.size(); ++k)
    s.chunk *= d.shape[k];
  return s;
}

ParamSlices param_slices(const ParamDesc& d, const int64_t* grid, const GridIndex& at) {
  ParamSlices s;
  s.first = param_slice(d, grid, at);
  s.second.chunk = s.first.local_numel();
  if (d.split2_dim < 0 || d.split2_axis < 0 || grid[d.split2_axis] == 1) return s;
  // The second split of the first one's slice: its shape is the global one
  // with split_dim divided by the first axis's size.
  ParamDesc inner = d;
  if (s.first.parts > 1)
    inner.shape[static_cast<size_t>(d.split_dim)] /= s.first.parts;
  inner.split_dim = d.split2_dim;
  inner.split_axis = d.split2_axis;
  inner.numel = s.first.local_numel() / grid[d.split2_axis];
  s.second = param_slice(inner, grid, at);
  return s;
}

void take_slices(const ParamSlices& s, const float* global, float* local) {
  if (s.second.parts == 1) {
    take_slice(s.first, global, local);
    return;
  }
  std::vector<float> mid(static_cast<size_t>(s.first.local_numel()));
  take_slice(s.first, global, mid.data());
  take_slice(s.second, mid.data(), local);
}

void take_slice(const ParamSlice& s, const float* global, float* local) {
  for (int64_t o = 0; o < s.outer; ++o) {
    const float* src = global + (o * s.parts + s.index) * s.chunk;
    std::copy(src, src + s.chunk, local + o * s.chunk);
  }
}

void put_slice(const ParamSlice& s, int64_t part, const float* local, float* global) {
  for (int64_t o = 0; o < s.outer; ++o) {
    const float* src = local + o * s.chunk;
    std::copy(src, src + s.chunk, global + (o * s.parts + part) * s.chunk);
  }
}

void gather_slices(GridComm& comm, int axis, const ParamSlice& s, const float* local,
                   float* global) {
  const int64_t n = s.local_numel();
  if (s.parts == 1) {
    std::copy(local, local + n, global);
    return;
  }
  if (s.outer == 1) {  // the members' slices are contiguous: gather in place
    comm.all_gather(axis, local, global, n);
    return;
  }
  std::vector<float> all(static_cast<size_t>(s.parts * n));  // (parts, outer, chunk)
  comm.all_gather(axis, local, all.data(), n);
  for (int64_t r = 0; r < s.parts; ++r) put_slice(s, r, all.data() + r * n, global);
}

std::vector<float> gather_params_to_root(GridComm* comm, const ProgramDesc& program,
                                         const ProgramDesc& global, const float* local,
                                         bool sum_copies) {
  const GridIndex at = grid_index(comm);
  const bool stage_root = at[1] == 0 && at[2] == 0;
  const bool root = stage_root && at[0] == 0;
  const bool pipeline = comm != nullptr && comm->size(0) > 1;
  // Pipeline: every rank holds a global-sized buffer for the final sum over
  // the pipeline axis (zeros where it has nothing to add).
  std::vector<float> out(root || pipeline ? static_cast<size_t>(global.num_param_elems) : 0);
  std::map<std::string, int64_t> global_offset;
  for (const ParamDesc& g : global.params) global_offset[g.name] = g.offset;
  std::vector<float> scratch;  // a non-root member's copy of one gathered tensor
  for (const ParamDesc& d : program.params) {
    auto it = global_offset.find(d.name);
    if (it == global_offset.end())
      throw Error("parameter \"" + d.name + "\" is not in the checkpoint layout");
    const bool contributes = d.pipeline_primary || sum_copies;
    const ParamSlices both = param_slices(d, program.grid, at);
    const ParamSlice& s = both.first;
    float* place = out.empty() ? nullptr : out.data() + it->second;
    if (!both.split()) {
      if (stage_root && contributes && place != nullptr)
        std::copy(local + d.offset, local + d.offset + d.numel, place);
      continue;
    }
    if (both.second.parts > 1) {
      // Experts split over ep, then tp (validate_program allows no other
      // pair): the tp group of each ep rank with edp index 0 gathers the
      // ep slice, then the ep group with tp index 0 the whole tensor.
      if (at[4] != 0) continue;
      std::vector<float> mid(static_cast<size_t>(s.local_numel()));
      gather_slices(*comm, d.split2_axis, both.second, local + d.offset, mid.data());
      if (at[2] != 0) continue;
      float* dst = place;
      if (!stage_root || !contributes) {
        scratch.resize(static_cast<size_t>(s.global_numel()));
        dst = scratch.data();
      }
      gather_slices(*comm, d.split_axis, s, mid.data(), dst);
      continue;
    }
    // The group along split_axis through the stage root: index 0 on the
    // other axes of the stage (the expert axes split dp: ep's group has
    // edp index 0, edp's ep index 0).
    bool in_root_group = at[2] == 0 || d.split_axis == 2;
    if (d.split_axis == 1 || d.split_axis == 2) in_root_group &= at[3 - d.split_axis] == 0;
    if (d.split_axis == 3) in_root_group &= at[4] == 0;
    if (d.split_axis == 4) in_root_group &= at[3] == 0;
    if (!in_root_group) continue;
    if (comm == nullptr)
      throw Error("parameter \"" + d.name + "\" is split over " + std::to_string(s.parts) +
                  " ranks but the run has no grid communicator");
    float* dst = place;
    if (!stage_root || !contributes) {
      scratch.resize(static_cast<size_t>(s.global_numel()));
      dst = scratch.data();
    }
    gather_slices(*comm, d.split_axis, s, local + d.offset, dst);
  }
  if (pipeline) comm->all_reduce_sum(0, out.data(), static_cast<int64_t>(out.size()));
  if (!root) out.clear();
  return out;
}

std::vector<MomentShard> moment_shards(const ProgramDesc& p) {
  std::vector<MomentShard> out;
  if (p.optimizer_shard_elems == 0) return out;
  out.push_back({1, 0, p.optimizer_shard_elems, 0});
  if (p.expert_optimizer_shard_elems > 0)
    out.push_back({4, p.grid[1] * p.optimizer_shard_elems, p.expert_optimizer_shard_elems,
                   p.optimizer_shard_elems});
  return out;
}

void take_moment_shares(const ProgramDesc& p, const GridIndex& at, const float* full,
                        float* mine) {
  const std::vector<MomentShard> shards = moment_shards(p);
  if (shards.empty()) std::copy(full, full + p.num_param_elems, mine);
  for (const MomentShard& s : shards) {
    const float* src = full + s.begin + at[static_cast<size_t>(s.axis)] * s.elems;
    std::copy(src, src + s.elems, mine + s.moments);
  }
}

void gather_moment_shares(GridComm* comm, const ProgramDesc& p, const float* mine,
                          float* full) {
  const std::vector<MomentShard> shards = moment_shards(p);
  if (shards.empty()) std::copy(mine, mine + p.num_param_elems, full);
  for (const MomentShard& s : shards) {
    if (comm == nullptr) {
      std::copy(mine + s.moments, mine + s.moments + s.elems, full + s.begin);
      continue;
    }
    comm->all_gather(s.axis, mine + s.moments, full + s.begin, s.elems);
  }
}

std::vector<float> gather_over_dp(GridComm& comm, const std::vector<float>& mine,
                                  int64_t num_microbatches, int64_t block) {
  const int64_t dp = comm.size(1), n = num_microbatches * block;
  std::vector<float> all(static_cast<size_t>(dp * n)), out(all.size());  // (dp, mbs, block)
  comm.all_gather(1, mine.data(), all.data(), n);
  for (int64_t d = 0; d < dp; ++d)
    for (int64_t i = 0; i < num_microbatches; ++i)
      std::copy(all.begin() + (d * num_microbatches + i) * block,
                all.begin() + (d * num_microbatches + i + 1) * block,
                out.begin() + (i * dp + d) * block);
  return out;
}

std::vector<int32_t> gather_over_dp(GridComm& comm, const std::vector<int32_t>& mine,
                                    int64_t num_microbatches, int64_t block) {
  static_assert(sizeof(float) == sizeof(int32_t));
  std::vector<float> words(mine.size());
  std::memcpy(words.data(), mine.data(), mine.size() * sizeof(int32_t));
  words = gather_over_dp(comm, words, num_microbatches, block);
  std::vector<int32_t> out(words.size());
  std::memcpy(out.data(), words.data(), out.size() * sizeof(int32_t));
  return out;
}

std::vector<double> all_gather_doubles(World& world, const std::vector<double>& mine) {
  const int64_t n = static_cast<int64_t>(mine.size());
  std::vector<float> send(static_cast<size_t>(2 * n));
  std::vector<float> recv(static_cast<size_t>(2 * n * world.world_size()));
  std::memcpy(send.data(), mine.data(), mine.size() * sizeof(double));
  world.comm(GroupKind::world).all_gather(send.data(), recv.data(), 2 * n);
  std::vector<double> out(static_cast<size_t>(n * world.world_size()));
  std::memcpy(out.data(), recv.data(), out.size() * sizeof(double));
  return out;
}

std::string Agreement::describe_failed() const {
  std::string s = failed_ranks.size() > 1 ? "ranks " : "rank ";
  for (size_t i = 0; i < failed_ranks.size(); ++i)
    s += (i == 0 ? "" : i + 1 == failed_ranks.size() ? " and " : ", ") +
         std::to_string(failed_ranks[i]);
  return s + " failed (see " + (failed_ranks.size() > 1 ? "their" : "its") + " error)";
}

Agreement agree(World& world, bool failed, double value) {
  const std::vector<double> all = all_gather_doubles(world, {failed ? 1.0 : 0.0, value});
  Agreement a;
  for (int64_t r = 0; r < world.world_size(); ++r) {
    if (all[static_cast<size_t>(2 * r)] != 0) a.failed_ranks.push_back(r);
    a.values.push_back(all[static_cast<size_t>(2 * r + 1)]);
    const GridCoord c = grid_coord(world.grid(), r);
    // One rank per data-parallel rank; under pipeline parallelism the last
    // pipeline rank, which computes the loss.
    if (c.tp == 0 && c.pp == world.grid().pp - 1) a.sum_tp0 += a.values.back();
  }
  return a;
}

namespace {

// This rank's place in the World's grid and the axis check shared by both
// GridComms.
class GridPlace : public GridComm {
 public:
  explicit GridPlace(const World& world) {
    const GridCoord c = world.coord();
    const GridSpec& g = world.grid();
    size_[0] = g.pp;
    size_[1] = g.dp;
    size_[2] = g.tp;
    size_[3] = g.ep;
    size_[4] = g.dp / g.ep;
    index_[0] = c.pp;
    index_[1] = c.dp;
    index_[2] = c.tp;
    index_[3] = c.dp % g.ep;
    index_[4] = c.dp / g.ep;
  }

  int64_t size(int axis) const override { return size_[check(axis, "size")]; }
  int64_t index(int axis) const override { return index_[check(axis, "index")]; }

 protected:
  static int check(int axis, const char* op) {
    if (axis < 0 || axis > 4)
      throw Error(std::string("GridComm::") + op + ": axis " + std::to_string(axis) +
                  " is not a grid axis (0 pipeline, 1 data, 2 tensor, 3 expert, 4 "
                  "expert data parallel)");
    return axis;
  }

  int64_t size_[5] = {1, 1, 1, 1, 1};
  int64_t index_[5] = {0, 0, 0, 0, 0};
};

GroupKind axis_kind(int axis) {
  static const GroupKind kinds[5] = {GroupKind::pp, GroupKind::dp, GroupKind::tp, GroupKind::ep,
                                     GroupKind::edp};
  return kinds[axis];
}

// Host buffers on the World's (Gloo) communicators.
class WorldGridComm final : public GridPlace {
 public:
  explicit WorldGridComm(World& world) : GridPlace(world), world_(world) {}

  // data (n) = sum over the axis's group of every member's data.
  void all_reduce_sum(int axis, float* data, int64_t n) override {
    const int a = check(axis, "all_reduce_sum");
    if (size_[a] == 1) return;
    world_.comm(axis_kind(a)).all_reduce(data, n, ReduceOp::sum);
  }

  // out (size * n) = member j's in (n) at out + j * n.
  void all_gather(int axis, const float* in, float* out, int64_t n) override {
    const int a = check(axis, "all_gather");
    if (size_[a] == 1) {
      std::copy(in, in + n, out);
      return;
    }
    world_.comm(axis_kind(a)).all_gather(in, out, n);
  }

  // out (n) = sum over the group of every member's in[index * n, +n).
  void reduce_scatter_sum(int axis, const float* in, float* out, int64_t n) override {
    const int a = check(axis, "reduce_scatter_sum");
    if (size_[a] == 1) {
      std::copy(in, in + n, out);
      return;
    }
    world_.comm(axis_kind(a)).reduce_scatter(in, out, n, ReduceOp::sum);
  }

  void p2p(int axis, const P2PTransfer* ops, int count) override {
    const int a = check(axis, "p2p");
    world_.comm(axis_kind(a)).p2p(ops, count, DType::f32, nullptr);
  }

 private:
  World& world_;
};

// Program memory on the backend's communicators; each collective waits for
// the device before it returns (grid_comm.h).
class ProgramGridComm final : public GridPlace {
 public:
  ProgramGridComm(World& world, ProgramComms& comms, const Backend& backend)
      : GridPlace(world), comms_(comms), backend_(backend) {
    for (int a = 0; a < 3; ++a) (void)comms_.axis(a);  // every axis of size > 1 is there
  }

  // data (n) = sum over the axis's group of every member's data, in place,
  // complete on the device.
  void all_reduce_sum(int axis, float* data, int64_t n) override {
    const int a = check(axis, "all_reduce_sum");
    if (size_[a] == 1) return;
    comms_.axis(a)->all_reduce(data, n, DType::f32, ReduceOp::sum, nullptr);
    backend_.synchronize();
  }

  // out (size * n) = member j's in (n) at out + j * n, complete on the
  // device. One member: out = in through a host staging copy.
  void all_gather(int axis, const float* in, float* out, int64_t n) override {
    const int a = check(axis, "all_gather");
    if (size_[a] == 1) {
      std::vector<float> staging(static_cast<size_t>(n));
      backend_.download(staging.data(), in, staging.size() * sizeof(float));
      backend_.upload(out, staging.data(), staging.size() * sizeof(float));
      return;
    }
    comms_.axis(a)->all_gather(in, out, n, DType::f32, nullptr);
    backend_.synchronize();
  }

  // out (n) = sum over the group of every member's in[index * n, +n),
  // complete on the device; out may be in + index * n (NCCL's in-place
  // form). One member: a copy through host memory unless in place.
  void reduce_scatter_sum(int axis, const float* in, float* out, int64_t n) override {
    const int a = check(axis, "reduce_scatter_sum");
    if (size_[a] == 1) {
      if (in == out) return;
      std::vector<float> staging(static_cast<size_t>(n));
      backend_.download(staging.data(), in, staging.size() * sizeof(float));
      backend_.upload(out, staging.data(), staging.size() * sizeof(float));
      return;
    }
    comms_.axis(a)->reduce_scatter(in, out, n, DType::f32, ReduceOp::sum, nullptr);
    backend_.synchronize();
  }

  // Complete on the device when it returns.
  void p2p(int axis, const P2PTransfer* ops, int count) override {
    const int a = check(axis, "p2p");
    comms_.axis(a)->p2p(ops, count, DType::f32, nullptr);
    backend_.synchronize();
  }

  Communicator* program_comm(int axis) const override {
    const int a = check(axis, "program_comm");
    return size_[a] == 1 ? nullptr : comms_.axis(a);
  }

 private:
  ProgramComms& comms_;
  const Backend& backend_;
};

// The store as the program's factory sees it: every key under `prefix`.
class PrefixStore final : public Store {
 public:
  PrefixStore(Store& store, std::string prefix) : store_(store), prefix_(std::move(prefix)) {}
  void set(const std::string& key, const std::string& value) override {
    store_.set(prefix_ + key, value);
  }
  std::string get(const std::string& key) override { return store_.get(prefix_ + key); }
  std::string describe() const override { return store_.describe(); }

 private:
  Store& store_;
  std::string prefix_;
};

}  // namespace

std::unique_ptr<GridComm> make_grid_comm(World& world) {
  return std::make_unique<WorldGridComm>(world);
}

ProgramComms::ProgramComms(const GridSpec& grid, CommFactory factory)
    : grid_(grid), factory_(std::move(factory)) {}

ProgramComms::~ProgramComms() = default;

CommFactory ProgramComms::world_factory(CommFactory host) {
  return [this, host = std::move(host)](const GroupDesc& group, Store& store, Watchdog& watchdog,
                                        const LaunchEnv& env) {
    std::unique_ptr<Communicator> hosts = host(group, store, watchdog, env);
    for (int a = 0; a < 3; ++a) {
      if (axes_[a]) continue;
      GroupDesc g = group_of(grid_, axis_kind(a), env.rank);
      if (g.size() == 1 || g.members != group.members) continue;
      PrefixStore prefixed(store, "program/");
      axes_[a] = factory_(g, prefixed, watchdog, env);
    }
    return hosts;
  };
}

Communicator* ProgramComms::axis(int axis) const {
  if (axis == 3 || axis == 4)
    throw Error("ProgramComms::axis: the expert-parallel axes have no program "
                "communicators yet (expert parallelism runs on the host target only)");
  if (axis < 0 || axis > 2)
    throw Error("ProgramComms::axis: " + std::to_string(axis) +
                " is not a grid axis (0 pipeline, 1 data, 2 tensor parallel)");
  const int64_t size = axis == 0 ? grid_.pp : axis == 1 ? grid_.dp : grid_.tp;
  if (size == 1) return nullptr;
  if (!axes_[axis])
    throw CommError(std::string("the program's communicator of the ") +
                    group_kind_name(axis_kind(axis)) + " axis (" + std::to_string(size) +
                    " ranks) was not built: the World was not made with "
                    "ProgramComms::world_factory");
  return axes_[axis].get();
}

std::string ProgramComms::backend() const {
  for (const auto& c : axes_)
    if (c) return c->backend();
  return "";
}

std::unique_ptr<GridComm> make_program_grid_comm(World& world, ProgramComms& comms,
                                                 const Backend& backend) {
  return std::make_unique<ProgramGridComm>(world, comms, backend);
}

std::string RunComms::describe() const {
  if (!world) return "";
  const std::string host_name = world->comm(GroupKind::world).backend();
  if (!program_comms) return host_name;
  const std::string prog = program_comms->backend();
  return (prog.empty() ? std::string("none") : prog) + " for the program, " + host_name +
         " for the trainer";
}

RunComms start_run_comms(const ProgramDesc& p) {
  RunComms c;
  const GridSpec grid{p.grid[0], p.grid[1], p.grid[2], p.grid[3]};
  if (grid.world_size() == 1) {
    // The launch environment is checked as for several ranks (a malformed
    // value is refused, naming the variable); an explicit WORLD_SIZE must
    // then say 1. Slurm's task count alone is not refused: a batch script
    // may run one process in an allocation of several tasks.
    const LaunchEnv env = read_launch_env();
    if (env.world_size > 1 && env.source == "RANK/WORLD_SIZE")
      throw Error("the program was compiled for 1 rank but WORLD_SIZE is " +
                  std::to_string(env.world_size) +
                  ": run it as one process, or compile it for a grid of " +
                  std::to_string(env.world_size) + " ranks");
    return c;
  }
  const std::string where = "program \"" + p.model_name + "\" (" + describe_grid(grid) + "): ";
  const Backend& backend = program_backend(p);
  if (&backend == &host_backend()) {
    c.world = World::from_env(grid, gloo_comm_factory());
    c.host = make_grid_comm(*c.world);
    return c;
  }
  if (backend.comm_factory == nullptr)
    throw Error(where + "backend " + backend.name + " has no communicators for its memory "
                "(Backend::comm_factory is null: a CUDA runtime built without NCCL?), so "
                "the program cannot run on several ranks");
  c.program_comms = std::make_unique<ProgramComms>(
      grid, *static_cast<const CommFactory*>(backend.comm_factory));
  c.world = World::from_env(grid, c.program_comms->world_factory(gloo_comm_factory()));
  c.host = make_grid_comm(*c.world);
  c.program_grid = make_program_grid_comm(*c.world, *c.program_comms, backend);
  return c;
}

}  // namespace mtc::rt
