// Checks on the emitted ProgramDesc and deterministic parameter
// initialization (rules in mtc/rt/trainer.h).
#include <algorithm>
#include <set>

#include "common/rng.h"
#include "mtc/rt/io.h"
#include "mtc/rt/safetensors.h"
#include "mtc/rt/trainer.h"

namespace mtc::rt {

void validate_program(const ProgramDesc& p) {
  const std::string where = "program \"" + p.model_name + "\": ";
  if (p.forward_loss == nullptr || p.forward_backward == nullptr ||
      p.optimizer_step == nullptr)
    throw Error(where + "an entry point (forward_loss, forward_backward, "
                "optimizer_step) is missing");
  if (p.num_param_elems < 0 || p.arena_floats < 0 || p.compute_param_bytes < 0)
    throw Error(where + "num_param_elems, arena_floats and compute_param_bytes must be >= 0");
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
    if (shape_numel(d.shape) != d.numel)
      throw Error(at + "numel " + std::to_string(d.numel) + " != product of shape " +
                  shape_string(d.shape));
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
}

void init_params(const ProgramDesc& p, uint64_t seed, float* params) {
  for (const ParamDesc& d : p.params) {
    float* x = params + d.offset;
    switch (d.init) {
      case InitKind::zeros: std::fill(x, x + d.numel, 0.0f); break;
      case InitKind::ones: std::fill(x, x + d.numel, 1.0f); break;
      case InitKind::normal: {
        const uint64_t key = detail::stream_key(seed, detail::fnv1a(d.name));
        for (int64_t i = 0; i < d.numel; ++i)
          x[i] = static_cast<float>(d.init_std *
                                    detail::normal_at(key, static_cast<uint64_t>(i)));
        break;
      }
    }
  }
}

}  // namespace mtc::rt
