import os
import sys

# Small, deterministic CPU runs: the suite is sized for 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "2")
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
