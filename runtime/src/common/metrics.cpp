// Log-line formatting and the JSONL metrics writer; formats are in
// mtc/rt/metrics.h.
#include "mtc/rt/metrics.h"

#include <nlohmann/json.hpp>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "mtc/rt/io.h"

namespace mtc::rt {

std::string format_duration(double seconds) {
  if (!(seconds >= 0) || !std::isfinite(seconds)) seconds = 0;
  auto total = static_cast<long long>(std::llround(seconds));
  char buf[48];
  std::snprintf(buf, sizeof buf, "%02lld:%02lld:%02lld", total / 3600,
                (total / 60) % 60, total % 60);
  return buf;
}

std::string format_log_line(const LogLine& l) {
  char buf[320];
  int n = std::snprintf(
      buf, sizeof buf,
      "step %lld/%lld | loss %.4f | lr %.2e | grad_norm %.3f | tokens/s %.0f",
      static_cast<long long>(l.step), static_cast<long long>(l.total_steps),
      l.loss, l.lr, l.grad_norm, l.tokens_per_s);
  std::string s(buf, static_cast<size_t>(n));
  if (l.tflops > 0) {
    std::snprintf(buf, sizeof buf, " | TFLOP/s %.2f", l.tflops);
    s += buf;
  }
  if (l.mfu > 0) {
    std::snprintf(buf, sizeof buf, " | MFU %.1f%%", 100 * l.mfu);
    s += buf;
  }
  s += " | elapsed " + format_duration(l.elapsed_s) + " | eta " +
       format_duration(l.eta_s);
  return s;
}

std::string format_validation_line(int64_t step, double loss) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "validation at step %lld | loss %.4f | ppl %.2f",
                static_cast<long long>(step), loss, std::exp(loss));
  return buf;
}

MetricsWriter::MetricsWriter(const std::string& path, int64_t keep_through_step)
    : path_(path) {
  // Only a regular file (not a FIFO or device) holds earlier lines to keep.
  std::error_code ec;
  if (keep_through_step >= 0 && std::filesystem::is_regular_file(path, ec)) {
    std::string kept, line;
    std::istringstream in(read_file(path));
    while (std::getline(in, line)) {
      try {
        check_json_depth(line, path);
      } catch (const Error&) {
        continue;  // not a line this writer wrote
      }
      auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (j.is_object() && j.contains("step") && j["step"].is_number_integer() &&
          j["step"].get<int64_t>() <= keep_through_step)
        kept += line + "\n";
    }
    write_file_atomic(path, kept);
  }
  file_ = std::fopen(path.c_str(), keep_through_step >= 0 ? "a" : "w");
  if (file_ == nullptr)
    throw Error(path + ": cannot open the metrics file (" +
                std::strerror(errno) + ")");
}

MetricsWriter::~MetricsWriter() {
  if (file_ != nullptr) std::fclose(file_);
}

MetricsWriter::MetricsWriter(MetricsWriter&& other) noexcept
    : path_(std::move(other.path_)), file_(other.file_) {
  other.file_ = nullptr;
}

MetricsWriter& MetricsWriter::operator=(MetricsWriter&& other) noexcept {
  if (this != &other) {
    if (file_ != nullptr) std::fclose(file_);
    path_ = std::move(other.path_);
    file_ = other.file_;
    other.file_ = nullptr;
  }
  return *this;
}

void MetricsWriter::write(const StepMetrics& m) {
  if (file_ == nullptr) return;
  double tps = m.step_time_s > 0 ? m.tokens / m.step_time_s : 0;
  double tflops = m.step_time_s > 0 ? m.flops / m.step_time_s / 1e12 : 0;
  nlohmann::ordered_json j = {{"step", m.step},
                              {"loss", m.loss},
                              {"lr", m.lr},
                              {"grad_norm", m.grad_norm},
                              {"consumed_samples", m.consumed_samples},
                              {"tokens", m.tokens},
                              {"step_time_s", m.step_time_s},
                              {"tokens_per_s", tps},
                              {"tflops", tflops}};
  if (m.peak_flops > 0 && m.flops > 0) j["mfu"] = tflops * 1e12 / m.peak_flops;
  if (m.val_loss) j["val_loss"] = *m.val_loss;
  // NaN/Inf are not JSON; the trainer stops before writing such a step.
  std::string line = j.dump(-1, ' ', false,
                            nlohmann::ordered_json::error_handler_t::replace) + "\n";
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() ||
      std::fflush(file_) != 0)
    throw Error(path_ + ": write failed (" + std::strerror(errno) + ")");
}

}  // namespace mtc::rt
