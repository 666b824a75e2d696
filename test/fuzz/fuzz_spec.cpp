// Fuzz target: the spec parser (compiler/spec) on arbitrary bytes. A spec
// that parses must survive the round trip toJson documents: toJson's output,
// less "model.padded_vocab_size", parses again to the same JSON. parseSpec
// never throws; any exception, sanitizer report or failed round trip is a bug.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "mtc/Spec/Spec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  std::vector<mtc::spec::Diagnostic> diags;
  std::optional<mtc::spec::Spec> spec = mtc::spec::parseSpec(text, diags);
  if (!spec) return 0;
  std::string resolved = mtc::spec::toJson(*spec);
  nlohmann::json j = nlohmann::json::parse(resolved);
  j["model"].erase("padded_vocab_size");
  std::vector<mtc::spec::Diagnostic> again;
  std::optional<mtc::spec::Spec> reparsed = mtc::spec::parseSpec(j.dump(), again);
  if (!reparsed || mtc::spec::toJson(*reparsed) != resolved) {
    std::fprintf(stderr, "fuzz_spec: toJson's output does not parse back to the same spec:\n%s\n%s",
                 resolved.c_str(), mtc::spec::formatDiagnostics("toJson", again).c_str());
    std::abort();
  }
  return 0;
}
