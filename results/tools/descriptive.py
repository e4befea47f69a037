from pathlib import Path
from offclip.models.compare import CompareConfig, run_compare
B = Path("/work/bench")
run_compare(CompareConfig(shards=B / "c4k", eval_root=B / "w4k/eval/vindr-cxr", out=B / "cmp4k", seeds=(0, 1),
                          arms=("infonce/report", "infonce/filtered", "offclip/filtered"),
                          prompts=Path("/work/bench/descriptive.json"),
                          manifest=B / "c4k-manifest-copy.duckdb"))
