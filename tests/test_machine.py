from pathlib import Path

from causalclip.core.machine import cpu_model


def test_cpu_model_is_procs_model_name_or_a_fallback():
    names = []
    if Path("/proc/cpuinfo").is_file():
        names = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
    got = cpu_model()
    assert isinstance(got, str) and got
    if names:
        assert got == names[0]
