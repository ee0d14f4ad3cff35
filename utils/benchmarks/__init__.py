"""Benchmarks of speed and memory (python -m utils.benchmarks; the modes are in utils.benchmarks.modes). They sit
above the scripts they measure: nothing in models/, utils/ or the scripts imports them."""
from utils.benchmarks.modes import main, parse_opt  # noqa: F401 - utils.benchmarks.main(argv) from Python
