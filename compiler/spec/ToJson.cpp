// Spec -> JSON: the fully resolved spec, every default filled in, written
// with the key names and order of docs/spec.md, plus the derived
// model.padded_vocab_size. `mtc compile` stores it as DIR/spec.json so that
// tools outside the compiler (test/e2e/reference_gpt.py) see exactly the
// model that was built without re-implementing the presets and defaults.
//
// Assumes a spec that passed applyOverridesAndValidate (num_kv_heads,
// ffn_hidden_size and global_batch_size set); on a Spec built in code with
// those left 0 it writes their defaults. Doubles are written in the shortest
// form that reads back as the same double (nlohmann::json's dtoa), so the
// output re-parses to an equal spec once padded_vocab_size is removed.
#include "SpecInternal.h"

#include <nlohmann/json.hpp>

namespace mtc::spec {

std::string toJson(const Spec& spec) {
  using Json = nlohmann::ordered_json;
  const ModelSpec& m = spec.model;
  const ParallelSpec& p = spec.parallel;
  const TrainingSpec& t = spec.training;
  const OptimizerSpec& o = t.optimizer;

  Json model;
  model["name"] = m.name;
  model["arch"] = toString(m.arch);
  model["num_layers"] = m.num_layers;
  model["hidden_size"] = m.hidden_size;
  model["num_heads"] = m.num_heads;
  model["num_kv_heads"] = m.num_kv_heads != 0 ? m.num_kv_heads : m.num_heads;
  model["ffn_hidden_size"] = m.ffn_hidden_size != 0
                                 ? m.ffn_hidden_size
                                 : defaultFfnHiddenSize(m.hidden_size, m.activation);
  model["vocab_size"] = m.vocab_size;
  model["padded_vocab_size"] = spec.paddedVocabSize();
  model["seq_length"] = m.seq_length;
  model["norm"] = toString(m.norm);
  model["norm_placement"] = toString(m.norm_placement);
  model["norm_eps"] = m.norm_eps;
  model["activation"] = toString(m.activation);
  model["position_embedding"] = toString(m.position_embedding);
  model["rope_theta"] = m.rope_theta;
  model["tied_embeddings"] = m.tied_embeddings;
  model["bias"] = m.bias;
  model["causal"] = m.causal;
  model["hidden_dropout"] = m.hidden_dropout;
  model["attention_dropout"] = m.attention_dropout;
  model["init_std"] = m.init_std;
  if (m.moe.enabled()) {
    const MoeSpec& e = m.moe;
    Json moe;
    moe["num_experts"] = e.num_experts;
    moe["top_k"] = e.top_k;
    moe["granularity"] = e.granularity;
    moe["shared_expert_ffn_hidden_size"] = e.shared_expert_ffn_hidden_size;
    moe["router"] = toString(e.router);
    moe["router_scale"] = e.router_scale;
    moe["aux_loss_coeff"] = e.aux_loss_coeff;
    moe["z_loss_coeff"] = e.z_loss_coeff;
    if (e.layer_pattern.empty()) moe["layer_freq"] = e.layer_freq;
    else moe["layer_freq"] = e.layer_pattern;
    moe["capacity_factor"] = e.capacity_factor;
    // Only with token dropping: a dropless spec.json stays as it was.
    if (e.capacity_factor > 0) moe["drop_policy"] = toString(e.drop_policy);
    // Likewise only with an expert bias.
    if (e.expert_bias) {
      moe["expert_bias"] = true;
      moe["bias_update_rate"] = e.bias_update_rate;
    }
    model["moe"] = moe;
  }

  Json parallel;
  parallel["tp"] = p.tp;
  parallel["pp"] = p.pp;
  parallel["dp"] = p.dp;
  parallel["ep"] = p.ep;
  parallel["sp"] = p.sp;
  parallel["virtual_stages"] = p.virtual_stages;
  // The derived count when the spec leaves it out (0: not derivable, as on
  // an unvalidated spec; then it stays out, which is valid).
  if (int64_t mb = p.microbatches.value_or(spec.numMicrobatches()); mb > 0)
    parallel["microbatches"] = mb;
  parallel["schedule"] = toString(p.schedule);
  parallel["pipeline_layout"] = p.pipeline_layout;
  parallel["distributed_optimizer"] = p.distributed_optimizer;

  Json optimizer;
  optimizer["type"] = "adamw";
  optimizer["lr"] = o.lr;
  optimizer["min_lr"] = o.min_lr;
  optimizer["beta1"] = o.beta1;
  optimizer["beta2"] = o.beta2;
  optimizer["eps"] = o.eps;
  optimizer["weight_decay"] = o.weight_decay;
  optimizer["warmup_steps"] = o.warmup_steps;
  // 0 is kept: it means "until the run's --steps", which the trainer may set
  // to something other than train_steps.
  optimizer["decay_steps"] = o.decay_steps;
  optimizer["decay"] = toString(o.decay);

  Json training;
  training["micro_batch_size"] = t.micro_batch_size;
  if (int64_t g = detail::resolvedGlobalBatch(spec); g > 0) training["global_batch_size"] = g;
  training["train_steps"] = t.train_steps;
  training["precision"] = toString(t.precision);
  training["optimizer"] = std::move(optimizer);
  training["grad_clip"] = t.grad_clip;
  training["seed"] = t.seed;

  Json root;
  root["model"] = std::move(model);
  root["parallel"] = std::move(parallel);
  root["recompute"] = toString(spec.recompute);
  root["training"] = std::move(training);
  // replace: a name that never passed validation may hold invalid UTF-8.
  return root.dump(2, ' ', false, Json::error_handler_t::replace) + "\n";
}

}  // namespace mtc::spec
