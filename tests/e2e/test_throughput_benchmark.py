"""benchmarks/throughput.py --quick runs every system it names and prints its table (images/s, NFE/s, and
each system's error against fp32 eager)."""

import json
import sys

from support.runs import ROOT


def test_throughput_benchmark_quick_mode_prints_its_table(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import throughput

    out = tmp_path / "bench.json"
    code = throughput.main(["--quick", "--systems", "ours", "diffusers", "--json", str(out)])

    result = json.loads(out.read_text())
    assert code == 0 and not result["failures"]
    systems = {r["system"] for r in result["rows"]}
    assert "ours" in systems
    for row in result["rows"]:
        assert row["train_img_s"] > 0 and row["sample_nfe_s"] > 0 and row["err"] < 1e-4  # fp32 on the CPU
