// Training metrics: the per-step log line and the JSONL metrics file.
//
// Log line (one per --log-interval steps; loss is the mean over the steps
// since the previous line, throughput over the same steps, grad_norm and lr
// those of the current step):
//   step 12/300 | loss 3.4521 | lr 1.00e-03 | grad_norm 0.812 |
//   tokens/s 12345 | TFLOP/s 1.23 | MFU 41.5% | elapsed 00:00:12 | eta 00:04:48
// (one line; TFLOP/s only when the program knows its FLOPs per step, MFU =
// achieved model FLOP/s / the accelerator's peak only when the peak is
// known too: MTC_PEAK_TFLOPS).
// Validation line:
//   validation at step 100 | loss 3.2100 | ppl 24.78
//
// JSONL (--metrics FILE): one JSON object per optimizer step, written and
// flushed when the step ends, with full-precision numbers:
//   {"step", "loss", "lr", "grad_norm", "consumed_samples", "tokens",
//    "step_time_s", "tokens_per_s", "tflops"[, "mfu"][, "val_loss"]}
// ("mfu" a fraction, present when the peak FLOP/s is known).
// A resumed run keeps the lines of the steps up to its checkpoint (steps
// logged after it, which the run will redo, are dropped) and appends.
#pragma once

#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>

namespace mtc::rt {

struct StepMetrics {
  int64_t step = 0;
  double loss = 0;                // mean microbatch loss of this step
  double lr = 0;
  double grad_norm = 0;
  int64_t consumed_samples = 0;   // after this step
  int64_t tokens = 0;             // tokens this step (global batch)
  double step_time_s = 0;
  double flops = 0;               // model FLOPs of the step (0: unknown)
  double peak_flops = 0;          // accelerator peak FLOP/s (0: unknown, no "mfu")
  std::optional<double> val_loss;
};

// "HH:MM:SS" (hours grow past 99 as needed).
std::string format_duration(double seconds);

struct LogLine {
  int64_t step = 0, total_steps = 0;
  double loss = 0, lr = 0, grad_norm = 0;
  double tokens_per_s = 0;
  double tflops = 0;              // <= 0: not printed
  double mfu = 0;                 // model FLOPs utilization, a fraction; <= 0: not printed
  double elapsed_s = 0, eta_s = 0;
};
std::string format_log_line(const LogLine& line);
std::string format_validation_line(int64_t step, double loss);

class MetricsWriter {
 public:
  MetricsWriter() = default;  // disabled
  // Opens `path`. keep_through_step < 0: the file is truncated; else the
  // existing lines with "step" <= keep_through_step are kept and new ones
  // appended. Throws Error naming the path.
  MetricsWriter(const std::string& path, int64_t keep_through_step);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;
  MetricsWriter(MetricsWriter&& other) noexcept;
  MetricsWriter& operator=(MetricsWriter&& other) noexcept;

  void write(const StepMetrics& m);

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
};

}  // namespace mtc::rt
