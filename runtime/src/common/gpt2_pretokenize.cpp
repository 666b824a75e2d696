// GPT-2's pre-tokenization pattern, as hand-written splitting rules on bytes.
// The pattern, the byte classes and the approximation are documented in
// mtc/rt/tokenizer.h. At each position the alternatives are tried in the
// pattern's order; the first that matches takes a (greedy) piece:
//   1. contraction: 's 't 're 've 'm 'll 'd (ASCII apostrophe, lower case)
//   2. an optional ' ' then a run of letters
//   3. an optional ' ' then a run of digits
//   4. an optional ' ' then a run of "other" bytes
//   5. whitespace run W: all of W at the end of the text; W minus its last
//      byte when |W| >= 2 and a non-space follows (\s+(?!\S) backtracks so
//      the last space can join the next word); else W's single byte (\s+).
#include "mtc/rt/tokenizer.h"

namespace mtc::rt {

namespace {

enum class ByteClass { letter, number, space, other };

ByteClass classify(unsigned char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80)
    return ByteClass::letter;
  if (c >= '0' && c <= '9') return ByteClass::number;
  if (c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r')
    return ByteClass::space;
  return ByteClass::other;
}

ByteClass class_at(std::string_view s, size_t i) {
  return classify(static_cast<unsigned char>(s[i]));
}

// Length of the contraction starting at p (at an apostrophe), or 0.
size_t contraction_length(std::string_view s, size_t p) {
  static constexpr std::string_view kSuffixes[] = {"s", "t", "re", "ve",
                                                   "m", "ll", "d"};
  std::string_view rest = s.substr(p + 1);
  for (std::string_view suffix : kSuffixes)
    if (rest.substr(0, suffix.size()) == suffix) return 1 + suffix.size();
  return 0;
}

// End of the run of class `cls` starting at i.
size_t run_end(std::string_view s, size_t i, ByteClass cls) {
  while (i < s.size() && class_at(s, i) == cls) ++i;
  return i;
}

}  // namespace

std::vector<std::string_view> gpt2_pretokenize(std::string_view text) {
  std::vector<std::string_view> pieces;
  size_t p = 0;
  const size_t n = text.size();
  while (p < n) {
    size_t end = p;
    if (text[p] == '\'') end = p + contraction_length(text, p);
    if (end == p) {
      // Rules 2-4: optional leading ' ' then a run of one non-space class.
      size_t start = (text[p] == ' ' && p + 1 < n) ? p + 1 : p;
      ByteClass cls = class_at(text, start);
      if (cls != ByteClass::space) {
        end = run_end(text, start, cls);
      } else {
        // Rule 5 (start == p here: a ' ' followed by a space, or a space).
        size_t w = run_end(text, p, ByteClass::space) - p;
        if (p + w == n || w == 1)
          end = p + w;
        else
          end = p + w - 1;
      }
    }
    pieces.push_back(text.substr(p, end - p));
    p = end;
  }
  return pieces;
}

}  // namespace mtc::rt
