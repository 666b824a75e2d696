"""NCCL all-reduce bandwidth between the GPUs of one host, through PyTorch
(torchrun --nproc_per_node N bench/nccl_bw.py): bf16 buffers of the sizes a
tensor-parallel all-reduce of the benchmark models moves (whole, and in the
chunks MTC_TP_CHUNKS makes), median of 20 after 5 warm-up calls. Prints one
NCCL_BW line of JSON per size (rank 0): milliseconds and algorithm bandwidth
(bytes / time); bus bandwidth is that times 2 (n - 1) / n."""
import json
import os
import statistics

import torch
import torch.distributed as dist


def main():
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    dist.init_process_group("nccl")
    for mib in (4, 8, 16, 32, 64):
        n = mib * (1 << 20) // 2
        x = torch.ones(n, dtype=torch.bfloat16, device="cuda")
        times = []
        for i in range(25):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dist.all_reduce(x)
            end.record()
            end.synchronize()
            if i >= 5:
                times.append(start.elapsed_time(end))
        ms = statistics.median(times)
        if rank == 0:
            algbw = mib * (1 << 20) / (ms * 1e-3) / 1e9
            print("NCCL_BW " + json.dumps({
                "mib": mib, "ms": round(ms, 4), "algbw_gbs": round(algbw, 1),
                "busbw_gbs": round(algbw * 2 * (world - 1) / world, 1),
                "env": {k: v for k, v in os.environ.items() if k.startswith("NCCL_")}}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
