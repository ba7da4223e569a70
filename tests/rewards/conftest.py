import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # math_table and its helper, shared with benchmarks
