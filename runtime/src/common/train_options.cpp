// Command-line flags of a training binary: the table, parsing, usage text
// and the checks between flags. Every error names the flag.
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <vector>

#include "mtc/rt/io.h"
#include "mtc/rt/trainer.h"

namespace mtc::rt {

namespace {

struct Flag {
  const char* name;
  const char* arg;   // nullptr: a switch without value
  const char* help;
  std::function<void(const std::string& flag, const std::string& value)> set;
};

int64_t parse_int(const std::string& flag, const std::string& v, int64_t min) {
  errno = 0;
  char* end = nullptr;
  long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno == ERANGE)
    throw Error(flag + ": expected an integer, got \"" + v + "\"");
  if (x < min)
    throw Error(flag + ": must be >= " + std::to_string(min) + ", got " + v);
  return x;
}

uint64_t parse_uint(const std::string& flag, const std::string& v) {
  errno = 0;
  char* end = nullptr;
  if (v.empty() || v[0] == '-')
    throw Error(flag + ": expected a non-negative integer, got \"" + v + "\"");
  unsigned long long x = std::strtoull(v.c_str(), &end, 10);
  if (*end != '\0' || errno == ERANGE)
    throw Error(flag + ": expected a non-negative integer, got \"" + v + "\"");
  return x;
}

double parse_double(const std::string& flag, const std::string& v) {
  errno = 0;
  char* end = nullptr;
  double x = std::strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0' || errno == ERANGE || !std::isfinite(x))
    throw Error(flag + ": expected a number, got \"" + v + "\"");
  return x;
}

std::vector<Flag> flag_table(TrainOptions& o) {
  auto str = [](std::string& dst) {
    return [&dst](const std::string& flag, const std::string& v) {
      if (v.empty()) throw Error(flag + ": expected a non-empty value");
      dst = v;
    };
  };
  auto int_at_least = [](int64_t& dst, int64_t min) {
    return [&dst, min](const std::string& flag, const std::string& v) {
      dst = parse_int(flag, v, min);
    };
  };
  return {
      {"--data", "PREFIX", "indexed dataset prefix (PREFIX.bin + PREFIX.idx) or a .tokens file",
       str(o.data)},
      {"--steps", "N", "total optimizer steps of the run (default: the compiled train_steps)",
       int_at_least(o.steps, 1)},
      {"--lr", "LR", "peak learning rate (default: compiled)",
       [&o](const std::string& f, const std::string& v) {
         o.lr = parse_double(f, v);
         o.lr_given = true;
       }},
      {"--min-lr", "LR", "learning rate at the end of the decay (default: compiled)",
       [&o](const std::string& f, const std::string& v) {
         o.min_lr = parse_double(f, v);
         o.min_lr_given = true;
       }},
      {"--seed", "N", "run seed: initialization, data order, dropout (default: compiled)",
       [&o](const std::string& f, const std::string& v) {
         o.seed = parse_uint(f, v);
         o.seed_given = true;
       }},
      {"--log-interval", "N", "print a log line every N steps (default 1)",
       int_at_least(o.log_interval, 1)},
      {"--eval-interval", "N", "validation loss every N steps and at the end (default 0: never)",
       int_at_least(o.eval_interval, 0)},
      {"--eval-iters", "N", "global batches per validation (default 10)",
       int_at_least(o.eval_iters, 1)},
      {"--split", "W,W[,W]", "train,valid[,test] document weights (default 98,2)", str(o.split)},
      {"--save", "DIR", "write checkpoints to DIR/step_NNNNNN (and DIR/latest)", str(o.save)},
      {"--save-interval", "N", "checkpoint every N steps (default 0: only at the end)",
       int_at_least(o.save_interval, 0)},
      {"--load", "DIR", "checkpoint to resume from (a --save DIR or a step directory)",
       str(o.load)},
      {"--resume", nullptr, "resume from --load, or from the latest checkpoint in --save",
       [&o](const std::string&, const std::string&) { o.resume = true; }},
      {"--override-lr-schedule", nullptr, "on --resume, use this run's --lr/--min-lr and "
       "compiled schedule instead of the checkpoint's (default: continue the checkpoint's and "
       "refuse a different one)",
       [&o](const std::string&, const std::string&) { o.override_lr_schedule = true; }},
      {"--exit-interval", "N", "stop (after checkpointing) when the step is a multiple of N",
       int_at_least(o.exit_interval, 1)},
      {"--metrics", "FILE", "append one JSON object per step to FILE (JSONL)", str(o.metrics)},
      {"--dump-grads", "FILE", "run step 1's forward+backward, write the gradients, loss and "
       "batch to FILE (safetensors), exit", str(o.dump_grads)},
      {"--trace", "FILE", "write a Chrome trace (chrome://tracing, Perfetto) of every rank's "
       "pipeline pieces, transfers and steps to FILE; on a GPU each event waits for the "
       "device, so the run is slower and nothing overlaps", str(o.trace)},
      {"--init-only", "DIR", "write the initialized parameters as checkpoint DIR/step_000000, exit",
       str(o.init_only)},
      {"--help", nullptr, "print this help",
       [&o](const std::string&, const std::string&) { o.help = true; }},
  };
}

}  // namespace

std::string train_usage(const std::string& program_name) {
  TrainOptions dummy;
  std::string s = "usage: " + program_name + " --data PREFIX [options]\n\n"
                  "Trains the compiled model. Options:\n";
  for (const Flag& f : flag_table(dummy)) {
    std::string left = std::string("  ") + f.name + (f.arg ? std::string(" ") + f.arg : "");
    if (left.size() < 24) left.append(24 - left.size(), ' ');
    else left += "\n" + std::string(24, ' ');
    s += left + f.help + "\n";
  }
  s += "\nFlags accept --flag VALUE or --flag=VALUE. See docs/launching.md.\n";
  return s;
}

TrainOptions parse_train_options(int argc, char** argv, const TrainConfig& defaults) {
  TrainOptions o;
  o.steps = defaults.train_steps;
  o.lr = defaults.lr;
  o.min_lr = defaults.min_lr;
  o.seed = defaults.seed;
  std::vector<Flag> flags = flag_table(o);
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::string name = arg, value;
    bool inline_value = false;
    if (size_t eq = arg.find('='); arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
      inline_value = true;
    }
    const Flag* flag = nullptr;
    for (const Flag& f : flags)
      if (name == f.name) flag = &f;
    if (flag == nullptr) {
      std::string known;
      for (const Flag& f : flags) known += std::string(known.empty() ? "" : " ") + f.name;
      throw Error("unknown argument \"" + arg + "\" (known flags: " + known + ")");
    }
    if (flag->arg == nullptr) {
      if (inline_value) throw Error(name + ": takes no value");
    } else if (!inline_value) {
      if (i + 1 >= argc) throw Error(name + ": missing value " + flag->arg);
      value = argv[++i];
    }
    flag->set(name, value);
  }
  if (o.help) return o;

  // Combinations.
  if (!o.dump_grads.empty() && !o.init_only.empty())
    throw Error("--dump-grads and --init-only exclude each other");
  if (o.init_only.empty() && o.data.empty())
    throw Error("--data: required (an indexed dataset prefix or a .tokens file; "
                "make one with mtc-preprocess)");
  if (o.resume && o.load.empty() && o.save.empty())
    throw Error("--resume: needs --load DIR or --save DIR to find the checkpoint");
  if (!o.load.empty() && !o.resume && o.dump_grads.empty())
    throw Error("--load: given without --resume (add --resume to continue from it; "
                "only --dump-grads uses --load alone)");
  if (o.save_interval > 0 && o.save.empty())
    throw Error("--save-interval: needs --save DIR");
  if (!(o.lr > 0)) throw Error("--lr: must be > 0");
  if (o.min_lr < 0 || o.min_lr > o.lr)
    throw Error("--min-lr: must lie in [0, lr = " + std::to_string(o.lr) + "]");
  if (o.override_lr_schedule && !o.resume)
    throw Error("--override-lr-schedule: only applies to --resume");
  if (!o.init_only.empty() && o.resume)
    throw Error("--init-only: writes a fresh initialization; drop --resume");
  return o;
}

}  // namespace mtc::rt
