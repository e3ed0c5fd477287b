"""Benchmarks of Ferry, each against a baseline measured in the same run.

``python -m bench.overhead`` (``make bench``): wall time and downtime of a live
migration through Ferry against the same migration done with plain ``virsh``.
"""
