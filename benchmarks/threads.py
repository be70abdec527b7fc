"""Training-step time of the demo's FastDepth at 1 and 2 CPU threads (why experiments default to 1).

Run: ``python benchmarks/threads.py`` (prints wall and CPU seconds per step for
each thread count, 30 steps after 3 warm-up steps, twice each, alternating).
"""

from __future__ import annotations

import subprocess
import sys
import time

CHILD = r"""
import sys, time, torch, depthsel
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
m = depthsel.get_model("fastdepth", width=0.5)
opt = torch.optim.AdamW(m.parameters(), 1e-2)
x, y = torch.rand(8, 3, 64, 96), torch.rand(8, 1, 64, 96) * 3 + 0.5
def step():
    loss = (m(x) - y).abs().mean(); opt.zero_grad(); loss.backward(); opt.step()
for _ in range(3): step()
t, c = time.perf_counter(), time.process_time()
for _ in range(30): step()
print(f"{(time.perf_counter() - t) / 30:.4f} {(time.process_time() - c) / 30:.4f}")
"""


def main() -> int:
    for repeat in range(2):
        for threads in (1, 2):
            out = subprocess.run([sys.executable, "-c", CHILD, str(threads)], capture_output=True, text=True,
                                 check=True).stdout.split()
            print(f"repeat {repeat}, {threads} thread(s): wall {out[0]} s/step, cpu {out[1]} s/step")
    return 0


if __name__ == "__main__":
    time.sleep(0)
    sys.exit(main())
