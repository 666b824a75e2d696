// Spec parsing: the text of a spec file -> Spec (docs/spec.md).
//
// Steps: (1) parse the JSON (comments allowed) in linear time, noting
// duplicate keys and cutting objects after 64 keys; a syntax error ends here
// with its line and column. (2) Walk each section in
// file order: unknown keys get a "did you mean" suggestion, values of the
// wrong type are reported and their paths marked bad. The model's arch
// preset is applied before its keys, so explicit keys win whatever their
// order. (3) Fill defaults that depend on other keys (num_kv_heads,
// ffn_hidden_size). (4) Run every range and cross-field rule (Validate.cpp),
// skipping rules on fields already reported.
//
// nlohmann::json reports errors by throwing; nothing thrown leaves parseSpec.
#include "SpecInternal.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <functional>

namespace mtc::spec {
namespace {

using Json = nlohmann::ordered_json;

std::string join(const std::string& section, const std::string& key) {
  return section.empty() ? key : section + "." + key;
}

// A key as quoted in messages: 'num_heads', with JSON escapes for odd bytes.
std::string quoteKey(const std::string& key) {
  std::string s = Json(key).dump(-1, ' ', false, Json::error_handler_t::replace);
  s = s.substr(1, s.size() - 2);
  if (s.size() > 64) s = s.substr(0, 61) + "...";
  return "'" + s + "'";
}

// A JSON value as described in messages: "the integer 12", "a string
// (\"12\")". Arrays and objects are not printed (they may be deep or long).
std::string describe(const Json& v) {
  auto cut = [](std::string s) {
    if (s.size() <= 64) return s;
    size_t n = 61;
    while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;  // UTF-8 boundary
    return s.substr(0, n) + "...";
  };
  switch (v.type()) {
    case Json::value_t::null: return "null";
    case Json::value_t::boolean: return v.get<bool>() ? "true" : "false";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned: return "the integer " + v.dump();
    case Json::value_t::number_float: return "the number " + detail::formatReal(v.get<double>());
    case Json::value_t::string:
      return "the string " + cut(v.dump(-1, ' ', false, Json::error_handler_t::replace));
    case Json::value_t::array:
      return "an array of " + std::to_string(v.size()) + (v.size() == 1 ? " element" : " elements");
    case Json::value_t::object: return "an object";
    default: return "an unsupported value";
  }
}

// Keys other programs use for our keys (Megatron's flags, Hugging Face
// configs, GPT-2 configs), for "did you mean".
const std::map<std::string, std::string>& aliases() {
  static const std::map<std::string, std::string> table = {
      {"num_attention_heads", "model.num_heads"}, {"n_head", "model.num_heads"},
      {"num_query_groups", "model.num_kv_heads"}, {"num_key_value_heads", "model.num_kv_heads"},
      {"num_hidden_layers", "model.num_layers"},  {"n_layer", "model.num_layers"},
      {"n_embd", "model.hidden_size"},            {"intermediate_size", "model.ffn_hidden_size"},
      {"max_position_embeddings", "model.seq_length"}, {"n_positions", "model.seq_length"},
      {"n_ctx", "model.seq_length"},              {"seq_len", "model.seq_length"},
      {"padded_vocab_size", "model.vocab_size"},  {"normalization", "model.norm"},
      {"layernorm_epsilon", "model.norm_eps"},    {"rms_norm_eps", "model.norm_eps"},
      {"layer_norm_epsilon", "model.norm_eps"},   {"hidden_act", "model.activation"},
      {"position_embedding_type", "model.position_embedding"},
      {"rotary_base", "model.rope_theta"},        {"tie_word_embeddings", "model.tied_embeddings"},
      {"untie_embeddings_and_output_weights", "model.tied_embeddings"},
      {"init_method_std", "model.init_std"},      {"initializer_range", "model.init_std"},
      {"tensor_model_parallel_size", "parallel.tp"}, {"pipeline_model_parallel_size", "parallel.pp"},
      {"data_parallel_size", "parallel.dp"},      {"expert_model_parallel_size", "parallel.ep"},      {"sequence_parallel", "parallel.sp"},
      {"virtual_pipeline_model_parallel_size", "parallel.virtual_stages"},
      {"num_microbatches", "parallel.microbatches"},
      {"use_distributed_optimizer", "parallel.distributed_optimizer"},
      {"recompute_granularity", "recompute"},     {"train_iters", "training.train_steps"},
      {"clip_grad", "training.grad_clip"},        {"bf16", "training.precision"},
      {"fp16", "training.precision"},             {"lr_warmup_iters", "training.optimizer.warmup_steps"},
      {"lr_decay_iters", "training.optimizer.decay_steps"},
      {"lr_decay_style", "training.optimizer.decay"},
      {"adam_beta1", "training.optimizer.beta1"}, {"adam_beta2", "training.optimizer.beta2"},
      {"adam_eps", "training.optimizer.eps"},
  };
  return table;
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// The closest of `candidates` to `word`, if it is close enough to be a typo.
std::optional<std::string> closest(const std::string& word, const std::vector<std::string>& candidates) {
  if (word.size() > 64) return std::nullopt;
  std::string w = lower(word);
  std::optional<std::string> best;
  size_t best_d = 0;
  for (const std::string& c : candidates) {
    size_t d = detail::editDistance(w, c);
    if (!best || d < best_d) best = c, best_d = d;
  }
  if (best && best_d <= std::max<size_t>(1, std::min<size_t>(3, w.size() / 3))) return best;
  // A fragment of exactly one candidate ("vocab" for "vocab_size").
  std::optional<std::string> part;
  if (w.size() >= 3) {
    for (const std::string& c : candidates) {
      if (c.find(w) == std::string::npos) continue;
      if (part) return std::nullopt;
      part = c;
    }
  }
  return part;
}

// Builds the document from nlohmann's SAX events, in time linear in the
// text. nlohmann's own builders are quadratic on some inputs: with a parser
// callback, the end of every object scans its parent for discarded values
// (an array of n objects: n^2 / 2 steps), and ordered_json finds a key by a
// linear scan of its object. Here each object keeps a set of its keys
// (duplicates found in O(log n)) and takes at most kMaxKeys keys: no spec
// object has more that mean something, so the rest are dropped with one
// diagnostic, and each insertion scans at most kMaxKeys keys. Parse errors
// are recorded (nlohmann's error id, byte offset and message) for parseJson
// to report.
class DocumentBuilder : public nlohmann::json_sax<Json> {
 public:
  static constexpr size_t kMaxKeys = 64;
  struct Failure {
    int id = 0;       // nlohmann's: 101 syntax error, 406 number overflow, ...
    size_t byte = 0;  // offset just past the offending token
    std::string what;
  };

  // `max_fields`: the most keys a spec object has, for the message.
  explicit DocumentBuilder(size_t max_fields) : max_fields_(max_fields) {}

  Json take() { return std::move(root_); }
  const std::vector<Diagnostic>& noted() const { return noted_; }
  const Failure& failure() const { return failure_; }

  bool null() override { return scalar(Json(nullptr)); }
  bool boolean(bool v) override { return scalar(Json(v)); }
  bool number_integer(number_integer_t v) override { return scalar(Json(v)); }
  bool number_unsigned(number_unsigned_t v) override { return scalar(Json(v)); }
  bool number_float(number_float_t v, const string_t&) override { return scalar(Json(v)); }
  bool string(string_t& v) override { return scalar(Json(std::move(v))); }
  bool binary(binary_t& v) override { return scalar(Json::binary(std::move(v))); }
  bool start_object(std::size_t) override { return open(Json::object()); }
  bool start_array(std::size_t) override { return open(Json::array()); }
  bool end_object() override { return close(); }
  bool end_array() override { return close(); }

  bool key(string_t& k) override {
    Frame& top = stack_.back();
    top.key = std::move(k);
    top.keep_next = top.value != nullptr;
    if (!top.keep_next) return true;
    if (top.keys.size() >= kMaxKeys && !top.keys.count(top.key)) {
      top.keep_next = false;
      if (!top.capped) {
        top.capped = true;
        noted_.push_back({top.path, "more than " + std::to_string(kMaxKeys) +
                                        " keys in one object (a spec object has at most " +
                                        std::to_string(max_fields_) + "); the keys after the " +
                                        std::to_string(kMaxKeys) + "th are not read"});
      }
    } else if (!top.keys.insert(top.key).second && noted_.size() < 100) {
      noted_.push_back({join(top.path, top.key), "duplicate key " + quoteKey(top.key) +
                                                     " (JSON would silently keep the last value); remove one"});
    }
    return true;
  }

  bool parse_error(std::size_t byte, const std::string&, const nlohmann::detail::exception& e) override {
    failure_ = {e.id, byte, e.what()};
    return false;
  }

 private:
  struct Frame {
    Json* value;  // the object or array being filled; null inside a dropped value
    std::string path;
    std::set<std::string> keys;  // an object's keys so far
    std::string key;             // the key whose value comes next
    bool keep_next = true;       // false: that value is dropped
    bool capped = false;         // more than kMaxKeys keys seen
  };

  // Puts `v` where the document stands; returns where it went (null when
  // dropped). Values of a container on the stack do not move: only the
  // innermost container grows.
  Json* place(Json v) {
    if (stack_.empty()) {
      root_ = std::move(v);
      return &root_;
    }
    Frame& top = stack_.back();
    if (!top.value) return nullptr;
    if (top.value->is_array()) {
      top.value->push_back(std::move(v));
      return &top.value->back();
    }
    if (!top.keep_next) return nullptr;
    Json& slot = (*top.value)[top.key];
    slot = std::move(v);
    return &slot;
  }

  bool scalar(Json v) {
    place(std::move(v));
    return true;
  }

  bool open(Json empty) {
    std::string path;
    if (!stack_.empty()) {
      const Frame& top = stack_.back();
      // No spec is this deep; keep paths short.
      path = stack_.size() > 32 ? top.path : top.value && top.value->is_array() ? top.path + "[]"
                                                                                 : join(top.path, top.key);
    }
    Json* value = place(std::move(empty));
    stack_.push_back({value, std::move(path), {}, {}});
    return true;
  }

  bool close() {
    stack_.pop_back();
    return true;
  }

  size_t max_fields_;
  Json root_;
  std::vector<Frame> stack_;
  std::vector<Diagnostic> noted_;  // duplicate keys, objects with too many keys
  Failure failure_;
};

class Parser {
 public:
  explicit Parser(std::vector<Diagnostic>& diags) : diags_(diags) { defineFields(); }

  std::optional<Spec> run(const std::string& text) {
    size_t before = diags_.size();
    std::optional<Json> root = parseJson(text);
    if (!root) return std::nullopt;
    if (!root->is_object()) {
      error("", "the spec must be a JSON object like {\"model\": {...}}, got " + describe(*root));
      return std::nullopt;
    }
    readObject(*root, "");
    if (!given_.count("model")) {
      // readObject reported it; the model's fields are all missing.
      for (const Field& f : fields_.at("model")) ctx_.bad.insert(join("model", f.key));
    }
    fillDefaults();
    detail::checkSpec(spec_, ctx_, diags_);
    if (diags_.size() != before) return std::nullopt;
    return spec_;
  }

 private:
  using Reader = std::function<void(const Json& value, const std::string& path)>;
  struct Field {
    std::string key;
    Reader read;
    const char* required;  // what it is, for "missing required key"; null: optional
  };

  void error(const std::string& path, std::string message) {
    diags_.push_back({path, std::move(message)});
    ctx_.bad.insert(path);
  }

  // ---- JSON text ----------------------------------------------------------

  // "line 3, column 5" for a 0-based byte offset.
  static std::string position(const std::string& text, size_t offset) {
    offset = std::min(offset, text.size());
    size_t line = 1, column = 1;
    for (size_t i = 0; i < offset; ++i) {
      if (text[i] == '\n') ++line, column = 1;
      else ++column;
    }
    return "line " + std::to_string(line) + ", column " + std::to_string(column);
  }

  std::optional<Json> parseJson(const std::string& text) {
    if (text.find_first_not_of(" \t\r\n") == std::string::npos) {
      error("", "the file is empty; a spec is a JSON object like {\"model\": {...}}");
      return std::nullopt;
    }
    DocumentBuilder builder(maxFields());
    bool parsed = false;
    try {
      parsed = Json::sax_parse(text, &builder, Json::input_format_t::json, /*strict=*/true,
                               /*ignore_comments=*/true);
    } catch (const Json::exception& e) {
      error("", std::string("not valid JSON: ") + e.what());
      return std::nullopt;
    }
    for (const Diagnostic& d : builder.noted()) error(d.path, d.message);
    if (parsed) return builder.take();
    const DocumentBuilder::Failure& f = builder.failure();
    if (f.id == 406) {
      // "number overflow parsing '1e400'"; the token ends at f.byte.
      size_t open = f.what.find('\''), close = f.what.rfind('\'');
      std::string literal = open < close ? f.what.substr(open + 1, close - open - 1) : "";
      size_t at = !literal.empty() && f.byte >= literal.size() ? f.byte - literal.size() : std::string::npos;
      error("", (at == std::string::npos ? std::string() : position(text, at) + ": ") + "the number " +
                    (literal.empty() ? std::string("here") : literal) + " is out of range of a double");
    } else {
      // what: "[json.exception.parse_error.101] parse error at line 3,
      // column 5: syntax error while parsing ..."; keep the part after the
      // position, which we compute ourselves from the byte offset.
      size_t column = f.what.find("column ");
      size_t colon = column == std::string::npos ? std::string::npos : f.what.find(": ", column);
      std::string reason = colon == std::string::npos ? f.what : f.what.substr(colon + 2);
      // The two commonest slips, which nlohmann's wording hides.
      if (reason.find("unexpected string literal; expected '}'") != std::string::npos ||
          (reason.find("; expected ']'") != std::string::npos &&
           reason.find("end of input") == std::string::npos))
        reason += " (a missing comma?)";
      else if (reason.find("unexpected '}'; expected string literal") != std::string::npos ||
               reason.find("unexpected ']'; expected '[', '{', or a literal") != std::string::npos)
        reason += " (a trailing comma?)";
      error("", position(text, f.byte > 0 ? f.byte - 1 : 0) + ": not valid JSON: " + reason);
    }
    return std::nullopt;
  }

  // The most keys any section has (model's).
  size_t maxFields() const {
    size_t n = 0;
    for (const auto& section : fields_) n = std::max(n, section.second.size());
    return n;
  }

  // ---- sections -----------------------------------------------------------

  void readObject(const Json& obj, const std::string& path) {
    const std::vector<Field>& fields = fields_.at(path);
    for (const auto& item : obj.items()) {
      const std::string& key = item.key();
      auto f = std::find_if(fields.begin(), fields.end(), [&](const Field& x) { return x.key == key; });
      if (f == fields.end()) {
        unknownKey(path, key);
        continue;
      }
      given_.insert(join(path, key));
      f->read(item.value(), join(path, key));
    }
    for (const Field& f : fields) {
      std::string p = join(path, f.key);
      if (f.required && !given_.count(p))
        error(p, "missing required key " + quoteKey(f.key) + ": " + f.required);
    }
  }

  Reader section(const std::string& path) {
    return [this, path](const Json& v, const std::string&) {
      if (!v.is_object()) {
        error(path, "expected an object {...}, got " + describe(v));
        for (const Field& f : fields_.at(path)) ctx_.bad.insert(join(path, f.key));
        return;
      }
      if (path == "model") applyArchPreset(v);
      readObject(v, path);
    };
  }

  void unknownKey(const std::string& section, const std::string& key) {
    std::string message = "unknown key " + quoteKey(key);
    std::string lkey = lower(key);
    // The same key elsewhere ("num_heads" at the top level).
    std::vector<std::string> here, everywhere;
    for (const Field& f : fields_.at(section)) here.push_back(f.key);
    std::optional<std::string> suggestion;
    for (const auto& [sec, fields] : fields_)
      for (const Field& f : fields) {
        everywhere.push_back(join(sec, f.key));
        if (sec != section && f.key == lkey && !suggestion) suggestion = join(sec, f.key);
      }
    if (!suggestion) {
      auto alias = aliases().find(lkey);
      if (alias != aliases().end()) suggestion = alias->second;
    }
    if (!suggestion) {
      if (auto near = closest(key, here)) suggestion = join(section, *near);
    }
    if (!suggestion) {
      std::vector<std::string> leaves;
      for (const std::string& p : everywhere) leaves.push_back(p.substr(p.rfind('.') + 1));
      if (auto near = closest(key, leaves))
        for (const std::string& p : everywhere)
          if (p.substr(p.rfind('.') + 1) == *near) { suggestion = p; break; }
    }
    if (suggestion) {
      // Name it relative to this section when it belongs here.
      std::string prefix = section.empty() ? "" : section + ".";
      bool local = !prefix.empty() && suggestion->compare(0, prefix.size(), prefix) == 0 &&
                   suggestion->find('.', prefix.size()) == std::string::npos;
      message += "; did you mean " + quoteKey(local ? suggestion->substr(prefix.size()) : *suggestion) + "?";
    } else {
      message += "; valid keys " + std::string(section.empty() ? "at the top level" : "in " + section) + ": ";
      for (size_t i = 0; i < here.size(); ++i) message += (i ? ", " : "") + here[i];
    }
    error(join(section, key), message);
  }

  // ---- values -------------------------------------------------------------

  Reader integer(int64_t& out) {
    return [this, &out](const Json& v, const std::string& path) {
      if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX)) {
        error(path, v.dump() + " is too large (at most 2^40 = " + std::to_string(detail::kMaxInt) + ")");
      } else if (v.is_number_integer()) {
        out = v.get<int64_t>();
      } else if (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>()) {
        // 1e5 or 12.0: an integer written as a float.
        double d = v.get<double>();
        if (std::fabs(d) <= 9e15) out = static_cast<int64_t>(d);
        else error(path, detail::formatReal(d) + " is too large (at most 2^40 = " + std::to_string(detail::kMaxInt) + ")");
      } else {
        error(path, "expected an integer, got " + describe(v));
      }
    };
  }

  Reader count(std::optional<int64_t>& out) {
    return [this, &out](const Json& v, const std::string& path) {
      int64_t value = 0;
      size_t before = diags_.size();
      integer(value)(v, path);
      if (diags_.size() == before) out = value;
    };
  }

  Reader seed(uint64_t& out) {
    return [this, &out](const Json& v, const std::string& path) {
      if (v.is_number_unsigned()) out = v.get<uint64_t>();
      else if (v.is_number_integer()) error(path, "must be a non-negative integer, got " + v.dump());
      else if (v.is_number_float() && v.get<double>() >= 0 && v.get<double>() <= 9e15 &&
               std::floor(v.get<double>()) == v.get<double>())
        out = static_cast<uint64_t>(v.get<double>());
      else error(path, "expected a non-negative integer below 2^64, got " + describe(v));
    };
  }

  Reader real(double& out) {
    return [this, &out](const Json& v, const std::string& path) {
      if (v.is_number()) out = v.get<double>();
      else error(path, "expected a number, got " + describe(v));
    };
  }

  Reader boolean(bool& out) {
    return [this, &out](const Json& v, const std::string& path) {
      if (v.is_boolean()) out = v.get<bool>();
      else error(path, "expected true or false, got " + describe(v));
    };
  }

  Reader string(std::string& out) {
    return [this, &out](const Json& v, const std::string& path) {
      if (v.is_string()) out = v.get<std::string>();
      else error(path, "expected a string, got " + describe(v));
    };
  }

  template <class E> Reader enumeration(E& out) {
    return [this, &out](const Json& v, const std::string& path) {
      std::string valid = detail::enumSpellings<E>();
      if (!v.is_string()) {
        error(path, "expected one of " + valid + ", got " + describe(v));
        return;
      }
      std::string s = v.get<std::string>();
      if (auto e = detail::enumFromString<E>(s)) {
        out = *e;
        return;
      }
      std::vector<std::string> names;
      for (int i = 0; i < detail::kEnumCount<E>; ++i) names.push_back(toString(static_cast<E>(i)));
      std::string message = describe(v) + " is not valid; valid values: " + valid;
      if (auto near = closest(s, names)) message += " (did you mean '" + *near + "'?)";
      error(path, message);
    };
  }

  // ---- the format ---------------------------------------------------------

  // Defaults that depend on arch (docs/spec.md, "Presets"). Runs before the
  // model's keys are read, so explicit keys override it.
  void applyArchPreset(const Json& model) {
    auto it = model.find("arch");
    if (it == model.end() || !it->is_string()) return;
    std::optional<Arch> arch = detail::enumFromString<Arch>(it->get<std::string>());
    if (!arch) return;
    ModelSpec& m = spec_.model;
    m.arch = *arch;
    switch (*arch) {
      case Arch::gpt:
        m.norm = NormKind::layernorm, m.norm_placement = NormPlacement::pre, m.norm_eps = 1e-5;
        m.activation = Activation::gelu_tanh, m.position_embedding = PositionKind::learned;
        m.tied_embeddings = true, m.bias = true, m.causal = true;
        break;
      case Arch::llama:
        m.norm = NormKind::rmsnorm, m.norm_placement = NormPlacement::pre, m.norm_eps = 1e-5;
        m.activation = Activation::swiglu, m.position_embedding = PositionKind::rope;
        m.tied_embeddings = false, m.bias = false, m.causal = true;
        break;
      case Arch::bert:
        m.norm = NormKind::layernorm, m.norm_placement = NormPlacement::post, m.norm_eps = 1e-12;
        m.activation = Activation::gelu, m.position_embedding = PositionKind::learned;
        m.tied_embeddings = true, m.bias = true, m.causal = false;
        break;
    }
  }

  void defineFields() {
    ModelSpec& m = spec_.model;
    ParallelSpec& p = spec_.parallel;
    TrainingSpec& t = spec_.training;
    OptimizerSpec& o = t.optimizer;
    fields_[""] = {
        {"model", section("model"), "the model's shape, an object"},
        {"parallel", section("parallel"), nullptr},
        {"recompute", enumeration(spec_.recompute), nullptr},
        {"training", section("training"), nullptr},
    };
    fields_["model"] = {
        {"name", string(m.name), nullptr},
        {"arch", enumeration(m.arch), nullptr},
        {"num_layers", integer(m.num_layers), "the number of transformer layers, a positive integer"},
        {"hidden_size", integer(m.hidden_size), "the model width, a positive integer"},
        {"num_heads", integer(m.num_heads), "the number of attention heads, a positive integer"},
        {"num_kv_heads", integer(m.num_kv_heads), nullptr},
        {"ffn_hidden_size", integer(m.ffn_hidden_size), nullptr},
        {"vocab_size", integer(m.vocab_size), "the number of token ids, a positive integer"},
        {"seq_length", integer(m.seq_length), "the training sequence length, a positive integer"},
        {"norm", enumeration(m.norm), nullptr},
        {"norm_placement", enumeration(m.norm_placement), nullptr},
        {"norm_eps", real(m.norm_eps), nullptr},
        {"activation", enumeration(m.activation), nullptr},
        {"position_embedding", enumeration(m.position_embedding), nullptr},
        {"rope_theta", real(m.rope_theta), nullptr},
        {"tied_embeddings", boolean(m.tied_embeddings), nullptr},
        {"bias", boolean(m.bias), nullptr},
        {"causal", boolean(m.causal), nullptr},
        {"hidden_dropout", real(m.hidden_dropout), nullptr},
        {"attention_dropout", real(m.attention_dropout), nullptr},
        {"init_std", real(m.init_std), nullptr},
        {"moe", section("model.moe"), nullptr},
    };
    MoeSpec& e = m.moe;
    fields_["model.moe"] = {
        {"num_experts", integer(e.num_experts), "the number of experts, a positive integer"},
        {"top_k", integer(e.top_k), nullptr},
        {"granularity", integer(e.granularity), nullptr},
        {"shared_expert_ffn_hidden_size", integer(e.shared_expert_ffn_hidden_size), nullptr},
        {"router", enumeration(e.router), nullptr},
        {"router_scale", real(e.router_scale), nullptr},
        {"aux_loss_coeff", real(e.aux_loss_coeff), nullptr},
        {"z_loss_coeff", real(e.z_loss_coeff), nullptr},
        {"layer_freq",
         [this, &e](const Json& v, const std::string& path) {
           // An integer N (every N-th layer) or a list of 0/1, one a layer.
           if (!v.is_array()) {
             integer(e.layer_freq)(v, path);
             return;
           }
           e.layer_pattern.clear();
           for (size_t i = 0; i < v.size(); ++i) {
             const Json& x = v[i];
             if (!x.is_number_integer() || (x.get<int64_t>() != 0 && x.get<int64_t>() != 1)) {
               error(path, "element " + std::to_string(i) + " of the layer pattern must be 0 "
                           "(a dense MLP) or 1 (an MoE layer), got " + describe(x));
               return;
             }
             e.layer_pattern.push_back(x.get<int64_t>());
           }
         },
         nullptr},
        {"capacity_factor", real(e.capacity_factor), nullptr},
        {"drop_policy", enumeration(e.drop_policy), nullptr},
        {"expert_bias", boolean(e.expert_bias), nullptr},
        {"bias_update_rate", real(e.bias_update_rate), nullptr},
    };
    fields_["parallel"] = {
        {"tp", integer(p.tp), nullptr},
        {"pp", integer(p.pp), nullptr},
        {"dp", integer(p.dp), nullptr},
        {"ep", integer(p.ep), nullptr},
        {"sp", boolean(p.sp), nullptr},
        {"virtual_stages", integer(p.virtual_stages), nullptr},
        {"microbatches", count(p.microbatches), nullptr},
        {"schedule", enumeration(p.schedule), nullptr},
        {"pipeline_layout", string(p.pipeline_layout), nullptr},
        {"distributed_optimizer", boolean(p.distributed_optimizer), nullptr},
    };
    fields_["training"] = {
        {"micro_batch_size", integer(t.micro_batch_size), nullptr},
        {"global_batch_size",
         [this, &t](const Json& v, const std::string& path) {
           integer(t.global_batch_size)(v, path);
           // 0 stands for "not given" in the struct, so a written 0 is
           // rejected here.
           if (!ctx_.bad.count(path) && t.global_batch_size == 0)
             error(path, "must be a positive integer, got 0 (leave it out for micro_batch_size * dp)");
         },
         nullptr},
        {"train_steps", integer(t.train_steps), nullptr},
        {"precision", enumeration(t.precision), nullptr},
        {"optimizer", section("training.optimizer"), nullptr},
        {"grad_clip", real(t.grad_clip), nullptr},
        {"seed", seed(t.seed), nullptr},
    };
    fields_["training.optimizer"] = {
        {"type",
         [this](const Json& v, const std::string& path) {
           if (!v.is_string() || v.get<std::string>() != "adamw")
             error(path, describe(v) + " is not a supported optimizer; valid values: 'adamw'");
         },
         nullptr},
        {"lr", real(o.lr), nullptr},
        {"min_lr", real(o.min_lr), nullptr},
        {"beta1", real(o.beta1), nullptr},
        {"beta2", real(o.beta2), nullptr},
        {"eps", real(o.eps), nullptr},
        {"weight_decay", real(o.weight_decay), nullptr},
        {"warmup_steps", integer(o.warmup_steps), nullptr},
        {"decay_steps", integer(o.decay_steps), nullptr},
        {"decay", enumeration(o.decay), nullptr},
    };
  }

  // num_kv_heads and ffn_hidden_size when the file leaves them out; a
  // default computed from a bad field is bad too (reported once, there).
  void fillDefaults() {
    ModelSpec& m = spec_.model;
    auto bad = [&](const char* path) { return ctx_.bad.count(path) != 0; };
    if (!given_.count("model.num_kv_heads")) {
      m.num_kv_heads = m.num_heads;
      if (bad("model.num_heads") || m.num_heads < 1 || m.num_heads > detail::kMaxInt)
        ctx_.bad.insert("model.num_kv_heads");
    }
    // "no MoE" is model.moe left out, never a written num_experts of 0.
    if (given_.count("model.moe.num_experts") && !bad("model.moe.num_experts") &&
        m.moe.num_experts < 1)
      error("model.moe.num_experts", "must be a positive integer, got " +
                                         std::to_string(m.moe.num_experts) +
                                         " (leave model.moe out for a dense model)");
    if (!given_.count("model.ffn_hidden_size")) {
      m.ffn_hidden_size = defaultFfnHiddenSize(m.hidden_size, m.activation);
      if (bad("model.hidden_size") || bad("model.activation") || m.ffn_hidden_size == 0)
        ctx_.bad.insert("model.ffn_hidden_size");
    }
  }

  Spec spec_;
  detail::CheckContext ctx_;
  std::vector<Diagnostic>& diags_;
  std::map<std::string, std::vector<Field>> fields_;  // section path -> its keys
  std::set<std::string> given_;                        // paths written in the file
};

}  // namespace

std::optional<Spec> parseSpec(const std::string& text, std::vector<Diagnostic>& diags) {
  try {
    return Parser(diags).run(text);
  } catch (const std::exception& e) {
    diags.push_back({"", std::string("internal error while reading the spec: ") + e.what()});
  } catch (...) {
    diags.push_back({"", "internal error while reading the spec"});
  }
  return std::nullopt;
}

}  // namespace mtc::spec
