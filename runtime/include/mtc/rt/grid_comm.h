// The trainer's view of a multi-rank program: GridComm (program.h) over a
// World's communicators (host memory) or over the program backend's own
// communicators (device memory: ProgramComms); where each rank's slice of
// a tensor-parallel parameter lies in the global tensor; gathering
// parameter-shaped host buffers and the global batch to rank 0
// (checkpoints, dumps); and the small agreement through which ranks learn
// that one of them failed.
//
// Axes are those of ProgramDesc::grid: 0 pipeline, 1 data, 2 tensor
// parallel, 3 expert parallel and 4 expert data parallel (the two parts of
// the data axis, comm.h's GridSpec::ep). Along one axis the group's members are the ranks that differ
// only in that coordinate; a member's index is its coordinate (comm.h:
// Megatron's order, tp fastest), so all_gather returns the members' data in
// index order.
//
// Slices (ParamDesc::split_dim / split_axis): with P = grid[split_axis]
// ranks along the split axis, the global tensor of shape (d0, ..., dk) is
// viewed as
//   (outer, P, chunk)   outer = d0 * ... * d(split_dim - 1)
//                       chunk = d(split_dim) / P * d(split_dim + 1) * ... * dk
// and the rank with index r along split_axis holds [:, r, :], row-major, as
// (outer, chunk). A parameter that is not split (or split along an axis of
// size 1) is (1, 1, numel): the whole tensor.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "mtc/rt/comm.h"
#include "mtc/rt/program.h"

namespace mtc::rt {

// This rank's index along each axis (pp, dp, tp, ep, edp); all zero for one
// rank.
using GridIndex = std::array<int64_t, 5>;
GridIndex grid_index(const GridComm* comm);  // zeros when comm is nullptr

struct ParamSlice {
  int64_t outer = 1, parts = 1, chunk = 0, index = 0;
  int64_t local_numel() const { return outer * chunk; }
  int64_t global_numel() const { return outer * parts * chunk; }
  // Element of the global tensor that local element `i` is.
  int64_t global_at(int64_t i) const {
    return ((i / chunk) * parts + index) * chunk + i % chunk;
  }
};

// The slice of `d` that the rank at `at` holds in a program compiled for
// `grid` (ProgramDesc::grid). Assumes validate_program accepted the program.
// `grid` has ProgramDesc::grid's axes (at least split_axis + 1 of them).
// The first split only (split_dim / split_axis).
ParamSlice param_slice(const ParamDesc& d, const int64_t* grid, const GridIndex& at);

// Both splits of a parameter: `first` of the global tensor, `second`
// (split2_dim / split2_axis) of first's slice; second is the identity (one
// part) when there is no second split.
struct ParamSlices {
  ParamSlice first, second;
  bool split() const { return first.parts > 1 || second.parts > 1; }
  int64_t global_at(int64_t i) const { return first.global_at(second.global_at(i)); }
};
ParamSlices param_slices(const ParamDesc& d, const int64_t* grid, const GridIndex& at);
// local = this rank's slice of `global` (both splits).
void take_slices(const ParamSlices& s, const float* global, float* local);

// local (outer, chunk) = global (outer, parts, chunk)[:, s.index, :].
void take_slice(const ParamSlice& s, const float* global, float* local);
// global (outer, parts, chunk)[:, part, :] = local (outer, chunk).
void put_slice(const ParamSlice& s, int64_t part, const float* local, float* global);

// global (the whole tensor, s.global_numel()) = every member's local slice
// along `axis`, gathered with one all_gather and put in place. Every member
// of this rank's group along `axis` must call it (same order, same s).
void gather_slices(GridComm& comm, int axis, const ParamSlice& s, const float* local,
                   float* global);

// A parameter-shaped buffer of the program (`local`, num_param_elems in the
// program's layout) as the global tensors in `global`'s layout
// (global_layout(program), trainer.h), returned on the rank at grid index
// (0, 0, 0); every other rank gets an empty vector. Split tensors are
// gathered in program order by the group that holds that rank (the ranks
// whose indices on the other axes are all zero); the others skip them.
// Every rank must call it (comm may be nullptr for a one-rank grid).
// Pipeline parallelism: each pipeline rank's group puts its own parameters
// (found by name in `global`) in place, then one sum over the pipeline axis
// brings them to the root; a parameter held by several pipeline ranks is
// taken from its primary copy, or with `sum_copies` (gradients before the
// optimizer summed them) the copies are added.
std::vector<float> gather_params_to_root(GridComm* comm, const ProgramDesc& program,
                                         const ProgramDesc& global, const float* local,
                                         bool sum_copies = false);

// The distributed optimizer's shares of the flat parameter buffer
// (ProgramDesc::optimizer_shard_elems, expert_optimizer_shard_elems): a
// region of the parameters' layout cut into equal shares over the group
// along `axis`; the member with index r along it owns [begin + r * elems,
// begin + (r + 1) * elems) and keeps its AdamW moments at `moments` of
// exp_avg / exp_avg_sq.
struct MomentShard {
  int axis = 1;          // 1 (dp), or 4 (edp: the experts' region)
  int64_t begin = 0;     // the region's first element in the parameters' layout
  int64_t elems = 0;     // each member's share
  int64_t moments = 0;   // where a member's share starts in the moment buffers
};
// The program's regions in buffer order: none without a distributed
// optimizer, the whole buffer over dp, or with expert parallelism the dense
// parameters over dp and then the experts over edp.
std::vector<MomentShard> moment_shards(const ProgramDesc& program);
// mine (moment_elems(program), trainer.h) = the shares of `full`
// (num_param_elems, the parameters' layout) that the rank at `at` keeps;
// all of `full` without a distributed optimizer.
void take_moment_shares(const ProgramDesc& program, const GridIndex& at, const float* full,
                        float* mine);
// full (num_param_elems, the parameters' layout) = every member's shares
// put in place, gathered over each region's group; a copy of `mine` without
// a distributed optimizer. Every rank calls it (comm may be nullptr for one
// rank).
void gather_moment_shares(GridComm* comm, const ProgramDesc& program, const float* mine,
                          float* full);

// Microbatch-blocked data of every data-parallel rank in the global batch's
// order: `mine` is (num_microbatches, block) (this rank's microbatch i at
// i * block); the result is (dp * num_microbatches, block) with rank d's
// microbatch i as global microbatch i * dp + d, the order of the global
// batch's samples (loader.h). Every member of this rank's dp group must
// call it. int32 ids travel as raw 4-byte words.
std::vector<float> gather_over_dp(GridComm& comm, const std::vector<float>& mine,
                                  int64_t num_microbatches, int64_t block);
std::vector<int32_t> gather_over_dp(GridComm& comm, const std::vector<int32_t>& mine,
                                    int64_t num_microbatches, int64_t block);

// Every rank's `mine` (the same count n on each) on every rank: (world_size,
// n), rank-major, bit for bit (sent as pairs of fp32 words).
std::vector<double> all_gather_doubles(World& world, const std::vector<double>& mine);

// The end of a phase that a rank may fail alone (bad data, a failed write):
// every rank contributes (failed, value) through one all_gather over the
// world and learns who failed, every rank's value, and the sum of `value`
// over the ranks with tp index 0 on the last pipeline rank (the one that
// computes the loss), one per data-parallel rank, added in rank order so
// that every rank gets the same double.
struct Agreement {
  std::vector<int64_t> failed_ranks;  // increasing
  std::vector<double> values;         // by global rank
  double sum_tp0 = 0;
  std::string describe_failed() const;  // "rank 1 failed (see its error)"
};
Agreement agree(World& world, bool failed, double value);

// GridComm over a World's tp, dp and pp communicators (host buffers: the
// Gloo backend). Along an axis of size 1 all_reduce_sum does nothing and
// all_gather copies. An axis outside [0, 3) throws Error. The World must
// outlive it.
std::unique_ptr<GridComm> make_grid_comm(World& world);

// The program's collectives when its memory is not the host's (a Backend
// with a comm_factory, program.h: NCCL on the CUDA target), built alongside
// the World whose Gloo communicators the trainer keeps for its own
// host-side collectives (gathers of downloaded checkpoints and dumps, error
// agreement, loss sums).
//
// Setup: the World is built with world_factory(host factory). The World
// calls its factory once per distinct group (comm.h); every such group that
// is the group of an axis of size > 1 (pp, dp or tp) also gets a program
// communicator from the backend's factory, right after its host one, under
// that axis's GroupDesc ("dp[0]", so watchdog reports name the axis) and
// through the same store with every key prefixed "program/" (so the two
// factories' keys never meet). Every rank makes the same calls in the same
// order, so the members of a group meet. Axes of size 1 get none.
//
// The communicators hold a reference to the World's watchdog: destroy the
// ProgramComms (and any GridComm over it) before the World, and create it
// before, since the World's factory fills it.
class ProgramComms {
 public:
  // `factory` is the backend's (a const CommFactory*, Backend::comm_factory).
  ProgramComms(const GridSpec& grid, CommFactory factory);
  ~ProgramComms();
  ProgramComms(const ProgramComms&) = delete;
  ProgramComms& operator=(const ProgramComms&) = delete;

  // The factory to build the World with: `host`'s communicator for every
  // group (the World's), plus the program's for axis groups (kept here).
  CommFactory world_factory(CommFactory host);

  // The program communicator of axis 0 (pp), 1 (dp) or 2 (tp); nullptr for
  // an axis of size 1. CommError if the World did not build it (an axis of
  // size > 1 whose group the World's factory never saw).
  Communicator* axis(int axis) const;
  // The program communicators' backend ("nccl"), "" when none was built.
  std::string backend() const;

 private:
  GridSpec grid_;
  CommFactory factory_;
  std::unique_ptr<Communicator> axes_[3];  // pp, dp, tp
};

// GridComm over program memory: sizes and indices from `world`'s grid;
// collectives on the axis communicators of `comms`, enqueued on the default
// stream (Stream nullptr), followed by backend.synchronize(), so that every
// collective has completed on the device when it returns (the generated code
// runs its next kernel on its own stream, which does not wait for the
// default one). Along an axis of size 1 all_reduce_sum does nothing and
// all_gather copies through host memory (download, upload); generated code
// never gathers along such an axis. An axis outside [0, 3) throws Error.
// `world`, `comms` and `backend` must outlive it.
//
// Cost: one device-wide synchronize per collective, so the generated CUDA
// code uses these calls nowhere on its hot path: it takes the axis
// communicators through program_comm(axis) and enqueues its collectives on
// its own streams (tensor-parallel activations on the compute stream,
// data-parallel gradient buckets on a communication stream that waits for
// the backward pass through events).
std::unique_ptr<GridComm> make_program_grid_comm(World& world, ProgramComms& comms,
                                                 const Backend& backend);

// The communicators of one training run (train_main), all null for a
// program compiled for one rank. Members are declared so that destruction
// goes GridComms, ProgramComms, World.
struct RunComms {
  std::unique_ptr<World> world;                 // Gloo: the trainer's collectives
  std::unique_ptr<ProgramComms> program_comms;  // backends other than the host's
  std::unique_ptr<GridComm> host;               // over `world`: host buffers
  std::unique_ptr<GridComm> program_grid;       // over program_comms: program memory
  // HostState::comm: program_grid, or `host` when program memory is the host's.
  GridComm* program() const { return program_grid ? program_grid.get() : host.get(); }
  // "gloo", or "nccl for the program, gloo for the trainer"; "" for one rank.
  std::string describe() const;
};

// The run's communicators from the launch environment. One rank: none, but
// WORLD_SIZE > 1 is refused (two copies would train the same model and race
// on its checkpoints). Several: WORLD_SIZE must match the grid (World's
// message says how to start it), pp must be 1; the host backend gets a Gloo
// World and one GridComm over it for both program and trainer; another
// backend needs a Backend::comm_factory, and gets the Gloo World
// plus ProgramComms built alongside it and the program's GridComm over them.
// Throws Error naming the program and grid otherwise.
RunComms start_run_comms(const ProgramDesc& program);

}  // namespace mtc::rt
