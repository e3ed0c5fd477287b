"""Benchmarks of Ferry, each against a baseline measured in the same run.

``python -m bench.overhead`` (``make bench-overhead``): wall time and downtime
of a live migration through Ferry against the same migration done with plain
``virsh``.

``python -m bench.drain`` (``make bench-drain``): emptying a host of N guests
with ``ferry drain --wait`` against a sequential loop of ``virsh migrate``.

``python -m bench.convergence`` (``make bench-convergence``): a guest dirtying
memory faster than the bandwidth cap, moved by plain ``virsh migrate`` with a
deadline against ``ferry migrate`` with the default convergence policy.

``make bench`` runs all three, one after the other.

``python -m bench.lost_writes`` (``make bench-lost-writes``, about 15 minutes):
not a speed benchmark but a measure of the QEMU and libvirt below Ferry: busy
TCG guests moved again and again, counting the moves after which the guest
crashed or hung (QEMU before 9.0 loses some of their writes).
"""
