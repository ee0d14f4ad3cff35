"""python -m utils.benchmarks: the benchmarks' command line (utils.benchmarks.modes)."""
from utils.benchmarks.modes import main
from utils.errors import run_cli

if __name__ == '__main__':
    run_cli(main, 'python -m utils.benchmarks')
