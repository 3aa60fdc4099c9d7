"""CPU defaults chosen before Paddle loads (ppcls/utils/threads.py)."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT

from ppcls.utils.threads import _amd_with_avx2, mkl_loaded, processes_on_this_node, usable_cores

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
            "n = set_default_threads(); print(n, os.environ.get('MKL_DEBUG_CPU_TYPE'))")
    env = {"OMP_NUM_THREADS": "3", "MKL_DEBUG_CPU_TYPE": "2", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout.split()
    assert out == ["3", "2"]


def run_user_script(code):
    """A user's own script, run as they would: no variables set, no tools/ entry point."""
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
           "PYTHONPATH": ROOT, "PYTHONWARNINGS": "always"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=ROOT, check=True)


amd_avx2_only = pytest.mark.skipif(not _amd_with_avx2(),
                                   reason="MKL_DEBUG_CPU_TYPE is only chosen on AMD CPUs with AVX2")


@amd_avx2_only
def test_importing_paddle_first_still_gets_the_fast_mkl_path():
    done = run_user_script("import os, paddle, ppcls; from ppcls.utils.threads import mkl_loaded; "
                           "print(os.environ.get('MKL_DEBUG_CPU_TYPE'), mkl_loaded())")
    assert done.stdout.split() == ["5", "False"]  # set, and MKL (loaded later) will read it
    assert "MKL_DEBUG_CPU_TYPE" not in done.stderr


@amd_avx2_only
def test_mkl_loaded_before_ppcls_gets_one_warning_naming_the_variable():
    done = run_user_script("import paddle; x = paddle.ones([8, 8]); paddle.matmul(x, x); "
                           "import ppcls, ppcls.arch")
    lines = [line for line in done.stderr.splitlines() if "MKL_DEBUG_CPU_TYPE=5" in line]
    assert len(lines) == 1 and "2x slower" in lines[0]


def test_mkl_loaded_reads_the_process_memory_map(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /x/paddle/libs/libdnnl.so.3\n")
    assert not mkl_loaded(str(maps))
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /x/paddle/libs/libmklml_intel.so\n")
    assert mkl_loaded(str(maps))


def default_threads(**env):
    code = "from ppcls.utils.threads import set_default_threads; print(set_default_threads())"
    out = subprocess.run([sys.executable, "-c", code], env={"PATH": "/usr/bin:/bin", **env},
                         capture_output=True, text=True, cwd=ROOT, check=True).stdout
    return int(out)


def test_threads_are_shared_by_the_processes_of_this_node_not_the_world():
    one_node = default_threads(PADDLE_LOCAL_SIZE="2", PADDLE_TRAINERS_NUM="2")
    two_nodes = default_threads(PADDLE_LOCAL_SIZE="2", PADDLE_TRAINERS_NUM="4")
    alone = default_threads()
    assert one_node == two_nodes
    assert one_node == max(1, usable_cores() // 2) and alone == usable_cores()


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "100000 100000\n"}, 1),                 # v2: one CPU
    ({"cpu.max": "50000 100000\n"}, 1),                  # half a CPU still gets a thread
    ({"cpu.max": "max 100000\n"}, None),                 # v2: unlimited
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),   # v1: none
    ({}, None),                                          # no cgroup files
])
def test_a_cgroup_cpu_quota_caps_the_cores(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    assert usable_cores(str(tmp_path)) == (expected if expected else affinity)


def test_processes_on_this_node_prefers_the_local_size():
    assert processes_on_this_node({"PADDLE_LOCAL_SIZE": "4", "PADDLE_TRAINERS_NUM": "16"}) == 4
    assert processes_on_this_node({"PADDLE_TRAINERS_NUM": "3"}) == 3
    assert processes_on_this_node({}) == 1


# ------------------------------------------- applied once, by `import ppcls`, cheaply (issue 24)
def test_importing_ppcls_reads_no_file_and_leaves_the_cpu_variables_alone():
    """The CPU defaults wait for Paddle: `import ppcls` (and any module that needs no
    Paddle) opens no file but its own modules; of the environment it sets only Paddle's
    log level, which Paddle reads as it loads."""
    code = ("import os, sys\n"
            "opened = []\n"
            "sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == 'open' "
            "else None)\n"
            "import ppcls, ppcls.arch.backbone.model_zoo.mnasnet.variants\n"
            "print([p for p in opened if not p.endswith(('.py', '.pyc'))])\n"
            "print(os.environ.get('OMP_NUM_THREADS'), os.environ.get('MKL_DEBUG_CPU_TYPE'), "
            "os.environ.get('GLOG_minloglevel'), 'paddle' in sys.modules)")
    out = run_user_script(code).stdout.splitlines()
    assert out == ["[]", "None None 1 False"]


def test_importing_paddle_after_ppcls_gives_it_its_threads_without_its_warning():
    done = run_user_script("import os, ppcls, paddle; from ppcls.utils.threads import node_share; "
                           "print(os.environ['OMP_NUM_THREADS'] == str(node_share()))")
    assert done.stdout.split() == ["True"]
    assert "OMP_NUM_THREADS set to" not in done.stderr, done.stderr


def test_a_thread_count_set_before_paddle_loads_is_kept():
    done = run_user_script("import os, ppcls; os.environ['OMP_NUM_THREADS'] = '1'; import paddle; "
                           "print(os.environ['OMP_NUM_THREADS'])")
    assert done.stdout.split() == ["1"]


def calls_in(path, names):
    import ast

    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    return [n.func.attr if isinstance(n.func, ast.Attribute) else n.func.id
            for n in ast.walk(tree) if isinstance(n, ast.Call)
            and (getattr(n.func, "id", None) in names or getattr(n.func, "attr", None) in names)]


def python_files(*tops):
    for top in tops:
        for folder, _, names in os.walk(os.path.join(ROOT, top)):
            yield from (os.path.join(folder, n) for n in names if n.endswith(".py"))


def test_only_ppcls_init_applies_the_defaults():
    appliers = {"set_default_threads", "apply_cpu_defaults", "quiet_paddle_console"}
    calling = sorted(os.path.relpath(p, ROOT) for p in python_files("ppcls", "tools", "deploy",
                                                                    "test_tipc")
                     if calls_in(p, appliers))
    assert calling == ["ppcls/__init__.py", "ppcls/utils/threads.py"]  # its own, for old callers
