# Prints each @pipeline_step_pp<r> of an `mtc compile --emit=train` module
# as one line in the notation of the schedule library's formatOrders
# (test/unit/pipeline/ScheduleTest.cpp), so that the lit tests compare the
# IR with the published tables:
#   rank 1: F0 F1 B0 F2 ...         a call of @chunk<c>_forward on
#                                   microbatch 0 is F0 (B backward, W weight)
# With -v v=V (virtual chunks per rank, pp from -v pp=P) a piece is written
# microbatch.localChunk (F0.1: chunk 1 * P + rank). With -v transfers=1 each
# mtc.p2p is written as its group, one entry per transfer (index 0 only):
#   {sa3.1>2 rg1.2<2}   send the activation of (microbatch 3, chunk 1) to
#                       rank 2, receive the gradient of (1, 2) from rank 2.
function flush() { if (rank != "") print "rank " rank ":" line; line = ""; rank = "" }
/func.func @pipeline_step_pp[0-9]+\(/ {
  flush()
  match($0, /@pipeline_step_pp[0-9]+/)
  rank = substr($0, RSTART + 17, RLENGTH - 17)
  next
}
/^  func.func / { flush(); next }
rank != "" && /call @chunk[0-9]+_(forward|backward|weight)\(/ {
  match($0, /@chunk[0-9]+_[a-z]+/)
  split(substr($0, RSTART + 6, RLENGTH - 6), part, "_")
  match($0, /mtc.microbatch = [0-9]+/)
  mb = substr($0, RSTART + 17, RLENGTH - 17)
  item = toupper(substr(part[2], 1, 1)) mb
  if (v > 1) item = item "." int(part[1] / pp)
  line = line " " item
  next
}
rank != "" && transfers && /mtc.p2p\(/ {
  group = ""
  rest = $0
  while (match(rest, /[{]chunk = [0-9]+ : i64, index = [0-9]+ : i64, kind = "[a-z]+", microbatch = [0-9]+ : i64, payload = "[a-z]+", peer = [0-9]+ : i64[}]/)) {
    entry = substr(rest, RSTART, RLENGTH)
    rest = substr(rest, RSTART + RLENGTH)
    gsub(/[{}",:=]|i64/, "", entry)
    # chunk C index I kind K microbatch M payload P peer R
    split(entry, f, " +")
    if (f[4] != 0) continue
    send = f[6] == "send"
    group = group (group == "" ? "" : " ") (send ? "s" : "r") substr(f[10], 1, 1) \
            f[8] "." f[2] (send ? ">" : "<") f[12]
  }
  line = line " {" group "}"
}
END { flush() }
