"""Generated data sets the benchmark suites share: built once through the CLI stages and kept under
``.benchmarks/`` (git-ignored), so later runs skip the set-up."""
from __future__ import annotations

from pathlib import Path

from retailsim.cli import module_main

ROOT = Path(__file__).resolve().parent.parent


def generated_cache(customers: int, weeks: int) -> Path:
    """The Stage 2 cache of ``retailsim generate --customers N --weeks W`` (default seed), built if missing."""
    folder = ROOT / ".benchmarks" / f"loader-cache-{customers}x{weeks}"
    if not (folder / "cache" / "cache.json").is_file():
        steps = [("retailsim.generate", ["--out", folder / "raw", "--customers", customers, "--weeks", weeks,
                                         "--overwrite", "--quiet"]),
                 ("retailsim.prepare_samples", ["--input", folder / "raw", "--out", folder / "samples",
                                                "--overwrite", "--quiet"]),
                 ("retailsim.prepare_tensor_cache", ["--samples", folder / "samples", "--out", folder / "cache",
                                                     "--overwrite", "--quiet"])]
        for module, argv in steps:
            assert module_main(module, [str(a) for a in argv]) == 0, module
    return folder / "cache"
