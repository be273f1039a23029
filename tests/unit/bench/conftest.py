"""The benchmark's modules live in benchmarks/ (not a package): put it on
the path for these tests."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, os.pardir, "benchmarks"))
