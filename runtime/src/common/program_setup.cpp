// Checks on the emitted ProgramDesc, deterministic parameter
// initialization and the global (checkpoint) layout of the parameters
// (rules in mtc/rt/trainer.h; slices in mtc/rt/grid_comm.h).
#include <algorithm>
#include <set>

#include "common/rng.h"
#include "mtc/rt/grid_comm.h"
#include "mtc/rt/io.h"
#include "mtc/rt/safetensors.h"
#include "mtc/rt/trainer.h"

namespace mtc::rt {

void validate_program(const ProgramDesc& p) {
  const std::string where = "program \"" + p.model_name + "\": ";
  if (p.grid[0] < 1 || p.grid[1] < 1 || p.grid[2] < 1)
    throw Error(where + "grid (pp " + std::to_string(p.grid[0]) + ", dp " +
                std::to_string(p.grid[1]) + ", tp " + std::to_string(p.grid[2]) +
                "): every axis must be at least 1");
  if (p.grid[3] < 1 || p.grid[1] % p.grid[3] != 0)
    throw Error(where + "expert parallelism ep " + std::to_string(p.grid[3]) +
                " must be at least 1 and divide dp " + std::to_string(p.grid[1]));
  if (!p.pipeline.empty()) {
    if (static_cast<int64_t>(p.pipeline.size()) != p.grid[0])
      throw Error(where + std::to_string(p.pipeline.size()) + " pipeline stages for a grid of pp " +
                  std::to_string(p.grid[0]));
    for (size_t r = 0; r < p.pipeline.size(); ++r)
      if (p.pipeline[r].step == nullptr || p.pipeline[r].eval == nullptr ||
          p.pipeline[r].optimizer_step == nullptr)
        throw Error(where + "pipeline stage " + std::to_string(r) +
                    ": an entry point (step, eval, optimizer_step) is missing");
  } else if (p.pipeline_step != nullptr) {
    if (p.pipeline_eval == nullptr || p.optimizer_step == nullptr)
      throw Error(where + "a pipeline stage's entry point (pipeline_eval, optimizer_step) "
                  "is missing");
  } else if (p.forward_loss == nullptr || p.forward_backward == nullptr ||
             p.optimizer_step == nullptr) {
    throw Error(where + "an entry point (forward_loss, forward_backward, "
                "optimizer_step) is missing");
  } else if (p.grid[0] > 1) {
    throw Error(where + "pp " + std::to_string(p.grid[0]) +
                " but no pipeline stages (ProgramDesc::pipeline)");
  }
  if (p.num_param_elems < 0 || p.arena_floats < 0 || p.compute_param_bytes < 0)
    throw Error(where + "num_param_elems, arena_floats and compute_param_bytes must be >= 0");
  if (p.expert_optimizer_shard_elems != 0) {
    // Two regions: the dense parameters' over dp, the experts' over edp.
    const int64_t edp = p.grid[1] / p.grid[3];
    if (p.expert_optimizer_shard_elems < 0 || p.optimizer_shard_elems <= 0 || p.grid[3] == 1 ||
        p.optimizer_shard_elems * p.grid[1] + p.expert_optimizer_shard_elems * edp !=
            p.num_param_elems)
      throw Error(where + "expert_optimizer_shard_elems " +
                  std::to_string(p.expert_optimizer_shard_elems) +
                  " needs expert parallelism (ep " + std::to_string(p.grid[3]) +
                  ") and a sharded dense region, with num_param_elems " +
                  std::to_string(p.num_param_elems) + " = dp " + std::to_string(p.grid[1]) +
                  " x optimizer_shard_elems " + std::to_string(p.optimizer_shard_elems) +
                  " + dp / ep " + std::to_string(edp) + " x expert_optimizer_shard_elems");
  } else if (p.optimizer_shard_elems < 0 ||
             (p.optimizer_shard_elems > 0 &&
              p.optimizer_shard_elems * p.grid[1] != p.num_param_elems)) {
    throw Error(where + "optimizer_shard_elems " + std::to_string(p.optimizer_shard_elems) +
                " must be 0 (no distributed optimizer) or num_param_elems / dp = " +
                std::to_string(p.num_param_elems) + " / " + std::to_string(p.grid[1]));
  }
  if (p.backend == nullptr && p.target != "host")
    throw Error(where + "target \"" + p.target + "\" has no backend (ProgramDesc::backend "
                "is null, which means host memory)");
  if (const Backend* b = p.backend) {
    if (b->name == nullptr || b->alloc == nullptr || b->release == nullptr ||
        b->upload == nullptr || b->download == nullptr || b->zero == nullptr ||
        b->synchronize == nullptr || b->memory_info == nullptr)
      throw Error(where + "backend \"" + (b->name ? b->name : "?") + "\" lacks a function "
                  "(name, alloc, release, upload, download, zero, synchronize and "
                  "memory_info are all required)");
  }
  if (p.destroy_context != nullptr && p.create_context == nullptr)
    throw Error(where + "destroy_context is set without create_context");
  std::set<std::string> names;
  std::vector<std::pair<int64_t, size_t>> spans;  // (offset, param index)
  for (size_t i = 0; i < p.params.size(); ++i) {
    const ParamDesc& d = p.params[i];
    std::string at = where + "parameter \"" + d.name + "\": ";
    if (d.name.empty()) throw Error(where + "parameter " + std::to_string(i) + " has no name");
    if (!names.insert(d.name).second) throw Error(at + "the name is used twice");
    for (int64_t dim : d.shape)
      if (dim < 0) throw Error(at + "negative shape " + shape_string(d.shape));
    int64_t parts = 1;  // ranks sharing the tensor along its split axis
    if (d.split_dim != -1 || d.split_axis != -1) {
      const std::string split = "split_dim " + std::to_string(d.split_dim) + ", split_axis " +
                                std::to_string(d.split_axis) + ": ";
      if (d.split_dim < 0 || d.split_dim >= static_cast<int>(d.shape.size()))
        throw Error(at + split + "split_dim is not a dimension of shape " +
                    shape_string(d.shape) + " (-1 for an unsplit tensor)");
      if (d.split_axis < 1 || d.split_axis > 3)
        throw Error(at + split +
                    "split_axis must be 1 (data), 2 (tensor) or 3 (expert parallel)");
      parts = p.grid[d.split_axis];
      if (d.shape[static_cast<size_t>(d.split_dim)] % parts != 0)
        throw Error(at + split + "dimension " + std::to_string(d.split_dim) + " of shape " +
                    shape_string(d.shape) + " does not divide evenly over the " +
                    std::to_string(parts) + " ranks of the axis");
    }
    if (d.split2_dim != -1 || d.split2_axis != -1) {
      // Only the experts' pair: dimension 0 over ep, then another over tp.
      if (d.split_axis != 3 || d.split_dim != 0 || d.split2_axis != 2 || d.split2_dim < 1 ||
          d.split2_dim >= static_cast<int>(d.shape.size()))
        throw Error(at + "a second split (split2_dim " + std::to_string(d.split2_dim) +
                    ", split2_axis " + std::to_string(d.split2_axis) +
                    ") is only valid as tp (axis 2) on a dimension >= 1 after ep (axis 3) on "
                    "dimension 0");
      if (d.shape[static_cast<size_t>(d.split2_dim)] % p.grid[2] != 0)
        throw Error(at + "dimension " + std::to_string(d.split2_dim) + " of shape " +
                    shape_string(d.shape) + " does not divide evenly over tp " +
                    std::to_string(p.grid[2]));
      parts *= p.grid[2];
    }
    if (shape_numel(d.shape) != d.numel * parts)
      throw Error(at + "numel " + std::to_string(d.numel) + " != product of shape " +
                  shape_string(d.shape) +
                  (parts > 1 ? " / " + std::to_string(parts) + " ranks" : std::string()));
    if (d.offset < 0 || d.offset + d.numel > p.num_param_elems)
      throw Error(at + "elements [" + std::to_string(d.offset) + ", " +
                  std::to_string(d.offset + d.numel) + ") lie outside the " +
                  std::to_string(p.num_param_elems) + "-element allocation");
    if (d.init == InitKind::normal && !(d.init_std >= 0))
      throw Error(at + "init_std must be >= 0");
    spans.emplace_back(d.offset, i);
  }
  std::sort(spans.begin(), spans.end());
  for (size_t k = 1; k < spans.size(); ++k) {
    const ParamDesc& a = p.params[spans[k - 1].second];
    const ParamDesc& b = p.params[spans[k].second];
    if (a.offset + a.numel > b.offset)
      throw Error(where + "parameters \"" + a.name + "\" and \"" + b.name + "\" overlap");
  }
  const TrainConfig& t = p.train;
  if (t.micro_batch < 1 || t.seq_length < 1 || t.vocab_size < 1 ||
      t.num_microbatches < 1 || t.global_batch < 1)
    throw Error(where + "micro_batch, seq_length, vocab_size, num_microbatches "
                "and global_batch must be >= 1");
  if (t.global_batch % (t.micro_batch * t.num_microbatches) != 0)
    throw Error(where + "global_batch " + std::to_string(t.global_batch) +
                " is not a multiple of micro_batch x num_microbatches = " +
                std::to_string(t.micro_batch * t.num_microbatches));
  if (t.global_batch != t.micro_batch * t.num_microbatches * p.grid[1])
    throw Error(where + "global_batch " + std::to_string(t.global_batch) + " = micro_batch " +
                std::to_string(t.micro_batch) + " x " + std::to_string(t.num_microbatches) +
                " microbatches x dp " +
                std::to_string(t.global_batch / (t.micro_batch * t.num_microbatches)) +
                ", but the program's grid has dp = " + std::to_string(p.grid[1]));
}

void init_params(const ProgramDesc& p, uint64_t seed, float* params, const GridIndex& at) {
  for (const ParamDesc& d : p.params) {
    float* x = params + d.offset;
    switch (d.init) {
      case InitKind::zeros: std::fill(x, x + d.numel, 0.0f); break;
      case InitKind::ones: std::fill(x, x + d.numel, 1.0f); break;
      case InitKind::normal: {
        // Local element i is element s.global_at(i) of the global tensor.
        const ParamSlices s = param_slices(d, p.grid, at);
        const uint64_t key = detail::stream_key(seed, detail::fnv1a(d.name));
        for (int64_t i = 0; i < d.numel; ++i)
          x[i] = static_cast<float>(
              d.init_std * detail::normal_at(key, static_cast<uint64_t>(s.global_at(i))));
        break;
      }
    }
  }
}

ProgramDesc pipeline_stage_program(const ProgramDesc& p, int64_t pp_rank) {
  if (p.pipeline.empty()) return p;
  if (pp_rank < 0 || pp_rank >= static_cast<int64_t>(p.pipeline.size()))
    throw Error("program \"" + p.model_name + "\": no pipeline stage " +
                std::to_string(pp_rank));
  const PipelineStageDesc& s = p.pipeline[static_cast<size_t>(pp_rank)];
  ProgramDesc r = p;
  r.pipeline.clear();
  r.params = s.params;
  r.num_param_elems = s.num_param_elems;
  r.optimizer_shard_elems = s.optimizer_shard_elems;
  r.expert_optimizer_shard_elems = 0;  // expert parallelism runs with pp = 1
  r.arena_floats = s.arena_floats;
  r.compute_param_bytes = s.compute_param_bytes;
  r.flops_per_step = s.flops_per_step;
  r.forward_loss = nullptr;
  r.forward_backward = nullptr;
  r.optimizer_step = s.optimizer_step;
  r.pipeline_step = s.step;
  r.pipeline_eval = s.eval;
  return r;
}

ProgramDesc global_layout(const ProgramDesc& p) {
  ProgramDesc g = p;
  int64_t offset = 0;
  for (ParamDesc& d : g.params) {
    d.offset = offset;
    d.numel = shape_numel(d.shape);
    d.split_dim = d.split2_dim = -1;
    d.split_axis = d.split2_axis = -1;
    offset += d.numel;
  }
  g.num_param_elems = offset;
  return g;
}

}  // namespace mtc::rt
