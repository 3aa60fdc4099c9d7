"""CPU defaults chosen before Paddle loads (ppcls/utils/threads.py)."""

import subprocess
import sys

import pytest
from conftest import ROOT

from ppcls.utils.threads import _amd_with_avx2

CPUINFO = """processor\t: 0
vendor_id\t: {vendor}
flags\t\t: fpu sse sse2 {extra}

processor\t: 1
vendor_id\t: {vendor}
flags\t\t: fpu sse sse2 {extra}
"""


@pytest.mark.parametrize("vendor, extra, expected", [
    ("AuthenticAMD", "avx avx2 fma", True),
    ("AuthenticAMD", "avx", False),        # no AVX2 path to switch to
    ("GenuineIntel", "avx avx2 avx512f", False),  # MKL already picks its best path
])
def test_mkl_cpu_type_is_forced_only_on_amd_with_avx2(tmp_path, vendor, extra, expected):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO.format(vendor=vendor, extra=extra))
    assert _amd_with_avx2(str(path)) is expected


def test_a_missing_cpuinfo_changes_nothing(tmp_path):
    assert _amd_with_avx2(str(tmp_path / "absent")) is False


def test_values_in_the_environment_win():
    code = ("import os; from ppcls.utils.threads import set_default_threads; "
            "n = set_default_threads(); "
            "print(n, os.environ['GOMP_SPINCOUNT'], os.environ.get('MKL_DEBUG_CPU_TYPE'))")
    env = {"OMP_NUM_THREADS": "3", "GOMP_SPINCOUNT": "7", "MKL_DEBUG_CPU_TYPE": "2",
           "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout.split()
    assert out == ["3", "7", "2"]


def test_threads_default_to_cores_shared_by_the_processes():
    code = ("import os; from ppcls.utils.threads import set_default_threads; "
            "print(set_default_threads(), os.cpu_count())")
    env = {"PADDLE_TRAINERS_NUM": "2", "PATH": "/usr/bin:/bin"}
    threads, cores = map(int, subprocess.run([sys.executable, "-c", code], env=env,
                                             capture_output=True, text=True, cwd=ROOT,
                                             check=True).stdout.split())
    assert threads == max(1, cores // 2)
