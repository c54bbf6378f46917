"""Side-by-side benchmarks of mqmta against real peers.

Run ``python -m bench --help``. Every figure is a median over rounds in which
the sides alternate, and is reported as a ratio against peers measured in the
same run: the machines are shared and noisy, so absolute times are only shape.
"""
