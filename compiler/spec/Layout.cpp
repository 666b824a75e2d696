// Pipeline layouts: parallel.pipeline_layout -> the layers of each chunk.
// Megatron-LM's --pipeline-model-parallel-layout syntax (E embedding, t a
// transformer layer, L final norm + LM head + loss; '|' between chunks; "*N"
// repeats), checked against the model so that a layout that does not cover
// it exactly is refused before anything is built.
#include <cctype>
#include <string>
#include <vector>

#include "mtc/Spec/Spec.h"

namespace mtc::spec {

namespace {

std::string plural(int64_t n, const char* one, const char* many) {
  return std::to_string(n) + " " + (n == 1 ? one : many);
}

}  // namespace

bool resolvePipelineLayout(const std::string& layout, int64_t num_layers, int64_t chunks,
                           std::vector<LayoutChunk>& out, std::string& error) {
  out.clear();
  if (chunks < 1 || num_layers < 0) {
    error = "needs at least one chunk";
    return false;
  }
  if (layout.empty()) {
    // Even: the first (num_layers % chunks) chunks take one layer more.
    int64_t first = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      LayoutChunk k;
      k.embedding = c == 0;
      k.head = c == chunks - 1;
      k.first_layer = first;
      k.num_layers = num_layers / chunks + (c < num_layers % chunks ? 1 : 0);
      first += k.num_layers;
      out.push_back(k);
    }
    return true;
  }
  // Tokenize: chunks by '|', items by ','.
  std::vector<std::string> parts(1);
  for (char ch : layout) {
    if (std::isspace(static_cast<unsigned char>(ch))) continue;
    if (ch == '|') parts.emplace_back();
    else parts.back() += ch;
  }
  if (static_cast<int64_t>(parts.size()) != chunks) {
    error = "has " + plural(static_cast<int64_t>(parts.size()), "chunk", "chunks") +
            " (separated by '|') but the plan has pp * virtual_stages = " +
            std::to_string(chunks);
    return false;
  }
  int64_t layer = 0;
  bool seen_head = false;
  for (size_t c = 0; c < parts.size(); ++c) {
    LayoutChunk k;
    k.first_layer = layer;
    const std::string& text = parts[c];
    size_t pos = 0;
    const std::string where = "chunk " + std::to_string(c) + " (\"" + text + "\")";
    while (pos < text.size()) {
      // An item: E, t or L, then an optional "*N"; commas between items
      // are optional ("Et*3" = "E,t*3").
      if (text[pos] == ',') {
        ++pos;
        continue;
      }
      size_t end = pos + 1;
      if (end < text.size() && text[end] == '*') {
        ++end;
        while (end < text.size() && std::isdigit(static_cast<unsigned char>(text[end]))) ++end;
      }
      std::string item = text.substr(pos, end - pos);
      pos = end;
      int64_t count = 1;
      const char token = item[0];
      if (item.size() > 1) {
        if (item.size() == 2) {
          error = where + ": '" + item + "': the repeat count must be a number";
          return false;
        }
        count = 0;
        for (size_t i = 2; i < item.size(); ++i) {
          if (count > 1000000) {
            error = where + ": '" + item + "': the repeat count is too large";
            return false;
          }
          count = count * 10 + (item[i] - '0');
        }
      }
      if (token == 'E') {
        if (c != 0 || k.embedding || k.num_layers > 0 || count != 1) {
          error = where + ": the embedding (E) must open the first chunk, once";
          return false;
        }
        k.embedding = true;
      } else if (token == 't') {
        if (k.head) {
          error = where + ": a layer (t) after L; L (final norm, LM head, loss) ends the model";
          return false;
        }
        if (layer + count > num_layers) {
          error = where + ": layer " + std::to_string(num_layers) +
                  " is extra: the model has " + plural(num_layers, "layer", "layers") +
                  " (0.." + std::to_string(num_layers - 1) + ")";
          return false;
        }
        k.num_layers += count;
        layer += count;
      } else if (token == 'L') {
        if (c + 1 != parts.size() || count != 1 || seen_head) {
          error = where + ": L (final norm, LM head, loss) must close the last chunk, once";
          return false;
        }
        k.head = true;
        seen_head = true;
      } else {
        error = where + ": unknown item '" + item + "' (E embedding, t layer, L head and loss)";
        return false;
      }
    }
    out.push_back(k);
  }
  if (!out.front().embedding) {
    error = "the first chunk must start with E (the embedding)";
    return false;
  }
  if (!seen_head) {
    error = "the last chunk must end with L (final norm, LM head and loss)";
    return false;
  }
  if (layer < num_layers) {
    error = "layer " + std::to_string(layer) + " is missing: the layout places " +
            plural(layer, "layer", "layers") + " (t) but the model has " +
            std::to_string(num_layers);
    return false;
  }
  return true;
}

}  // namespace mtc::spec
